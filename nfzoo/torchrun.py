"""The process's place in a ``torchrun`` launch: the one process-group setup that training and
evaluation share. NCCL on GPUs, gloo on CPU; a plain ``python`` run is a world of one."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Runtime", "start", "stop"]


@dataclass(frozen=True)
class Runtime:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1


def start(device: str | None = None) -> Runtime:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1)
    when none exists yet; an existing one is used as it is. ``device`` defaults to CUDA when
    available; a bare ``cuda`` means this process's ``LOCAL_RANK`` GPU."""
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
    """Leave the process group if :func:`start` created it."""
    if runtime.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()
