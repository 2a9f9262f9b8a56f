"""NF-ResNet-152/200/288: DeepMind's architecture, sizes, naming policy and interface."""
import pytest
import timm
import torch
import torch.nn as nn
from torchvision.models.resnet import Bottleneck, ResNet

import nfzoo  # noqa: F401  (registers the models)
from _nf_reference import nf_resnet_logits
from nfzoo.models._checkpoint_filter import checkpoint_filter_fn
from nfzoo.models.nf_resnet import nf_resnet_cfg
from nfzoo.models.nfnet import NFNet

DEPTHS = {"nf_resnet152": (3, 8, 36, 3), "nf_resnet200": (3, 24, 36, 3), "nf_resnet288": (24, 24, 24, 24)}


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_size_is_torchvisions_resnet_with_gains_for_norms(name):
    """Each BN of torchvision's ResNet becomes a conv bias + gain (same count); the stem conv has
    a gain but no bias (-64), and every block has a skip gain."""
    with torch.device("meta"):
        ours = timm.create_model(name)
        theirs = ResNet(Bottleneck, list(DEPTHS[name]))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(theirs) - 64 + sum(DEPTHS[name])
    assert [i["num_chs"] for i in ours.feature_info] == [64, 256, 512, 1024, 2048]
    assert [i["reduction"] for i in ours.feature_info] == [2, 4, 8, 16, 32]


def test_timm_names_with_weights_are_not_replaced():
    with_weights = {n.split(".")[0] for n in timm.list_models(pretrained=True)}
    assert not set(DEPTHS) & with_weights
    assert timm.models.model_entrypoint("nf_resnet50").__module__ == "timm.models.nfnet"
    assert {"nf_resnet152", "nf_resnet200", "nf_resnet288"} <= set(timm.list_models("nf_resnet*"))


@torch.no_grad()
def test_forward_is_deepminds_equations():
    """A shallow NF-ResNet (same block, stem and head as the registered ones) against the
    reference of DeepMind's nf_resnet.py, random weights with every parameter perturbed."""
    depths = (2, 1, 2, 1)
    model = NFNet(nf_resnet_cfg(depths)).eval()
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=gen) * (0.5 if v.ndim == 0 else 0.1) + k.endswith(".gain")
          for k, v in model.state_dict().items()}
    model.load_state_dict(checkpoint_filter_fn(sd, model))
    x = torch.randn(2, 3, 45, 38, generator=gen)
    expected = nf_resnet_logits(x, sd, depths)
    assert (model(x) - expected).abs().max() < 1e-4 * expected.abs().max()


def test_interface():
    model = timm.create_model("nf_resnet152", features_only=True, out_indices=(1, 4), pretrained=False).eval()
    assert model.feature_info.channels() == [256, 2048]
    with torch.no_grad():
        assert [f.shape[-1] for f in model(torch.randn(1, 3, 64, 64))] == [16, 2]
    with torch.device("meta"):
        clf = timm.create_model("nf_resnet200", num_classes=3, drop_rate=0.3)
    assert clf.get_classifier().out_features == 3 and clf.head.drop.p == 0.3
    assert clf.pretrained_cfg["first_conv"] == "stem.conv" and not clf.stem.conv.bias
    assert isinstance(clf.final_conv, nn.Identity)
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        with torch.device("meta"):
            timm.create_model("nf_resnet288", pretrained=True)
