"""Speed of nfzoo's NFNets against timm's ``dm_nfnet_*`` on the same weights (``eval/bench.py``).

Measures, per model: batch-1 inference latency, large-batch inference throughput, training
step throughput (forward, backward, AGC, SGD step), the peak memory a training step allocates
above the weights, and AGC alone (nfzoo's fused clip vs ``timm.utils.adaptive_clip_grad``).
CPU runs in float32 on NCHW inputs, timm's model in its default (NCHW) layout, nfzoo's as
:func:`nfzoo.fuse` returns it (``channels_last`` conv weights, its default); CUDA in bf16 autocast
with channels_last models and inputs. Both report the achieved inference
TFLOP/s, CUDA also as a share of the device's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils.agc import adaptive_clip_grad
from torch.utils.flop_counter import FlopCounterMode

from .fuse import fuse
from .machine import device_name
from .optim import AGC, adaptive_grad_clip_
from .optim.param_groups import agc_parameters

__all__ = ["BenchConfig", "DENSE_BF16_TFLOPS", "build_models", "run", "main"]

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


def device_peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in DENSE_BF16_TFLOPS.items() if k in device_name), None)


@dataclass
class BenchConfig:
    variant: str = "f0"
    img_size: int = 128
    infer_batch: int = 16
    train_batch: int = 8
    iters: int = 8
    warmup: int = 1
    device: str = "cpu"

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_rounds(fns: dict[str, Callable[[], object]], cfg: BenchConfig) -> dict[str, list[float]]:
    """Wall times in seconds of every function, called in turn once per round, ``cfg.iters``
    rounds after ``cfg.warmup`` untimed ones: the functions compared run under the same machine
    conditions round by round, so their per-round ratios hold even while the load drifts. Each
    round starts one function further along, so that none always runs first or always follows
    the same other one (on caches it left)."""
    times: dict[str, list[float]] = {label: [] for label in fns}
    labels = list(fns)
    for round_idx in range(cfg.warmup + cfg.iters):
        shift = round_idx % len(labels)
        for label in labels[shift:] + labels[:shift]:
            _sync(cfg.device)
            start = time.perf_counter()
            fns[label]()
            _sync(cfg.device)
            if round_idx >= cfg.warmup:
                times[label].append(time.perf_counter() - start)
    return times


def _round_ratios(times: dict[str, list[float]], ref_label: str) -> dict[str, list[float]]:
    return {label: [r / t for r, t in zip(times[ref_label], ts)] for label, ts in times.items()}


def speedups(times: dict[str, list[float]], ref_label: str) -> dict[str, float]:
    """Per model, the median over rounds of the reference's time divided by its own (> 1: faster)."""
    return {label: statistics.median(ratios) for label, ratios in _round_ratios(times, ref_label).items()}


def speedup_quartiles(times: dict[str, list[float]], ref_label: str) -> dict[str, tuple[float, float]]:
    """Per model, the first and third quartiles of the per-round speedups: how far the machine's
    drift moves the ratio between rounds."""
    def quartiles(ratios: list[float]) -> tuple[float, float]:
        if len(ratios) < 2:
            return ratios[0], ratios[0]
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        return q1, q3
    return {label: quartiles(ratios) for label, ratios in _round_ratios(times, ref_label).items()}


def peak_step_memory(fn: Callable[[], object], cfg: BenchConfig) -> int:
    """Bytes allocated at the peak of ``fn`` above what was allocated when it started."""
    if cfg.gpu:
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


def _autocast(cfg: BenchConfig) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", torch.bfloat16) if cfg.gpu else contextlib.nullcontext()


def _inputs(batch: int, cfg: BenchConfig) -> torch.Tensor:
    x = torch.randn(batch, 3, cfg.img_size, cfg.img_size, device=cfg.device)
    return x.contiguous(memory_format=torch.channels_last) if cfg.gpu else x


def build_models(cfg: BenchConfig) -> dict[str, nn.Module]:
    """timm's ``dm_nfnet_<variant>`` and nfzoo's ``nfnet_<variant>`` (timm's and DeepMind's
    numerics) with the same (random) weights, skip gains switched on."""
    import nfzoo  # noqa: F401  registers nfnet_* with timm

    ref = timm.create_model(f"dm_nfnet_{cfg.variant}", drop_path_rate=0.0)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("skipinit_gain"):
                p.fill_(1.0)
    models = {f"timm dm_nfnet_{cfg.variant}": ref}
    for numerics in ("timm", "deepmind"):
        zoo = timm.create_model(f"nfnet_{cfg.variant}", numerics=numerics, drop_path_rate=0.0)
        zoo.load_state_dict(ref.state_dict())
        models[f"nfzoo nfnet_{cfg.variant} ({numerics})"] = zoo
    memory_format = torch.channels_last if cfg.gpu else torch.contiguous_format
    return {k: m.to(cfg.device, memory_format=memory_format) for k, m in models.items()}


def _bench_inference(models: dict[str, nn.Module], cfg: BenchConfig) -> dict[str, dict[str, float]]:
    """Eval mode under ``torch.inference_mode``: timm's model as it is, nfzoo's after the explicit
    inference step :func:`nfzoo.fuse` (plain convs, constant factors folded in)."""
    size = (3, cfg.img_size, cfg.img_size)
    models = {label: fuse(m.eval(), input_size=size) if label.startswith("nfzoo") else m.eval()
              for label, m in models.items()}
    out: dict[str, dict[str, float]] = {label: {} for label in models}
    for metric, batch in (("latency_ms", 1), ("infer_img_s", cfg.infer_batch)):
        x = _inputs(batch, cfg)

        def forward(model: nn.Module) -> Callable[[], object]:
            def call():
                with torch.inference_mode(), _autocast(cfg):
                    return model(x)
            return call
        times = time_rounds({label: forward(model) for label, model in models.items()}, cfg)
        spread = speedup_quartiles(times, next(iter(models)))
        for label, speedup in speedups(times, next(iter(models))).items():
            seconds = statistics.median(times[label])
            out[label] |= {metric: seconds * 1e3 if batch == 1 else batch / seconds, f"{metric}_speedup": speedup,
                           f"{metric}_speedup_quartiles": spread[label]}
    return out


def _train_step_fn(model: nn.Module, zoo: bool, cfg: BenchConfig) -> Callable[[], None]:
    """One SGD step with AGC (clip 0.01, classifier weight excluded) the way each library does it."""
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    x = _inputs(cfg.train_batch, cfg)
    y = torch.randint(0, model.num_classes, (cfg.train_batch,), device=cfg.device)
    if zoo:
        opt = AGC(sgd, model, clip=0.01)
        clip = lambda: None  # noqa: E731  (inside opt.step)
    else:
        params = agc_parameters(model)
        opt, clip = sgd, lambda: adaptive_clip_grad(params, 0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(cfg):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        clip()
        opt.step()
    return step


def _bench_training(models: dict[str, nn.Module], cfg: BenchConfig) -> dict[str, dict[str, float]]:
    steps = {label: _train_step_fn(model.train(), label.startswith("nfzoo"), cfg) for label, model in models.items()}
    times = time_rounds(steps, cfg)
    spread = speedup_quartiles(times, next(iter(models)))
    out = {}
    for label, speedup in speedups(times, next(iter(models))).items():
        out[label] = {"train_img_s": cfg.train_batch / statistics.median(times[label]), "train_img_s_speedup": speedup,
                      "train_img_s_speedup_quartiles": spread[label],
                      "train_peak_mib": peak_step_memory(steps[label], cfg) / 2**20}
        models[label].zero_grad(set_to_none=True)
    return out


def _bench_agc(model: nn.Module, cfg: BenchConfig) -> dict[str, float]:
    """AGC alone over the model's parameters (classifier weight excluded) on one backward's gradients.

    Gradients are restored in place before every call, so neither side pays for allocating them.
    """
    model.train()
    x = _inputs(2, cfg)
    with _autocast(cfg):
        model(x).float().square().mean().backward()
    params = [p for p in agc_parameters(model) if p.grad is not None]
    saved = [p.grad.clone() for p in params]

    def restore():
        torch._foreach_copy_([p.grad for p in params], saved)

    def clip_with(clip_fn: Callable[..., None]) -> Callable[[], None]:
        def call():
            restore()
            clip_fn(params, 0.01)
        return call
    times = time_rounds({"timm": clip_with(adaptive_clip_grad), "nfzoo": clip_with(adaptive_grad_clip_),
                         "restore": restore}, replace(cfg, iters=cfg.iters * 3))
    restore_s = statistics.median(times.pop("restore"))
    ms = {label: [(t - restore_s) * 1e3 for t in ts] for label, ts in times.items()}
    model.zero_grad(set_to_none=True)
    return {"agc_timm_ms": statistics.median(ms["timm"]), "agc_nfzoo_ms": statistics.median(ms["nfzoo"]),
            "agc_speedup": speedups(ms, "timm")["nfzoo"]}


def _logits_difference(models: dict[str, nn.Module], ref_label: str, cfg: BenchConfig) -> dict[str, float]:
    """Max abs logit difference to the reference model, relative to its largest logit (before
    any training step changes the weights)."""
    x = _inputs(2, cfg)
    with torch.no_grad(), _autocast(cfg):
        logits = {k: m.eval()(x).float() for k, m in models.items()}
    ref = logits[ref_label]
    return {k: ((v - ref).abs().max() / ref.abs().max()).item() for k, v in logits.items() if k != ref_label}


def _forward_flops(model: nn.Module, cfg: BenchConfig) -> float:
    """FLOPs (2 x MACs) of one image's forward pass."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(_inputs(1, cfg))
    return float(counter.get_total_flops())


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    print(f"  [{name}: {time.perf_counter() - start:.0f} s]", flush=True)


def run(cfg: BenchConfig) -> dict[str, dict[str, float]]:
    """Measure every model; returns {model label: {metric: value}} and prints a table."""
    torch.manual_seed(0)
    with _stage("build"):
        models = build_models(cfg)
    ref_label = next(iter(models))
    results = {"logits_max_abs_diff_vs_timm": _logits_difference(models, ref_label, cfg)}
    results |= {label: {} for label in models}
    # metric by metric, every model in turn within each timed round
    with _stage("inference"):
        for label, res in _bench_inference(models, cfg).items():
            results[label] |= res
    with _stage("training"):
        for label, res in _bench_training(models, cfg).items():
            results[label] |= res
    with _stage("agc"):
        results["agc"] = _bench_agc(models[ref_label], cfg)
    flops = _forward_flops(models[ref_label], cfg)
    peak = device_peak_tflops(torch.cuda.get_device_name()) if cfg.gpu else None
    for res in results.values():
        if "infer_img_s" in res:
            res["infer_tflops"] = flops * res["infer_img_s"] / 1e12
            # the same work per image: the same per-round ratio as images/s
            res["infer_tflops_speedup"] = res["infer_img_s_speedup"]
            if peak:
                res["infer_pct_peak"] = 100 * res["infer_tflops"] / peak
    print(format_results(results, ref_label, cfg))
    return results


_METRICS = [  # key, label, higher is better
    ("latency_ms", "batch-1 latency (ms)", False),
    ("infer_img_s", "inference (img/s)", True),
    ("infer_tflops", "inference TFLOP/s", True),
    ("infer_pct_peak", "% of dense bf16 peak", True),
    ("train_img_s", "train step (img/s)", True),
    ("train_peak_mib", "train step peak (MiB)", False),
]


def format_results(results: dict[str, dict[str, float]], ref_label: str, cfg: BenchConfig) -> str:
    """A plain-text table; ratios are relative to timm, > 1 meaning nfzoo is better. Timed
    metrics show the median of the per-round ratios (:func:`speedups`) and their quartiles, the
    others the ratio of the values."""
    ref = results[ref_label]
    labels = [k for k in results if k not in ("agc", "logits_max_abs_diff_vs_timm")]
    width = max(map(len, labels)) + 2
    lines = [f"{'metric':<24}" + "".join(f"{k:>{width}}" for k in labels)]
    for key, name, higher in _METRICS:
        if key not in ref:
            continue
        row = f"{name:<24}"
        for k in labels:
            v = results[k][key]
            speedup = results[k].get(f"{key}_speedup", (v / ref[key]) if higher else (ref[key] / v))
            spread = results[k].get(f"{key}_speedup_quartiles")
            spread = f", {spread[0]:.2f}-{spread[1]:.2f}" if spread else ""
            ratio = "" if k == ref_label else f" ({speedup:.2f}x{spread})"
            row += f"{f'{v:.4g}{ratio}':>{width}}"
        lines.append(row)
    agc = results["agc"]
    lines.append(f"AGC over {cfg.variant.upper()}'s params: timm {agc['agc_timm_ms']:.1f} ms, nfzoo "
                 f"{agc['agc_nfzoo_ms']:.1f} ms ({agc['agc_speedup']:.2f}x)")
    diffs = ", ".join(f"{k}: {v:.2e}" for k, v in results["logits_max_abs_diff_vs_timm"].items())
    lines.append(f"logits max abs diff vs timm, relative to max |logit|: {diffs}")
    return "\n".join(lines)


def describe_device(cfg: BenchConfig) -> str:
    name = device_name(torch.device(cfg.device))
    if cfg.gpu:
        return f"{name}, bf16 autocast, channels_last"
    return f"{name}, {torch.get_num_threads()} threads, float32, NCHW inputs (nfzoo fused: channels_last weights)"


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="f0", help="NFNet variant, f0 .. f6 (default f0)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--img-size", type=int, help="default 128 on CPU, 256 on GPU")
    p.add_argument("--infer-batch", type=int, help="large-batch inference (default 16 CPU, 256 GPU)")
    p.add_argument("--train-batch", type=int, help="training batch (default 8 CPU, 64 GPU)")
    p.add_argument("--iters", type=int, help="timed rounds, medians reported (default 8 CPU, 20 GPU)")
    p.add_argument("--warmup", type=int, help="untimed iterations first (default 1 CPU, 5 GPU)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = BenchConfig(
        variant=args.variant, device=args.device,
        img_size=args.img_size or (256 if gpu else 128),
        infer_batch=args.infer_batch or (256 if gpu else 16),
        train_batch=args.train_batch or (64 if gpu else 8),
        iters=args.iters or (20 if gpu else 8),
        warmup=args.warmup or (5 if gpu else 1))
    if gpu:
        torch.backends.cudnn.benchmark = True
    print(f"nfzoo vs timm, NFNet-{cfg.variant.upper()} at {cfg.img_size} px on {describe_device(cfg)}; "
          f"batch 1 / {cfg.infer_batch} inference, {cfg.train_batch} training; "
          f"{cfg.iters} rounds after {cfg.warmup} warm-up, models in turn, each round starting with the next; "
          f"torch {torch.__version__}, timm {timm.__version__}", flush=True)
    return run(cfg)
