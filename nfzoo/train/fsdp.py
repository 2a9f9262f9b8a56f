"""Sharding a model with PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``).

FSDP2 shards every parameter on dim 0 but refuses 0-d parameters, and the NF models' SkipInit
gains are scalars (timm's ``dm_nfnet`` layout, kept so that the published weights load). Those
few scalars stay unsharded and replicated on every process; their gradients are averaged by
:func:`average_replicated_grads`, as FSDP2 averages the sharded ones. AGC then needs nothing
more: :func:`nfzoo.optim.adaptive_grad_clip_` handles the sharded DTensors.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["fully_shard_model", "average_replicated_grads"]


def fully_shard_model(model: nn.Module) -> list[nn.Parameter]:
    """``fully_shard`` each of ``model.stages`` (when it has them) and then the whole model, in
    the process group already set up (:func:`nfzoo.torchrun.start`).
    Returns the parameters left replicated (the 0-d ones)."""
    from torch.distributed.fsdp import fully_shard

    replicated = [p for p in model.parameters() if p.ndim == 0]
    for stage in getattr(model, "stages", ()):
        fully_shard(stage, ignored_params=set(replicated))
    fully_shard(model, ignored_params=set(replicated))
    return replicated


@torch.no_grad()
def average_replicated_grads(params: list[nn.Parameter]) -> None:
    """Average the gradients of replicated parameters over all processes (one all-reduce);
    call it after backward, before clipping and the optimizer step."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not dist.is_initialized():
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, v in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(v.view_as(g))
