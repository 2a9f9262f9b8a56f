"""The remaining normalizers of the batch-size ablation, as drop-in layers for an NCHW network.

Each takes the channel count first, like ``nn.BatchNorm2d``. Where torch already has the layer
it is reused: LayerNorm over (C, H, W) is ``nn.GroupNorm(1, C)`` and InstanceNorm with a
per-channel affine is ``nn.GroupNorm(C, C)`` (:func:`layer_norm`, :func:`instance_norm`), and
Weight Normalization is ``torch.nn.utils.parametrizations.weight_norm`` (:func:`weight_norm_conv2d`).
The three written here have no torch counterpart:

* :class:`BatchRenorm2d` -- Ioffe, "Batch Renormalization" (NeurIPS 2017, arXiv 1702.03275).
* :class:`BatchInstanceNorm2d` -- Nam & Kim, "Batch-Instance Normalization for Adaptively
  Style-Invariant Neural Networks" (NeurIPS 2018, arXiv 1805.07925).
* :class:`SwitchableNorm2d` -- Luo et al., "Differentiable Learning-to-Normalize via Switchable
  Normalization" (ICLR 2019, arXiv 1806.10779).

Batch statistics use the population (biased) variance, as the papers' equations do; running
variances are updated with it too. Given ``micro_batch``, the three normalize micro-batches of
that many images separately (:mod:`nfzoo.layers.ghost_batch`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ghost_batch import lerp_sequence, split_micro_batches

__all__ = [
    "BatchRenorm2d", "BatchInstanceNorm2d", "SwitchableNorm2d",
    "layer_norm", "instance_norm", "weight_norm_conv2d", "weight_norm_convs", "clamp_gates_",
]


def layer_norm(num_channels: int, eps: float = 1e-5, **kwargs) -> nn.GroupNorm:
    """Layer Normalization (Ba et al. 2016, arXiv 1607.06450) of a conv feature map: statistics over
    (C, H, W) per sample, per-channel affine -- GroupNorm with one group, as in the GN paper."""
    return nn.GroupNorm(1, num_channels, eps=eps, **kwargs)


def instance_norm(num_channels: int, eps: float = 1e-5, **kwargs) -> nn.GroupNorm:
    """Instance Normalization (Ulyanov et al. 2016, arXiv 1607.08022): statistics over (H, W) per
    sample and channel, per-channel affine -- GroupNorm with one channel per group."""
    return nn.GroupNorm(num_channels, num_channels, eps=eps, **kwargs)


def weight_norm_conv2d(*args, **kwargs) -> nn.Conv2d:
    """An ``nn.Conv2d`` (same arguments) with Weight Normalization (Salimans & Kingma 2016,
    arXiv 1602.07868): ``W = g * V / ||V||`` per output channel, through torch's parametrization."""
    return nn.utils.parametrizations.weight_norm(nn.Conv2d(*args, **kwargs), name="weight", dim=0)


def weight_norm_convs(model: nn.Module) -> nn.Module:
    """Weight Normalization on every ``nn.Conv2d`` of ``model`` (see :func:`weight_norm_conv2d`),
    keeping the function it computes. In place; returns the model."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.utils.parametrizations.weight_norm(module, name="weight", dim=0)
    return model


class _RunningStats(nn.Module):
    """Per-channel affine, running statistics and micro-batches, shared by the batch-dependent
    norms here. ``micro_batch``: training statistics per micro-batch of this many images (None:
    the whole batch)."""

    def __init__(self, num_channels: int, eps: float, momentum: float, device=None, dtype=None,
                 micro_batch: int | None = None):
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.momentum = momentum
        self.micro_batch = micro_batch
        dd = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(num_channels, **dd))
        self.bias = nn.Parameter(torch.zeros(num_channels, **dd))
        self.register_buffer("running_mean", torch.zeros(num_channels, **dd))
        self.register_buffer("running_var", torch.ones(num_channels, **dd))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    def _micro_batches(self, x: torch.Tensor) -> torch.Tensor:
        """The (checked) batch as (micro-batches, images, C, H, W)."""
        self._check(x)
        return split_micro_batches(x, self.micro_batch)

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Take in the statistics of each micro-batch (rows of ``mean``, ``var``: (k, C)) in turn;
        returns the running mean and variance each one found (k, C)."""
        means = lerp_sequence(self.running_mean, mean.flatten(1), self.momentum)
        variances = lerp_sequence(self.running_var, var.flatten(1), self.momentum)
        self.running_mean.copy_(means[-1])
        self.running_var.copy_(variances[-1])
        self.num_batches_tracked += len(means) - 1
        return means[:-1], variances[:-1]

    def _affine(self, x_hat: torch.Tensor) -> torch.Tensor:
        return x_hat * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"{type(self).__name__} expects (N, {self.num_channels}, H, W), got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        micro = "" if self.micro_batch is None else f", micro_batch={self.micro_batch}"
        return f"{self.num_channels}, eps={self.eps}, momentum={self.momentum}{micro}"


class BatchRenorm2d(_RunningStats):
    """Batch Renormalization (Ioffe 2017, arXiv 1702.03275).

    In training, ``x_hat = (x - mu_B) / sigma_B * r + d`` with
    ``r = clip(sigma_B / sigma, 1/r_max, r_max)`` and ``d = clip((mu_B - mu) / sigma, -d_max, d_max)``,
    both treated as constants by backprop, where ``mu, sigma`` are the running mean and
    ``sqrt(running_var + eps)``. Evaluation normalizes with the running statistics, so training
    and inference agree even at tiny batches. The paper starts as plain batch norm
    (``r_max = 1, d_max = 0``) and relaxes the limits; ``warmup_steps`` ramps them linearly over
    that many training batches (0: the limits apply from the start).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float = 0.01, r_max: float = 3.0,
                 d_max: float = 5.0, warmup_steps: int = 0, device=None, dtype=None, micro_batch: int | None = None):
        super().__init__(num_channels, eps, momentum, device, dtype, micro_batch)
        if r_max < 1 or d_max < 0:
            raise ValueError(f"need r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
        self.r_max = r_max
        self.d_max = d_max
        self.warmup_steps = warmup_steps

    def limits(self, ahead: int = 0) -> tuple[float, float]:
        """The ``(r_max, d_max)`` of the batch ``ahead`` batches after the current one (warmup ramp)."""
        if self.warmup_steps <= 0:
            return self.r_max, self.d_max
        t = min(1.0, (self.num_batches_tracked.item() + ahead) / self.warmup_steps)
        return 1.0 + t * (self.r_max - 1.0), t * self.d_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self._check(x)
            return self._affine(F.batch_norm(x, self.running_mean, self.running_var, eps=self.eps))
        xs = self._micro_batches(x)
        var_b, mean_b = torch.var_mean(xs, dim=(1, 3, 4), keepdim=True, correction=0)  # (k, 1, C, 1, 1)
        sigma_b = torch.sqrt(var_b + self.eps)
        with torch.no_grad():
            r_max, d_max = self.limits()
            if self.warmup_steps > 0 and len(xs) > 1:  # each micro-batch at its own point of the ramp
                limits = x.new_tensor([self.limits(i) for i in range(len(xs))]).view(-1, 2, 1, 1, 1)
                r_max, d_max = limits[:, :1], limits[:, 1:]
            mean, var = (s.view_as(mean_b) for s in self._track(mean_b, var_b))
            sigma = torch.sqrt(var + self.eps)
            r = torch.clamp(sigma_b / sigma, 1.0 / r_max, r_max)
            d = torch.clamp((mean_b - mean) / sigma, -d_max, d_max)
        return self._affine(((xs - mean_b) / sigma_b * r + d).flatten(0, 1))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", r_max={self.r_max}, d_max={self.d_max}, warmup_steps={self.warmup_steps}"


class BatchInstanceNorm2d(_RunningStats):
    """Batch-Instance Normalization (Nam & Kim 2018, arXiv 1805.07925).

    ``y = (rho * x_hat_BN + (1 - rho) * x_hat_IN) * gamma + beta`` with a learnable per-channel
    gate ``rho`` initialised to 1 (pure batch norm) and kept in [0, 1] by clipping after each
    parameter update, as in the paper: call :func:`clamp_gates_` after ``optimizer.step()``
    (e.g. as its ``register_step_post_hook``, as reproduction/experiments.py does). The batch
    part uses running statistics in evaluation.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float = 0.1, device=None, dtype=None,
                 micro_batch: int | None = None):
        super().__init__(num_channels, eps, momentum, device, dtype, micro_batch)
        self.rho = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            xs = self._micro_batches(x)
            var_b, mean_b = torch.var_mean(xs, dim=(1, 3, 4), keepdim=True, correction=0)
            self._track(mean_b, var_b)
            x_bn = ((xs - mean_b) * torch.rsqrt(var_b + self.eps)).flatten(0, 1)
        else:
            self._check(x)
            x_bn = F.batch_norm(x, self.running_mean, self.running_var, eps=self.eps)
        x_in = F.instance_norm(x, eps=self.eps)
        rho = self.rho.view(1, -1, 1, 1)
        return self._affine(rho * x_bn + (1 - rho) * x_in)


class SwitchableNorm2d(_RunningStats):
    """Switchable Normalization (Luo et al. 2018, arXiv 1806.10779).

    Normalizes with ``mu = sum_k w_k mu_k`` and ``var = sum_k w'_k var_k`` over
    k in {IN, LN, BN}, where ``w = softmax(mean_weight)`` and ``w' = softmax(var_weight)`` are
    learned importance weights (initialised equal), then a per-channel affine. LN and BN
    statistics are computed from the IN ones, as in the paper. The BN part uses running
    statistics in evaluation.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float = 0.1, device=None, dtype=None,
                 micro_batch: int | None = None):
        super().__init__(num_channels, eps, momentum, device, dtype, micro_batch)
        self.mean_weight = nn.Parameter(torch.ones(3, device=device, dtype=dtype))
        self.var_weight = nn.Parameter(torch.ones(3, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        var_in, mean_in = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        second_in = var_in + mean_in**2
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = second_in.mean(1, keepdim=True) - mean_ln**2
        if self.training:  # per micro-batch: (k, 1, C, 1, 1), then one row per image
            mean_bn = split_micro_batches(mean_in, self.micro_batch).mean(1, keepdim=True)
            var_bn = split_micro_batches(second_in, self.micro_batch).mean(1, keepdim=True) - mean_bn**2
            self._track(mean_bn, var_bn)
            mean_bn, var_bn = (s.expand(-1, len(x) // len(s), -1, -1, -1).flatten(0, 1) for s in (mean_bn, var_bn))
        else:
            mean_bn = self.running_mean.view(1, -1, 1, 1)
            var_bn = self.running_var.view(1, -1, 1, 1)
        wm = self.mean_weight.softmax(0)
        wv = self.var_weight.softmax(0)
        mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
        var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
        return self._affine((x - mean) * torch.rsqrt(var + self.eps))


@torch.no_grad()
def clamp_gates_(model: nn.Module) -> None:
    """Clip every Batch-Instance Normalization gate of ``model`` to [0, 1] (after an update)."""
    for module in model.modules():
        if isinstance(module, BatchInstanceNorm2d):
            module.rho.clamp_(0.0, 1.0)
