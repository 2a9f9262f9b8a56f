"""hubconf.py: every zoo model through torch.hub.load(source='local')."""
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import nfzoo
from hub_cache import add_to_hf_cache

REPO_DIR = str(Path(__file__).resolve().parents[1])


@pytest.fixture
def github_checkout(monkeypatch):
    """torch.hub.list/help take only GitHub names: serve this checkout as the downloaded repo."""
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: REPO_DIR)
    return "owner/nfzoo"


def test_list_names_every_zoo_model_and_nothing_else(github_checkout):
    assert torch.hub.list(github_checkout) == sorted(nfzoo.ZOO_MODELS)


def test_help_gives_the_family_docstring_and_the_tags(github_checkout):
    text = torch.hub.help(github_checkout, "nfnet_f0")
    assert text.startswith(timm.models.model_entrypoint("nfnet_f0").__doc__.strip())
    assert "Pretrained tags: dm_in1k (default dm_in1k)." in text


def test_every_model_loads_without_weights():
    """Built on the meta device: the structure, without allocating or initialising 6 G parameters."""
    with torch.device("meta"):
        for name in sorted(nfzoo.ZOO_MODELS):
            model = torch.hub.load(REPO_DIR, name, source="local", pretrained=False, num_classes=7)
            assert model.pretrained_cfg["architecture"] == f"nfzoo_{name}"
            assert model.get_classifier().out_features == 7


def test_pretrained_model_loads_from_the_offline_cache(hf_cache, tmp_path):
    weights = timm.create_model("resnet50_gn_ws").state_dict()
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(weights, path)
    add_to_hf_cache(hf_cache, "nfzoo/resnet50_gn_ws.jhu_in1k", {"model.safetensors": path})
    model = torch.hub.load(REPO_DIR, "resnet50_gn_ws", source="local", pretrained=True,
                           pretrained_cfg_overlay=dict(hf_hub_id="nfzoo/resnet50_gn_ws.jhu_in1k"))
    torch.testing.assert_close(model.state_dict(), weights)


def test_pretrained_without_cached_weights_fails_offline(hf_cache):
    with pytest.raises(OSError, match="resnet50_gn_ws|nfzoo/resnet50_gn_ws.jhu_in1k"):
        torch.hub.load(REPO_DIR, "resnet50_gn_ws", source="local", pretrained=True,
                       pretrained_cfg_overlay=dict(hf_hub_id="nfzoo/resnet50_gn_ws.jhu_in1k"))
