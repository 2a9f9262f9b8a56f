"""The reproduction's networks and report, on tiny inputs (the experiments themselves are run by
`python -m nfzoo.train.reproduce`, see docs/reproduction.md)."""
import pytest
import torch

from nfzoo.layers import NORMS
from nfzoo.layers.ablation_norms import BatchInstanceNorm2d, BatchRenorm2d, SwitchableNorm2d
from nfzoo.train.reproduce.experiments import GROUPED, NORMS as ABLATION
from nfzoo.train.reproduce.networks import SmallResNet, small_nf_resnet
from nfzoo.train.reproduce.figures import agc_table, norm_table


@pytest.mark.parametrize("norm", ABLATION)
def test_small_resnet_builds_and_trains_with_every_norm(norm):
    torch.manual_seed(0)
    net = SmallResNet(norm, depth=8, widths=(4, 8, 8), num_groups=2 if norm in GROUPED else None)
    out = net(torch.randn(3, 1, 12, 12))
    assert out.shape == (3, 10)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert sum(p.numel() for p in net.parameters()) > 0


def test_registry_holds_the_ablation_norms():
    assert set(ABLATION) <= set(NORMS)
    for name, cls in (("brn", BatchRenorm2d), ("bin", BatchInstanceNorm2d), ("sn", SwitchableNorm2d)):
        assert isinstance(NORMS[name].layer_factory()(8), cls)
    wn_conv = NORMS["wn"].conv_layer(3, 4, 3)
    assert hasattr(wn_conv, "parametrizations") and isinstance(NORMS["wn"].layer_factory()(4), torch.nn.Identity)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        SmallResNet("bn", depth=9)


def test_small_nf_resnet_has_no_normalization_layers():
    net = small_nf_resnet(widths=(16, 32))
    assert not any(isinstance(m, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm)) for m in net.modules())
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_tables_aggregate_seeds():
    rows = [{"norm": "bn", "micro_batch": str(b), "seed": str(s), "test_error": str(e)}
            for b, s, e in ((64, 0, 10.0), (64, 1, 12.0), (2, 0, 30.0), (2, 1, 34.0))]
    table = norm_table(rows, ("bn",), (64, 2))
    assert "| bn | 11.0 ± 1.4 | 32.0 ± 2.8 | +21.0 |" in table
    agc = agc_table([{"lr": "1.6", "clip": "none", "seed": "0", "diverged": "True", "final_train_loss": "nan",
                      "test_error": "nan"}])
    assert "| 1.6 | none | 1/1 | nan | nan |" in agc
