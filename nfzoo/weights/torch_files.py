"""Reading PyTorch checkpoints without running code from them, in memory bounded by their size.

``torch.load(weights_only=True)`` refuses globals that could run code, but what it allows can
still allocate far more than the file holds: ``builtins.bytearray(2**28)`` in a 1 KB pickle,
a storage whose declared size exceeds its bytes, one string re-encoded thousands of times
through the memo. So :func:`load_torch_file`, the one loader of ``.pth``/``.pth.tar`` files
(training resume, conversion; timm's own ``torch.load`` of a ``file=`` gets the same check
first, see :func:`check_torch_checkpoint`), reads the pickle's opcodes without executing them
(:func:`pickletools.genops`), replays them on plain values and stand-ins, and charges what
each one would allocate to a :class:`~nfzoo.weights.files.AllocationBudget`:

* the objects the pickle builds may take at most ``PICKLE_FACTOR`` bytes per byte of pickle
  read so far, plus ``PICKLE_SLACK`` (a genuine checkpoint needs a small fraction of it);
* every call must be one a checkpoint of tensors and plain values needs (rebuilding a tensor or
  a parameter, ``OrderedDict()``, ``torch.Size``, ``torch.device``, ``set``, ``complex``,
  ``bytearray``, ``_codecs.encode``), and is charged for what it returns before it exists;
* tensor storages must lie in the file: in a zip checkpoint each declared storage fits in its
  own uncompressed member, and the members together fit in the file; in a legacy (pre-1.6)
  file the declared storages fit in the bytes after the pickles.

Anything else raises :class:`CheckpointError`.
"""
from __future__ import annotations

import functools
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
import io
import os
import pickle
import pickletools
import sys
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any, Callable, NamedTuple

import safetensors.torch
import torch
from timm.models import clean_state_dict

from ..errors import CheckpointError
from .files import AllocationBudget, BoundedReader, checkpoint_format, check_readable

__all__ = ["load_torch_file", "load_torch_state_dict", "check_torch_checkpoint", "PICKLE_FACTOR",
           "PICKLE_SLACK"]

PICKLE_FACTOR = 64
PICKLE_SLACK = 1 << 20

# What a stand-in charges for the torch objects it represents: a tensor (its Python object,
# TensorImpl and size/stride vectors), a storage reference, any other small object.
_TENSOR_BYTES = 768
_STORAGE_BYTES = 256
_OBJECT_BYTES = 128
_POINTER = 8
_MEMO_ENTRY = 64


class _Global(NamedTuple):
    """A global the pickle names: a name only, never imported."""
    name: str


class _Built(NamedTuple):
    """What an allowed call would return: its kind, and its length where that matters."""
    kind: str
    length: int = 0


class _Storage(NamedTuple):
    key: str
    nbytes: int


class _ODict(OrderedDict):
    """``collections.OrderedDict()`` as the scan rebuilds it (a real one, so that sizes are real)."""


class _Refused(Exception):
    """The scan met something a checkpoint of tensors and plain values does not hold."""


@functools.cache
def _storage_itemsizes() -> dict[str, int]:
    """``torch.FloatStorage`` ... -> bytes per element, as torch's persistent ids name them."""
    sizes = {"torch.UntypedStorage": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage's deprecation warning
        for name in dir(torch):
            cls = getattr(torch, name)
            if name.endswith("Storage") and isinstance(getattr(cls, "dtype", None), torch.dtype):
                sizes[f"torch.{name}"] = cls.dtype.itemsize
    return sizes


@functools.cache
def _dtype_names() -> frozenset[str]:
    return frozenset(str(t) for t in vars(torch).values() if isinstance(t, torch.dtype))


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(n) is int and n >= 0 for n in value):
        raise _Refused(f"{what} that is not a tuple of non-negative ints")
    return value


def _rebuild_tensor(budget: AllocationBudget, storage: Any, offset: Any, size: Any, stride: Any,
                    *rest: Any) -> _Built:
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
        raise _Refused("a tensor is rebuilt from something other than a stored storage")
    size, stride = _ints(size, "a tensor's size"), _ints(stride, "a tensor's stride")
    if len(size) != len(stride):
        raise _Refused("a tensor whose size and stride differ in length")
    budget.charge(_TENSOR_BYTES + 2 * _POINTER * len(size), "a tensor")
    return _Built("tensor")


def _rebuild_parameter(budget: AllocationBudget, data: Any, requires_grad: Any, hooks: Any) -> _Built:
    if not (isinstance(data, _Built) and data.kind == "tensor"):
        raise _Refused("a parameter is rebuilt from something other than a tensor")
    budget.charge(_TENSOR_BYTES, "a parameter")
    return _Built("tensor")


def _ordered_dict(budget: AllocationBudget, *args: Any) -> _ODict:
    if args:
        raise _Refused("collections.OrderedDict with arguments (torch.save fills it item by item)")
    result = _ODict()
    budget.charge(sys.getsizeof(result), "an OrderedDict")
    return result


def _length(value: Any) -> int:
    if isinstance(value, (str, bytes, tuple, list, dict, set)):
        return len(value)
    if isinstance(value, _Built) and value.kind == "bytes":
        return value.length
    raise _Refused(f"an argument of type {type(value).__name__} where a sequence is expected")


def _bytearray(budget: AllocationBudget, source: Any = b"", *encoding: Any) -> _Built:
    n = source if type(source) is int else _length(source)
    if n < 0:
        raise _Refused("bytearray of negative size")
    budget.charge(n + _OBJECT_BYTES, f"builtins.bytearray of {n} bytes")
    return _Built("bytes", n)


def _encode(budget: AllocationBudget, text: Any, encoding: Any = "utf-8", *errors: Any) -> _Built:
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise _Refused("_codecs.encode of something other than a string")
    budget.charge(4 * len(text) + _OBJECT_BYTES, f"_codecs.encode of {len(text)} characters")
    return _Built("bytes", 4 * len(text))


def _sized(kind: str, per_item: int) -> Callable[..., _Built]:
    """A call that copies its one (optional) iterable argument: ``set``, ``torch.Size``."""
    def call(budget: AllocationBudget, *args: Any) -> _Built:
        if len(args) > 1:
            raise _Refused(f"{kind} with more than one argument")
        n = _length(args[0]) if args else 0
        budget.charge(_OBJECT_BYTES + per_item * n, f"{kind} of {n} items")
        return _Built(kind, n)
    return call


def _small(kind: str, max_args: int) -> Callable[..., _Built]:
    """A call with a few scalar arguments: ``complex``, ``torch.device``, ``_get_layout``."""
    def call(budget: AllocationBudget, *args: Any) -> _Built:
        if len(args) > max_args or not all(isinstance(a, (int, float, str)) for a in args):
            raise _Refused(f"{kind} with arguments other than at most {max_args} numbers or strings")
        budget.charge(_OBJECT_BYTES, kind)
        return _Built(kind)
    return call


# The calls a checkpoint of tensors and plain values makes, each charged for what it returns.
_CALLS: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "collections.OrderedDict": _ordered_dict,
    "builtins.bytearray": _bytearray,
    "_codecs.encode": _encode,
    "builtins.set": _sized("set", 64),
    "torch.Size": _sized("torch.Size", 2 * _POINTER),
    "builtins.complex": _small("complex", 2),
    "torch.device": _small("torch.device", 2),
    "torch.serialization._get_layout": _small("layout", 1),
}


class _Scan:
    """Replays one or more pickles (consecutive in ``stream``) with torch's weights-only opcodes."""

    def __init__(self, stream: IO[bytes], budget: AllocationBudget, storage_bytes: Callable[[str], int]):
        self.stream, self.budget, self.storage_bytes = stream, budget, storage_bytes
        self.storages: dict[str, int] = {}  # key -> declared bytes, each key once

    def charge_new(self, value: Any, what: str) -> Any:
        """Charge a new value pushed on the stack (Python shares ``()``, ``None``, booleans and
        small ints, so those cost a reference only)."""
        shared = value is None or value == () or type(value) is bool or (type(value) is int and -5 <= value <= 256)
        self.budget.charge(_POINTER if shared else sys.getsizeof(value) + _POINTER, what)
        return value

    def pickle(self) -> None:
        """Scan one pickle, up to and including its STOP."""
        stack: list[Any] = []
        marks: list[list[Any]] = []
        memo: dict[int, Any] = {}
        for op, arg, pos in pickletools.genops(self.stream):
            self.budget.position = self.stream.tell()
            name = op.name
            if name in ("PROTO", "STOP"):
                continue
            if name == "GLOBAL":
                stack.append(self.charge_new(_global(*arg.split(" ", 1)), "a global"))
            elif name == "MARK":
                marks.append(stack)
                stack = []
                self.budget.charge(sys.getsizeof(stack) + _POINTER, "a mark")
            elif name in ("TUPLE", "APPENDS", "SETITEMS"):
                items, stack = stack, marks.pop()
                if name == "TUPLE":
                    stack.append(self.charge_new(tuple(items), "a tuple"))
                else:
                    self.extend(stack[-1], items, name)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = tuple(stack[-n:])
                if len(items) != n:
                    raise _Refused(f"a {name} on a stack of {len(stack)} item(s)")
                stack[-n:] = [self.charge_new(items, "a tuple")]
            elif name in ("APPEND", "SETITEM"):
                items = [stack.pop()] if name == "APPEND" else [stack.pop(-2), stack.pop()]
                self.extend(stack[-1], items, name)
            elif name in ("BINPUT", "LONG_BINPUT"):
                self.budget.charge(_MEMO_ENTRY if arg not in memo else 0, "a memo entry")
                memo[arg] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise _Refused(f"a read of memo entry {arg} before it is written")
                self.budget.charge(_POINTER, "a memo reference")
                stack.append(memo[arg])
            elif name == "REDUCE":
                args = stack.pop()
                stack[-1] = self.call(stack[-1], args)
            elif name == "BUILD":
                state = stack.pop()
                if type(stack[-1]) is not _ODict or not isinstance(state, dict):
                    raise _Refused("BUILD of something other than an OrderedDict's attributes")
                self.budget.charge(sys.getsizeof(state), "an OrderedDict's attributes")
            elif name == "BINPERSID":
                stack.append(self.persistent(stack.pop()))
            elif name in _EMPTY:
                stack.append(self.charge_new(_EMPTY[name](), name))
            elif name in _LITERALS:
                stack.append(self.charge_new(arg, name))
            else:  # NEWOBJ and every opcode torch's weights-only unpickler does not read
                raise _Refused(f"the opcode {name}")
        if len(stack) != 1 or marks:
            raise _Refused("other than exactly one object at its end")

    def extend(self, target: Any, items: list[Any], op: str) -> None:
        before = sys.getsizeof(target)
        if type(target) is list and op in ("APPEND", "APPENDS"):
            target.extend(items)
        elif type(target) in (dict, _ODict) and op in ("SETITEM", "SETITEMS") and len(items) % 2 == 0:
            target.update(zip(items[::2], items[1::2]))
        else:
            raise _Refused(f"{op} on a {type(target).__name__}")
        self.budget.charge(max(sys.getsizeof(target) - before, 0) + _POINTER * len(items), op)

    def call(self, func: Any, args: Any) -> Any:
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise _Refused(f"a call of a {type(func).__name__}")
        if func.name not in _CALLS:
            raise _Refused(f"a call of {func.name}")
        try:
            return _CALLS[func.name](self.budget, *args)
        except TypeError as e:
            raise _Refused(f"{func.name} with arguments of types {[type(a).__name__ for a in args]}") from e

    def persistent(self, pid: Any) -> _Storage:
        """``('storage', storage_type, key, location, numel[, view])``: a tensor storage."""
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _Global) and pid[1].name in _storage_itemsizes()
                and isinstance(pid[2], str) and type(pid[4]) is int and pid[4] >= 0):
            raise _Refused("a persistent id other than a storage's")
        key, nbytes = pid[2], pid[4] * _storage_itemsizes()[pid[1].name]
        if key not in self.storages:
            available = self.storage_bytes(key)
            if nbytes > available:
                raise _Refused(f"a storage ({key}) declaring {nbytes} bytes where the file holds {available} for it")
            self.storages[key] = nbytes
        self.budget.charge(_STORAGE_BYTES, "a storage")
        return _Storage(key, nbytes)


_EMPTY: dict[str, Callable[[], Any]] = {
    "NONE": lambda: None, "NEWTRUE": lambda: True, "NEWFALSE": lambda: False,
    "EMPTY_TUPLE": tuple, "EMPTY_LIST": list, "EMPTY_DICT": dict, "EMPTY_SET": set,
}
# Opcodes whose argument (as pickletools reads it) is the value they push.
_LITERALS = frozenset({"BININT", "BININT1", "BININT2", "BINFLOAT", "LONG1", "BINUNICODE", "SHORT_BINSTRING"})


def _global(module: str, name: str) -> _Global:
    """A global as torch's unpickler reads it: Python 2 names (protocol 2) mapped as pickle maps them."""
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    name = f"{IMPORT_MAPPING.get(module, module)}.{name}"
    if name in _CALLS or name in _storage_itemsizes() or name in _dtype_names():
        return _Global(name)
    raise _Refused(f"the global {name}")


def _scan_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()  # stored, and fitting in the file together (check_readable)
        prefix = members[0].filename.split("/", 1)[0] if members else ""
        sizes = {m.filename: m.file_size for m in members}
        if f"{prefix}/data.pkl" not in sizes:
            raise zipfile.BadZipFile("no data.pkl member")
        data = archive.read(f"{prefix}/data.pkl")
    _Scan(io.BytesIO(data), AllocationBudget(PICKLE_SLACK, PICKLE_FACTOR),
          lambda key: sizes.get(f"{prefix}/data/{key}", 0)).pickle()


def _scan_legacy(path: Path) -> None:
    """The pre-1.6 format: pickles of the magic number, protocol version, system info, the
    object, the storage keys; then each storage as an 8-byte count and its bytes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        reader = BoundedReader(f, size)
        scan = _Scan(reader, AllocationBudget(PICKLE_SLACK, PICKLE_FACTOR), lambda key: size)
        for _ in range(5):
            scan.pickle()
        data_bytes = size - reader.tell()
    declared = sum(scan.storages.values()) + _POINTER * len(scan.storages)
    if declared > data_bytes:
        raise _Refused(f"storages declaring {declared} bytes where the file holds {data_bytes} after its pickles")


def check_torch_checkpoint(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a complete checkpoint file (see
    :func:`~nfzoo.weights.files.check_readable`) whose pickle, if it has one, loads with
    ``torch.load(weights_only=True)`` in memory bounded by the file's size (see the module's
    docstring). Nothing in the file is executed; a safetensors file needs no scan."""
    check_readable(path)
    path = Path(path)
    fmt = checkpoint_format(path)
    if fmt == "safetensors":
        return
    try:
        _scan_zip(path) if fmt == "zip" else _scan_legacy(path)
    except _Refused as e:
        raise CheckpointError(
            f"{path}: refused before loading: its pickle holds {e}, which a checkpoint of tensors and plain "
            "values does not (loading it could run code from the file or exhaust memory); it is damaged or "
            "crafted, so do not load it.") from None
    except AllocationBudget.Exceeded as e:
        raise CheckpointError(f"{path}: refused before loading: {e}; it is damaged or crafted, so do not "
                              "load it.") from None
    except (ValueError, TypeError, EOFError, KeyError, IndexError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e}); "
            "it is truncated, damaged or not a checkpoint.") from None


def load_torch_file(path: str | os.PathLike) -> Any:
    """What ``torch.save`` wrote to ``path``, on the CPU, checked by :func:`check_torch_checkpoint`
    first and loaded with ``torch.load(weights_only=True)``: no code from the file runs, and
    what it allocates is bounded by its size. Raises :class:`CheckpointError` otherwise."""
    check_torch_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain values, so it was not loaded (loading "
            f"it could run code from the file): {str(e).splitlines()[0]}") from e
    except (EOFError, RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{path} is damaged or not a PyTorch checkpoint ({type(e).__name__}: {e}).") from e


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pth.tar``/``.safetensors`` file, loaded by
    :func:`load_torch_file` (safetensors: by safetensors, after the same check): a
    ``state_dict`` or ``model`` entry is unwrapped and DataParallel's ``module.`` prefix dropped."""
    if checkpoint_format(Path(path)) == "safetensors":
        check_torch_checkpoint(path)
        checkpoint = safetensors.torch.load_file(path)
    else:
        checkpoint = load_torch_file(path)
    if isinstance(checkpoint, dict):
        checkpoint = next((checkpoint[k] for k in ("state_dict", "model") if k in checkpoint), checkpoint)
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors.")
    return clean_state_dict(checkpoint)

