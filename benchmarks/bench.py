"""Speed of nfzoo's NFNets against timm's dm_nfnet_* on the same weights.

``python -m benchmarks.bench`` (``make bench``) measures, per model: batch-1 inference latency, large-batch inference throughput (nfzoo's models through
:func:`nfzoo.fuse`, timm's as they are), training-step throughput (forward, backward, AGC, SGD),
the peak memory a training step allocates above the weights, the achieved inference TFLOP/s (on
CUDA also as a share of the device's dense bf16 peak), AGC alone (nfzoo's ``adaptive_grad_clip_``
against ``timm.utils.adaptive_clip_grad``) and the logits' difference to timm's. Every ratio is
the median of per-round ratios (:func:`benchmarks.measure.speedups`), > 1 meaning nfzoo is better.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import timm
import torch
import torch.nn as nn
from timm.utils.agc import adaptive_clip_grad

from nfzoo.cli import ArgumentParser, device, non_negative_int, positive_int, run_cli
from nfzoo.machine import device_name
from nfzoo.optim import adaptive_grad_clip_

from .measure import (VARIANTS, AgcTimes, Sizes, agc_times, build_models, dense_bf16_peak, forward_flops, fused,
                      inference_call, peak_step_memory, speedup_quartiles, speedups, time_rounds, train_step,
                      with_flags)

__all__ = ["PROG", "CPU_SIZES", "GPU_SIZES", "METRICS", "Metric", "BenchResults", "parse_args", "run",
           "format_results", "describe_device", "main"]

PROG = "python -m benchmarks.bench"
CPU_SIZES = Sizes()  # float32: a few minutes on 2 cores
GPU_SIZES = Sizes(img_size=256, infer_batch=256, train_batch=64, iters=20, warmup=5, device="cuda")


class Metric(NamedTuple):
    key: str
    title: str
    higher_is_better: bool


METRICS = (
    Metric("latency_ms", "batch-1 latency (ms)", False),
    Metric("infer_img_s", "inference (img/s)", True),
    Metric("infer_tflops", "inference TFLOP/s", True),
    Metric("infer_pct_peak", "% of dense bf16 peak", True),
    Metric("train_img_s", "train step (img/s)", True),
    Metric("train_peak_mib", "train step peak (MiB)", False),
)


@dataclass
class BenchResults:
    """``models``: per model label (timm's first), its metrics: a value under each :data:`METRICS`
    key, and for a timed one ``<key>_speedup`` (the median per-round ratio to timm's) and
    ``<key>_speedup_quartiles``. ``logits_diff``: per nfzoo label, the largest absolute logit
    difference to timm's, relative to timm's largest logit."""

    models: dict[str, dict[str, Any]]
    agc: AgcTimes
    logits_diff: dict[str, float]


def _labelled(sizes: Sizes) -> dict[str, nn.Module]:
    """The compared models by label, timm's first."""
    ref, zoo = build_models(sizes)
    return {f"timm dm_nfnet_{sizes.variant}": ref} | {f"nfzoo nfnet_{sizes.variant} ({numerics})": model
                                                     for numerics, model in zoo.items()}


def _timed(times: dict[str, list[float]], ref: str, key: str, value: Callable[[float], float]) -> dict[str, dict]:
    """Per label: ``value`` of its median seconds under ``key``, its speedup and their quartiles."""
    ratio, spread = speedups(times, ref), speedup_quartiles(times, ref)
    return {label: {key: value(statistics.median(ts)), f"{key}_speedup": ratio[label],
                    f"{key}_speedup_quartiles": spread[label]} for label, ts in times.items()}


def _inference(models: dict[str, nn.Module], ref: str, sizes: Sizes) -> dict[str, dict]:
    """Batch-1 latency and large-batch images/s: timm's model as it is, nfzoo's through ``fuse``."""
    timed = {label: m if label == ref else fused(m, sizes) for label, m in models.items()}
    out: dict[str, dict] = {label: {} for label in timed}
    for key, batch in (("latency_ms", 1), ("infer_img_s", sizes.infer_batch)):
        x = sizes.inputs(batch)
        times = time_rounds({label: inference_call(m, x, sizes) for label, m in timed.items()}, sizes)
        value = (lambda s: s * 1e3) if batch == 1 else (lambda s: batch / s)
        for label, row in _timed(times, ref, key, value).items():
            out[label] |= row
    return out


def _training(models: dict[str, nn.Module], ref: str, sizes: Sizes) -> dict[str, dict]:
    """Training-step images/s and peak memory; timm's model clips with timm's AGC, nfzoo's with nfzoo's."""
    steps = {label: train_step(m, adaptive_clip_grad if label == ref else adaptive_grad_clip_, sizes)
             for label, m in models.items()}
    out = _timed(time_rounds(steps, sizes), ref, "train_img_s", lambda s: sizes.train_batch / s)
    for label, step in steps.items():
        out[label]["train_peak_mib"] = peak_step_memory(step, sizes) / 2**20
        models[label].zero_grad(set_to_none=True)
    return out


def _logits_diff(models: dict[str, nn.Module], ref: str, sizes: Sizes) -> dict[str, float]:
    x = sizes.inputs(2)
    with torch.no_grad(), sizes.autocast():
        logits = {label: m.eval()(x).float() for label, m in models.items()}
    scale = logits[ref].abs().max()
    return {label: ((v - logits[ref]).abs().max() / scale).item() for label, v in logits.items() if label != ref}


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    print(f"  [{name}: {time.perf_counter() - start:.0f} s]", flush=True)


def run(sizes: Sizes) -> BenchResults:
    """Measure every model, metric by metric (every model in turn within each timed round);
    prints the table and returns the figures."""
    torch.manual_seed(0)
    with _stage("build"):
        models = _labelled(sizes)
    ref = next(iter(models))
    logits_diff = _logits_diff(models, ref, sizes)  # before a training step changes the weights
    with _stage("inference"):
        rows = _inference(models, ref, sizes)
    with _stage("training"):
        for label, row in _training(models, ref, sizes).items():
            rows[label] |= row
    with _stage("agc"):
        agc = agc_times(models[ref], sizes)
    flops = forward_flops(models[ref], sizes)
    peak = dense_bf16_peak(torch.cuda.get_device_name(sizes.device)) if sizes.gpu else None
    for row in rows.values():
        row["infer_tflops"] = flops * row["infer_img_s"] / 1e12
        row["infer_tflops_speedup"] = row["infer_img_s_speedup"]  # the same work per image
        if peak:
            row["infer_pct_peak"] = 100 * row["infer_tflops"] / peak
    results = BenchResults(rows, agc, logits_diff)
    print(format_results(results, sizes))
    return results


def format_results(results: BenchResults, sizes: Sizes) -> str:
    """A plain-text table; each nfzoo value has its ratio to timm's (> 1: nfzoo better): for a
    timed metric the median per-round ratio and its quartiles, for the others the ratio of the values."""
    labels = list(results.models)
    ref = results.models[labels[0]]
    width = max(map(len, labels)) + 2
    lines = [f"{'metric':<24}" + "".join(f"{label:>{width}}" for label in labels)]
    for key, title, higher in METRICS:
        if key not in ref:
            continue
        row = f"{title:<24}"
        for label in labels:
            v = results.models[label][key]
            speedup = results.models[label].get(f"{key}_speedup", (v / ref[key]) if higher else (ref[key] / v))
            spread = results.models[label].get(f"{key}_speedup_quartiles")
            spread = f", {spread[0]:.2f}-{spread[1]:.2f}" if spread else ""
            ratio = "" if label == labels[0] else f" ({speedup:.2f}x{spread})"
            row += f"{f'{v:.4g}{ratio}':>{width}}"
        lines.append(row)
    agc = results.agc
    lines.append(f"AGC over {sizes.variant.upper()}'s params: timm {agc.timm_ms:.1f} ms, nfzoo "
                 f"{agc.nfzoo_ms:.1f} ms ({agc.speedup:.2f}x)")
    diffs = ", ".join(f"{label}: {v:.2e}" for label, v in results.logits_diff.items())
    lines.append(f"logits max abs diff vs timm, relative to max |logit|: {diffs}")
    return "\n".join(lines)


def describe_device(sizes: Sizes) -> str:
    name = device_name(torch.device(sizes.device))
    if sizes.gpu:
        return f"{name}, bf16 autocast, channels_last"
    return f"{name}, {torch.get_num_threads()} threads, float32, NCHW inputs (nfzoo fused: channels_last weights)"


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)
    c, g = CPU_SIZES, GPU_SIZES
    p.add_argument("--variant", choices=VARIANTS, help=f"NFNet variant (default {c.variant})")
    p.add_argument("--device", type=device, help="cpu, cuda or cuda:N (default: cuda when torch sees a GPU)")
    p.add_argument("--img-size", type=positive_int, help=f"image side, px (default {c.img_size} CPU, {g.img_size} CUDA)")
    p.add_argument("--infer-batch", type=positive_int,
                   help=f"large-batch inference (default {c.infer_batch} CPU, {g.infer_batch} CUDA)")
    p.add_argument("--train-batch", type=positive_int,
                   help=f"training batch (default {c.train_batch} CPU, {g.train_batch} CUDA)")
    p.add_argument("--iters", type=positive_int,
                   help=f"timed rounds, medians reported (default {c.iters} CPU, {g.iters} CUDA)")
    p.add_argument("--warmup", type=non_negative_int,
                   help=f"untimed rounds first (default {c.warmup} CPU, {g.warmup} CUDA)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[Sizes, int | None]:
    """The sizes (the device's defaults with the flags given) and the CPU thread count asked for."""
    args = _parser().parse_args(argv)
    dev = getattr(args, "device", "cuda" if torch.cuda.is_available() else "cpu")
    defaults = GPU_SIZES if dev.startswith("cuda") else CPU_SIZES
    return with_flags(replace(defaults, device=dev), args), getattr(args, "threads", None)


def _main(argv: Sequence[str] | None) -> None:
    sizes, threads = parse_args(argv)
    if threads is not None:
        torch.set_num_threads(threads)
    if sizes.gpu:
        torch.backends.cudnn.benchmark = True
    print(f"nfzoo vs timm, NFNet-{sizes.variant.upper()} at {sizes.img_size} px on {describe_device(sizes)}; "
          f"batch 1 / {sizes.infer_batch} inference, {sizes.train_batch} training; "
          f"{sizes.iters} rounds after {sizes.warmup} warm-up, models in turn, each round starting with the next; "
          f"torch {torch.__version__}, timm {timm.__version__}", flush=True)
    run(sizes)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
