"""DeepMind's NFNet release (``F0_haiku.npz`` ... ``F6_haiku.npz``) to nfzoo's layout.

Despite the suffix, the release files are pickles (written with dill, February 2021) of a
mapping ``{module_path: {param: ndarray}}``; Haiku's ``init`` then returned its own mapping
types (``haiku._src.data_structures.FlatMapping``, earlier ``frozendict``). Unpickling runs
whatever the file asks for, so :func:`load_haiku_params` uses an unpickler that rebuilds only
dicts (Haiku's mappings and ``OrderedDict`` become plain dicts, without importing Haiku) and
numpy arrays: any other global in the file (``os.system``, ``builtins.eval``, a dill code
object ...) is refused before it is called, and what the file may allocate is bounded by its
own size.

:func:`haiku_to_state_dict` maps the Haiku tree onto nfzoo's NFNet modules, which use timm's
``dm_nfnet_f*`` names::

    NFNet/~/stem_conv0 .. stem_conv3        stem.conv1 .. stem.conv4
    NFNet/~/nf_block_k                      stages.i.j  (k counts blocks over all stages)
        skip_gain                               skipinit_gain
        /~/conv0, conv1, conv1b, conv2          conv1, conv2, conv2b, conv3
        /~/conv_shortcut                        downsample.conv
        /~/squeeze_excite/~/linear, linear_1    attn_last.fc1, attn_last.fc2
    NFNet/~/final_conv                      final_conv
    NFNet/~/linear                          head.fc

Convs are HWIO in Haiku (OIHW here), linears (in, out) (here (out, in), or (out, in, 1, 1)
for the squeeze-excite 1x1 convs), gains are per output channel (here (out, 1, 1, 1)).
"""
from __future__ import annotations

import codecs
import math
import os
import pickle
import re
from typing import IO, Any

import numpy as np
import torch
import torch.nn as nn

from .errors import CheckpointError

__all__ = ["load_haiku_params", "haiku_to_state_dict", "HaikuTree"]

HaikuTree = dict[str, dict[str, np.ndarray]]

_ROOT = "NFNet/~/"
_BLOCK = re.compile(r"^nf_block(?:_(\d+))?$")
_BLOCK_CONVS = {"conv0": "conv1", "conv1": "conv2", "conv1b": "conv2b", "conv2": "conv3",
                "conv_shortcut": "downsample.conv"}
_SE_LINEARS = {"linear": "attn_last.fc1", "linear_1": "attn_last.fc2"}


class _Budget:
    """How many bytes the objects a pickle builds may take beyond what the file itself holds.

    A genuine release materialises each array from bytes stored in the file, so everything it
    builds fits in about the file's size; a crafted file could instead reuse one stored string
    thousands of times, or ask for an array far larger than itself.
    """

    SLACK = 1 << 20

    def __init__(self, file_size: int):
        self.left = file_size + self.SLACK

    def charge(self, nbytes: int, what: str) -> None:
        self.left -= nbytes
        if self.left < 0:
            raise pickle.UnpicklingError(
                f"{what} would make the file allocate more memory than its own size accounts for")


def _array_bytes(shape: Any, dtype: Any) -> int:
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"invalid array shape {shape!r}")
    return math.prod(shape) * _safe_dtype(dtype).itemsize


def _safe_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing an object array: a Haiku weights file holds numeric arrays")
    return dtype


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, strings, numbers and numpy arrays; refuses every other global.

    Haiku's mappings (``FlatMapping``; ``frozendict`` in older versions) and
    ``collections.OrderedDict`` are read as plain dicts without importing Haiku. dill writes
    numpy's C functions as ``dill._dill._get_attr(dill._dill._import_module(module), name)``;
    those two helpers are answered only for the numpy functions allowed here. Every object the
    file builds is charged to a :class:`_Budget` of the file's size.
    """

    def __init__(self, file: IO[bytes], file_size: int):
        super().__init__(file)
        self.budget = _Budget(file_size)
        self._allowed = self._globals()

    def _globals(self) -> dict[tuple[str, str], Any]:
        from numpy._core import multiarray, numeric  # numpy >= 2; older pickles name numpy.core

        def encode(text: str, encoding: str = "latin1") -> bytes:
            """``_codecs.encode`` as protocol-2 pickles use it for bytes, and nothing else."""
            if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
                raise pickle.UnpicklingError("refusing _codecs.encode other than str -> latin1")
            self.budget.charge(len(text), "_codecs.encode")
            return text.encode("latin1")

        def ndarray(shape: Any, dtype: Any = float) -> np.ndarray:
            self.budget.charge(_array_bytes(shape, dtype), f"ndarray{shape!r}")
            return np.ndarray(shape, _safe_dtype(dtype))

        def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
            if subtype is not ndarray:
                raise pickle.UnpicklingError("refusing an array of a type other than numpy.ndarray")
            self.budget.charge(_array_bytes(shape, dtype), f"an array of shape {shape!r}")
            return multiarray._reconstruct(np.ndarray, shape, _safe_dtype(dtype))

        def scalar(dtype: Any, *data: Any) -> Any:
            return multiarray.scalar(_safe_dtype(dtype), *data)

        allowed: dict[tuple[str, str], Any] = {}
        for core in ("numpy.core", "numpy._core"):
            for module in (f"{core}.multiarray", f"{core}._multiarray_umath"):
                allowed[(module, "_reconstruct")] = reconstruct
                allowed[(module, "scalar")] = scalar
            allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
        allowed[("numpy", "ndarray")] = ndarray
        allowed[("numpy", "dtype")] = _safe_dtype
        allowed[("_codecs", "encode")] = encode
        for container in _HAIKU_MAPPINGS:
            allowed[container] = _plain_dict
        allowed[("dill._dill", "_import_module")] = _DillModule
        allowed[("dill._dill", "_get_attr")] = self._dill_get_attr
        return allowed

    def _dill_get_attr(self, module: Any, name: Any) -> Any:
        if not isinstance(module, _DillModule):
            raise pickle.UnpicklingError("refusing dill._dill._get_attr on anything but an allowed module")
        return self.find_class(module.name, name)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a Haiku weights file holds only dicts of "
                "numpy arrays, and loading anything else could run code from the file") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id: not a Haiku weights pickle")


# The mapping types a Haiku parameter tree has been pickled as: Haiku's own (their __reduce__
# is (type, (dict,))) and OrderedDict (reduced to (OrderedDict, ()) plus its items).
_HAIKU_MAPPINGS = (("haiku._src.data_structures", "FlatMapping"), ("haiku._src.data_structures", "frozendict"),
                   ("collections", "OrderedDict"))


def _plain_dict(*args: Any) -> dict:
    if len(args) > 1 or (args and not isinstance(args[0], dict)):
        raise pickle.UnpicklingError("a Haiku mapping is rebuilt from one dict")
    return dict(*args)


class _DillModule:
    """What ``dill._dill._import_module(name)`` gives here: a name, never an imported module."""

    def __init__(self, name: Any):
        if not isinstance(name, str):
            raise pickle.UnpicklingError("dill._dill._import_module needs a module name")
        self.name = name


def load_haiku_params(path: str | os.PathLike) -> HaikuTree:
    """Read a DeepMind ``F*_haiku.npz`` pickle without letting it run code.

    Any file that is not such a pickle (malformed, truncated, refused, or asking for more
    memory than its size accounts for) raises :class:`CheckpointError`.
    """
    try:
        with open(path, "rb") as f:
            tree = _ArraysOnlyUnpickler(f, os.fstat(f.fileno()).st_size).load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: not a Haiku weights pickle, refused ({e}).") from e
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001  any other failure of the unpickler is a malformed file
        raise CheckpointError(
            f"{path}: cannot be read as a Haiku weights pickle ({type(e).__name__}: {e}); "
            "the file is truncated or not a DeepMind NFNet release.") from e
    _check_tree(tree, path)
    return tree


def _check_tree(tree: Any, path: str | os.PathLike) -> None:
    if not isinstance(tree, dict) or not all(
            isinstance(module, str) and isinstance(params, dict)
            and all(isinstance(p, str) and isinstance(v, np.ndarray) for p, v in params.items())
            for module, params in tree.items()):
        raise CheckpointError(f"{path}: not a Haiku weights tree ({{module_path: {{param: ndarray}}}}).")
    bad = [f"{m}/{p}" for m, params in tree.items() for p, v in params.items() if v.dtype.kind != "f"]
    if bad:
        raise CheckpointError(f"{path}: non-float parameters {bad[:5]}: not an NFNet weights file.")
    if not any(m.startswith(_ROOT) for m in tree):
        raise CheckpointError(f"{path}: no {_ROOT}* modules; not a DeepMind NFNet weights file.")


def _block_index(name: str) -> int | None:
    m = _BLOCK.match(name)
    return None if m is None else int(m.group(1) or 0)


def _block_names(model: nn.Module) -> list[str]:
    """``stages.i.j`` for every block of the model, in forward order."""
    return [f"stages.{i}.{j}" for i, stage in enumerate(model.stages) for j in range(len(stage))]


def _stage_depths(tree: HaikuTree) -> tuple[int, ...]:
    """Stage depths of a Haiku tree: every stage starts with the one block that has a shortcut conv."""
    blocks = sorted({i for m in tree if (i := _block_index(m[len(_ROOT):].split("/~/")[0])) is not None})
    if blocks != list(range(len(blocks))):
        raise CheckpointError(f"the Haiku tree's nf_block indices are not contiguous: {blocks}")
    starts = [i for i in blocks if f"{_ROOT}{_haiku_block(i)}/~/conv_shortcut" in tree] + [len(blocks)]
    return tuple(b - a for a, b in zip(starts, starts[1:]))


def _haiku_block(index: int) -> str:
    return "nf_block" if index == 0 else f"nf_block_{index}"


def _target_name(module: str, blocks: list[str]) -> str:
    """nfzoo's module name for a Haiku module path (without the ``NFNet/~/`` root)."""
    head, _, rest = module.partition("/~/")
    if (m := re.fullmatch(r"stem_conv(\d)", head)) and not rest:
        return f"stem.conv{int(m.group(1)) + 1}"
    if head in ("final_conv", "linear") and not rest:
        return {"final_conv": "final_conv", "linear": "head.fc"}[head]
    index = _block_index(head)
    if index is not None and index < len(blocks):
        if not rest:
            return blocks[index]
        if rest in _BLOCK_CONVS:
            return f"{blocks[index]}.{_BLOCK_CONVS[rest]}"
        se, _, linear = rest.partition("/~/")
        if se == "squeeze_excite" and linear in _SE_LINEARS:
            return f"{blocks[index]}.{_SE_LINEARS[linear]}"
    raise CheckpointError(f"unexpected Haiku module {_ROOT}{module}: not part of an NFNet of this depth")


def _to_torch(param: str, value: np.ndarray, shape: torch.Size) -> torch.Tensor:
    """One Haiku parameter in PyTorch layout, checked against the target's ``shape``."""
    if param == "w" and value.ndim == 4:  # conv, HWIO -> OIHW
        value = value.transpose(3, 2, 0, 1)
    elif param == "w" and value.ndim == 2:  # linear, (in, out) -> (out, in)[, 1, 1]
        value = value.T
    if param in ("w", "b", "bias") and value.ndim == 2 and len(shape) == 4:
        value = value[:, :, None, None]
    elif param in ("gain", "skip_gain") and value.size == shape.numel():
        value = value.reshape(shape)  # gain (O,) -> (O, 1, 1, 1); skip_gain () or (1,)
    if tuple(value.shape) != tuple(shape):
        raise CheckpointError(f"shape {tuple(value.shape)} does not match the model's {tuple(shape)}")
    return torch.from_numpy(value.astype(np.float32, order="C", copy=True))


_PARAM_NAMES = {"w": "weight", "b": "bias", "bias": "bias", "gain": "gain"}


def haiku_to_state_dict(tree: HaikuTree, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map DeepMind's Haiku tree onto ``model`` (an nfzoo NFNet), checking every shape.

    Raises :class:`CheckpointError` when the tree is for another NFNet variant (other stage
    depths) or holds modules or shapes the model does not have.
    """
    blocks = _block_names(model)
    depths, want = _stage_depths(tree), tuple(len(s) for s in model.stages)
    if depths != want:
        raise CheckpointError(
            f"the Haiku weights have stage depths {depths}, the model {type(model).__name__} has {want}: "
            "they are for another NFNet variant (F0 is (1, 2, 6, 3), F1 (2, 4, 12, 6), ...).")
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for module, params in tree.items():
        if not module.startswith(_ROOT):
            raise CheckpointError(f"unexpected Haiku module {module!r} (outside {_ROOT})")
        name = _target_name(module[len(_ROOT):], blocks)
        for param, value in params.items():
            key = f"{name}.skipinit_gain" if param == "skip_gain" else f"{name}.{_PARAM_NAMES.get(param, param)}"
            if key not in target:
                raise CheckpointError(f"{module}/{param} maps to {key}, which the model does not have")
            try:
                out[key] = _to_torch(param, value, target[key].shape)
            except CheckpointError as e:
                raise CheckpointError(f"{module}/{param} -> {key}: {e}") from None
    return out
