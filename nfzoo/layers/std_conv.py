"""Weight-standardized convolutions.

Two families live here, because their numerics differ and pretrained weights depend on them:

* :class:`ScaledStdConv2d` -- Scaled Weight Standardization of the NF-ResNet and NFNet papers
  (Brock et al. 2021, arXiv 2101.08692 and 2102.06171). Per output channel,
  ``W_hat = gain * (W - mean) / sqrt(fan_in * var)`` with the population variance.
* :class:`WSConv1d`, :class:`WSConv2d`, :class:`WSConv3d` -- Weight Standardization of
  Qiao et al. (arXiv 1903.10520), as used by the authors' GN+WS and BCN+WS ResNets:
  ``W_hat = (W - mean) / std`` with the *unbiased* std, no gain.

Statistics are computed in float32 or wider (a bf16 or fp16 weight would lose the variance or
overflow ``var * fan_in``); the standardized weight is returned in the parameter's dtype and
autocast casts it for the convolution as it would the raw weight.

Inference fast path: in eval mode with gradients disabled, the standardized weight is computed
once and reused until a parameter of the conv changes (its version counter, storage, dtype or
device; in-place updates through ``.data`` bypass the version counter, but ``.train()`` /
``.eval()`` always drop the cache). Training, autograd, ``torch.compile`` and tracing always
recompute it, so gradients and compiled graphs are exact and free of graph breaks. On the CPU the
cached weight is kept packed in oneDNN's layout and convolved by oneDNN directly (see
:func:`_packed_conv_applies`). For export, :func:`nfzoo.fuse` bakes the standardized weights into
plain convolutions.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.padding import get_padding_value, pad_same
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .activations import NONLINEARITIES, NONLINEARITIES_INPLACE

__all__ = [
    "ScaledStdConv2d", "WSConv1d", "WSConv2d", "WSConv3d", "StdNumerics", "WSEps", "is_weight_standardized",
    "inference_cache_active",
]

StdNumerics = Literal["deepmind", "timm"]
WSEps = Literal["std", "var"]

_EPS = {"deepmind": 1e-4, "timm": 1e-5}


def _float(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 at least (float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _centered(weight: torch.Tensor, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output channel, over every other dim, in float32 or wider: the flattened weight minus
    its mean, the mean, and the variance (population, or unbiased).

    Two passes, the mean and then the norm of the centred rows: exact, and on the CPU 5-30x faster
    than ``torch.var_mean``'s Welford kernel. The centred weight is the one weight-sized tensor
    standardization allocates; callers scale it into their result.
    """
    w = _float(weight).flatten(1)
    n = w.shape[1]
    mean = w.mean(1, keepdim=True)
    centered = w - mean
    var = torch.linalg.vector_norm(centered, dim=1, keepdim=True).square() / (n - 1 if unbiased and n > 1 else n)
    return centered, mean, var


class _ScaledStandardize(torch.autograd.Function):
    """Scaled WS, ``gain * (W - mean) * s``, with an analytic backward that keeps only the weight
    and per-channel statistics: training holds no weight-sized intermediates beyond the
    standardized weight the conv itself saves (as timm's batch-norm formulation does).

    ``s = rsqrt(max(var * n, eps))`` (DeepMind) or ``rsqrt(var + eps) / sqrt(n)`` (timm), ``n``
    the fan-in. With ``x = (W - mean) * s`` and ``G`` the incoming gradient,
    ``d gain = sum(G * x)`` and ``dW = s * gain * (G - mean(G)) - k * s * x * gain * d gain``,
    where ``k`` is 0 for a clamped (constant) ``s`` and 1 otherwise (``ds/dvar = -n s^3 / 2``).
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, gain: torch.Tensor, numerics: StdNumerics, eps: float) -> torch.Tensor:
        centered, mean, var = _centered(weight, unbiased=False)
        n = centered.shape[1]
        if numerics == "deepmind":
            scale, varies = torch.rsqrt(torch.clamp(var * n, min=eps)), (var * n > eps).to(var.dtype)
        else:
            scale, varies = torch.rsqrt(var + eps) * n**-0.5, torch.ones_like(var)
        ctx.save_for_backward(weight, gain, mean, scale, varies)
        return centered.mul_(scale * _float(gain).view(-1, 1)).view_as(weight).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, gain, mean, s, k = ctx.saved_tensors
        w = _float(weight).flatten(1)
        d = _float(grad).flatten(1)
        sum_d = d.sum(1, keepdim=True)
        dot = torch.bmm(d.unsqueeze(1), w.unsqueeze(2)).view(-1, 1)  # sum(G * W), no temporary
        grad_gain = s * (dot - mean * sum_d)  # sum(G * x)
        a = s * _float(gain).view(-1, 1)
        b = -k * s * a * grad_gain
        c = -a * sum_d / w.shape[1] - b * mean
        grad_weight = torch.addcmul(c, d, a).addcmul_(w, b)  # a * G + b * W + c
        return (grad_weight.view_as(weight).to(weight.dtype) if ctx.needs_input_grad[0] else None,
                grad_gain.view_as(gain).to(gain.dtype) if ctx.needs_input_grad[1] else None,
                None, None)


def inference_cache_active(module: nn.Module) -> bool:
    """True where derived weights may be cached: eval mode with gradients disabled, outside
    ``torch.compile`` and tracing (which must see the whole computation)."""
    return not (module.training or torch.is_grad_enabled() or torch.compiler.is_compiling()
                or torch.jit.is_tracing())


# oneDNN post-ops (name, algorithm) computing a nonlinearity as the conv writes its output; the
# tanh GELU, 3x dearer than the erf GELU in torch's CPU kernel, then costs nothing measurable
_ONEDNN_POST_OPS = {"gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh"), "relu": ("relu", ""),
                    "silu": ("swish", "")}


# private ops of PyTorch's CPU inference compiler (torch 2.x): checked once, not assumed
_HAS_ONEDNN_CONV = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
                    and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))


def _packed_conv_applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """True where the inference conv runs on oneDNN with a weight packed once, in place of
    ``F.conv2d``, which re-lays the weight out on every call: a batched float32 2-D conv on the
    CPU with numeric padding, outside autocast and dispatch modes (a FLOP counter must see an aten
    conv). The caller checks :func:`inference_cache_active`."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and conv.weight.dim() == 4
            and conv.weight.dtype == torch.float32 and not isinstance(conv.padding, str)
            and conv.padding_mode == "zeros" and _HAS_ONEDNN_CONV and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu")
            and not is_in_torch_dispatch_mode())


class _InferenceWeightCache:
    """Mixin for a conv with a ``standardized_weight()``: the weight its forward convolves."""

    def forward_weight(self, scale: float = 1.0) -> torch.Tensor:
        """``standardized_weight() * scale``, cached while :func:`inference_cache_active`.

        ``scale`` folds a constant factor of the conv's input into its weight
        (``conv(scale * x) == conv_with(scale * W)(x)``).
        """
        if inference_cache_active(self):
            return self._cached_weight(scale)
        weight = self.standardized_weight()
        return weight if scale == 1.0 else weight * scale

    def _cached_weight(self, scale: float, packed_for: torch.Size | None = None) -> torch.Tensor:
        """:meth:`forward_weight`'s cached value. ``packed_for``, an input's shape without the
        batch dim, asks for the weight in the blocked layout oneDNN picks for that input (an
        opaque mkldnn tensor; the batch size does not change it). The cache holds one weight at
        a time."""
        key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in self._parameters.values() if p is not None)
        key += (scale, packed_for)
        cached = self.__dict__.get("_inference_weight")
        if cached is None or cached[0] != key:
            self.__dict__.pop("_inference_weight", None)  # free the old weight before making the new one
            weight = self.standardized_weight()
            weight = weight if scale == 1.0 else weight * scale
            if packed_for is not None:
                weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    weight.to_mkldnn(), self.padding, self.stride, self.dilation, self.groups, (1, *packed_for))
            cached = self.__dict__["_inference_weight"] = (key, weight)
        return cached[1]

    def conv_standardized(self, x: torch.Tensor, scale: float = 1.0, act: str | None = None) -> torch.Tensor:
        """The conv of ``scale * x`` with the standardized weight (cached at inference, packed
        for oneDNN where :func:`_packed_conv_applies`), then the nonlinearity ``act`` (a name in
        ``NONLINEARITIES``, without gamma) if given: inside oneDNN's conv as a post-op, or in
        place on the conv's output when gradients are off."""
        if inference_cache_active(self) and _packed_conv_applies(self, x):
            post_op, algorithm = _ONEDNN_POST_OPS.get(act, ("none", ""))
            out = torch.ops.mkldnn._convolution_pointwise(
                x, self._cached_weight(scale, packed_for=x.shape[1:]), self.bias, self.padding, self.stride,
                self.dilation, self.groups, post_op, [], algorithm)
            if post_op != "none":
                return out
        else:
            out = self._conv_forward(x, self.forward_weight(scale), self.bias)
        if act is None:
            return out
        return (NONLINEARITIES if torch.is_grad_enabled() else NONLINEARITIES_INPLACE)[act](out)

    def train(self, mode: bool = True):
        self.__dict__.pop("_inference_weight", None)
        return super().train(mode)

    def __getstate__(self) -> dict:
        """Copies and pickles leave the cache behind (a packed weight cannot be copied)."""
        return {k: v for k, v in super().__getstate__().items() if k != "_inference_weight"}


def is_weight_standardized(module: nn.Module) -> bool:
    """True for the zoo's weight-standardized convs (which :func:`nfzoo.fuse` replaces)."""
    return isinstance(module, _InferenceWeightCache)


class ScaledStdConv2d(_InferenceWeightCache, nn.Conv2d):
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
        return _ScaledStandardize.apply(self.weight, self.gain, self.numerics, self.eps)

    def forward(self, x: torch.Tensor, input_scale: float = 1.0, act: str | None = None) -> torch.Tensor:
        """The conv of ``input_scale * x``, with the scale folded into the (cached) weight, then
        the nonlinearity ``act`` if given (see :meth:`conv_standardized`)."""
        if self.dynamic_same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return self.conv_standardized(x, input_scale, act)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", numerics={self.numerics}, eps={self.eps}" + (
            ", padding=same(dynamic)" if self.dynamic_same_pad else "")


class _WSConvMixin(_InferenceWeightCache):
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
        centered, _, var = _centered(self.weight, unbiased=True)
        denom = var.sqrt() + self.eps if self.eps_in == "std" else torch.sqrt(var + self.eps)
        return (centered / denom).view_as(self.weight).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_standardized(x)

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
