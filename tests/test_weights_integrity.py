"""Damaged, mistyped and non-finite weights are refused; evicting a bad cache entry never
deletes a file outside the cache; a digest is compared in full."""
import hashlib
import os
import zipfile

import pytest
import safetensors.torch
import torch

from hub_cache import add_to_hf_cache
from nfzoo.weights import CheckpointError, ChecksumError
from nfzoo.weights.torch_files import load_torch_state_dict
from nfzoo.weights.files import check_sha256
from test_weights_loading import REPO, TinyNet, build, cfg, manifest_entry, weights  # noqa: F401


def _corrupt_body(path):
    """Flip bytes inside the largest stored member's data, leaving the zip directory intact."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 4, start + 12):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_body_corrupted_zip_checkpoint_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(TinyNet().state_dict(), path)
    _corrupt_body(path)
    assert zipfile.is_zipfile(path)  # the directory is intact: only the CRC tells
    with pytest.raises(CheckpointError, match="fails the zip CRC check"):
        load_torch_state_dict(path)
    with pytest.raises(CheckpointError, match="CRC"):
        build(pretrained_cfg_overlay=dict(file=str(path)))


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_a_weight_of_a_dtype_the_parameter_cannot_take_is_refused(tmp_path, dtype):
    state = TinyNet().state_dict()
    state["stem.weight"] = torch.ones_like(state["stem.weight"], dtype=dtype)
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(state, path)
    with pytest.raises(CheckpointError, match=rf"stem.weight \({dtype} for torch.float32\)"):
        build(pretrained_cfg_overlay=dict(file=str(path)))


def test_half_precision_weights_still_load(tmp_path):
    model = TinyNet()
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({k: v.half() for k, v in model.state_dict().items()}, path)
    loaded = build(pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(loaded.stem.weight, model.stem.weight.half().float())


def test_non_finite_values_are_reported(tmp_path):
    state = TinyNet().state_dict()
    state["stem.bias"][:3] = torch.tensor([float("nan"), float("inf"), 0.0])
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(state, path)
    with pytest.raises(CheckpointError, match=r"non-finite.*stem.bias \(2 of 8\)"):
        build(pretrained_cfg_overlay=dict(file=str(path)))


def test_evicting_a_hub_entry_linked_to_a_users_file_keeps_that_file(hf_cache, weights, manifest_entry, tmp_path):
    _, path = weights
    manifest_entry(hf_hub_id=REPO, sha256="0" * 64)
    snapshot = add_to_hf_cache(hf_cache, REPO, {"model.safetensors": path})
    entry = snapshot / "model.safetensors"
    entry.unlink()
    users_file = tmp_path / "mine" / "model.safetensors"
    users_file.parent.mkdir()
    users_file.write_bytes(path.read_bytes())
    os.symlink(users_file, entry)
    with pytest.raises(ChecksumError, match="removed from the cache"):
        build()
    assert users_file.read_bytes() == path.read_bytes()
    assert not entry.is_symlink()


def test_evicting_a_torch_hub_entry_linked_to_a_users_file_keeps_that_file(tmp_path, weights, manifest_entry):
    model, _ = weights
    users_file = tmp_path / "mine.pth"
    torch.save(model.state_dict(), users_file)
    url = "https://example.invalid/tinynet_t-00000000.pth"
    manifest_entry(url=url, sha256="deadbeef")
    cache = tmp_path / "torch_cache"
    cache.mkdir()
    os.symlink(users_file, cache / "tinynet_t-00000000.pth")
    with pytest.raises(ChecksumError, match="removed from the cache"):
        build(pretrained_cfg=cfg(url=url), cache_dir=cache)
    assert users_file.is_file() and list(cache.iterdir()) == []


def test_a_full_digest_is_compared_in_full(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"nfzoo")
    digest = hashlib.sha256(b"nfzoo").hexdigest()
    assert check_sha256(path, digest, "f") == digest
    wrong = digest[:-1] + ("0" if digest[-1] != "0" else "1")  # shares 63 hex digits
    with pytest.raises(ChecksumError):
        check_sha256(path, wrong, "f")
    with pytest.raises(ChecksumError):
        check_sha256(path, digest[:8] + "0" * 56, "f")


def test_evicting_through_a_symlinked_revision_folder_keeps_the_users_files(hf_cache, weights, manifest_entry, tmp_path):
    """The snapshot's revision folder is a symlink to a folder of the user's: nothing in it is removed."""
    _, path = weights
    manifest_entry(hf_hub_id=REPO, sha256="0" * 64)
    snapshot = add_to_hf_cache(hf_cache, REPO, {"model.safetensors": path})
    users = tmp_path / "users_folder"
    users.mkdir()
    (users / "model.safetensors").write_bytes(path.read_bytes())
    for p in snapshot.iterdir():
        p.unlink()
    snapshot.rmdir()
    os.symlink(users, snapshot)
    with pytest.raises(ChecksumError, match="outside the cache folder"):
        build()
    assert (users / "model.safetensors").read_bytes() == path.read_bytes()
