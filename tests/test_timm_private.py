"""The private timm API nfzoo relies on (nfzoo/timm_private.py), pinned by behaviour: a timm
upgrade that changes any of it fails here, naming the function to update."""
import warnings

import pytest
import timm
from timm.models import get_arch_pretrained_cfgs, register_model

from nfzoo import timm_private

HINT = "timm's private API changed: update nfzoo/timm_private.py ({})"


def test_unregister_model_removes_every_trace():
    def nfzoo_probe_net(pretrained=False, **kwargs):
        raise AssertionError("never built")
    register_model(nfzoo_probe_net)
    try:
        assert timm.is_model("nfzoo_probe_net")
        timm_private.unregister_model("nfzoo_probe_net")
        assert not timm.is_model("nfzoo_probe_net"), HINT.format("unregister_model")
        assert "nfzoo_probe_net" not in timm.list_models(), HINT.format("unregister_model")
        assert not get_arch_pretrained_cfgs("nfzoo_probe_net"), HINT.format("unregister_model")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # registering again must not warn about an overwrite
            register_model(nfzoo_probe_net)
    finally:
        timm_private.unregister_model("nfzoo_probe_net")


@pytest.mark.parametrize("cfg, expected", [
    ({"hf_hub_id": "owner/repo", "source": "hf-hub"}, ("hf-hub", "owner/repo")),
    ({"hf_hub_id": "owner/repo", "url": "https://host/w.pth"}, ("hf-hub", "owner/repo")),
    ({"url": "https://host/w.pth"}, ("url", "https://host/w.pth")),
    ({"file": "/data/w.pth", "hf_hub_id": "owner/repo"}, ("file", "/data/w.pth")),
    ({}, ("", "")),
])
def test_pretrained_source(cfg, expected):
    assert timm_private.pretrained_source(cfg) == expected, HINT.format("pretrained_source")


def test_hf_split():
    assert timm_private.hf_split("owner/repo@v1.0") == ("owner/repo", "v1.0"), HINT.format("hf_split")
    assert timm_private.hf_split("owner/repo") == ("owner/repo", None), HINT.format("hf_split")


@pytest.mark.parametrize("indices, expected", [
    (None, ([0, 1, 2, 3, 4], 4)),
    (2, ([3, 4], 4)),
    ([0, -1], ([0, 4], 4)),
    ((1, 2), ([1, 2], 2)),
])
def test_feature_take_indices(indices, expected):
    assert timm_private.feature_take_indices(5, indices) == expected, HINT.format("feature_take_indices")


def test_save_config_for_hf_writes_the_config_of_save_for_hf(tmp_path):
    import nfzoo  # noqa: F401  (nfnet_mini)

    model = timm.create_model("nfnet_mini")
    timm.models.save_for_hf(model, tmp_path / "timm", safe_serialization=True)
    timm_private.save_config_for_hf(model, tmp_path / "config.json")
    written = (tmp_path / "timm" / "config.json").read_text()
    assert (tmp_path / "config.json").read_text() == written, HINT.format("save_config_for_hf")
