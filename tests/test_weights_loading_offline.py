"""Offline, every pretrained source fails with a message that names the source, the local path
where nfzoo looks for the file, and how to put it there."""
import urllib.error

import pytest
import timm
import torch

import nfzoo  # noqa: F401
from nfzoo.weights import manifest


def _no_network(url, dst, *args, **kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


@pytest.mark.parametrize("name", sorted(manifest()))
def test_offline_failure_names_source_and_expected_local_path(name, hf_cache, tmp_path, monkeypatch):
    entry = manifest()[name]
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    overlay = {}
    if entry.file:  # shipped with the package: pretend it is missing
        overlay = dict(file=str(tmp_path / "gone" / "model.safetensors"))
        source, expected, how = overlay["file"], overlay["file"], "Put the file there"
    elif entry.url:
        source, expected = entry.url, str(tmp_path / "torch_hub" / "checkpoints" / entry.url.rsplit("/", 1)[1])
        how = "curl -L -o"
    else:
        source, expected = entry.hf_hub_id, str(hf_cache / f"models--{entry.hf_hub_id.replace('/', '--')}")
        how = f"`hf download {entry.hf_hub_id}`"
    with pytest.raises(OSError) as info:
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    message = str(info.value)
    assert source in message and expected in message and how in message, message
    assert not list(tmp_path.glob("torch_hub/checkpoints/*"))  # nothing half-downloaded left behind
