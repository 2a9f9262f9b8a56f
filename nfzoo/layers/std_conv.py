"""Weight-standardized convolutions.

Two families live here, because their numerics differ and pretrained weights depend on them:

* :class:`ScaledStdConv2d` -- Scaled Weight Standardization of the NF-ResNet and NFNet papers
  (Brock et al. 2021, arXiv 2101.08692 and 2102.06171). Per output channel,
  ``W_hat = gain * (W - mean) / sqrt(fan_in * var)`` with the population variance.
* :class:`WSConv1d`, :class:`WSConv2d`, :class:`WSConv3d` -- Weight Standardization of
  Qiao et al. (arXiv 1903.10520), as used by the authors' GN+WS and BCN+WS ResNets:
  ``W_hat = (W - mean) / std`` with the *unbiased* std, no gain.

Statistics are computed in float32, or float64 for a float64 weight (a bf16 or fp16 weight
would lose the variance or overflow ``var * fan_in``); the standardized weight is returned in
the parameter's dtype and autocast casts it for the convolution as it would the raw weight.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.padding import get_padding_value, pad_same

__all__ = ["ScaledStdConv2d", "WSConv1d", "WSConv2d", "WSConv3d", "StdNumerics", "WSEps"]

StdNumerics = Literal["deepmind", "timm"]
WSEps = Literal["std", "var"]

_EPS = {"deepmind": 1e-4, "timm": 1e-5}


def _fan_in_stats(weight: torch.Tensor, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance over every dim but the first (the output channel), in float32 or wider."""
    w = weight.to(torch.promote_types(weight.dtype, torch.float32)).flatten(1)
    var, mean = torch.var_mean(w, dim=1, correction=int(unbiased and w.shape[1] > 1), keepdim=True)
    return mean, var


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
        mean, var = _fan_in_stats(self.weight, unbiased=False)
        fan_in = self.weight[0].numel()
        if self.numerics == "deepmind":
            scale = torch.rsqrt(torch.clamp(var * fan_in, min=self.eps))
        else:
            scale = torch.rsqrt(var + self.eps) * fan_in**-0.5
        scale = scale.view_as(self.gain) * self.gain.to(mean.dtype)
        return ((self.weight.to(mean.dtype) - mean.view_as(self.gain)) * scale).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", numerics={self.numerics}, eps={self.eps}" + (
            ", padding=same(dynamic)" if self.dynamic_same_pad else "")


class _WSConvMixin:
    """Weight Standardization (Qiao et al., "Micro-Batch Training with Batch-Channel
    Normalization and Weight Standardization", arXiv 1903.10520) for a torch ``_ConvNd``.

    Args:
        eps: 1e-5 in both of the authors' releases.
        eps_in: ``'std'`` divides by ``std + eps`` as the authors' GN+WS release does;
            ``'var'`` divides by ``sqrt(var + eps)`` as their BCN+WS release does.
            The std is unbiased in both, as in the releases.
    """

    weight: nn.Parameter
    bias: torch.Tensor | None

    def __init__(self, *args, eps: float = 1e-5, eps_in: WSEps = "std", **kwargs):
        if eps_in not in ("std", "var"):
            raise ValueError(f"eps_in must be 'std' or 'var', got {eps_in!r}")
        super().__init__(*args, **kwargs)
        self.eps = eps
        self.eps_in = eps_in

    def standardized_weight(self) -> torch.Tensor:
        """The weight actually convolved, in the weight's dtype."""
        mean, var = _fan_in_stats(self.weight, unbiased=True)
        denom = var.sqrt() + self.eps if self.eps_in == "std" else torch.sqrt(var + self.eps)
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        w = (self.weight.to(mean.dtype) - mean.view(shape)) / denom.view(shape)
        return w.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}, eps_in={self.eps_in}"


class WSConv1d(_WSConvMixin, nn.Conv1d):
    """Conv1d with Weight Standardization (Qiao et al. 2019); ``eps``/``eps_in`` as in :class:`WSConv2d`."""


class WSConv2d(_WSConvMixin, nn.Conv2d):
    """Conv2d with Weight Standardization (Qiao et al. 2019).

    Takes nn.Conv2d's arguments plus ``eps`` (1e-5) and ``eps_in`` (``'std'``: divide by
    ``unbiased_std + eps``, the GN+WS release; ``'var'``: by ``sqrt(unbiased_var + eps)``, the
    BCN+WS release).
    """


class WSConv3d(_WSConvMixin, nn.Conv3d):
    """Conv3d with Weight Standardization (Qiao et al. 2019), for video models."""
