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
variance or overflow ``var * fan_in``); the standardized weight is returned in the parameter's
dtype and autocast casts it for the convolution as it would the raw weight. Scaled WS has an
analytic backward that keeps no weight-sized tensor beyond the standardized weight the conv
itself saves.

For inference, :func:`nfzoo.fuse` bakes the standardized weights into plain convolutions.
"""
from __future__ import annotations

from typing import List, Literal, Optional

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


def _unit_dims(weight: torch.Tensor) -> List[int]:
    """Every dim but the output channels'."""
    return list(range(1, weight.dim()))


def _stats_dtype(weight: torch.Tensor) -> torch.dtype:
    """float32, or the weight's dtype where it is wider (float64)."""
    return torch.promote_types(weight.dtype, torch.float32)


def _centered(w: torch.Tensor, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output channel of the (float32 or wider) ``w``, over every other dim: the flattened
    weight minus its mean, the mean, and the variance (population, or unbiased).

    Two passes, the mean and then the norm of the centred rows: exact, and on the CPU faster
    than ``torch.var_mean``'s Welford kernel (see docs/speed.md).
    """
    flat = w.flatten(1)
    n = flat.shape[1]
    mean = flat.mean(1, keepdim=True)
    centered = flat - mean
    var = torch.linalg.vector_norm(centered, dim=1, keepdim=True).square() / (n - 1 if unbiased and n > 1 else n)
    return centered, mean, var


def _scale(var: torch.Tensor, fan_in: int, deepmind: bool, eps: float) -> torch.Tensor:
    """``rsqrt(max(var * n, eps))`` (DeepMind's release) or ``rsqrt(var + eps) / sqrt(n)`` (timm)."""
    if deepmind:
        return torch.rsqrt(torch.clamp(var * fan_in, min=eps))
    return torch.rsqrt(var + eps) * fan_in ** -0.5


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
        centered, mean, var = _centered(w, unbiased=False)
        n = centered.shape[1]
        scale = _scale(var, n, deepmind, eps)
        varies = (var * n > eps).to(var.dtype) if deepmind else torch.ones_like(var)
        ctx.save_for_backward(weight, gain, mean, scale, varies)
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
        return (grad_weight.view_as(weight).to(weight.dtype) if ctx.needs_input_grad[0] else None,
                grad_gain.view_as(gain).to(gain.dtype) if ctx.needs_input_grad[1] else None,
                None, None)


@torch.fx.wrap
def scaled_standardize(weight: torch.Tensor, gain: torch.Tensor, deepmind: bool, eps: float) -> torch.Tensor:
    """Scaled WS: ``gain * (W - mean) * s`` per output channel, ``n`` the fan-in and ``var`` the
    population variance, with ``s = rsqrt(max(var * n, eps))`` (DeepMind's release) or
    ``s = rsqrt(var + eps) / sqrt(n)`` (timm's ``ScaledStdConv2d``).

    TorchScript cannot compile an autograd Function: scripted models compute the same formula
    with autograd's own ops.
    """
    if torch.jit.is_scripting():
        w = weight.to(_stats_dtype(weight))
        var, mean = torch.var_mean(w, dim=_unit_dims(w), correction=0, keepdim=True)
        scale = _scale(var, w[0].numel(), deepmind, eps) * gain.to(w.dtype)
        return (w * scale - mean * scale).to(weight.dtype)
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
    centered, _, var = _centered(weight.to(_stats_dtype(weight)), unbiased=True)
    if eps_in_std:
        # 1e-30: below any variance a trained filter has; its std (1e-15) vanishes beside eps
        denom = torch.sqrt(torch.clamp(var, min=1e-30)) + eps
    else:
        denom = torch.sqrt(var + eps)
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
