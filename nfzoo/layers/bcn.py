"""Batch-Channel Normalization (Qiao et al., "Micro-Batch Training with Batch-Channel
Normalization and Weight Standardization", arXiv 1903.10520), as in the authors' ImageNet release.

BCN normalizes twice: first over the batch (a BatchNorm over the channels, the module ``pbn``),
then over channel groups of each sample (a group norm without running statistics) followed by
an affine transform *per group* (``weight`` and ``bias`` of shape ``(1, G, 1)``). The layout
matches the authors' checkpoints key for key.

The batch part comes in two kinds, chosen by ``batch_stats``:

* ``'batch'`` (:class:`SyncedBatchNorm2d`): ordinary batch statistics in training, running
  statistics in eval (momentum 0.1, eps 1e-5). This is how the released ImageNet models were
  trained.
* ``'estimate'`` (:class:`EstimatedBatchNorm2d`): the authors' estimated statistics for
  micro-batch training. Training updates running estimates from the micro-batch (without
  gradient) and always normalizes with the estimates, so no gradient flows between samples
  and tiny batches give the same normalization as large ones.

Batch statistics are each process's own by default, as in the release, which trained with
``nn.DataParallel`` (statistics per GPU). With ``synchronize=True`` (or
:func:`synchronize_batch_stats` on a built model), under ``torch.distributed`` (initialized,
world size > 1) the statistics seen in training are those of the global batch, like
``torch.nn.SyncBatchNorm``, on any backend (gloo on CPU included); every process must then run
the layer the same number of times.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

from .ghost_batch import lerp_sequence, split_micro_batches

__all__ = ["BatchChannelNorm2d", "BatchStats", "EstimatedBatchNorm2d", "SyncedBatchNorm2d", "synchronize_batch_stats"]

BatchStats = Literal["batch", "estimate"]


def _synchronized(module: nn.Module) -> bool:
    """Whether ``module`` (a batch part with ``synchronize`` and ``process_group``) pools its
    statistics over processes now."""
    return (module.synchronize and dist.is_available() and dist.is_initialized()
            and dist.get_world_size(module.process_group) > 1)


def _channel_mean(x: torch.Tensor, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean of ``x`` (N, C, ...) over every dim but C, and the number of elements
    averaged; over the processes of ``module.process_group`` when ``module`` synchronizes
    (differentiable: the gradient is all-reduced back, as SyncBatchNorm's backward does)."""
    dims = [0, *range(2, x.dim())]
    if not _synchronized(module):
        return x.mean(dims), x.new_tensor(float(x.numel() // x.shape[1]))
    sums = torch.cat([x.sum(dims), x.new_tensor([float(x.numel() // x.shape[1])])])
    sums = differentiable_all_reduce(sums, group=module.process_group)
    return sums[:-1] / sums[-1], sums[-1]


def _as_channels(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t.view(-1, *([1] * (dim - 2)))


@register_notrace_module  # FX keeps batch norms whole, as torch's own
class SyncedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that can take its training statistics from the global batch under
    ``torch.distributed`` (``synchronize=True``, on any backend); otherwise exactly
    ``nn.BatchNorm2d``, each process with its own statistics.

    The distributed path computes the mean, then the variance around it (two all-reduces of C
    values each), in float32, and updates the running variance with the unbiased global
    variance, as ``nn.SyncBatchNorm`` does.
    """

    def __init__(self, num_features: int, *args, process_group: dist.ProcessGroup | None = None,
                 synchronize: bool = False, **kwargs):
        super().__init__(num_features, *args, **kwargs)
        self.process_group = process_group
        self.synchronize = synchronize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript runs single-process
            if self.training and _synchronized(self):
                return self._forward_synchronized(x)
        # nn.BatchNorm2d's own forward, which TorchScript cannot reach through super()
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        running = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if running else None, self.running_var if running else None,
                            self.weight, self.bias, self.training or self.running_mean is None, momentum, self.eps)

    @torch.jit.unused
    def _forward_synchronized(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        xf = x.float()
        mean, count = _channel_mean(xf, self)
        var, _ = _channel_mean((xf - _as_channels(mean, x.dim())) ** 2, self)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        out = (xf - _as_channels(mean, x.dim())) * _as_channels(torch.rsqrt(var + self.eps), x.dim())
        if self.affine:
            out = out * _as_channels(self.weight, x.dim()) + _as_channels(self.bias, x.dim())
        return out.to(x.dtype)


@register_notrace_module
class EstimatedBatchNorm2d(nn.BatchNorm2d):
    """The authors' estimated batch normalization for micro-batch training ("EstBN").

    In training, without gradient, ``running_mean <- (1 - r) running_mean + r mean(x)`` and
    ``running_var <- (1 - r) running_var + r mean((x - old running_mean)^2)`` per channel, then
    the output is normalized with the updated estimates,
    ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``. Eval uses the estimates
    unchanged. With ``synchronize=True``, under ``torch.distributed`` the update uses the global
    batch's moments, so the estimates stay identical on every process.

    Given ``micro_batch``, a training batch is taken in as consecutive micro-batches of that many
    images, each updating the estimates and normalized with them in turn, as that many calls
    would (:mod:`nfzoo.layers.ghost_batch`; single-process only).

    Args:
        moving_speed: ``r`` above. Stored in the buffer ``estbn_moving_speed`` (the authors'
            name), so that it travels with checkpoints; loading a checkpoint without it (e.g.
            the released batch-statistics BCN weights) keeps this value. 0 (the authors'
            default) freezes the estimates: training then normalizes with the running statistics
            the weights came with; a speed above 0 lets them follow the data.
        synchronize: pool the moments over the processes of ``process_group``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        moving_speed: float = 0.0,
        process_group: dist.ProcessGroup | None = None,
        device=None,
        dtype=None,
        micro_batch: int | None = None,
        synchronize: bool = False,
    ):
        super().__init__(num_features, eps=eps, device=device, dtype=dtype)
        self.register_buffer("estbn_moving_speed", torch.full((1,), float(moving_speed), device=device))
        self.process_group = process_group
        self.synchronize = synchronize
        self.micro_batch = micro_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self._forward_training(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    @torch.jit.unused  # TorchScript'd models run it in eval mode
    def _forward_training(self, x):  # unannotated: TorchScript fails to resolve annotations of unused methods here
        self._check_input_dim(x)
        xs = split_micro_batches(x, self.micro_batch)
        if len(xs) > 1 and _synchronized(self):
            raise ValueError("micro_batch splits a process's batch for single-process training; under "
                             "torch.distributed each process's batch is already its own: leave micro_batch unset")
        mean, var = self._update_estimates(xs)
        if len(xs) == 1:  # the whole batch: torch's fused kernel
            return F.batch_norm(x, mean.flatten(), var.flatten(), self.weight, self.bias, False, 0.0, self.eps)
        x_hat = (xs - mean) * torch.rsqrt(var + self.eps)
        return x_hat.flatten(0, 1) * _as_channels(self.weight, 4) + _as_channels(self.bias, 4)

    @torch.no_grad()
    def _update_estimates(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Take in each micro-batch of ``xs`` (k, b, C, H, W) in turn; the estimates (mean, var)
        each is normalized with, as (k, 1, C, 1, 1) copies (a later update must not change what
        this call's backward reads)."""
        def channel_means(t: torch.Tensor) -> torch.Tensor:  # (k, C)
            if len(t) == 1:
                return _channel_mean(t[0], self)[0].unsqueeze(0)
            return t.mean((1, 3, 4))

        speed = self.estbn_moving_speed  # a tensor: no host read-back per call (a GPU sync)
        xf = xs.to(torch.promote_types(xs.dtype, torch.float32))  # half-precision inputs: float32 statistics
        means = lerp_sequence(self.running_mean.to(xf.dtype), channel_means(xf), speed)
        deviations = (xf - means[:-1].view(len(xs), 1, -1, 1, 1)) ** 2  # around the estimate before the update
        variances = lerp_sequence(self.running_var.to(xf.dtype), channel_means(deviations), speed)
        self.running_mean.copy_(means[-1])
        self.running_var.copy_(variances[-1])
        shape = (len(xs), 1, -1, 1, 1)
        return means[1:].view(shape).to(xs.dtype), variances[1:].view(shape).to(xs.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "estbn_moving_speed", self.estbn_moving_speed)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, moving_speed={self.estbn_moving_speed.item():g}"


class BatchChannelNorm2d(nn.Module):
    """Batch-Channel Normalization: ``pbn`` (batch part) then group normalization over
    ``num_groups`` groups of each sample (biased variance, eps 1e-5, no running statistics)
    with a per-group affine ``weight``/``bias`` of shape ``(1, num_groups, 1)``.

    Args:
        num_channels: C; must be divisible by ``num_groups``.
        num_groups: 32 in the authors' models.
        batch_stats: ``'batch'`` for ordinary (synchronized) batch statistics, as the released
            ImageNet models; ``'estimate'`` for the estimated statistics of micro-batch training.
        moving_speed: the estimates' moving speed ``r`` (``batch_stats='estimate'`` only; 0, the
            authors' default, freezes them).
        micro_batch: the estimates' micro-batches (``batch_stats='estimate'`` only; see
            :class:`EstimatedBatchNorm2d`).
        momentum: the batch part's running-statistics momentum (``batch_stats='batch'`` only).
        synchronize: pool the batch statistics over processes under torch.distributed; by
            default each process uses its own batch, as the release (``nn.DataParallel``).
        process_group: the processes whose batches are pooled (default: all).
    """

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 32,
        eps: float = 1e-5,
        batch_stats: BatchStats = "batch",
        momentum: float = 0.1,
        moving_speed: float = 0.0,
        process_group: dist.ProcessGroup | None = None,
        device=None,
        dtype=None,
        micro_batch: int | None = None,
        synchronize: bool = False,
    ):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(
                f"BatchChannelNorm2d: {num_channels} channels cannot be split into {num_groups} groups; "
                f"num_groups must divide num_channels")
        dd = dict(device=device, dtype=dtype)
        if batch_stats == "batch" and micro_batch is not None:
            raise ValueError("micro_batch applies to batch_stats='estimate' only")
        if batch_stats == "batch":
            self.pbn = SyncedBatchNorm2d(num_channels, eps=eps, momentum=momentum, process_group=process_group,
                                         synchronize=synchronize, **dd)
        elif batch_stats == "estimate":
            self.pbn = EstimatedBatchNorm2d(
                num_channels, eps=eps, moving_speed=moving_speed, process_group=process_group,
                micro_batch=micro_batch, synchronize=synchronize, **dd)
        else:
            raise ValueError(f"batch_stats must be 'batch' or 'estimate', got {batch_stats!r}")
        self.num_channels = num_channels
        self.num_groups = num_groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, num_groups, 1, **dd))
        self.bias = nn.Parameter(torch.zeros(1, num_groups, 1, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pbn(x)
        per_group = self.num_channels // self.num_groups
        weight = self.weight.reshape(-1).repeat_interleave(per_group)
        bias = self.bias.reshape(-1).repeat_interleave(per_group)
        return F.group_norm(x, self.num_groups, weight, bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}"


def synchronize_batch_stats(model: nn.Module, process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Make every BCN batch part of ``model`` pool its statistics over the processes of
    ``process_group`` (default: all) under torch.distributed, as ``nn.SyncBatchNorm`` does; in
    place, returns ``model``. Like ``nn.SyncBatchNorm.convert_sync_batchnorm`` for BCN backbones."""
    parts = [m.pbn for m in model.modules() if isinstance(m, BatchChannelNorm2d)]
    if not parts:
        raise ValueError(f"{type(model).__name__} has no BatchChannelNorm2d layer to synchronize")
    for pbn in parts:
        pbn.synchronize, pbn.process_group = True, process_group
    return model
