"""PyTorch checkpoints load in memory bounded by their size, on every load path, and without
running code: the pickle pre-scan of nfzoo.weights.torch_files, then torch.load(weights_only=True)."""
import codecs
import io
import pickle
import random
import re
import struct
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from nfzoo.evaluation.model_setup import create_model
from nfzoo.train.run_state import load_checkpoint, rng_state
from nfzoo.weights import CheckpointError
from nfzoo.weights import torch_files
from nfzoo.weights.torch_files import PICKLE_FACTOR, PICKLE_SLACK, load_torch_file, load_torch_state_dict
from nfzoo.weights.convert import convert
from pickle_helpers import CALLS, Call, opcode_streams, peak_bytes, record
from test_weights_loading import build

MIB = 1 << 20


def torch_zip(path, data_pkl, members=None, compression=zipfile.ZIP_STORED):
    """A zip checkpoint as torch.save writes it, with ``data_pkl`` as its pickle and ``members``
    (``{"data/0": bytes}``) as its storages."""
    buf = io.BytesIO()
    torch.save({}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w", compression) as out:
        prefix = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            if not info.filename.endswith("data.pkl"):
                out.writestr(info.filename, src.read(info))
        out.writestr(f"{prefix}/data.pkl", data_pkl)
        for name, data in (members or {}).items():
            out.writestr(f"{prefix}/{name}", data)
    return path


def _bytearrays(n, count):
    return [Call(bytearray, n) for _ in range(count)]


def _encodes():
    text = "x" * (MIB // 4)
    return [Call(codecs.encode, text, "latin1") for _ in range(128)]


def _sizes():
    dims = tuple(range(20_000))
    return [Call(torch.Size, dims) for _ in range(100)]


def _sets():
    items = list(range(20_000))
    return [Call(set, items) for _ in range(50)]


# Each makes torch.load(weights_only=True) allocate 16 MiB or more, beyond the bound for its size.
BOMBS = {"bytearray": lambda: _bytearrays(4 * MIB, 8), "_codecs.encode": _encodes, "torch.Size": _sizes,
         "set": _sets}


@pytest.mark.parametrize("bomb", BOMBS)
def test_a_pickle_asking_for_more_than_its_size_is_refused_before_it_allocates(tmp_path, bomb):
    path = torch_zip(tmp_path / "last.pth", pickle.dumps(BOMBS[bomb](), protocol=2))
    _, peak = peak_bytes(lambda: torch.load(path, weights_only=True))  # weights_only alone
    bound = PICKLE_SLACK + PICKLE_FACTOR * path.stat().st_size
    assert peak > max(bound, 16 * MIB)
    refused, peak = peak_bytes(load_torch_file, path)
    assert isinstance(refused, CheckpointError) and "more memory than its own size" in str(refused)
    assert peak < bound


def _convert_ws_pth(path):
    return convert(path, "resnet50_gn_ws", path.parent / "out", source_format="ws-pth")


LOAD_PATHS = {
    "resume": load_checkpoint,
    "nfzoo-validate --checkpoint": lambda path: create_model("resnet18", "checkpoint", path),
    "pretrained_cfg_overlay file=": lambda path: build(pretrained_cfg_overlay=dict(file=str(path))),
    "ws-pth conversion": _convert_ws_pth,
}


@pytest.mark.parametrize("load", LOAD_PATHS)
def test_every_load_path_refuses_the_bomb_before_it_allocates(tmp_path, load):
    path = torch_zip(tmp_path / "last.pth", pickle.dumps(_bytearrays(4 * MIB, 8), protocol=2))
    refused, peak = peak_bytes(LOAD_PATHS[load], path)
    assert isinstance(refused, CheckpointError), refused
    assert "more memory than its own size" in str(refused)
    assert peak < 4 * MIB
    assert not (tmp_path / "out").exists()


def _state():
    """A training checkpoint's kinds of values, every global the scan allows among them."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model[1](model[0](torch.randn(1, 3, 3, 3)).flatten(1)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(), "step": 3,
            "config": {"lr": 0.1, "name": "é", "none": None, "pair": (1, 2.5), "big": 2 ** 70},
            "set": {1, 2}, "complex": complex(1, 2), "bytes": b"abc", "bytearray": bytearray(b"xy"),
            "size": torch.Size([2, 3]), "device": torch.device("cpu"), "param": torch.nn.Parameter(torch.ones(3)),
            "view": torch.arange(10.0)[2:5]}


def _assert_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert type(a) is type(b) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, (dict, list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a.values() if isinstance(a, dict) else a, b.values() if isinstance(b, dict) else b):
            _assert_equal(x, y)
        if isinstance(a, dict):
            assert list(a) == list(b)
    else:
        assert a == b


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_real_checkpoint_loads_as_torch_load_reads_it(tmp_path, zip_format):
    path = tmp_path / "last.pth"
    torch.save(_state(), path, _use_new_zipfile_serialization=zip_format)
    _assert_equal(load_torch_file(path), torch.load(path, weights_only=True))


def test_a_legacy_checkpoint_asking_for_more_than_its_size_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(4), "bomb": _bytearrays(4 * MIB, 8)}, path, _use_new_zipfile_serialization=False)
    refused, peak = peak_bytes(load_torch_file, path)
    assert isinstance(refused, CheckpointError) and "more memory than its own size" in str(refused)
    assert peak < 4 * MIB


@pytest.mark.parametrize("tensors", [1, 2])
def test_legacy_storages_larger_than_the_file_are_refused(tmp_path, tensors):
    """One storage larger than the file; two that each fit but not together."""
    path = tmp_path / "w.pth"
    torch.save({f"w{i}": torch.ones(4) for i in range(tensors)}, path, _use_new_zipfile_serialization=False)
    data, size = path.read_bytes(), path.stat().st_size
    numel = size // 4 * 3 // 5 if tensors == 2 else 1 << 28  # 0.6 of the file each, or 1 GiB
    # each persistent id: ... numel (BININT1 4), view (None), TUPLE, [BINPUT n], BINPERSID
    patched = re.sub(rb"K\x04(N?t(?:q.)?Q)", lambda m: b"J" + struct.pack("<i", numel) + m.group(1), data, flags=re.S)
    assert len(patched) == size + 3 * tensors
    path.write_bytes(patched)
    with pytest.raises(CheckpointError, match=r"declaring \d+ bytes where the file holds \d+"):
        load_torch_file(path)


def _one_tensor_pickle(numel):
    """A zip pickle of ``{"w": tensor}`` whose storage declares ``numel`` floats."""
    buf = io.BytesIO()
    torch.save({"w": torch.ones(1)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        data = z.read(z.namelist()[0].split("/")[0] + "/data.pkl")
    at = data.index(b"cpu") + len(b"cpu") + 2  # past BINPUT n: the numel (BININT1 1)
    assert data[at:at + 2] == b"K\x01"
    return data[:at] + b"J" + struct.pack("<i", numel) + data[at + 2:]


def test_a_storage_declared_larger_than_its_member_is_refused(tmp_path):
    path = torch_zip(tmp_path / "w.pth", _one_tensor_pickle(1 << 26), {"data/0": bytes(4)})
    with pytest.raises(CheckpointError, match=r"storage \(0\) declaring 268435456 bytes where the file holds 4 for it"):
        load_torch_file(path)
    path = torch_zip(tmp_path / "ok.pth", _one_tensor_pickle(1), {"data/0": struct.pack("<f", 2.5)})
    assert load_torch_file(path) == {"w": torch.tensor([2.5])}


def test_a_compressed_member_is_refused_before_it_is_expanded(tmp_path):
    path = torch_zip(tmp_path / "w.pth", _one_tensor_pickle(1 << 24), {"data/0": bytes(1 << 26)},
                     compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < MIB
    with pytest.raises(CheckpointError, match="is compressed"):
        load_torch_file(path)


def test_zip_members_that_overlap_are_refused(tmp_path):
    """Two directory entries for one stored member: each would be read in full."""
    path = torch_zip(tmp_path / "w.pth", _one_tensor_pickle(1 << 18), {"data/0": bytes(1 << 20)})
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    end = data.rindex(b"PK\x05\x06")
    central = data[data.index(b"PK\x01\x02"):end]
    first = next(i for i in infos if i.filename.endswith("data/0"))
    entry_at = central.index(first.filename.encode()) - 46
    entry = central[entry_at:entry_at + 46 + len(first.filename)]
    twin = entry.replace(b"data/0", b"data/1")
    count = len(infos) + 1
    eocd = data[end:end + 22]
    eocd[8:12] = struct.pack("<HH", count, count)
    eocd[12:16] = struct.pack("<I", len(central) + len(twin))
    path.write_bytes(bytes(data[:end] + twin + eocd))
    with zipfile.ZipFile(path) as z:
        assert sum(i.file_size for i in z.infolist()) > path.stat().st_size
    with pytest.raises(CheckpointError, match="members' sizes add up to more than the file"):
        load_torch_file(path)


def test_torch_load_itself_refuses_code_when_the_scan_is_bypassed(tmp_path, monkeypatch):
    """The second layer: the pickle's global is refused by torch.load(weights_only=True)."""
    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(2), "payload": Call(record, "ran")}, path)
    CALLS.clear()
    with pytest.raises(CheckpointError, match="could run code"):
        load_torch_state_dict(path)  # the scan refuses it
    monkeypatch.setattr(torch_files, "_scan_zip", lambda path: None)
    with pytest.raises(CheckpointError, match="could run code"):
        load_torch_state_dict(path)
    assert CALLS == []
    torch.load(path, weights_only=False)  # the payload is real
    assert CALLS == [("ran",)]
    CALLS.clear()


def test_a_state_dict_loads_unwrapped_and_without_the_dataparallel_prefix(tmp_path):
    weights = {"conv.weight": torch.randn(2, 3), "conv.bias": torch.randn(2)}
    path = tmp_path / "w.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 90}, path)
    _assert_equal(load_torch_state_dict(path), weights)


TORCH_GLOBALS = [b"__builtin__\nbytearray", b"builtins\nset", b"collections\nOrderedDict", b"torch\nSize",
                 b"torch._utils\n_rebuild_tensor_v2", b"torch\nFloatStorage", b"_codecs\nencode", b"torch\nTensor",
                 b"torch.nn.parameter\nParameter", b"torch\nfloat32", b"pickle_helpers\nrecord", b"os\nsystem"]
TORCH_TEXTS = [b"storage", b"0", b"cpu", b"latin1"]
_ODICT = b"ccollections\nOrderedDict\n)R"
TORCH_SNIPPETS = [
    b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000"
    b"X\x03\x00\x00\x00cpuK\x04tQK\x00K\x04\x85K\x01\x85\x89" + _ODICT + b"tR",
    b"c__builtin__\nbytearray\nJ\x00\x00\x00\x10\x85R", _ODICT, b"cpickle_helpers\nrecord\n)R",
]


@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=opcode_streams(TORCH_GLOBALS, TORCH_TEXTS, TORCH_SNIPPETS))
def test_any_opcode_stream_is_loaded_or_refused_within_the_bound_and_runs_nothing(tmp_path, stream):
    path = torch_zip(tmp_path / "w.pth", stream, {"data/0": bytes(16)})
    result, peak = peak_bytes(load_torch_file, path)
    assert not isinstance(result, Exception) or isinstance(result, CheckpointError), repr(result)
    assert peak < PICKLE_SLACK + PICKLE_FACTOR * len(stream) + (1 << 18)
    assert CALLS == []


def test_damaged_real_checkpoints_are_loaded_or_refused(tmp_path):
    """Byte flips in a real checkpoint's pickle: loaded, or CheckpointError, nothing else."""
    buf = io.BytesIO()
    torch.save(_state(), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        prefix = z.namelist()[0].split("/")[0]
        good = z.read(f"{prefix}/data.pkl")
        members = {n[len(prefix) + 1:]: z.read(n) for n in z.namelist() if "/data/" in n}
    rng = random.Random(0)
    for i in range(100):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path = torch_zip(tmp_path / f"{i}.pth", bytes(data), members)
        try:
            load_torch_file(path)
        except CheckpointError:
            pass
