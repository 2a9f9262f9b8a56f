"""nfzoo.layers.activations: the scaled activations' constants, and stochastic depth."""
import math

import pytest
import torch

from nfzoo.layers import GAMMA, DropPath, GammaAct


def test_gamma_act_constants():
    assert GAMMA == pytest.approx(dict(gelu=1.7015043497085571, gelu_tanh=1.7015043497085571,
                                       relu=1.7139588594436646, silu=1.7881293296813965), abs=0)
    x = torch.linspace(-4, 4, 101)
    assert torch.allclose(GammaAct("gelu_tanh")(x), 1.7015043497085571 * 0.5 * x * (
        1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))), atol=1e-6)
    assert torch.allclose(GammaAct("gelu")(x), 1.7015043497085571 * 0.5 * x * (1 + torch.erf(x / math.sqrt(2))), atol=1e-6)
    assert torch.allclose(GammaAct("relu")(x), 1.7139588594436646 * x.clamp(min=0))
    # the constants do what they claim: unit variance out for N(0, 1) in
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in ("relu", "silu", "gelu"):
        assert GammaAct(name)(z).var().item() == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match="unknown activation"):
        GammaAct("tanh")


def test_stochastic_depth_without_rescale():
    drop = DropPath(0.5, scale_by_keep=False).train()
    x = torch.ones(4000, 3, 2, 2)
    out = drop(x)
    kept = out.flatten(1).amax(1)
    assert set(kept.unique().tolist()) == {0.0, 1.0}  # whole samples dropped, survivors unscaled
    assert torch.all(out.flatten(1).amin(1) == kept)
    assert kept.mean().item() == pytest.approx(0.5, abs=0.05)
    assert torch.equal(drop.eval()(x), x)
