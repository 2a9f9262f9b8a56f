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
import sys
import types

import numpy as np
import pytest
import torch
from numpy._core.multiarray import _reconstruct

from haiku_nfnet import make_tree
from nfzoo.weights import CheckpointError
from nfzoo.weights.haiku import _ArraysOnlyUnpickler, haiku_to_state_dict, load_haiku_params
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
