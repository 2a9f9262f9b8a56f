"""The evaluation loop: this process's shard through the model, integer counts summed over
processes, images/s timed after the first batch (which pays for worker start-up and, with
``--compile``, compilation).

Only an image that cannot be decoded is counted as bad and left out; a failure to preprocess a
decoded image, or to read the data source, is a problem with the run's settings or data and
stops the run with an :class:`EvaluationError`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..errors import EvaluationError
from ..torchrun import Runtime
from .sharding import gather_lists, max_over_processes, shard, sum_over_processes
from .labels import RealLabels
from .accuracy import TOPK, percent, topk_correct
from .preprocess import eval_transform
from .sources import UndecodableImage

__all__ = ["AMP_DTYPES", "EvalOptions", "EvalResult", "evaluate"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PROGRESS_EVERY = 10  # batches between running-accuracy updates (each one synchronises)
# The progress bar without tqdm's own rate (images over all the time, first batch included):
# images/s comes from the same _Throughput as the result.
BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


@dataclass(frozen=True)
class EvalOptions:
    batch_size: int = 256
    workers: int = 4
    amp: str | None = None  # a key of AMP_DTYPES, or None for fp32
    channels_last: bool = False
    strict: bool = False  # stop at the first undecodable image instead of counting it
    progress: bool = True
    resize: str = "pil"  # see nfzoo.evaluation.preprocess.RESIZES


@dataclass(frozen=True)
class EvalResult:
    images: int  # decoded images evaluated, over all processes
    top1: float
    top5: float
    bad_images: list[str]  # paths (relative to the data folder) of undecodable images, not in ``images``
    seconds: float
    images_per_sec: float
    real_top1: float | None = None
    real_top5: float | None = None


class _Shard(Dataset):
    """Items ``indices`` of ``source``, transformed: (image, label, index, decoded, problem).
    ``decoded`` is False for an undecodable image; ``problem`` describes any other failure
    (empty when there is none), for the main process to stop the run with."""

    def __init__(self, source: Any, indices: range, transform: Callable, input_size: tuple[int, ...]):
        self.source, self.indices, self.transform, self.input_size = source, indices, transform, input_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        label, blank = self.source.labels[index], torch.zeros(self.input_size)
        try:
            image = self.source.open(index)
        except UndecodableImage:
            return blank, label, index, False, ""
        except Exception as e:  # noqa: BLE001  reported in the main process, which stops the run
            return blank, label, index, True, f"reading it failed ({type(e).__name__}: {e})"
        try:
            return self.transform(image), label, index, True, ""
        except Exception as e:  # noqa: BLE001  reported in the main process, which stops the run
            return blank, label, index, True, f"preprocessing it failed ({type(e).__name__}: {e})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Throughput:
    """Images per second after the first batch, which pays for worker start-up and compilation
    (over all of them when there is only one batch). The progress bar and the result read the
    same figure."""

    def __init__(self) -> None:
        self.loop_start = time.perf_counter()
        self.start: float | None = None
        self.images = self.timed_images = 0

    def batch_done(self, images: int, device: torch.device) -> None:
        self.images += images
        if self.start is None:
            _sync(device)
            self.start = time.perf_counter()
        else:
            self.timed_images += images

    def measured(self) -> tuple[int, float]:
        """(images, seconds) the rate is computed from."""
        if self.timed_images == 0:
            return self.images, time.perf_counter() - self.loop_start
        return self.timed_images, time.perf_counter() - self.start



def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


def _show(bar: tqdm, counts: torch.Tensor, images_per_sec: float) -> None:
    n, c1, c5 = counts.tolist()
    bar.set_postfix_str(f"top1={percent(c1, n):.2f}, top5={percent(c5, n):.2f}, img/s={images_per_sec:.1f}")


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
    transform = eval_transform(data_config, options.resize)
    dataset = _Shard(source, shard(len(source), runtime), transform, data_config["input_size"])
    loader = DataLoader(dataset, batch_size=options.batch_size, num_workers=options.workers,
                        pin_memory=device.type == "cuda")
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    counts = torch.zeros(len(TOPK) + 1, dtype=torch.int64, device=device)  # images, top-1, top-5
    real_counts = torch.zeros(3, dtype=torch.int64)
    bad: list[str] = []
    bar = tqdm(total=len(dataset), unit="img", disable=not (options.progress and runtime.is_main),
               desc=f"rank 0 of {runtime.world_size}" if runtime.world_size > 1 else None, bar_format=BAR_FORMAT)
    clock = _Throughput()
    with torch.inference_mode(), torch.autocast(device.type, dtype=AMP_DTYPES.get(options.amp),
                                                enabled=options.amp is not None):
        for step, (x, y, index, decoded, problems) in enumerate(loader):
            for i, problem in zip(index.tolist(), problems):
                if problem:
                    raise EvaluationError(f"{source.names[i]}: {problem}. This is not a bad image but a problem "
                                          "with the preprocessing settings or the data source; the run stops")
            if not decoded.all():
                names = [source.names[i] for i in index[~decoded].tolist()]
                if options.strict:
                    raise EvaluationError(f"unreadable or corrupt image {names[0]} (--strict stops at the first)")
                bad += names
            x = x.to(device, non_blocking=True, memory_format=memory_format)
            y, decoded = y.to(device, non_blocking=True), decoded.to(device, non_blocking=True)
            logits = model(x).float()[decoded]
            counts[0] += decoded.sum()
            counts[1:] += topk_correct(logits, y[decoded])
            if real_labels is not None:
                names = [source.names[i] for i in index[decoded.cpu()].tolist()]
                real_counts += real_labels.count(names, logits.topk(5, dim=1).indices.cpu())
            clock.batch_done(len(x), device)
            bar.update(len(x))
            if step % PROGRESS_EVERY == 0:
                _show(bar, counts, _rate(*clock.measured()))
    _sync(device)
    timed_images, seconds = clock.measured()
    _show(bar, counts, _rate(timed_images, seconds))
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
                      images_per_sec=_rate(timed_images, seconds), **real)
