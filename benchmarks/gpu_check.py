"""The GPU check (``make gpu-check``): one prepared run that measures what users compare.

NFNet-F0 inference (nfzoo fused, nfzoo unfused, timm's ``dm_nfnet_f0``; eager and
``torch.compile``d), its training step (forward, backward, AGC, SGD) and AGC alone against timm,
the validation harness against timm's own loader, and the GN+WS / BCN+WS ResNet-50s against
timm's ``resnet50``. Every section's results are written (``gpu_check.json`` and
``gpu_check.md``, atomically) as soon as the section ends, so a run cut off by a time limit
keeps what it finished. The sections run cheapest and most important first; ``torch.compile``
last, and only while the time budget allows.

On a CPU the same code runs in float32 without channels_last (the dry run of the tests).
"""
from __future__ import annotations

import argparse
import datetime
import json
import operator
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import timm
import torch
import torch.nn as nn
from timm.utils.agc import adaptive_clip_grad

import nfzoo
from nfzoo.atomic_files import write_files_atomic
from nfzoo.cli import (ArgumentParser, device, non_negative_float, non_negative_int, output_dir, positive_float,
                       positive_int, run_cli)
from nfzoo.evaluation import validate_cli
from nfzoo.evaluation.synthetic import make_image_folder
from nfzoo.machine import device_name
from nfzoo.optim import adaptive_grad_clip_

from .measure import (ClipFn, Sizes, agc_times, build_models, dense_bf16_peak, forward_flops, fused, inference_call,
                      peak_step_memory, speedups, time_rounds, train_step, with_flags)

__all__ = ["PROG", "Target", "TARGETS", "CheckConfig", "target_verdicts", "format_markdown", "parse_args", "run",
           "main"]

PROG = "python -m benchmarks.gpu_check"
TIMM = "timm"


class Target(NamedTuple):
    """A goal for one measured value: ``sections[section]["models"][model][metric]`` (or
    ``sections[section][metric]`` where ``model`` is None) ``op`` ``threshold``. Ratios are
    "> 1: nfzoo better"."""

    name: str
    section: str
    model: str | None
    metric: str
    op: str  # ">=" or "<="
    threshold: float


TARGETS = (
    Target("F0 fused inference vs timm (x)", "f0_inference", "nfzoo fused", "ratio_vs_timm", ">=", 1.5),
    Target("F0 fused inference, % of dense bf16 peak", "f0_inference", "nfzoo fused", "pct_peak", ">=", 35.0),
    Target("F0 train step vs timm (x)", "f0_train", "nfzoo", "ratio_vs_timm", ">=", 1.1),
    Target("F0 train step peak memory / timm's", "f0_train", "nfzoo", "peak_vs_timm", "<=", 1.0),
    Target("AGC over F0's params vs timm (x)", "agc", None, "ratio", ">=", 3.0),
)
_COMPARE = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class CheckConfig:
    """The check's sizes (the GPU defaults), what it runs, and its time budget."""

    device: str = "cuda"
    variant: str = "f0"
    img_size: int = 256
    infer_batch: int = 256
    train_batch: int = 64
    resnet_img_size: int = 224
    iters: int = 10
    warmup: int = 3
    harness_images: int = 2048
    harness_workers: int = 8
    compile: bool = True
    compile_backend: str = "inductor"  # "eager" in the dry run: dynamo's capture without inductor's codegen
    profile: bool = True
    budget_s: float = 330.0  # the compiled section starts only if compile_reserve_s of it is left
    compile_reserve_s: float = 150.0

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")

    def sizes(self) -> Sizes:
        """The sizes of the F0 comparisons."""
        return Sizes(variant=self.variant, img_size=self.img_size, infer_batch=self.infer_batch,
                     train_batch=self.train_batch, iters=self.iters, warmup=self.warmup, device=self.device)


QUICK = {"iters": 5, "warmup": 2, "harness_images": 1024, "compile": False}  # --quick: about 2 min


class Check:
    """The results so far, written out after every section."""

    def __init__(self, cfg: CheckConfig, out: Path):
        self.cfg, self.out, self.start = cfg, out, time.perf_counter()
        name = device_name(torch.device(cfg.device))
        self.results: dict[str, Any] = {
            "device": name, "dense_bf16_peak_tflops": dense_bf16_peak(name) if cfg.gpu else None,
            "precision": "bf16 autocast, channels_last" if cfg.gpu else "float32",
            "date": datetime.date.today().isoformat(), "torch": torch.__version__, "timm": timm.__version__,
            "nfzoo": nfzoo.__version__, "python": platform.python_version(), "settings": asdict(cfg),
            "sections": {}, "stage_seconds": {}, "targets": [],
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def section(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        """Run one section, record its results (or its error) and its time, write both files."""
        print(f"[{self.elapsed():6.0f} s] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as e:  # noqa: BLE001  one failing section must not cost the others
            if not self.cfg.gpu:
                raise  # the dry run must show every failure
            res = {"error": f"{type(e).__name__}: {e}"}
        self.results["sections"][name] = res
        self.results["stage_seconds"][name] = round(time.perf_counter() - t0, 1)
        print(f"[{self.elapsed():6.0f} s] {name} done in {time.perf_counter() - t0:.0f} s: "
              f"{json.dumps(res, default=str)[:400]}", flush=True)
        self.write()

    def skip(self, name: str, why: str) -> None:
        self.results["sections"][name] = {"skipped": why}

    def write(self) -> None:
        self.results["targets"] = target_verdicts(self.results["sections"])
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        write_files_atomic({self.out / "gpu_check.json": json.dumps(self.results, indent=1, default=str) + "\n",
                            self.out / "gpu_check.md": format_markdown(self.results)})


def target_verdicts(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its measured value and ``met`` (True/False; None while unmeasured)."""
    out = []
    for t in TARGETS:
        res = sections.get(t.section) or {}
        value = (res.get("models", {}).get(t.model, {}) if t.model else res).get(t.metric)
        met = None if value is None else _COMPARE[t.op](value, t.threshold)
        out.append({"target": t.name, "value": value, "op": t.op, "threshold": t.threshold, "met": met})
    return out


def _timed_models(fns: dict[str, Callable[[], object]], sizes: Sizes, images: int) -> dict[str, dict[str, float]]:
    """Per model: median ms per call, images/s and the median per-round ratio to timm's time."""
    times = time_rounds(fns, sizes)
    ratios = speedups(times, TIMM)
    return {label: {"ms": 1e3 * statistics.median(ts), "img_s": images / statistics.median(ts),
                    "ratio_vs_timm": ratios[label]} for label, ts in times.items()}


def build_f0(cfg: CheckConfig) -> dict[str, nn.Module]:
    """timm's ``dm_nfnet_<variant>``, nfzoo's (timm numerics) with the same weights, skip gains 1
    (:func:`benchmarks.measure.build_models`), and the latter fused."""
    sizes = cfg.sizes()
    ref, zoo = build_models(sizes, numerics=("timm",))
    return {TIMM: ref, "nfzoo fused": fused(zoo["timm"], sizes), "nfzoo unfused": zoo["timm"]}


def f0_inference(models: dict[str, nn.Module], cfg: CheckConfig, peak: float | None, flops: float,
                 compiled: bool = False) -> dict[str, Any]:
    sizes = cfg.sizes()
    x = sizes.inputs(cfg.infer_batch)
    fns = {label: inference_call(m, x, sizes) for label, m in models.items()}
    res: dict[str, Any] = {"batch": cfg.infer_batch, "img_size": cfg.img_size, "gflops_per_image": flops / 1e9}
    if compiled:
        res["compile_s"] = {}
        for label, fn in fns.items():  # the first call compiles
            t0 = time.perf_counter()
            fn()
            res["compile_s"][label] = round(time.perf_counter() - t0, 1)
            print(f"  compiled {label} in {res['compile_s'][label]:.0f} s", flush=True)
    res["models"] = _timed_models(fns, sizes, cfg.infer_batch)
    for r in res["models"].values():
        r["tflops"] = flops * r["img_s"] / 1e12
        if peak:
            r["pct_peak"] = 100 * r["tflops"] / peak
    return res


def _train_section(models: dict[str, nn.Module], clips: dict[str, ClipFn], sizes: Sizes) -> dict[str, Any]:
    """Train steps, each model clipping with its ``clips`` function."""
    steps = {label: train_step(m, clips[label], sizes) for label, m in models.items()}
    res = _timed_models(steps, sizes, sizes.train_batch)
    for label, step in steps.items():
        res[label]["peak_mib"] = peak_step_memory(step, sizes) / 2**20
        models[label].zero_grad(set_to_none=True)
    for r in res.values():
        r["peak_vs_timm"] = r["peak_mib"] / res[TIMM]["peak_mib"]
    return {"batch": sizes.train_batch, "img_size": sizes.img_size, "models": res}


def f0_train(models: dict[str, nn.Module], cfg: CheckConfig) -> dict[str, Any]:
    return _train_section({TIMM: models[TIMM], "nfzoo": models["nfzoo unfused"]},
                          {TIMM: adaptive_clip_grad, "nfzoo": adaptive_grad_clip_}, cfg.sizes())


def agc(models: dict[str, nn.Module], cfg: CheckConfig) -> dict[str, Any]:
    r = agc_times(models[TIMM], cfg.sizes())
    return {"timm_ms": r.timm_ms, "nfzoo_ms": r.nfzoo_ms, "ratio": r.speedup}


def _top_ops(prof: torch.profiler.profile, gpu: bool, n: int = 15) -> list[dict[str, Any]]:
    def self_us(e) -> float:  # torch renamed cuda -> device time; 2.11 has both spellings
        if not gpu:
            return e.self_cpu_time_total
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
    events = [e for e in prof.key_averages() if self_us(e) > 0]
    total = sum(map(self_us, events)) or 1.0
    return [{"op": e.key, "calls": e.count, "self_ms": self_us(e) / 1e3, "pct": 100 * self_us(e) / total}
            for e in sorted(events, key=self_us, reverse=True)[:n]]


def profile(models: dict[str, nn.Module], cfg: CheckConfig) -> dict[str, Any]:
    """The torch profiler's top ops (self time on the device) of three inference calls and
    three training steps (at most ``iters``), nfzoo's and timm's: what dominates where a target is missed."""
    sizes = cfg.sizes()
    x = sizes.inputs(cfg.infer_batch)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cfg.gpu else [])
    fns = {
        "inference nfzoo fused": inference_call(models["nfzoo fused"], x, sizes),
        "inference timm": inference_call(models[TIMM], x, sizes),
        "train nfzoo": train_step(models["nfzoo unfused"], adaptive_grad_clip_, sizes),
        "train timm": train_step(models[TIMM], adaptive_clip_grad, sizes),
    }
    out = {}
    for label, fn in fns.items():
        fn()  # warm (cudnn autotuning, optimizer state) outside the profile
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(min(3, cfg.iters)):
                fn()
            if cfg.gpu:
                torch.cuda.synchronize()
        out[label] = _top_ops(prof, cfg.gpu)
    for m in models.values():
        m.zero_grad(set_to_none=True)
    return out


def resnets(cfg: CheckConfig) -> dict[str, Any]:
    """GN+WS and BCN+WS ResNet-50 (plain and fused) against timm's BN ``resnet50``: inference,
    and a train step (SGD + timm's AGC for all three, so the ratio is the model's alone)."""
    sizes = replace(cfg.sizes(), img_size=cfg.resnet_img_size)
    torch.manual_seed(0)
    base = {TIMM: "resnet50", "nfzoo resnet50_gn_ws": "resnet50_gn_ws", "nfzoo resnet50_bcn_ws": "resnet50_bcn_ws"}
    models = {label: sizes.place(timm.create_model(name)) for label, name in base.items()}
    infer = dict(models)
    for label in list(base)[1:]:
        infer[f"{label} fused"] = fused(models[label], sizes)
    x = sizes.inputs(cfg.infer_batch)
    inference = _timed_models({label: inference_call(m, x, sizes) for label, m in infer.items()},
                              sizes, cfg.infer_batch)
    train = _train_section(models, dict.fromkeys(models, adaptive_clip_grad), sizes)
    return {"img_size": sizes.img_size, "inference_batch": cfg.infer_batch, "inference": inference, "train": train}


def _timm_loop(root: Path, cfg: CheckConfig, batch: int) -> float:
    """Images/s of timm's own validation loop (its dataset, loader, prefetcher on CUDA and
    model ``dm_nfnet_<variant>``) over ``root``, bf16 autocast and channels_last on CUDA, timed
    after the first batch as the harness times it."""
    from timm.data import ImageDataset, create_loader, resolve_data_config

    sizes = cfg.sizes()
    model = sizes.place(timm.create_model(f"dm_nfnet_{cfg.variant}")).eval()
    data = resolve_data_config({"img_size": cfg.img_size}, model=model, use_test_size=True)
    loader = create_loader(
        ImageDataset(str(root)), input_size=data["input_size"], batch_size=batch, use_prefetcher=cfg.gpu,
        interpolation=data["interpolation"], mean=data["mean"], std=data["std"], crop_pct=data["crop_pct"],
        crop_mode=data["crop_mode"], num_workers=cfg.harness_workers, pin_memory=cfg.gpu,
        device=torch.device(cfg.device), persistent_workers=False)
    images, start = 0, time.perf_counter()
    with torch.inference_mode(), torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16):
        for step, (x, _) in enumerate(loader):
            model(x.to(cfg.device, memory_format=sizes.memory_format)).float().topk(5, dim=1)
            if step == 0:
                if cfg.gpu:
                    torch.cuda.synchronize()
                start = time.perf_counter()
            else:
                images += len(x)
    if cfg.gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return images / seconds if images else float("nan")


def harness(cfg: CheckConfig) -> dict[str, Any]:
    """``nfzoo-validate --amp bf16 --channels-last`` on generated images against the same images
    through timm's own loop (:func:`_timm_loop`)."""
    batch = min(cfg.infer_batch, cfg.harness_images)
    with tempfile.TemporaryDirectory(prefix="nfzoo-gpu-check-") as tmp:
        root = make_image_folder(Path(tmp) / "images", cfg.harness_images)
        results = Path(tmp) / "harness.json"
        args = ["--model", f"nfnet_{cfg.variant}", "--data-dir", str(root), "--amp", "bf16", "--channels-last",
                "--img-size", str(cfg.img_size), "--batch-size", str(batch), "--workers", str(cfg.harness_workers),
                "--device", cfg.device, "--no-progress", "--results-file", str(results)]
        status = validate_cli.main(args)
        if status != 0:
            raise RuntimeError(f"nfzoo-validate {' '.join(args)} exited with {status}")
        zoo = json.loads(results.read_text())[0]["img_per_sec"]
        ref = _timm_loop(root, cfg, batch)
    return {"images": cfg.harness_images, "batch": batch, "nfzoo_img_s": zoo, "timm_img_s": ref,
            "ratio": zoo / ref, "note": "nfzoo-validate (its default model path) vs timm's loader + dm_nfnet"}


def run(cfg: CheckConfig, out: Path) -> dict[str, Any]:
    """Every section in turn; returns the results (also in ``out/gpu_check.json`` and ``.md``)."""
    if cfg.gpu:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    check = Check(cfg, out)
    peak = check.results["dense_bf16_peak_tflops"]
    print(f"GPU check on {check.results['device']} (dense bf16 peak {peak} TFLOP/s), torch {torch.__version__}, "
          f"timm {timm.__version__}; writing {out}/gpu_check.json and .md", flush=True)
    f0: dict[str, nn.Module] = {}

    def build() -> dict[str, Any]:
        f0.update(build_f0(cfg))
        return {"models": list(f0)}
    check.section("build_f0", build)
    flops = forward_flops(f0[TIMM], cfg.sizes())
    check.section("f0_inference", lambda: f0_inference(f0, cfg, peak, flops))
    check.section("f0_train", lambda: f0_train(f0, cfg))
    check.section("agc", lambda: agc(f0, cfg))
    if cfg.profile:
        check.section("profile", lambda: profile(f0, cfg))
    check.section("resnet50", lambda: resnets(cfg))
    check.section("harness", lambda: harness(cfg))
    left = cfg.budget_s - check.elapsed()
    if not cfg.compile:
        check.skip("f0_inference_compiled", "--no-compile")
    elif left < cfg.compile_reserve_s:
        check.skip("f0_inference_compiled", f"{left:.0f} s of the {cfg.budget_s:.0f} s budget left, "
                                            f"under the {cfg.compile_reserve_s:.0f} s reserved")
    else:  # fused nfzoo and timm only: the unfused model is the training path
        compiled = {label: torch.compile(f0[label], backend=cfg.compile_backend) for label in (TIMM, "nfzoo fused")}
        check.section("f0_inference_compiled", lambda: f0_inference(compiled, cfg, peak, flops, compiled=True))
    check.write()
    print(format_markdown(check.results), flush=True)
    return check.results


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "" if v is None else str(v)


def _model_rows(title: str, models: dict[str, dict[str, Any]], keys: list[str]) -> list[str]:
    return [f"| {title} | {label} | " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for label, r in models.items()]


def format_markdown(results: dict[str, Any]) -> str:
    """The results as markdown: header, the targets with their verdicts, one table per section."""
    s = results["sections"]
    lines = [f"# nfzoo GPU check: {results['device']}, {results['date']}", "",
             f"{results['precision']}; torch {results['torch']}, timm {results['timm']}, nfzoo {results['nfzoo']}; "
             f"dense bf16 peak used: {_fmt(results['dense_bf16_peak_tflops'])} TFLOP/s; "
             f"elapsed {_fmt(results.get('elapsed_s'))} s.", "",
             "| target | measured | goal | verdict |", "|---|---|---|---|"]
    for t in results["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {_fmt(t['value'])} | {t['op']} {t['threshold']} | {verdict} |")
    keys = ["ms", "img_s", "ratio_vs_timm", "tflops", "pct_peak", "peak_mib", "peak_vs_timm"]
    lines += ["", "| section | model | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name in ("f0_inference", "f0_inference_compiled", "f0_train"):
        if "models" in s.get(name, {}):
            lines += _model_rows(name, s[name]["models"], keys)
    if "inference" in s.get("resnet50", {}):
        lines += _model_rows("resnet50 inference", s["resnet50"]["inference"], keys)
        lines += _model_rows("resnet50 train", s["resnet50"]["train"]["models"], keys)
    lines.append("")
    if "ratio" in s.get("agc", {}):
        a = s["agc"]
        lines.append(f"AGC over F0's parameters: timm {_fmt(a['timm_ms'])} ms, nfzoo {_fmt(a['nfzoo_ms'])} ms "
                     f"({_fmt(a['ratio'])}x).")
    if "ratio" in s.get("harness", {}):
        h = s["harness"]
        lines.append(f"Harness on {h['images']} generated images: nfzoo-validate {_fmt(h['nfzoo_img_s'])} img/s, "
                     f"timm's loop {_fmt(h['timm_img_s'])} img/s ({_fmt(h['ratio'])}x).")
    for name, res in s.items():
        if isinstance(res, dict) and ("error" in res or "skipped" in res):
            lines.append(f"{name}: {res.get('error') or 'skipped: ' + res['skipped']}")
    if "compile_s" in s.get("f0_inference_compiled", {}):
        lines.append(f"compile seconds: {s['f0_inference_compiled']['compile_s']}")
    lines.append(f"Stage seconds: {results['stage_seconds']}")
    return "\n".join(lines) + "\n"


def _parser() -> ArgumentParser:
    d = CheckConfig()
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)
    p.add_argument("--out", type=output_dir, required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--device", type=device, help="cuda, cuda:N or cpu (default: cuda when torch sees a GPU, "
                                                 "else a CPU dry run)")
    p.add_argument("--quick", action="store_true", help="fewer rounds and images, no compile (about 2 min)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile section")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profile section")
    for name, kind, what in (("img_size", positive_int, "F0 image side, px"),
                             ("infer_batch", positive_int, "inference batch"),
                             ("train_batch", positive_int, "training batch"),
                             ("resnet_img_size", positive_int, "ResNet-50 image side, px"),
                             ("iters", positive_int, "timed rounds"),
                             ("warmup", non_negative_int, "untimed rounds first"),
                             ("harness_images", positive_int, "generated images the harness validates"),
                             ("harness_workers", non_negative_int, "the harness's loader workers (default: "
                                                                   "up to 8, one per CPU)")):
        default = "" if name == "harness_workers" else f" (default {getattr(d, name)})"
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=what + default)
    p.add_argument("--compile-backend", choices=torch.compiler.list_backends(exclude_tags=()),
                   help=f"torch.compile backend (default {d.compile_backend})", metavar="BACKEND")
    p.add_argument("--budget-s", type=positive_float, help=f"seconds the whole run should take (default {d.budget_s:g})")
    p.add_argument("--compile-reserve-s", type=non_negative_float,
                   help=f"compile only if this much of the budget is left (default {d.compile_reserve_s:g})")
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[CheckConfig, Path]:
    args = _parser().parse_args(argv)
    cfg = CheckConfig(device="cuda" if torch.cuda.is_available() else "cpu",
                      harness_workers=min(8, os.cpu_count() or 1))
    if getattr(args, "quick", False):
        cfg = replace(cfg, **QUICK)
    return with_flags(cfg, args), args.out


def _main(argv: Sequence[str] | None) -> None:
    cfg, out = parse_args(argv)
    if not cfg.gpu:
        print("no CUDA device: a CPU dry run (float32, no channels_last)", file=sys.stderr, flush=True)
    run(cfg, out)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
