"""Splitting the evaluation over the processes of a ``torchrun`` launch (set up by
:mod:`nfzoo.torchrun`) and combining their counts.

Evaluation needs no gradient synchronisation, so the model is not wrapped in DDP: every
process evaluates its own contiguous shard of the dataset and the integer counts are summed.
Unlike ``DistributedSampler``, the shards are not padded to equal length, so every image is
counted exactly once whatever the dataset size.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..torchrun import Runtime

__all__ = ["shard", "sum_over_processes", "max_over_processes", "gather_lists"]


def shard(size: int, runtime: Runtime) -> range:
    """This process's contiguous share of ``range(size)``; shares differ by at most one."""
    return range(size * runtime.rank // runtime.world_size, size * (runtime.rank + 1) // runtime.world_size)


def _reduce(t: torch.Tensor, op: dist.ReduceOp, runtime: Runtime) -> torch.Tensor:
    if runtime.world_size == 1:
        return t
    # NCCL reduces device tensors only; gloo reduces CPU tensors
    t = t.to(runtime.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=op)
    return t.cpu()


def sum_over_processes(t: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    return _reduce(t.clone(), dist.ReduceOp.SUM, runtime)


def max_over_processes(value: float, runtime: Runtime) -> float:
    return float(_reduce(torch.tensor([value], dtype=torch.float64), dist.ReduceOp.MAX, runtime))


def gather_lists(items: list, runtime: Runtime) -> list:
    """The concatenation, in rank order, of every process's ``items``."""
    if runtime.world_size == 1:
        return list(items)
    out = [None] * runtime.world_size
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]
