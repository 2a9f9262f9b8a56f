"""Pretrained loading through build_zoo_model: manifest sha256 checks, clear errors, clean cache."""
import dataclasses
import hashlib

import pytest
import safetensors.torch
import torch
import torch.nn as nn

from hub_cache import add_to_hf_cache
from nfzoo.models._builder import build_zoo_model
from nfzoo.weights import CheckpointError, ChecksumError, checkpoint, manifest


class TinyNet(nn.Module):
    def __init__(self, num_classes=10, in_chans=3, width=8):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Conv2d(in_chans, width, 3)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.stem(x).mean((2, 3)))


REPO = "nfzoo-test/tinynet.t_in1k"
URL_NAME = "tinynet_t-{}.pth"


def cfg(**overrides):
    return dict(architecture="tinynet", tag="t_in1k", num_classes=10, first_conv="stem", classifier="fc",
                input_size=(3, 8, 8), **overrides)


def build(pretrained=True, **kwargs):
    kwargs.setdefault("pretrained_cfg", cfg(hf_hub_id=REPO))
    return build_zoo_model(TinyNet, "tinynet", pretrained, **kwargs)


@pytest.fixture
def weights(tmp_path):
    model = TinyNet().eval()
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(model.state_dict(), path)
    return model, path


@pytest.fixture
def manifest_entry(monkeypatch):
    """Adds ``tinynet.t_in1k`` to the manifest; call it with the sha256 to record."""
    def add(**fields):
        base = checkpoint("nfnet_f0.dm_in1k")
        entry = dataclasses.replace(base, name="tinynet.t_in1k", **{"hf_hub_id": None, "url": None, **fields})
        entries = {**manifest(), entry.name: entry}
        monkeypatch.setattr("nfzoo.weights.loading.manifest", lambda: entries)
        return entry
    return add


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached_files(cache):
    return sorted(p.name for p in cache.rglob("*") if p.is_file() or p.is_symlink())


def test_hub_weights_matching_the_manifest_load(hf_cache, weights, manifest_entry):
    model, path = weights
    manifest_entry(hf_hub_id=REPO, sha256=sha256(path))
    add_to_hf_cache(hf_cache, REPO, {"model.safetensors": path})
    loaded = build()
    assert loaded.pretrained_cfg["file"].endswith("model.safetensors")
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


def test_hub_weights_with_wrong_sha256_are_refused_and_evicted(hf_cache, weights, manifest_entry):
    _, path = weights
    manifest_entry(hf_hub_id=REPO, sha256="0" * 64)
    add_to_hf_cache(hf_cache, REPO, {"model.safetensors": path})
    with pytest.raises(ChecksumError, match=r"sha256 is [0-9a-f]{64}, but the nfzoo manifest expects sha256 0{64}"):
        build()
    assert cached_files(hf_cache) == ["main"]  # no blob, no snapshot link left


def test_truncated_safetensors_in_the_cache_is_a_clear_error_and_evicted(hf_cache, weights, manifest_entry):
    _, path = weights
    manifest_entry(hf_hub_id=REPO)  # no sha256 recorded: the integrity check still catches it
    path.write_bytes(path.read_bytes()[:-16])
    add_to_hf_cache(hf_cache, REPO, {"model.safetensors": path})
    with pytest.raises(CheckpointError, match="not a complete safetensors file.*truncated") as e:
        build()
    assert not isinstance(e.value, ChecksumError)
    assert cached_files(hf_cache) == ["main"]


def test_truncated_user_file_is_a_clear_error_and_left_alone(weights):
    _, path = weights
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(CheckpointError, match="truncated"):
        build(pretrained_cfg_overlay=dict(file=str(path)))
    assert path.exists()


def test_checkpoint_for_another_model_is_a_clear_error(tmp_path):
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file(TinyNet(width=16).state_dict() | {"extra.weight": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match=r"does not fit tinynet: 1 unexpected keys \(extra.weight\); "
                                              r"2 shape mismatches.*\(stem.bias \(16,\) vs \(8,\), stem.weight"):
        build(pretrained_cfg_overlay=dict(file=str(other)))


def test_other_num_classes_and_in_chans_still_load_the_backbone(weights):
    model, path = weights
    loaded = build(pretrained_cfg_overlay=dict(file=str(path)), num_classes=3, in_chans=1)
    torch.testing.assert_close(loaded.stem.bias, model.stem.bias)
    assert loaded.stem.weight.shape == (8, 1, 3, 3)


@pytest.fixture
def served(tmp_path, weights):
    """The weights as an OpenMMLab-style ``name-<sha256[:8]>.pth`` behind a file:// URL."""
    model, _ = weights
    src = tmp_path / "server" / "w.pth"
    src.parent.mkdir()
    torch.save(model.state_dict(), src)
    named = src.with_name(URL_NAME.format(sha256(src)[:8]))
    src.rename(named)
    return model, named


@pytest.mark.parametrize("good", [True, False])
def test_url_download_is_checked_against_the_sha256_prefix(tmp_path, served, manifest_entry, good):
    model, src = served
    prefix = sha256(src)[:8] if good else "deadbeef"
    url = src.as_uri()
    manifest_entry(url=url, sha256=prefix)
    cache = tmp_path / "torch_cache"
    if good:
        loaded = build(pretrained_cfg=cfg(url=url), cache_dir=cache)
        torch.testing.assert_close(loaded.state_dict(), model.state_dict())
        assert [p.name for p in cache.iterdir()] == [src.name]
    else:
        with pytest.raises(ChecksumError, match="sha256 prefix \\(8 hex digits\\) deadbeef"):
            build(pretrained_cfg=cfg(url=url), cache_dir=cache)
        assert list(cache.iterdir()) == []


def test_corrupt_file_already_in_the_download_cache_is_evicted(tmp_path, served, manifest_entry):
    _, src = served
    url = src.as_uri()
    manifest_entry(url=url, sha256=sha256(src)[:8])
    cache = tmp_path / "torch_cache"
    cache.mkdir()
    (cache / src.name).write_bytes(src.read_bytes()[:100])
    with pytest.raises(ChecksumError, match="removed from the cache"):
        build(pretrained_cfg=cfg(url=url), cache_dir=cache)
    assert list(cache.iterdir()) == []
