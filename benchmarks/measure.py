"""What the benchmark and the GPU check share: the sizes of a comparison, timed rounds with
per-round ratios, the peak memory of a step, and the models and steps they compare.

CPU runs in float32 on NCHW inputs, CUDA in bf16 autocast with channels_last models and inputs.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import NamedTuple, TypeVar

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils.agc import adaptive_clip_grad
from torch.utils.flop_counter import FlopCounterMode

import nfzoo
from nfzoo.optim import adaptive_grad_clip_, agc_parameters

__all__ = ["DENSE_BF16_TFLOPS", "VARIANTS", "AGC_CLIP", "Sizes", "AgcTimes", "ClipFn", "dense_bf16_peak",
           "with_flags", "time_rounds", "speedups", "speedup_quartiles", "peak_step_memory", "build_models",
           "fused", "inference_call", "train_step", "agc_times", "forward_flops"]

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, keyed by a substring
# of torch.cuda.get_device_name(). Most specific first.
DENSE_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM
    "H200": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
}

# The NFNet variants both libraries have: timm's dm_nfnet_<variant> and nfzoo's nfnet_<variant>.
VARIANTS = tuple(name.removeprefix("dm_nfnet_") for name in timm.list_models("dm_nfnet_f*"))
AGC_CLIP = 0.01  # the clip of every training step and of AGC alone (DeepMind's for batch 4096)

ClipFn = Callable[[Iterable[torch.Tensor], float], None]  # adaptive_grad_clip_, timm's adaptive_clip_grad


def dense_bf16_peak(device_name: str) -> float | None:
    """The dense bf16 peak (TFLOP/s) of the GPU named ``device_name``; None when not in the table."""
    return next((v for k, v in DENSE_BF16_TFLOPS.items() if k in device_name), None)


@dataclass(frozen=True)
class Sizes:
    """The sizes of one comparison and where it runs."""

    variant: str = "f0"
    img_size: int = 128
    infer_batch: int = 16
    train_batch: int = 8
    iters: int = 8  # timed rounds
    warmup: int = 1  # untimed rounds first
    device: str = "cpu"

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.gpu else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA; nothing (float32) on the CPU."""
        return torch.autocast("cuda", torch.bfloat16) if self.gpu else contextlib.nullcontext()

    def inputs(self, batch: int) -> torch.Tensor:
        x = torch.randn(batch, 3, self.img_size, self.img_size, device=self.device)
        return x.contiguous(memory_format=self.memory_format)

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on the device, in the memory format the inputs have."""
        return model.to(self.device, memory_format=self.memory_format)


Config = TypeVar("Config")


def with_flags(config: Config, flags: argparse.Namespace) -> Config:
    """``config`` (a dataclass) with the fields that the command line gave (parsers declare
    their size flags with ``default=argparse.SUPPRESS``, so a flag left out is absent)."""
    given = vars(flags)
    return replace(config, **{f.name: given[f.name] for f in fields(config) if f.name in given})


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_rounds(fns: dict[str, Callable[[], object]], sizes: Sizes) -> dict[str, list[float]]:
    """Wall times in seconds of every function, called in turn once per round, ``sizes.iters``
    rounds after ``sizes.warmup`` untimed ones: the functions compared run under the same machine
    conditions round by round, so their per-round ratios hold even while the load drifts. Each
    round starts one function further along, so that none always runs first or always follows
    the same other one (on caches it left)."""
    times: dict[str, list[float]] = {label: [] for label in fns}
    labels = list(fns)
    for round_idx in range(sizes.warmup + sizes.iters):
        shift = round_idx % len(labels)
        for label in labels[shift:] + labels[:shift]:
            _sync(sizes.device)
            start = time.perf_counter()
            fns[label]()
            _sync(sizes.device)
            if round_idx >= sizes.warmup:
                times[label].append(time.perf_counter() - start)
    return times


def _round_ratios(times: dict[str, list[float]], ref_label: str) -> dict[str, list[float]]:
    return {label: [r / t for r, t in zip(times[ref_label], ts)] for label, ts in times.items()}


def speedups(times: dict[str, list[float]], ref_label: str) -> dict[str, float]:
    """Per label, the median over rounds of the reference's time divided by its own (> 1: faster)."""
    return {label: statistics.median(ratios) for label, ratios in _round_ratios(times, ref_label).items()}


def speedup_quartiles(times: dict[str, list[float]], ref_label: str) -> dict[str, tuple[float, float]]:
    """Per label, the first and third quartiles of the per-round speedups: how far the machine's
    drift moves the ratio between rounds."""
    def quartiles(ratios: list[float]) -> tuple[float, float]:
        if len(ratios) < 2:
            return ratios[0], ratios[0]
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        return q1, q3
    return {label: quartiles(ratios) for label, ratios in _round_ratios(times, ref_label).items()}


def peak_step_memory(fn: Callable[[], object], sizes: Sizes) -> int:
    """Bytes allocated at the peak of ``fn`` above what was allocated when it started."""
    if sizes.gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # CPU: replay the allocator events the profiler records
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def build_models(sizes: Sizes, numerics: Sequence[str] = ("timm", "deepmind")) -> tuple[nn.Module, dict[str, nn.Module]]:
    """timm's ``dm_nfnet_<variant>`` and nfzoo's ``nfnet_<variant>`` with each of ``numerics``
    (keyed by it), all with the same random weights, skip gains set to 1 so that the residual
    branches count; on the device, in the inputs' memory format."""
    ref = timm.create_model(f"dm_nfnet_{sizes.variant}", drop_path_rate=0.0)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("skipinit_gain"):
                p.fill_(1.0)
    zoo = {}
    for choice in numerics:
        zoo[choice] = timm.create_model(f"nfnet_{sizes.variant}", numerics=choice, drop_path_rate=0.0)
        zoo[choice].load_state_dict(ref.state_dict())
    return sizes.place(ref), {choice: sizes.place(m) for choice, m in zoo.items()}


def fused(model: nn.Module, sizes: Sizes) -> nn.Module:
    """``nfzoo.fuse`` of ``model`` for inputs of ``sizes.img_size``, in the inputs' memory format."""
    return sizes.place(nfzoo.fuse(model.eval(), input_size=(3, sizes.img_size, sizes.img_size)))


def inference_call(model: nn.Module, x: torch.Tensor, sizes: Sizes) -> Callable[[], object]:
    """One eval-mode forward of ``x`` under ``torch.inference_mode`` (and autocast on CUDA)."""
    model.eval()

    def call():
        with torch.inference_mode(), sizes.autocast():
            return model(x)
    return call


def train_step(model: nn.Module, clip: ClipFn, sizes: Sizes) -> Callable[[], None]:
    """One training step of ``model`` on a batch of ``sizes.train_batch``: forward, cross-entropy,
    backward, ``clip`` at :data:`AGC_CLIP` over every parameter but the classifier's weight, SGD
    (Nesterov momentum 0.9)."""
    model.train()
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    params = agc_parameters(model)
    x = sizes.inputs(sizes.train_batch)
    y = torch.randint(0, model.num_classes, (sizes.train_batch,), device=sizes.device)

    def step():
        sgd.zero_grad(set_to_none=True)
        with sizes.autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        clip(params, AGC_CLIP)
        sgd.step()
    return step


class AgcTimes(NamedTuple):
    timm_ms: float
    nfzoo_ms: float
    speedup: float  # median per-round ratio, timm's time / nfzoo's


def agc_times(model: nn.Module, sizes: Sizes) -> AgcTimes:
    """AGC alone over ``model``'s parameters (classifier weight excluded) on one backward's
    gradients: timm's ``adaptive_clip_grad`` against nfzoo's ``adaptive_grad_clip_``, in
    ``3 * sizes.iters`` rounds.

    Gradients are restored in place before every call, so neither side pays for allocating them;
    the restore's own median time is subtracted.
    """
    model.train()
    with sizes.autocast():
        model(sizes.inputs(2)).float().square().mean().backward()
    params = [p for p in agc_parameters(model) if p.grad is not None]
    saved = [p.grad.clone() for p in params]

    def restore():
        torch._foreach_copy_([p.grad for p in params], saved)

    def clip_with(clip: ClipFn) -> Callable[[], None]:
        def call():
            restore()
            clip(params, AGC_CLIP)
        return call
    times = time_rounds({"timm": clip_with(adaptive_clip_grad), "nfzoo": clip_with(adaptive_grad_clip_),
                         "restore": restore}, replace(sizes, iters=sizes.iters * 3))
    restore_s = statistics.median(times.pop("restore"))
    ms = {label: [(t - restore_s) * 1e3 for t in ts] for label, ts in times.items()}
    model.zero_grad(set_to_none=True)
    return AgcTimes(statistics.median(ms["timm"]), statistics.median(ms["nfzoo"]), speedups(ms, "timm")["nfzoo"])


def forward_flops(model: nn.Module, sizes: Sizes) -> float:
    """FLOPs (2 x MACs) of one image's forward pass."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(sizes.inputs(1))
    return float(counter.get_total_flops())
