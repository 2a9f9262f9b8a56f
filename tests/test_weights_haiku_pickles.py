"""The restricted Haiku unpickler: Haiku's and dill's containers and references read as plain
data, resource bombs and malformed files answered with CheckpointError, the allowlist pinned.

The synthetic pickles name their globals as Haiku and dill write them: Haiku's mappings are
classes of ``haiku._src.data_structures`` reduced to ``(FlatMapping, (dict,))`` or
``(frozendict, (dict,))``; dill pickles importable classes by reference (as pickle does) and
numpy's C functions as ``dill._dill._get_attr(dill._dill._import_module(module), name)``.
Stand-ins with those module and class names are registered only while the pickles are written.
"""
import codecs
import collections
import pickle
import random
import re
import struct
import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from numpy._core.multiarray import _reconstruct

from haiku_nfnet import make_tree
from nfzoo.weights import CheckpointError
from nfzoo.weights.haiku import _ArraysOnlyUnpickler, haiku_to_state_dict, load_haiku_params
from pickle_helpers import CALLS, Call, opcode_streams, peak_bytes, record
from test_weights_haiku import DEPTHS, GROUP_WIDTH, WIDTHS, small_nfnet

HAIKU = "haiku._src.data_structures"


@pytest.fixture(scope="module")
def tree():
    return make_tree(DEPTHS, WIDTHS, GROUP_WIDTH, num_classes=10)


def _stand_in(module: str, name: str, reduce=None):
    """A class (or function) named ``module.name`` that pickle can reference, with ``reduce``."""
    cls = type(name, (dict,), {"__reduce__": reduce} if reduce else {})
    cls.__module__, cls.__qualname__ = module, name
    return cls


@pytest.fixture
def haiku_names(monkeypatch):
    """``haiku._src.data_structures.FlatMapping`` / ``frozendict`` and ``dill._dill._get_attr`` /
    ``_import_module`` as importable stand-ins (no Haiku or dill is imported)."""
    names = {}
    for package in ("haiku", "haiku._src", HAIKU, "dill", "dill._dill"):
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    for name in ("FlatMapping", "frozendict"):
        cls = _stand_in(HAIKU, name, lambda self: (type(self), (dict(self),)))
        setattr(sys.modules[HAIKU], name, cls)
        names[name] = cls

    def _import_module(name):
        return types.ModuleType(name)

    def _get_attr(module, name):
        return getattr(module, name)

    for fn in (_import_module, _get_attr):
        fn.__module__, fn.__qualname__ = "dill._dill", fn.__name__
        setattr(sys.modules["dill._dill"], fn.__name__, fn)
        names[fn.__name__] = fn
    return names


def _convert(tree):
    model = small_nfnet()
    return haiku_to_state_dict(tree, model)


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("container", ["FlatMapping", "frozendict"])
def test_nested_haiku_mappings_convert_like_the_plain_dict(tree, tmp_path, haiku_names, container):
    cls = haiku_names[container]
    wrapped = cls({module: cls(params) for module, params in tree.items()})
    path = tmp_path / "F_haiku.npz"
    path.write_bytes(pickle.dumps(wrapped, protocol=4))
    assert f"{HAIKU}".encode() in path.read_bytes() and container.encode() in path.read_bytes()
    loaded = load_haiku_params(path)
    assert type(loaded) is dict and all(type(v) is dict for v in loaded.values())
    _assert_same_state(_convert(loaded), _convert(tree))


def test_ordered_dicts_convert_like_the_plain_dict(tree, tmp_path):
    wrapped = collections.OrderedDict((m, collections.OrderedDict(p)) for m, p in tree.items())
    path = tmp_path / "F_haiku.npz"
    path.write_bytes(pickle.dumps(wrapped, protocol=2))
    assert b"collections\nOrderedDict" in path.read_bytes()
    _assert_same_state(_convert(load_haiku_params(path)), _convert(tree))


class _DillStylePickler(pickle.Pickler):
    """Writes numpy's C functions the way dill does (``_get_attr(_import_module(m), name)``)."""

    def __init__(self, file, names, numpy_core="numpy._core"):
        super().__init__(file, protocol=4)
        self.names, self.numpy_core = names, numpy_core  # numpy 1.x (2021) named it numpy.core

    def reducer_override(self, obj):
        if isinstance(obj, types.BuiltinFunctionType) and isinstance(obj.__self__, types.ModuleType) \
                and obj.__self__.__name__.startswith("numpy"):
            name = obj.__self__.__name__.replace("numpy._core", self.numpy_core)
            module = _ModuleRef(name, self.names["_import_module"])
            return self.names["_get_attr"], (module, obj.__name__)
        return NotImplemented


class _ModuleRef:
    def __init__(self, name, import_module):
        self.name, self.import_module = name, import_module

    def __reduce__(self):
        return self.import_module, (self.name,)


@pytest.mark.parametrize("numpy_core", ["numpy._core", "numpy.core"])
def test_a_dill_written_tree_of_flatmappings_converts(tree, tmp_path, haiku_names, numpy_core):
    cls = haiku_names["FlatMapping"]
    wrapped = cls({module: cls(params) for module, params in tree.items()})
    path = tmp_path / "F_haiku.npz"
    with open(path, "wb") as f:
        _DillStylePickler(f, haiku_names, numpy_core).dump(wrapped)
    data = path.read_bytes()
    assert b"dill._dill" in data and b"_get_attr" in data and f"{numpy_core}._multiarray_umath".encode() in data
    _assert_same_state(_convert(load_haiku_params(path)), _convert(tree))


def test_dill_get_attr_reaches_only_the_allowed_numpy_functions(tmp_path, haiku_names):
    class Evil:
        def __reduce__(self):
            return haiku_names["_get_attr"], (_ModuleRef("os", haiku_names["_import_module"]), "system")

    path = tmp_path / "F_haiku.npz"
    path.write_bytes(pickle.dumps({"NFNet/~/linear": {"w": Evil()}}, protocol=4))
    with pytest.raises(CheckpointError, match="refusing to load global os.system"):
        load_haiku_params(path)


class _Encode:
    def __init__(self, text):
        self.text = text

    def __reduce__(self):
        return codecs.encode, (self.text, "latin1")


def test_reusing_one_string_for_many_encodes_is_bounded_by_the_file_size(tmp_path):
    text = "x" * (1 << 20)
    path = tmp_path / "F_haiku.npz"
    path.write_bytes(pickle.dumps({"NFNet/~/linear": [_Encode(text) for _ in range(64)]}, protocol=2))
    assert path.stat().st_size < 2 << 20  # 1 MiB on disk asks for 64 MiB
    with pytest.raises(CheckpointError, match="more memory than its own size"):
        load_haiku_params(path)


class _Call:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("bomb", [
    _Call(np.ndarray, (10 ** 12,)),
    _Call(np.ndarray, (10 ** 5, 10 ** 5), "f8"),
    _Call(_reconstruct, np.ndarray, (10 ** 12,), b"b"),
], ids=["ndarray", "ndarray-2d", "_reconstruct"])
def test_an_array_larger_than_the_file_is_refused_before_it_is_allocated(tmp_path, bomb):
    path = tmp_path / "F_haiku.npz"
    path.write_bytes(pickle.dumps({"NFNet/~/linear": {"w": bomb}}, protocol=4))
    with pytest.raises(CheckpointError, match="more memory than its own size"):
        load_haiku_params(path)


@pytest.mark.parametrize("tree", [
    {1: {"w": np.zeros(2, np.float32)}},
    {"NFNet/~/linear": {2: np.zeros(2, np.float32)}},
    {"NFNet/~/linear": {"w": [1.0, 2.0]}},
    {"NFNet/~/linear": {"w": np.array([object()], dtype=object)}},
    ["NFNet/~/linear"],
], ids=["int-module", "int-param", "list-leaf", "object-array", "list"])
def test_a_malformed_tree_is_a_checkpoint_error(tmp_path, tree):
    path = tmp_path / "F_haiku.npz"
    path.write_bytes(pickle.dumps(tree, protocol=4))
    with pytest.raises(CheckpointError):
        load_haiku_params(path)


def test_every_damaged_variant_of_a_release_is_a_checkpoint_error(tmp_path):
    """Truncations and byte flips anywhere: each loads or raises CheckpointError, nothing else."""
    good = pickle.dumps(make_tree((1, 1, 1, 1), (16, 32, 32, 32), 8, num_classes=4), protocol=2)
    rng = random.Random(0)
    path = tmp_path / "F_haiku.npz"
    for i in range(150):
        data = bytearray(good)
        if i % 3 == 0:
            data = data[:rng.randrange(len(data))]
        else:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            load_haiku_params(path)
        except CheckpointError:
            pass


def test_the_allowlist_is_exactly_numpy_codecs_haiku_mappings_and_dill_references(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with open(path, "rb") as f:
        allowed = set(_ArraysOnlyUnpickler(f, 0)._allowed)
    numpy_functions = {(f"{core}.{module}", name) for core in ("numpy.core", "numpy._core")
                       for module in ("multiarray", "_multiarray_umath") for name in ("_reconstruct", "scalar")}
    assert allowed == numpy_functions | {
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        (HAIKU, "FlatMapping"), (HAIKU, "frozendict"), ("collections", "OrderedDict"),
        ("dill._dill", "_import_module"), ("dill._dill", "_get_attr"),
    }


def _bound(size):
    """What reading a file of ``size`` bytes may allocate: the budget for what the allowed
    globals build (twice the size, plus 1 MiB), and the pickle's own objects (a few times the size)."""
    return 2 * size + (1 << 20) + 32 * size


def _refused_within(path, bound):
    """load_haiku_params(path) raises the budget's CheckpointError, peaking under ``bound`` bytes."""
    refused, peak = peak_bytes(load_haiku_params, path)
    assert isinstance(refused, CheckpointError) and "more memory than its own size" in str(refused), refused
    assert peak < bound


def _unrestricted_peak(path):
    return peak_bytes(lambda: pickle.loads(path.read_bytes()))[1]


def test_a_void_scalar_without_data_is_charged_its_itemsize(tmp_path):
    path = tmp_path / "F_haiku.npz"
    path.write_bytes(b"\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nX\x09\x00\x00\x00V16777216\x85R\x85R.")
    assert _unrestricted_peak(path) >= 16 << 20  # a 65-byte file
    _refused_within(path, _bound(path.stat().st_size))


def test_copies_of_one_mapping_are_charged_each(tmp_path, haiku_names):
    params = {f"p{i}": 1.0 for i in range(2000)}
    path = tmp_path / "F_haiku.npz"
    path.write_bytes(pickle.dumps({"NFNet/~/linear": [Call(haiku_names["FlatMapping"], params) for _ in range(300)]}))
    assert _unrestricted_peak(path) > 10 * path.stat().st_size
    _refused_within(path, _bound(path.stat().st_size))


@pytest.mark.parametrize("dtype", ["<f4", ">f4"], ids=["shared", "byte-swapped"])
def test_array_states_sharing_one_bytes_object_are_charged_each(tmp_path, dtype):
    raw = bytes(1 << 19)
    arrays = [Call(_reconstruct, np.ndarray, (0,), b"b", state=(1, (1 << 17,), np.dtype(dtype), False, raw))
              for _ in range(64)]
    path = tmp_path / "F_haiku.npz"
    path.write_bytes(pickle.dumps({"NFNet/~/linear": arrays}, protocol=4))
    assert path.stat().st_size < 2 * len(raw)
    if dtype == ">f4":  # numpy copies the bytes of each
        assert _unrestricted_peak(path) >= 32 << 20
    _refused_within(path, _bound(path.stat().st_size))


@pytest.mark.parametrize("opcode", [b"T" + struct.pack("<i", 1 << 28), b"B" + struct.pack("<I", 1 << 28),
                                    b"\x96" + struct.pack("<Q", 1 << 28)], ids=["BINSTRING", "BINBYTES", "BYTEARRAY8"])
def test_a_length_beyond_the_end_of_the_file_is_refused_before_it_is_allocated(tmp_path, opcode):
    path = tmp_path / "F_haiku.npz"
    path.write_bytes(b"\x80\x05" + opcode + b"xx.")
    refused, peak = peak_bytes(load_haiku_params, path)
    assert isinstance(refused, CheckpointError) and "truncated" in str(refused), refused
    assert peak < 1 << 20


@pytest.mark.parametrize("name", ["numpy.load", "numpy.lib.format.read_array", "numpy.nfzoo_probe.record"])
def test_an_unlisted_numpy_global_is_refused_and_never_called(tmp_path, monkeypatch, name):
    probe = types.ModuleType("numpy.nfzoo_probe")
    probe.record = record
    monkeypatch.setitem(sys.modules, "numpy.nfzoo_probe", probe)
    module, function = name.rsplit(".", 1)
    path = tmp_path / "F_haiku.npz"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{function}\n".encode() + b"X\x01\x00\x00\x00x\x85R.")
    CALLS.clear()
    with pytest.raises(CheckpointError, match=f"refusing to load global {re.escape(name)}"):
        load_haiku_params(path)
    assert CALLS == []


HAIKU_GLOBALS = [b"numpy._core.multiarray\n_reconstruct", b"numpy.core.multiarray\nscalar", b"numpy\nndarray",
                 b"numpy\ndtype", b"numpy._core.numeric\n_frombuffer", b"_codecs\nencode",
                 b"haiku._src.data_structures\nFlatMapping", b"collections\nOrderedDict", b"dill._dill\n_get_attr",
                 b"dill._dill\n_import_module", b"pickle_helpers\nrecord", b"numpy\nload", b"os\nsystem"]
HAIKU_TEXTS = [b"f4", b">f4", b"V16777216", b"O", b"U4000000", b"latin1", b"NFNet/~/linear", b"w", b"numpy", b"b"]
_DTYPE = b"cnumpy\ndtype\nX\x03\x00\x00\x00>f4\x85R"
HAIKU_SNIPPETS = [
    b"cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nX\x09\x00\x00\x00V16777216\x85R\x85R",
    b"cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R",
    b"(K\x01J\x00\x00\x00\x01\x85" + _DTYPE + b"\x89C\x10" + bytes(16) + b"tb",
    b"cnumpy\nndarray\nJ\x00\x00\x00\x10\x85" + _DTYPE + b"\x86R",
    b"chaiku._src.data_structures\nFlatMapping\n}K\x01K\x02s\x85R", b"cpickle_helpers\nrecord\n)R",
]


@settings(max_examples=1500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=opcode_streams(HAIKU_GLOBALS, HAIKU_TEXTS, HAIKU_SNIPPETS))
def test_any_opcode_stream_is_read_or_refused_within_the_budget_and_runs_nothing(tmp_path, stream):
    path = tmp_path / "F_haiku.npz"
    path.write_bytes(stream)
    result, peak = peak_bytes(load_haiku_params, path)
    assert not isinstance(result, Exception) or isinstance(result, CheckpointError), repr(result)
    assert peak < _bound(len(stream)) + (1 << 18)
    assert CALLS == []
