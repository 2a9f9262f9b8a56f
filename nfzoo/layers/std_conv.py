"""Weight-standardized convolutions.

Two families live here, because their numerics differ and pretrained weights depend on them:

* :class:`ScaledStdConv2d` -- Scaled Weight Standardization of the NF-ResNet and NFNet papers
  (Brock et al. 2021, arXiv 2101.08692 and 2102.06171). Per output channel,
  ``W_hat = gain * (W - mean) / sqrt(fan_in * var)`` with the population variance.
* :class:`WSConv1d`, :class:`WSConv2d`, :class:`WSConv3d` -- Weight Standardization of
  Qiao et al. (arXiv 1903.10520), as used by the authors' GN+WS and BCN+WS ResNets:
  ``W_hat = (W - mean) / std`` with the *unbiased* std, no gain.

Every forward standardizes the weight, in training and in eval, as the papers define the
layer. Statistics are computed in float32 or wider (a bf16 or fp16 weight would lose the
variance or overflow ``var * fan_in``). A filter whose values reach ``2**32`` is centred scaled
down by a power of two (exact), so that the squares of its variance (which overflow float32
from about 1e19 on) stay finite as long as the filter's sum does (magnitude times fan-in below
3.4e38); smaller weights are computed as they are, and tiny ones lose nothing that matters to
underflow, as each formula's eps dwarfs their variance. The standardized weight is returned in
the parameter's dtype and autocast casts it for the convolution as it would the raw weight. Its
gradient is computed in float32 or wider too and rounded back to a bf16 or fp16 weight's dtype
saturating: a value beyond that dtype's range (a constant filter multiplies its gradient by up
to ``1 / eps``) becomes its largest finite value, not inf; an infinite or NaN gradient stays so.
Scaled WS has an analytic backward that keeps no weight-sized tensor beyond the standardized
weight the conv itself saves.

For inference, :func:`nfzoo.fuse` bakes the standardized weights into plain convolutions.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.fx
import torch.nn as nn
from timm.layers.padding import get_padding_value, pad_same

__all__ = [
    "ScaledStdConv2d", "WSConv1d", "WSConv2d", "WSConv3d", "StdNumerics", "WSEps", "is_weight_standardized",
    "scaled_standardize", "standardize",
]

StdNumerics = Literal["deepmind", "timm"]
WSEps = Literal["std", "var"]

_EPS = {"deepmind": 1e-4, "timm": 1e-5}

# A symbolic trace records each of these calls as one node (torch.fx.wrap acts on every tracer:
# timm's, torchvision's feature extraction, plain torch.fx.symbolic_trace): TensorFlow SAME
# padding of a strided conv depends on the input size, and the statistics read the weight's dtype.
torch.fx.wrap("pad_same")


def _stats_dtype(weight: torch.Tensor) -> torch.dtype:
    """float32, or the weight's dtype where it is wider (float64)."""
    return torch.promote_types(weight.dtype, torch.float32)


def _to_weight_dtype(grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``grad`` in a weight's ``dtype``, rounded saturating where that dtype is narrower: a finite
    value beyond its range becomes its largest finite value instead of inf."""
    if grad.dtype == dtype:
        return grad
    limit = torch.finfo(dtype).max
    if limit < torch.finfo(grad.dtype).max:
        grad = torch.where(grad.isinf(), grad, grad.clamp(-limit, limit))
    return grad.to(dtype)


class _Widen(torch.autograd.Function):
    """``weight.to(dtype)``, whose backward rounds the gradient back saturating."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        ctx.weight_dtype = weight.dtype
        return weight.to(dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _to_weight_dtype(grad, ctx.weight_dtype), None


def _widen(weight: torch.Tensor) -> torch.Tensor:
    """The weight in its statistics dtype (:func:`_stats_dtype`); the gradient of a bf16 or fp16
    weight is rounded back saturating (:func:`_to_weight_dtype`)."""
    dtype = _stats_dtype(weight)
    if dtype == weight.dtype:
        return weight
    if torch.jit.is_scripting():
        return weight.to(dtype)
    else:
        return _Widen.apply(weight, dtype)


def _centered(w: torch.Tensor, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output channel of the (float32 or wider) ``w``, over every other dim: the flattened
    weight minus its mean, scaled by ``r``; the mean; the variance (population, or unbiased) of
    the scaled rows; and ``r``, a power of two, 1 for a filter below ``2**32`` in magnitude and
    about its reciprocal above (exact: the standardization divides it out again).

    The mean and then the norm of the centred rows (two passes: exact, and on the CPU faster than
    ``torch.var_mean``'s Welford kernel, see docs/speed.md); the filter's extremes, one more
    read, give ``r`` and a constant filter's exact mean.
    """
    flat = w.flatten(1)
    n = flat.shape[1]
    high, low = flat.amax(1, keepdim=True), flat.amin(1, keepdim=True)
    # a constant filter's mean exactly (a float32 mean of equal values can be off by an ulp, which
    # the scale would blow up to +-1 / sqrt(n) at large magnitudes); amax shares its gradient out evenly
    mean = torch.where(high == low, high, flat.mean(1, keepdim=True))
    magnitude = torch.maximum(high, -low)
    # from 2**32 on (squares overflow from 2**64), scaled by up to 2**-100 (float32's largest weights square safely)
    shift = torch.where(magnitude >= 4294967296.0, torch.frexp(magnitude).exponent.clamp(max=100), 0)
    r = torch.ldexp(torch.ones_like(mean), -shift)
    centered = torch.addcmul(-mean * r, flat, r)  # (flat - mean) * r, rounded once as flat - mean
    var = torch.linalg.vector_norm(centered, dim=1, keepdim=True).square() / (n - 1 if unbiased and n > 1 else n)
    return centered, mean, var, r


def _scale(var: torch.Tensor, fan_in: int, deepmind: bool, eps: float, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows scaled by ``r`` with variance ``var``: the scale of the scaled rows and whether the
    variance counts (DeepMind's clamp not reached). Unscaled, the scale is ``rsqrt(max(var * n,
    eps))`` (DeepMind's release) or ``rsqrt(var + eps) / sqrt(n)`` (timm). A constant filter gets
    ``eps``'s scale, also where ``eps * r**2`` underflows."""
    constant = torch.rsqrt(torch.full_like(var, eps)) / r
    if deepmind:
        varies = var * fan_in > eps * r.square()
        return torch.where(varies, torch.rsqrt(var * fan_in), constant), varies
    scale = torch.where(var == 0, constant, torch.rsqrt(var + eps * r.square())) * fan_in ** -0.5
    return scale, torch.ones_like(var, dtype=torch.bool)


class _ScaledStandardize(torch.autograd.Function):
    """Scaled WS with an analytic backward that keeps only the weight and per-channel statistics,
    so that training holds no weight-sized tensor beyond the standardized weight the conv saves
    (as timm's batch-norm formulation does), with two-pass statistics, fast on the CPU.

    With ``x = (W - mean) * s``, ``G`` the incoming gradient and ``n`` the fan-in,
    ``d gain = sum(G * x)`` and ``dW = s * gain * (G - mean(G)) - k * s * x * gain * d gain``,
    where ``k`` is 0 for a clamped (constant) ``s`` and 1 otherwise (``ds/dvar = -n s^3 / 2``).
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, gain: torch.Tensor, deepmind: bool, eps: float) -> torch.Tensor:
        w = weight.to(_stats_dtype(weight))
        centered, mean, var, r = _centered(w, unbiased=False)
        scale, varies = _scale(var, centered.shape[1], deepmind, eps, r)
        ctx.save_for_backward(weight, gain, mean, scale * r, varies.to(w.dtype))
        return centered.mul_(scale * gain.to(w.dtype).view(-1, 1)).view_as(weight).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, gain, mean, s, k = ctx.saved_tensors
        w = weight.to(_stats_dtype(weight)).flatten(1)
        d = grad.to(w.dtype).flatten(1)
        sum_d = d.sum(1, keepdim=True)
        grad_weight = torch.mul(d, w)  # G * W, summed below; then overwritten with the gradient
        grad_gain = s * (grad_weight.sum(1, keepdim=True) - mean * sum_d)  # sum(G * x)
        a = s * gain.to(w.dtype).view(-1, 1)
        b = -k * s * a * grad_gain
        c = -a * sum_d / w.shape[1] - b * mean
        torch.addcmul(c, d, a, out=grad_weight).addcmul_(w, b)  # a * G + b * W + c
        return (_to_weight_dtype(grad_weight.view_as(weight), weight.dtype) if ctx.needs_input_grad[0] else None,
                grad_gain.view_as(gain).to(gain.dtype) if ctx.needs_input_grad[1] else None,
                None, None)


@torch.fx.wrap
def scaled_standardize(weight: torch.Tensor, gain: torch.Tensor, deepmind: bool, eps: float) -> torch.Tensor:
    """Scaled WS: ``gain * (W - mean) * s`` per output channel, ``n`` the fan-in and ``var`` the
    population variance, with ``s = rsqrt(max(var * n, eps))`` (DeepMind's release) or
    ``s = rsqrt(var + eps) / sqrt(n)`` (timm's ``ScaledStdConv2d``).

    TorchScript cannot compile an autograd Function: scripted models compute the same statistics
    and let autograd differentiate them.
    """
    if torch.jit.is_scripting():
        w = weight.to(_stats_dtype(weight))
        centered, _, var, r = _centered(w, unbiased=False)
        scale, _ = _scale(var, centered.shape[1], deepmind, eps, r)
        return (centered * (scale * gain.to(w.dtype).view(-1, 1))).view_as(weight).to(weight.dtype)
    else:
        return _ScaledStandardize.apply(weight, gain, deepmind, eps)


@torch.fx.wrap
def standardize(weight: torch.Tensor, eps: float, eps_in_std: bool) -> torch.Tensor:
    """Qiao et al.'s WS with the unbiased variance: ``(W - mean) / (std + eps)`` (GN+WS release)
    or ``(W - mean) / sqrt(var + eps)`` (BCN+WS release).

    A constant filter (zero variance) has no gradient through its std: the std's derivative is
    infinite at zero, and the clamp keeps it out of the backward pass (0 * inf would be NaN)
    without changing any value a non-constant filter sees.
    """
    centered, _, var, r = _centered(_widen(weight), unbiased=True)
    tiny = 1.1754943508222875e-38  # float32's smallest normal, a floor where eps * r**2 underflows: a constant filter stays 0, not NaN
    if eps_in_std:
        # 1e-30: below any variance a trained filter has; its std (1e-15) vanishes beside eps
        denom = torch.sqrt(torch.clamp(var, min=(1e-30 * r.square()).clamp(min=tiny))) + eps * r
    else:
        denom = torch.sqrt(var + (eps * r.square()).clamp(min=tiny))
    return (centered / denom).view_as(weight).to(weight.dtype)


class ScaledStdConv2d(nn.Conv2d):
    """Conv2d with Scaled Weight Standardization, a learnable per-channel gain and a bias.

    Paper: Brock et al., "Characterizing signal propagation to close the performance gap in
    unnormalized ResNets" (2021), and the NFNet paper that reuses it.

    Args:
        numerics: ``'deepmind'`` (default) follows DeepMind's release,
            ``scale = gain * rsqrt(max(var * fan_in, eps))`` with eps 1e-4; the published NFNet
            accuracies were measured with it. ``'timm'`` follows timm's ``ScaledStdConv2d``,
            ``gain * fan_in**-0.5 / sqrt(var + eps)`` with eps 1e-5, for exact agreement with
            timm's models. The two differ by a few percent in a whole network's logits.
        padding: an int, or ``'same'`` for TensorFlow-style SAME padding. SAME is static
            (folded into the conv) whenever it does not depend on the input size, i.e. for
            stride 1; otherwise it is computed per input, as TensorFlow does.
        eps: overrides the numerics' default epsilon.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | str = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        numerics: StdNumerics = "deepmind",
        eps: float | None = None,
        gain_init: float = 1.0,
    ):
        if numerics not in _EPS:
            raise ValueError(f"numerics must be one of {sorted(_EPS)}, got {numerics!r}")
        padding, dynamic_pad = get_padding_value(padding, kernel_size, stride=stride, dilation=dilation)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.gain = nn.Parameter(torch.full((out_channels, 1, 1, 1), gain_init))
        self.dynamic_same_pad = dynamic_pad
        self.numerics = numerics
        self.eps = _EPS[numerics] if eps is None else eps

    def standardized_weight(self) -> torch.Tensor:
        """The weight actually convolved: standardized, scaled by the gain, in the weight's dtype."""
        return scaled_standardize(self.weight, self.gain, self.numerics == "deepmind", self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", numerics={self.numerics}, eps={self.eps}" + (
            ", padding=same(dynamic)" if self.dynamic_same_pad else "")


class _WSConvNd:
    """Weight Standardization (Qiao et al., "Micro-Batch Training with Batch-Channel
    Normalization and Weight Standardization", arXiv 1903.10520) for a torch ``_ConvNd``.

    Args:
        eps: 1e-5 in both of the authors' releases.
        eps_in: ``'std'`` divides by ``unbiased_std + eps``, as the authors' GN+WS release does;
            ``'var'`` by ``sqrt(unbiased_var + eps)``, as their BCN+WS release does.
    """

    def __init__(self, *args, eps: float = 1e-5, eps_in: WSEps = "std", **kwargs):
        if eps_in not in ("std", "var"):
            raise ValueError(f"eps_in must be 'std' or 'var', got {eps_in!r}")
        super().__init__(*args, **kwargs)
        self.eps = eps
        self.eps_in = eps_in

    def standardized_weight(self) -> torch.Tensor:
        """The weight actually convolved, in the weight's dtype."""
        return standardize(self.weight, self.eps, self.eps_in == "std")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}, eps_in={self.eps_in}"


class WSConv1d(_WSConvNd, nn.Conv1d):
    """Conv1d with Weight Standardization (Qiao et al. 2019); ``eps``/``eps_in`` as in :class:`WSConv2d`."""


class WSConv2d(_WSConvNd, nn.Conv2d):
    """Conv2d with Weight Standardization (Qiao et al. 2019).

    Takes nn.Conv2d's arguments plus ``eps`` (1e-5) and ``eps_in`` (``'std'``: divide by
    ``unbiased_std + eps``, the GN+WS release; ``'var'``: by ``sqrt(unbiased_var + eps)``, the
    BCN+WS release).
    """


class WSConv3d(_WSConvNd, nn.Conv3d):
    """Conv3d with Weight Standardization (Qiao et al. 2019), for video models."""


def is_weight_standardized(module: nn.Module) -> bool:
    """True for the zoo's weight-standardized convs (which :func:`nfzoo.fuse` replaces)."""
    return isinstance(module, (ScaledStdConv2d, WSConv1d, WSConv2d, WSConv3d))
