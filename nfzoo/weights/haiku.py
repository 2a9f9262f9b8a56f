"""DeepMind's NFNet release (``F0_haiku.npz`` ... ``F6_haiku.npz``) to nfzoo's layout.

Despite the suffix, the release files are pickles (written with dill, February 2021) of a
mapping ``{module_path: {param: ndarray}}``; Haiku's ``init`` then returned its own mapping
types (``haiku._src.data_structures.FlatMapping``, earlier ``frozendict``). Unpickling runs
whatever the file asks for, so :func:`load_haiku_params` uses an unpickler that rebuilds only
dicts (Haiku's mappings and ``OrderedDict`` become plain dicts, without importing Haiku) and
numpy arrays: any other global in the file (``os.system``, ``builtins.eval``, any numpy
function but the few that rebuild arrays, a dill code object ...) is refused before it is
called, and what the file may allocate is bounded by its own size: every array, scalar, bytes
object and mapping copy is charged before it exists, an array's pickled state too (numpy
copies the bytes for a byte-swapped dtype, so one stored bytes object reused by many arrays
would otherwise allocate many times its size).

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
import pickletools
import re
import sys
from typing import IO, Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import CheckpointError
from .files import AllocationBudget, BoundedReader

__all__ = ["load_haiku_params", "haiku_to_state_dict", "HaikuTree"]

HaikuTree = dict[str, dict[str, np.ndarray]]

_ROOT = "NFNet/~/"
_BLOCK = re.compile(r"^nf_block(?:_(\d+))?$")
_BLOCK_CONVS = {"conv0": "conv1", "conv1": "conv2", "conv1b": "conv2b", "conv2": "conv3",
                "conv_shortcut": "downsample.conv"}
_SE_LINEARS = {"linear": "attn_last.fc1", "linear_1": "attn_last.fc2"}

# What a genuine release builds: its arrays once from the bytes the file stores (twice for
# protocol 2, whose bytes are first a latin-1 string), so twice the file's size plus some slack.
_SIZE_FACTOR = 2
_SLACK = 1 << 20


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
    file builds is charged to an :class:`~nfzoo.weights.files.AllocationBudget` of twice the
    file's size. Python's unpickler allocates the length a bytes opcode declares before reading
    the bytes, so :func:`load_haiku_params` first checks, with :func:`pickletools.genops` (which
    runs nothing), that every declared length lies in the file.
    """

    def __init__(self, file: IO[bytes], file_size: int):
        super().__init__(file)
        self.budget = AllocationBudget(_SIZE_FACTOR * file_size + _SLACK)
        self._allowed = self._globals()

    def _globals(self) -> dict[tuple[str, str], Any]:
        from numpy._core import multiarray, numeric  # numpy >= 2; older pickles name numpy.core

        budget = self.budget

        class ChargedArray(np.ndarray):
            """An array whose pickled state (``BUILD``) is charged before numpy sets it."""

            def __setstate__(self, state: Any) -> None:
                if not isinstance(state, tuple) or len(state) not in (4, 5):
                    raise pickle.UnpicklingError("an array's pickled state is not (shape, dtype, order, data)")
                budget.charge(_array_bytes(state[-4], state[-3]), f"an array state of shape {state[-4]!r:.40}")
                super().__setstate__(state)

        def encode(text: str, encoding: str = "latin1") -> bytes:
            """``_codecs.encode`` as protocol-2 pickles use it for bytes, and nothing else."""
            if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
                raise pickle.UnpicklingError("refusing _codecs.encode other than str -> latin1")
            self.budget.charge(len(text), "_codecs.encode")
            return text.encode("latin1")

        def ndarray(shape: Any, dtype: Any = float) -> np.ndarray:
            self.budget.charge(_array_bytes(shape, dtype), f"ndarray{shape!r:.40}")
            return ChargedArray(shape, _safe_dtype(dtype))

        def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
            if subtype is not ndarray:
                raise pickle.UnpicklingError("refusing an array of a type other than numpy.ndarray")
            self.budget.charge(_array_bytes(shape, dtype), f"an array of shape {shape!r:.40}")
            return multiarray._reconstruct(ChargedArray, shape, _safe_dtype(dtype))

        def frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
            self.budget.charge(_array_bytes(shape, dtype), f"an array of shape {shape!r:.40}")
            return numeric._frombuffer(buffer, _safe_dtype(dtype), shape, order).view(ChargedArray)

        def scalar(dtype: Any, *data: Any) -> Any:
            dtype = _safe_dtype(dtype)
            self.budget.charge(dtype.itemsize, f"a scalar of {dtype}")
            return multiarray.scalar(dtype, *data)

        def plain_dict(*args: Any) -> dict:
            if len(args) > 1 or (args and not isinstance(args[0], dict)):
                raise pickle.UnpicklingError("a Haiku mapping is rebuilt from one dict")
            self.budget.charge(sys.getsizeof(args[0]) if args else 0, "a copy of a mapping")
            return dict(*args)

        allowed: dict[tuple[str, str], Any] = {}
        for core in ("numpy.core", "numpy._core"):
            for module in (f"{core}.multiarray", f"{core}._multiarray_umath"):
                allowed[(module, "_reconstruct")] = reconstruct
                allowed[(module, "scalar")] = scalar
            allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
        allowed[("numpy", "ndarray")] = ndarray
        allowed[("numpy", "dtype")] = _safe_dtype
        allowed[("_codecs", "encode")] = encode
        for container in _HAIKU_MAPPINGS:
            allowed[container] = plain_dict
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
            size = os.fstat(f.fileno()).st_size
            for _ in pickletools.genops(BoundedReader(f, size)):
                pass  # every length the pickle declares lies in the file (see _ArraysOnlyUnpickler)
            f.seek(0)
            tree = _ArraysOnlyUnpickler(f, size).load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: not a Haiku weights pickle, refused ({e}).") from e
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001  any other failure of the unpickler is a malformed file
        raise CheckpointError(
            f"{path}: cannot be read as a Haiku weights pickle ({type(e).__name__}: {e}); "
            "the file is truncated or not a DeepMind NFNet release.") from e
    _check_tree(tree, path)
    return {module: {p: v.view(np.ndarray) for p, v in params.items()} for module, params in tree.items()}


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
