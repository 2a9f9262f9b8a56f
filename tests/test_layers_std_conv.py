"""nfzoo.layers.std_conv: weight-standardized and Scaled WS convolutions against references written here
from the papers' equations (float64 where exactness is claimed)."""
import math

import pytest
import torch
import torch.nn.functional as F

from _nf_reference import tf_same_pad
from nfzoo.layers import ScaledStdConv2d, WSConv1d, WSConv2d, WSConv3d


def scaled_ws_reference(w, gain, numerics):
    """Brock et al.: per output channel over the fan-in, population variance."""
    fan_in = w[0].numel()
    mean = w.mean(dim=tuple(range(1, w.ndim)), keepdim=True)
    var = ((w - mean) ** 2).mean(dim=tuple(range(1, w.ndim)), keepdim=True)
    if numerics == "deepmind":  # rsqrt(max(var * fan_in, 1e-4))
        return (w - mean) * gain / torch.sqrt(torch.clamp(var * fan_in, min=1e-4))
    return (w - mean) / torch.sqrt(var + 1e-5) * gain / math.sqrt(fan_in)  # timm: eps inside var


@pytest.mark.parametrize("numerics", ["deepmind", "timm"])
@pytest.mark.parametrize("stride,size", [(1, 9), (2, 9), (2, 10)])
def test_scaled_std_conv_same_padding(numerics, stride, size):
    torch.manual_seed(0)
    conv = ScaledStdConv2d(4, 6, 3, stride=stride, padding="same", numerics=numerics, groups=2)
    with torch.no_grad():
        conv.gain.uniform_(0.5, 1.5)
        conv.bias.normal_()
    x = torch.randn(2, 4, size, size + 1)
    w_hat = scaled_ws_reference(conv.weight, conv.gain, numerics)
    expected = F.conv2d(tf_same_pad(x, 3, stride), w_hat, conv.bias, stride, groups=2)
    assert torch.allclose(conv(x), expected, atol=1e-5)
    assert conv(x).shape[-2:] == (math.ceil(size / stride), math.ceil((size + 1) / stride))


def test_scaled_std_conv_numerics_differ_on_small_variance():
    conv = ScaledStdConv2d(2, 1, 1, numerics="deepmind")
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 1.001]).view(1, 2, 1, 1))
    timm_like = ScaledStdConv2d(2, 1, 1, numerics="timm")
    timm_like.load_state_dict(conv.state_dict())
    # var * fan_in = 5e-7 < 1e-4: DeepMind clamps, timm adds 1e-5 to var -- very different scales
    # W * s - mean * s (DeepMind's form, which keeps no centred copy for backward) cancels 1e-4 here
    assert torch.allclose(conv.standardized_weight(), scaled_ws_reference(conv.weight, conv.gain, "deepmind"), rtol=1e-3)
    assert torch.allclose(timm_like.standardized_weight(), scaled_ws_reference(conv.weight, conv.gain, "timm"), rtol=1e-3)
    assert not torch.allclose(conv.standardized_weight(), timm_like.standardized_weight(), rtol=0.1)


def ws_reference(w, eps_in):
    """Qiao et al.: unbiased std; eps outside the sqrt (GN+WS) or inside (BCN+WS)."""
    flat = w.flatten(1)
    n = flat.shape[1]
    mean = flat.mean(1, keepdim=True)
    var = ((flat - mean) ** 2).sum(1, keepdim=True) / (n - 1)
    denom = var.sqrt() + 1e-5 if eps_in == "std" else torch.sqrt(var + 1e-5)
    return ((flat - mean) / denom).view_as(w)


@pytest.mark.parametrize("eps_in", ["std", "var"])
@pytest.mark.parametrize("cls,conv,shape", [
    (WSConv1d, F.conv1d, (2, 4, 11)), (WSConv2d, F.conv2d, (2, 4, 7, 6)), (WSConv3d, F.conv3d, (1, 4, 5, 4, 6))])
def test_ws_conv(cls, conv, shape, eps_in):
    torch.manual_seed(0)
    layer = cls(4, 8, 3, padding=1, eps_in=eps_in)
    x = torch.randn(shape)
    expected = conv(x, ws_reference(layer.weight, eps_in), layer.bias, padding=1)
    assert torch.allclose(layer(x), expected, atol=1e-5)


@pytest.mark.parametrize("layer", [
    ScaledStdConv2d(8, 4, 3, padding=1), WSConv2d(8, 4, 3, padding=1)], ids=["scaled", "qiao"])
def test_statistics_in_float32_under_bf16_autocast_and_constant_filters_finite(layer):
    with torch.no_grad():
        layer.weight.normal_(100.0, 0.01)  # bf16 (spacing 0.5 at 100) would lose this variance
        layer.weight[0].fill_(0.5)  # an all-equal filter: variance 0
    w = layer.standardized_weight()
    assert torch.isfinite(w).all() and torch.all(w[0] == 0)
    flat = w[1:].flatten(1).double()
    assert torch.allclose(flat.mean(1), torch.zeros(3, dtype=torch.double), atol=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(layer.standardized_weight(), w)  # computed in float32 regardless
        out = layer(torch.randn(1, 8, 6, 6))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("eps_in", ["std", "var"])
@pytest.mark.parametrize("make", [
    lambda eps_in: WSConv2d(8, 4, 3, padding=1, eps_in=eps_in),  # a zero-initialised filter (set below)
    lambda eps_in: WSConv2d(1, 4, 1, eps_in=eps_in),  # fan-in 1: every filter is constant
    lambda eps_in: WSConv2d(8, 8, 1, groups=8, eps_in=eps_in),  # depthwise 1x1, as GN conversions make
], ids=["zero-filter", "fan-in-1", "depthwise-1x1"])
def test_constant_filters_train(make, eps_in):
    """A constant filter (zero variance) keeps finite gradients: an SGD step leaves the weights finite."""
    torch.manual_seed(0)
    layer = make(eps_in)
    with torch.no_grad():
        layer.weight[0].zero_()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(2, layer.in_channels, 5, 5)
    layer(x).square().mean().backward()
    assert torch.isfinite(layer.weight.grad).all()
    opt.step()
    assert torch.isfinite(layer.weight).all() and torch.isfinite(layer(x)).all()


@pytest.mark.parametrize("numerics", ["deepmind", "timm"])
def test_standardization_exact_when_mean_dwarfs_spread(numerics):
    """Trained filters can sit far from zero: the variance must not cancel away in float32."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, 3, 3, generator=gen) * 0.01 + torch.randn(64, 1, 1, 1, generator=gen)  # mean ~100x std
    scaled = ScaledStdConv2d(32, 64, 3, numerics=numerics)
    qiao = WSConv2d(32, 64, 3, eps_in="var")
    with torch.no_grad():
        scaled.weight.copy_(w)
        qiao.weight.copy_(w)
    expected = scaled_ws_reference(w.double(), scaled.gain.double(), numerics).float()
    # float32's rounding of the mean alone is ~1e-7, i.e. 1e-5 of this spread; cancellation would cost percents
    torch.testing.assert_close(scaled.standardized_weight(), expected, rtol=1e-4, atol=5e-6)  # outputs ~0.06
    torch.testing.assert_close(qiao.standardized_weight(), ws_reference(w.double(), "var").float(), rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("eps_in", ["std", "var"])
def test_ws_conv_gradients_in_float64(eps_in):
    torch.manual_seed(0)
    layer = WSConv2d(3, 4, 3, eps_in=eps_in).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.double)

    def forward(weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))
    assert torch.autograd.gradcheck(forward, (layer.weight.detach().clone().requires_grad_(),
                                              layer.bias.detach().clone().requires_grad_()))


def _float32_two_pass(w, gain, kind):
    """The float32 standardization op for op as two-pass statistics compute it unscaled: what an
    ordinary weight must still get, bit for bit, from the overflow-safe statistics."""
    flat = w.flatten(1)
    n = flat.shape[1]
    centered = flat - flat.mean(1, keepdim=True)
    norm = torch.linalg.vector_norm(centered, dim=1, keepdim=True)
    if kind == "deepmind":
        return centered * (torch.rsqrt(torch.clamp(norm.square() / n * n, min=1e-4)) * gain.view(-1, 1))
    if kind == "timm":
        return centered * (torch.rsqrt(norm.square() / n + 1e-5) * n**-0.5 * gain.view(-1, 1))
    var = norm.square() / (n - 1)
    return centered / (torch.sqrt(torch.clamp(var, min=1e-30)) + 1e-5 if kind == "std" else torch.sqrt(var + 1e-5))


def _ws_layer(kind, cin=8, cout=6, k=3):
    if kind in ("deepmind", "timm"):
        return ScaledStdConv2d(cin, cout, k, numerics=kind)
    return WSConv2d(cin, cout, k, eps_in=kind)


KINDS = ["deepmind", "timm", "std", "var"]


@pytest.mark.parametrize("kind", KINDS)
def test_ordinary_weights_standardize_as_float32_two_pass(kind):
    torch.manual_seed(0)
    layer = _ws_layer(kind, 32, 64)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(64, 1, 1, 1) * 4).add_(torch.randn(64, 1, 1, 1) * 0.1)
        layer.weight[0].fill_(0.25)  # a constant filter
        if kind in ("deepmind", "timm"):
            layer.gain.uniform_(0.5, 1.5)
    gain = getattr(layer, "gain", None)
    expected = _float32_two_pass(layer.weight, gain, kind).view_as(layer.weight)
    assert torch.equal(layer.standardized_weight(), expected)


def _reference(w, kind):
    """The standardized float64 weight from the equations (the references above), gain 1."""
    if kind in ("deepmind", "timm"):
        return scaled_ws_reference(w, torch.ones(w.shape[0], 1, 1, 1, dtype=w.dtype), kind)
    return ws_reference(w, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("magnitude", [1e19, 1e33, 1e-30])
def test_weights_of_any_float32_magnitude_standardize(kind, magnitude):
    """Filters from 1e-30 to 1e33 (squares far outside float32's range), a constant one among
    them, standardize as the float64 equations do, to float32 round-off."""
    gen = torch.Generator().manual_seed(0)
    layer = _ws_layer(kind)
    w = torch.randn(6, 8, 3, 3, generator=gen, dtype=torch.float64) * magnitude
    w[1] = magnitude  # constant: standardizes to 0
    w[2] += 3 * magnitude  # a mean larger than the spread
    with torch.no_grad():
        layer.weight.copy_(w)
    expected = _reference(layer.weight.double(), kind)
    out = layer.standardized_weight()
    assert torch.isfinite(out).all() and torch.all(out[1] == 0)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


@pytest.mark.parametrize("numerics", ["deepmind", "timm"])
def test_scaled_ws_gradient_of_huge_weights(numerics):
    """The analytic backward of 1e19-sized filters (whose squares overflow float32) against float64."""
    gen = torch.Generator().manual_seed(0)
    layer = ScaledStdConv2d(8, 6, 3, numerics=numerics)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(6, 8, 3, 3, generator=gen) * 1e19)
    upstream = torch.randn(6, 8, 3, 3, generator=gen)
    (layer.standardized_weight() * upstream).sum().backward()
    w64 = layer.weight.detach().double().requires_grad_()
    (_reference(w64, numerics) * upstream.double()).sum().backward()
    torch.testing.assert_close(layer.weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-4 * w64.grad.abs().max().item())


@pytest.mark.parametrize("kind", KINDS)
def test_float16_constant_filters_have_finite_gradients(kind):
    """A zero and a constant float16 filter multiply their gradient by up to 1 / eps (1e5 for
    GN+WS): where that leaves float16's range the gradient saturates at its largest value instead
    of becoming inf; elsewhere it is the float64 equations' to float16 round-off."""
    gen = torch.Generator().manual_seed(0)
    layer = _ws_layer(kind).half()
    with torch.no_grad():
        layer.weight[0].zero_()
        layer.weight[1].fill_(0.375)
    upstream = (torch.randn(6, 8, 3, 3, generator=gen) * 8000).half()
    (layer.standardized_weight().float() * upstream.float()).sum().backward()
    grad = layer.weight.grad
    assert grad.dtype == torch.float16 and torch.isfinite(grad).all()
    g = upstream.double().flatten(1)[:2]
    if kind == "std":  # at a constant filter the std's term vanishes: dW = (G - mean(G)) / eps
        expected = (g - g.mean(1, keepdim=True)) / 1e-5
    else:
        w64 = layer.weight.detach().double().requires_grad_()
        (_reference(w64, kind) * upstream.double()).sum().backward()
        expected = w64.grad.flatten(1)[:2]
    limit = torch.finfo(torch.float16).max
    assert (expected.abs() > limit).any()  # the exact gradient leaves float16's range somewhere
    torch.testing.assert_close(grad.flatten(1)[:2].double(), expected.clamp(-limit, limit), rtol=2e-3, atol=1.0)


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
