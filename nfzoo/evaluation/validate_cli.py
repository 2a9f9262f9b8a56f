"""``nfzoo-validate``: ImageNet-1k validation of zoo (or any timm) models.

With no ``--data-dir`` it validates on a small generated dataset, offline, so that the whole
pipeline runs end to end on a fresh machine; see docs/eval.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

import torch

import nfzoo  # noqa: F401  (registers the zoo's models with timm)

from .. import torchrun
from ..atomic_files import write_files_atomic
from ..cli import (ArgumentParser, device, existing_file, float_in, non_negative_float, non_negative_int,
                   positive_int, run_cli)
from ..errors import EvaluationError, NfzooError
from ..fuse import fuse
from ..machine import device_name
from ..models import zoo_name
from .labels import RealLabels
from .loop import AMP_DTYPES, EvalOptions, EvalResult, evaluate
from .model_setup import (checkpoint_model_config, count_macs, count_params, create_model, expand_model_names,
                          expected_accuracy, prepare_model)
from .plot import render_plot
from .preprocess import RESIZES, eval_data_config
from .results import DEFAULT_TOLERANCE, FIELDS, check_row, check_suffix, format_results, format_table
from .sources import open_source
from .synthetic import make_image_folder

__all__ = ["main", "parse_args", "run"]

DEFAULT_MODEL = "nfnet_f0"
# The embedded dataset: small and at a reduced size, so that NFNet-F0 runs in about a minute
# on two CPU cores.
DEMO_IMAGES = 32
DEMO_IMG_SIZE = 128
DEMO_BATCH_SIZE = 16
BATCH_SIZE = 256


PROG = "nfzoo-validate"
SEED_LIMIT = 2 ** 63  # torch.manual_seed takes seeds below this


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog=PROG, description="Validate ImageNet-1k top-1/top-5 of zoo models.")
    p.add_argument("--model", nargs="+",
                   help="model names: 'nfnet_f0', 'nfnet_f0.dm_in1k', 'hf-hub:org/repo', or a glob over the "
                        f"zoo's checkpoints ('nfnet_f*') (default: the --checkpoint's architecture, else {DEFAULT_MODEL})")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true", help="load the model's pretrained weights")
    weights.add_argument("--checkpoint", type=existing_file, metavar="FILE",
                         help="load weights from FILE; a checkpoint of nfzoo.train also gives the class count, "
                              "input channels, class names and preprocessing")
    p.add_argument("--num-classes", type=positive_int,
                   help="classes of a plain state dict's model (default: the model's own)")
    p.add_argument("--in-chans", type=positive_int,
                   help="input channels of a plain state dict's model (default: the model's own)")
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", type=Path, help="ImageNet validation data: a folder of 1000 class folders, "
                      "the flat ILSVRC2012_val_*.JPEG folder (with --ground-truth), or parquet shards. "
                      "Without it, a small generated dataset is used.")
    data.add_argument("--ground-truth", type=existing_file, metavar="FILE", help="labels for the flat folder")
    data.add_argument("--gt-meta", type=existing_file, metavar="FILE",
                      help="the devkit's data/meta.mat or an 'ID synset' text file, for devkit ILSVRC2012_IDs")
    data.add_argument("--class-map", type=existing_file, metavar="FILE",
                      help="class names in index order, one per line (timm's format): the class of each folder "
                           "of an image folder that is not the 1000 ImageNet classes")
    data.add_argument("--real-labels", nargs="?", const=True, type=existing_file, metavar="FILE",
                      help="also report ImageNet-ReaL accuracy (timm's bundled labels, or FILE)")
    data.add_argument("--strict", action="store_true", help="stop at the first undecodable image")
    data.add_argument("--demo-images", type=positive_int, default=DEMO_IMAGES, help=argparse.SUPPRESS)
    pre = p.add_argument_group("preprocessing (default: the model's pretrained cfg at its test size)")
    pre.add_argument("--img-size", type=positive_int,
                     help="override the input size (NFNets keep DeepMind's rule: resize to size + 32, crop size)")
    pre.add_argument("--crop-pct", type=float_in(0, 1, low_open=True), help="override the crop fraction")
    pre.add_argument("--resize", choices=RESIZES, default="pil",
                     help="pil: timm's transform, what the manifest's accuracies were measured with; tf-bicubic: "
                          "TensorFlow's bicubic resize, as DeepMind evaluated the NFNets")
    run = p.add_argument_group("run")
    run.add_argument("--batch-size", type=positive_int,
                     help=f"default {BATCH_SIZE} ({DEMO_BATCH_SIZE} on the generated dataset)")
    run.add_argument("--workers", type=non_negative_int, default=min(4, os.cpu_count() or 1),
                     help="data-loading processes")
    run.add_argument("--device", type=device, help="default: cuda (this process's LOCAL_RANK GPU) when available, else cpu")
    run.add_argument("--amp", choices=sorted(AMP_DTYPES), help="autocast precision (default: fp32)")
    run.add_argument("--channels-last", action="store_true")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--no-fuse", action="store_true",
                     help="validate the model as built; by default it is first fused (nfzoo.fuse: the same "
                          "function with standardized weights and constant factors folded into plain convs)")
    run.add_argument("--seed", type=non_negative_int, default=0, help="seed of random-init weights")
    run.add_argument("--no-progress", action="store_true")
    out = p.add_argument_group("results")
    out.add_argument("--results-file", type=Path, help="write one row per model (.json or .csv)")
    out.add_argument("--plot", type=Path, metavar="PNG", help="plot top-1 against images/s")
    out.add_argument("--check", action="store_true",
                     help="compare with the manifest's published top-1/top-5; exit 1 on a miss")
    out.add_argument("--tolerance", type=non_negative_float, default=None,
                     help="--check tolerance in percentage points (default: the manifest entry's, "
                          f"else {DEFAULT_TOLERANCE})")
    return p.parse_args(argv)


def _tolerance(args: argparse.Namespace, entry) -> float:
    """--tolerance, else the manifest entry's own, else the harness default."""
    if args.tolerance is not None:
        return args.tolerance
    return entry.tolerance if entry.tolerance is not None else DEFAULT_TOLERANCE


def _weights(args: argparse.Namespace) -> str:
    return "pretrained" if args.pretrained else "checkpoint" if args.checkpoint else "random"


def _outputs(args: argparse.Namespace) -> list[Path]:
    return [p for p in (args.results_file, args.plot) if p is not None]


def _preflight(args: argparse.Namespace, names: list[str]) -> None:
    """Refuse, before any work, what cannot give a meaningful result."""
    if args.results_file is not None:
        check_suffix(args.results_file)
    if args.plot is not None and args.plot.suffix != ".png":
        raise EvaluationError(f"--plot {args.plot} must end in .png")
    for path in _outputs(args):
        if path.is_dir():
            raise EvaluationError(f"{path} is a folder; name a file to write the results to")
        if any(parent.is_file() for parent in path.parents):
            raise EvaluationError(f"{path} cannot be written: {next(q for q in path.parents if q.is_file())} is a file")
    if args.seed >= SEED_LIMIT:
        raise EvaluationError(f"--seed {args.seed} is too large: seeds go up to {SEED_LIMIT - 1}")
    if args.checkpoint is not None and len(names) > 1:
        raise EvaluationError(f"--checkpoint holds the weights of one model, but --model names {len(names)}")
    if not args.check:
        return
    if args.data_dir is None:
        raise EvaluationError("--check needs the validation images the recorded accuracy was measured on "
                              "(--data-dir): ImageNet's 50,000 for the published weights")
    if _weights(args) == "random":
        raise EvaluationError("--check compares trained weights with their published accuracy: add "
                              "--pretrained or --checkpoint FILE")
    for name in names:
        entry = expected_accuracy(name)
        if entry is None:
            raise EvaluationError(f"--check: {name} has no pretrained weights in the nfzoo manifest, so there is "
                                  "no published accuracy to compare with")
        if entry.top1 is None or entry.top5 is None:
            raise EvaluationError(f"--check: no published top-1/top-5 is known for {entry.name}")


def _model_names(args: argparse.Namespace, config: dict[str, Any] | None) -> list[str]:
    """--model, expanded; by default the checkpoint's architecture, else DEFAULT_MODEL. A
    checkpoint of nfzoo.train is refused for a model of another architecture."""
    if config is None:
        return expand_model_names(args.model or [DEFAULT_MODEL])
    if args.num_classes is not None or args.in_chans is not None:
        raise EvaluationError(f"{args.checkpoint} carries its class count ({config['num_classes']}) and input "
                              f"channels ({config['in_chans']}); drop --num-classes and --in-chans")
    names = expand_model_names(args.model or [config["architecture"]])
    others = [n for n in names if n.split(".")[0] != config["architecture"]]
    if others:
        raise EvaluationError(f"{args.checkpoint} holds a {config['architecture']} (its model_config), not a "
                              f"{others[0]}; drop --model or name {config['architecture']}")
    return names


def _row(args: argparse.Namespace, name: str, model: torch.nn.Module, cfg: dict[str, Any], result: EvalResult,
         options: EvalOptions, params: int, macs: int, runtime: torchrun.Runtime, data: str,
         trained: bool = False) -> dict[str, Any]:
    """One results row; ``trained``: the weights are a checkpoint of nfzoo.train, a model of its own
    (no manifest tag, no published accuracy), whatever weights its run started from."""
    pcfg = getattr(model, "pretrained_cfg", {}) or {}
    weights = _weights(args)
    entry = expected_accuracy(name) if weights != "random" and not trained else None
    row = dict.fromkeys(("expected_top1", "expected_top5", "delta_top1", "delta_top5", "check"))
    row.update(
        model=zoo_name(pcfg["architecture"]) if pcfg.get("architecture") else name,
        tag=None if trained else pcfg.get("tag"), weights=weights,
        top1=round(result.top1, 3), top5=round(result.top5, 3),
        real_top1=result.real_top1, real_top5=result.real_top5,
        images=result.images, bad_images=len(result.bad_images), img_per_sec=round(result.images_per_sec, 2),
        device=device_name(runtime.device),
        processes=runtime.world_size, precision=args.amp or "fp32", channels_last=args.channels_last,
        compiled=args.compile, fused=not args.no_fuse, batch_size=options.batch_size, img_size=cfg["input_size"][-1],
        crop_pct=cfg["crop_pct"], crop_mode=cfg["crop_mode"], interpolation=_interpolation(cfg, args.resize),
        params_m=round(params / 1e6, 3), gmacs=round(macs / 1e9, 3), data=data,
    )
    if entry is not None and entry.top1 is not None:
        row.update(expected_top1=entry.top1, expected_top5=entry.top5,
                   delta_top1=round(result.top1 - entry.top1, 3), delta_top5=round(result.top5 - entry.top5, 3))
        if args.check:
            row["check"] = "pass" if check_row(row, _tolerance(args, entry)) else "fail"
    return {k: row[k] for k in FIELDS}


def _check_labels(source: Any, model: torch.nn.Module, name: str) -> None:
    """Every label of the data must be a class of the model."""
    classes = getattr(model, "num_classes", None)
    top = max(source.labels)
    if classes is not None and top >= classes:
        raise EvaluationError(f"{source.description} has class index {top}, but {name} has {classes} classes "
                              f"(0 ... {classes - 1}); give the model's class count (--num-classes) or fix the class map")


def run(args: argparse.Namespace) -> int:
    """Validate every model; returns the exit status (1 when a --check misses)."""
    config = checkpoint_model_config(args.checkpoint) if args.checkpoint is not None else None
    names = _model_names(args, config)
    if config is not None and args.check:
        raise EvaluationError(f"--check compares weights with their published accuracy; {args.checkpoint} is a "
                              "checkpoint of nfzoo.train, a model of its own, with none")
    _preflight(args, names)
    runtime = torchrun.start(args.device)
    say = print if runtime.is_main else (lambda *a, **k: None)
    with ExitStack() as cleanup:
        cleanup.callback(torchrun.stop, runtime)
        if args.data_dir is None:
            root = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="nfzoo-demo-")))
            source = open_source(make_image_folder(root, args.demo_images, seed=args.seed))
            source.description = "generated random images"
            img_size = DEMO_IMG_SIZE if args.img_size is None else args.img_size
            batch_size = DEMO_BATCH_SIZE if args.batch_size is None else args.batch_size
            say(f"NOTE: no --data-dir given: validating on {args.demo_images} generated random images in "
                f"ImageNet's folder layout at {img_size} px. This exercises the whole pipeline offline; the "
                "accuracy it reports means nothing. Pass --data-dir for ImageNet.")
        else:
            class_names = config["label_names"] if config is not None and args.class_map is None else None
            source = open_source(args.data_dir, ground_truth=args.ground_truth, gt_meta=args.gt_meta,
                                 class_map=args.class_map, class_names=class_names)
            img_size = args.img_size
            batch_size = BATCH_SIZE if args.batch_size is None else args.batch_size
        for name in names if args.check else ():
            entry = expected_accuracy(name)
            if len(source) != entry.eval_images:
                raise EvaluationError(f"--check compares with the accuracy of {entry.name} measured on "
                                      f"{entry.eval_images} {entry.dataset} validation images; "
                                      f"{source.description} holds {len(source)}")
        real = None
        if args.real_labels:
            real = RealLabels(None if args.real_labels is True else Path(args.real_labels))
        if _weights(args) == "random":
            say("NOTE: random-init weights (no --pretrained or --checkpoint): accuracy is at chance level; "
                "use this for speed, not for accuracy.")
        say(f"data: {source.description}, {len(source)} images; {runtime.world_size} process(es) on {runtime.device}")
        options = EvalOptions(batch_size=batch_size, workers=args.workers, amp=args.amp, channels_last=args.channels_last,
                              strict=args.strict, progress=not args.no_progress, resize=args.resize)
        rows = []
        for name in names:
            model = create_model(name, _weights(args), args.checkpoint, seed=args.seed, num_classes=args.num_classes,
                                 in_chans=args.in_chans, model_config=config)
            _check_labels(source, model, name)
            cfg = eval_data_config(model, img_size, args.crop_pct)
            model = prepare_model(model, runtime, args.channels_last)
            params, macs = count_params(model), count_macs(model, cfg["input_size"])
            say(f"{name}: {params / 1e6:.2f} M params, {macs / 1e9:.2f} GMACs at {cfg['input_size'][-1]} px; "
                f"{cfg['crop_mode']} crop {cfg['crop_pct']:.4g}, {_interpolation(cfg, args.resize)}; "
                f"{'as built (--no-fuse)' if args.no_fuse else 'fused (nfzoo.fuse)'}{_classes(model)}")
            if not args.no_fuse:
                model = fuse(model, input_size=cfg["input_size"])
            if args.compile:
                model = torch.compile(model)
            result = evaluate(model, source, cfg, runtime, options, real)
            if result.bad_images:
                say(f"WARNING: {len(result.bad_images)} undecodable image(s) left out: "
                    f"{', '.join(result.bad_images[:10])}{' ...' if len(result.bad_images) > 10 else ''}")
            rows.append(_row(args, name, model, cfg, result, options, params, macs, runtime, source.description,
                             trained=config is not None))
        if not runtime.is_main:
            return 0
        print(format_table(rows))
        _write_outputs(args, rows)
        missed = [f"{r['model']}.{r['tag']}" for r in rows if r["check"] == "fail"]
        if args.check:
            tolerances = sorted({_tolerance(args, expected_accuracy(n)) for n in names})
            print(f"check (tolerance {'/'.join(map(str, tolerances))} points): " + (f"MISSED by {', '.join(missed)}" if missed else "all pass"))
        return 1 if missed else 0


def _interpolation(cfg: dict[str, Any], resize: str) -> str:
    """What resizes the images: the cfg's interpolation through PIL, or TF's bicubic."""
    return "tf-bicubic" if resize == "tf-bicubic" else cfg["interpolation"]


def _classes(model: torch.nn.Module) -> str:
    """The model's classes, by name where its cfg names them (a checkpoint of nfzoo.train)."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if not names:
        return ""
    shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
    return f"; {len(names)} classes: {shown}"


def _failed_output(error: OSError, outputs: list[Path]) -> Path | None:
    """Which of ``outputs`` an OSError from writing them concerns: the file itself, its
    temporary (``.<name>.<...>.partial`` beside it), or a folder above it."""
    for name in (error.filename, error.filename2):
        if name is None:
            continue
        failed = Path(name)
        for path in outputs:
            if failed == path or path.is_relative_to(failed) or (
                    failed.parent == path.parent and failed.name.startswith(f".{path.name}.")):
                return path
    return None


def _write_outputs(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """The results file and the plot, both or neither (nfzoo.atomic_files); if they cannot be
    written (a full disk), the rows are printed as JSON so that the finished evaluation is not
    lost, and the error names the file."""
    files: dict[Path, str | bytes] = {}
    if args.results_file is not None:
        files[args.results_file] = format_results(rows, args.results_file)
    if args.plot is not None:
        files[args.plot] = render_plot(rows)
    try:
        write_files_atomic(files)
    except OSError as e:
        print(json.dumps(rows, indent=2))
        path = _failed_output(e, list(files))
        reason = str(e) if isinstance(e, NfzooError) else f"cannot write {path or e.filename}: {e.strerror or e}"
        raise EvaluationError(f"{reason.rstrip('.')}. The results are printed above as JSON.") from e
    for path in files:
        print(f"{'results' if path == args.results_file else 'plot'}: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: run(parse_args(a)), argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
