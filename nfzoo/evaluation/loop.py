"""The evaluation loop: this process's shard through the model, integer counts summed over
processes, images/s timed after the first batch (which pays for worker start-up and, with
``--compile``, compilation)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..torchrun import Runtime
from .sharding import gather_lists, max_over_processes, shard, sum_over_processes
from .input_error import EvaluationError
from .labels import RealLabels
from .accuracy import TOPK, percent, topk_correct
from .preprocess import eval_transform

__all__ = ["AMP_DTYPES", "EvalOptions", "EvalResult", "evaluate"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PROGRESS_EVERY = 10  # batches between running-accuracy updates (each one synchronises)


@dataclass(frozen=True)
class EvalOptions:
    batch_size: int = 256
    workers: int = 4
    amp: str | None = None  # a key of AMP_DTYPES, or None for fp32
    channels_last: bool = False
    strict: bool = False  # stop at the first unreadable image instead of counting it
    progress: bool = True


@dataclass(frozen=True)
class EvalResult:
    images: int  # readable images evaluated, over all processes
    top1: float
    top5: float
    bad_images: list[str]  # names of unreadable images (not in ``images``)
    seconds: float
    images_per_sec: float
    real_top1: float | None = None
    real_top5: float | None = None


class _Shard(Dataset):
    """Items ``indices`` of ``source``, transformed: (image, label, index, readable)."""

    def __init__(self, source: Any, indices: range, transform: Callable, input_size: tuple[int, ...]):
        self.source, self.indices, self.transform, self.input_size = source, indices, transform, input_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        try:
            return self.transform(self.source.open(index)), self.source.labels[index], index, True
        except Exception:  # noqa: BLE001  PIL's decode failures have many types (OSError, SyntaxError ...)
            return torch.zeros(self.input_size), self.source.labels[index], index, False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    model: nn.Module,
    source: Any,
    data_config: dict[str, Any],
    runtime: Runtime,
    options: EvalOptions = EvalOptions(),
    real_labels: RealLabels | None = None,
) -> EvalResult:
    """Top-1/top-5 of ``model`` (already on ``runtime.device``, in eval mode) over ``source``."""
    device = runtime.device
    dataset = _Shard(source, shard(len(source), runtime), eval_transform(data_config), data_config["input_size"])
    loader = DataLoader(dataset, batch_size=options.batch_size, num_workers=options.workers,
                        pin_memory=device.type == "cuda")
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    counts = torch.zeros(len(TOPK) + 1, dtype=torch.int64, device=device)  # images, top-1, top-5
    real_counts = torch.zeros(3, dtype=torch.int64)
    bad: list[str] = []
    timed_images = 0
    loop_start = start = time.perf_counter()
    bar = tqdm(total=len(dataset), unit="img", disable=not (options.progress and runtime.is_main),
               desc=f"rank 0 of {runtime.world_size}" if runtime.world_size > 1 else None)
    with torch.inference_mode(), torch.autocast(device.type, dtype=AMP_DTYPES.get(options.amp),
                                                enabled=options.amp is not None):
        for step, (x, y, index, readable) in enumerate(loader):
            if not readable.all():
                names = [source.names[i] for i in index[~readable].tolist()]
                if options.strict:
                    raise EvaluationError(f"unreadable or corrupt image {names[0]} (--strict stops at the first)")
                bad += names
            x = x.to(device, non_blocking=True, memory_format=memory_format)
            y, readable = y.to(device, non_blocking=True), readable.to(device, non_blocking=True)
            logits = model(x).float()[readable]
            counts[0] += readable.sum()
            counts[1:] += topk_correct(logits, y[readable])
            if real_labels is not None:
                names = [source.names[i] for i in index[readable.cpu()].tolist()]
                real_counts += real_labels.count(names, logits.topk(5, dim=1).indices.cpu())
            if step == 0:
                _sync(device)
                start = time.perf_counter()
            else:
                timed_images += len(x)
            bar.update(len(x))
            if step % PROGRESS_EVERY == 0:
                n, c1, c5 = counts.tolist()
                bar.set_postfix(top1=f"{percent(c1, n):.2f}", top5=f"{percent(c5, n):.2f}")
    _sync(device)
    n, c1, c5 = counts.tolist()
    bar.set_postfix(top1=f"{percent(c1, n):.2f}", top5=f"{percent(c5, n):.2f}")
    if timed_images == 0:  # at most one batch: its time is all there is
        timed_images, start = len(dataset), loop_start
    seconds = time.perf_counter() - start
    bar.close()

    n, c1, c5 = sum_over_processes(counts.cpu(), runtime).tolist()
    seconds = max_over_processes(seconds, runtime)
    timed_images = int(sum_over_processes(torch.tensor([timed_images]), runtime))
    bad = gather_lists(bad, runtime)
    real = {}
    if real_labels is not None:
        rn, r1, r5 = sum_over_processes(real_counts, runtime).tolist()
        real = {"real_top1": percent(r1, rn), "real_top5": percent(r5, rn)}
    return EvalResult(images=n, top1=percent(c1, n), top5=percent(c5, n), bad_images=bad, seconds=seconds,
                      images_per_sec=timed_images / seconds if seconds > 0 else float("nan"), **real)
