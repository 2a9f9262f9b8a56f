"""Running under ``torchrun``: one process per GPU (NCCL) or per CPU worker (gloo).

Evaluation needs no gradient synchronisation, so the model is not wrapped in DDP: every
process evaluates its own contiguous shard of the dataset and the integer counts are summed.
Unlike ``DistributedSampler``, the shards are not padded to equal length, so every image is
counted exactly once whatever the dataset size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Runtime", "start", "stop", "shard", "sum_over_processes", "max_over_processes", "gather_lists"]


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(device: str | None = None) -> Runtime:
    """The process's place in the run. Starts the process group when launched by torchrun
    (``WORLD_SIZE`` > 1) and none exists; uses an existing one as it is. ``device`` defaults to
    CUDA when available; a bare ``cuda`` means this process's ``LOCAL_RANK`` GPU."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return Runtime(rank, world, dev, owns)


def stop(runtime: Runtime) -> None:
    if runtime.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()


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
