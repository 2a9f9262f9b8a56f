"""nfzoo.layers.std_conv: gradients through Scaled WS against the NF-ResNet paper's formula."""
import pytest
import torch

from nfzoo.layers import ScaledStdConv2d


def reference_scaled_ws(w, gain, numerics, eps):
    """Scaled WS as the NF-ResNet paper writes it (population variance over the fan-in), in plain ops."""
    flat = w.flatten(1)
    var, mean = torch.var_mean(flat, 1, correction=0, keepdim=True)
    n = flat.shape[1]
    scale = torch.rsqrt(torch.clamp(var * n, min=eps)) if numerics == "deepmind" else torch.rsqrt(var + eps) * n**-0.5
    return ((flat - mean) * scale * gain.view(-1, 1)).view_as(w)


@pytest.mark.parametrize("numerics", ["deepmind", "timm"])
def test_scaled_ws_gradients_match_the_equations(numerics):
    """Gradients through the conv's standardization equal those through the paper's formula,
    including a filter whose variance DeepMind's rule clamps (its scale is then a constant)."""
    conv = ScaledStdConv2d(3, 6, 3, numerics=numerics).double()
    with torch.no_grad():
        conv.weight[2] = 0.7 + 1e-4 * torch.randn(3, 3, 3, dtype=torch.float64)
        conv.gain.copy_(torch.randn_like(conv.gain))
    w, gain = conv.weight, conv.gain
    # gradcheck perturbs w and gain in place, i.e. the conv's own parameters
    assert torch.autograd.gradcheck(lambda *_: conv.standardized_weight(), (w, gain))
    upstream = torch.randn_like(w)
    ours = torch.autograd.grad((conv.standardized_weight() * upstream).sum(), (w, gain))
    ref = torch.autograd.grad((reference_scaled_ws(w, gain, numerics, conv.eps) * upstream).sum(), (w, gain))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
