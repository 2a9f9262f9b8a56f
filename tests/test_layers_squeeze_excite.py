"""Squeeze-excite initialisation: haiku's ``hk.Linear`` default, as DeepMind's SE linears have it."""
import math

import pytest
import torch

from nfzoo.layers import SqueezeExcite
from nfzoo.models.nfnet import NFNet, NFNetCfg


def truncated_std(std: float) -> float:
    """Standard deviation of N(0, std^2) truncated at +-2 std: std * sqrt(1 - 4 phi(2) / (2 Phi(2) - 1))."""
    phi = math.exp(-2.0) / math.sqrt(2.0 * math.pi)
    mass = math.erf(2.0 / math.sqrt(2.0))
    return std * math.sqrt(1.0 - 4.0 * phi / mass)


def test_linears_are_truncated_normal_of_fan_in():
    torch.manual_seed(0)
    se = SqueezeExcite(1024, 384)
    for fc in (se.fc1, se.fc2):
        std = fc.in_channels ** -0.5
        w = fc.weight.detach().double().flatten()
        assert w.abs().max() <= 2 * std  # truncated at two stds ...
        assert w.abs().max() > 1.99 * std  # ... and not narrower
        # 393,216 samples: the sample std is within 0.5 % of the truncated normal's
        assert w.std().item() == pytest.approx(truncated_std(std), rel=5e-3)
        assert abs(w.mean().item()) < 0.01 * std
        assert not fc.bias.any()


def test_models_keep_the_init():
    """A model's own initialisation (WS convs N(0, 1/fan_in), untruncated) leaves the SE linears
    truncated."""
    torch.manual_seed(0)
    model = NFNet(NFNetCfg(depths=(2, 2, 2, 2), widths=(64, 128, 256, 256), stem_width=32, group_width=32))
    se = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    w = torch.cat([fc.weight.flatten() * fc.in_channels ** 0.5 for m in se for fc in (m.fc1, m.fc2)])
    assert w.abs().max() <= 2 and w.abs().max() > 1.99
    conv = torch.cat([b.conv3.weight.flatten() * b.conv3.weight[0].numel() ** 0.5 for s in model.stages for b in s])
    assert conv.abs().max() > 3  # the convs' normal is not truncated


def test_squeeze_excite_is_twice_the_sigmoid_gate():
    torch.manual_seed(0)
    se = SqueezeExcite(6, 3)
    x = torch.randn(2, 6, 5, 4)
    h = torch.relu(x.mean((2, 3)) @ se.fc1.weight.flatten(1).T + se.fc1.bias)
    gate = 2 * torch.sigmoid(h @ se.fc2.weight.flatten(1).T + se.fc2.bias)
    assert torch.allclose(se(x), x * gate[:, :, None, None], atol=1e-6)
