"""NF-ResNets: DeepMind's six depths, architecture, sizes, naming policy and interface."""
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from torchvision.models.resnet import Bottleneck, ResNet

import nfzoo  # noqa: F401  (registers the models)
from _nf_reference import nf_resnet_logits
from nfzoo.models.nfnet import checkpoint_filter_fn

# DeepMind's release, nfnets/nf_resnet.py (NF_ResNet.variant_dict): stage depths per variant.
DEEPMIND_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3),
                   200: (3, 24, 36, 3), 288: (24, 24, 24, 24), 600: (50, 50, 50, 50)}
NAMES = {f"dm_nf_resnet{d}": depths for d, depths in DEEPMIND_DEPTHS.items()}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(NAMES))
def test_size_is_torchvisions_resnet_with_gains_for_norms(name):
    """Each BN of torchvision's ResNet (weight and bias) becomes a WS conv's gain and bias, the
    stem's included; every block adds a skip gain. The docs state the count."""
    with torch.device("meta"):
        ours = timm.create_model(name)
        theirs = ResNet(Bottleneck, list(NAMES[name]))
    assert _count(ours) == _count(theirs) + sum(NAMES[name])
    assert [i["num_chs"] for i in ours.feature_info] == [64, 256, 512, 1024, 2048]
    assert [i["reduction"] for i in ours.feature_info] == [2, 4, 8, 16, 32]
    documented = re.search(rf"^\| `{name}` \| [^|]+ \| ([\d,]+) \|", DOCS.read_text(), re.M)
    assert documented is not None, f"docs/models.md has no parameter count for {name}"
    assert int(documented.group(1).replace(",", "")) == _count(ours)


def test_timm_names_with_weights_are_not_replaced():
    with_weights = {n.split(".")[0] for n in timm.list_models(pretrained=True)}
    assert not set(NAMES) & with_weights
    assert timm.models.model_entrypoint("nf_resnet50").__module__ == "timm.models.nfnet"
    assert set(timm.list_models("dm_nf_resnet*")) == set(NAMES)


@pytest.mark.parametrize("name", sorted(NAMES))
@torch.no_grad()
def test_forward_is_deepminds_equations(name):
    """Each registered depth (narrowed to keep it fast: the depths, blocks, stem and head are
    the registered model's) against the float64 reference of DeepMind's nf_resnet.py, with every
    parameter perturbed (biases, the stem's included, gains and skip gains non-trivial)."""
    model = timm.create_model(name, num_classes=7, widths=(16, 32, 48, 64), stem_width=8).double().eval()
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) * (0.5 if v.ndim == 0 else 0.1)
          + k.endswith(".gain") for k, v in model.state_dict().items()}
    model.load_state_dict(checkpoint_filter_fn(sd, model))
    x = torch.randn(2, 3, 45, 38, generator=gen, dtype=torch.float64)
    expected = nf_resnet_logits(x, sd, NAMES[name])
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10 * expected.abs().max().item())


def test_interface():
    model = timm.create_model("dm_nf_resnet50", features_only=True, out_indices=(1, 4), pretrained=False).eval()
    assert model.feature_info.channels() == [256, 2048]
    with torch.no_grad():
        assert [f.shape[-1] for f in model(torch.randn(1, 3, 64, 64))] == [16, 2]
    with torch.device("meta"):
        clf = timm.create_model("dm_nf_resnet200", num_classes=3, drop_rate=0.3)
    assert clf.get_classifier().out_features == 3 and clf.head.drop.p == 0.3
    assert clf.pretrained_cfg["first_conv"] == "stem.conv" and clf.stem.conv.bias is not None
    assert isinstance(clf.final_conv, nn.Identity)
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        with torch.device("meta"):
            timm.create_model("dm_nf_resnet288", pretrained=True)
