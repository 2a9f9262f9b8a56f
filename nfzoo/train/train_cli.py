"""``python -m nfzoo.train``: train a timm / nfzoo model with the NFNet recipe.

    python -m nfzoo.train --model nfnet_mini --dataset folder --data-dir data/flowers
    torchrun --nproc_per_node 8 -m nfzoo.train --model nfnet_f0 --recipe deepmind --dataset folder \\
        --data-dir /data/imagenet --img-size 192 --output-dir runs/f0

Every field of :class:`~nfzoo.train.config.TrainConfig` is a flag. The defaults fit a small
dataset (``--recipe small``); ``--recipe deepmind`` takes DeepMind's ImageNet recipe (global batch
4096, 360 epochs, 5 warmup epochs), for a ``dm_nf_regnet_*`` model that of DeepMind's NF-RegNets
(:func:`nfzoo.models.dm_nf_regnet.nf_regnet_recipe`); a flag given on the command line overrides
any of them. Rerunning
the same command continues from ``<output-dir>/last.pth``; docs/training.md lists the flags a
resumed run may change.
"""
from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Callable, Sequence

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torchvision.datasets import ImageFolder

import nfzoo  # noqa: F401  (registers the zoo's models with timm)

from .. import torchrun
from ..cli import (ArgumentParser, existing_dir, existing_file, float_in, non_negative_float, non_negative_int,
                   output_dir, positive_float, positive_int, run_cli)
from ..errors import NfzooError
from ..models.dm_nf_regnet import VARIANTS as NF_REGNET_VARIANTS, nf_regnet_recipe
from .augment import DeepMindBatchAugment, randaugment_magnitude, train_transform
from .config import TrainConfig, TrainConfigError
from .data import FASHION_MNIST_CLASSES, FASHION_MNIST_DATA_CONFIG, FASHION_MNIST_DIR, fashion_mnist
from .precision import PRECISIONS
from .trainer import Trainer

__all__ = ["main", "build_parser", "parse_args", "RECIPES"]

PROG = "python -m nfzoo.train"

# What each recipe sets; every other setting is TrainConfig's default (DeepMind's recipe).
RECIPES: dict[str, dict] = {
    "small": {"epochs": 10, "batch_size": 128, "warmup_epochs": 1.0},
    "deepmind": {},
}
DEFAULT_RECIPE = "small"

# PIL mode a folder's images are converted to, per channel count
_FOLDER_MODES = {1: "L", 3: "RGB"}


def _or_words(parse: Callable[[str], object], **words: object) -> Callable[[str], object]:
    """``parse``, except that each of ``words`` (e.g. ``none``) stands for its value."""
    def parse_or_word(text: str) -> object:
        return words[text.lower()] if text.lower() in words else parse(text)
    parse_or_word.__name__ = getattr(parse, "__name__", "value")
    return parse_or_word


_UNIT = float_in(0, 1, high_open=True)

# Each TrainConfig field's flag: (type, help). None as a value is spelt "none".
_FIELD_FLAGS: dict[str, tuple[Callable[[str], object] | None, str]] = {
    "epochs": (positive_int, "epochs to train; a resumed run may change it (the schedule follows)"),
    "batch_size": (positive_int,
                   "global batch per step, split evenly across processes; at most the training set's size"),
    "micro_batch": (_or_words(positive_int, none=None),
                    "images per forward/backward (gradient accumulation); must divide each process's batch; "
                    "none: the whole batch"),
    "base_lr": (positive_float, "peak learning rate per 256 images: lr = base-lr x batch-size / 256"),
    "lr": (_or_words(positive_float, none=None), "peak learning rate, overriding --base-lr's scaling; none: scaled"),
    "warmup_epochs": (non_negative_float,
                      "epochs of linear warmup from 0 (fewer than --epochs); then a cosine to --min-lr"),
    "min_lr": (non_negative_float, "learning rate at the end of the cosine"),
    "momentum": (_UNIT, "SGD momentum, in [0, 1)"),
    "nesterov": (None, "Nesterov momentum"),
    "weight_decay": (non_negative_float, "weight decay on conv and linear weights (not on gains or biases)"),
    "agc_clip": (_or_words(positive_float, none=None, batch="batch"),
                 "adaptive gradient clipping threshold; batch: the published one for the global batch; none: off"),
    "label_smoothing": (_UNIT, "label smoothing of the targets, in [0, 1)"),
    "ema_decay": (_or_words(_UNIT, none=None), "decay of the weights' EMA (TF1-style warmup), in [0, 1); none: no EMA"),
    "precision": (None, "arithmetic of a step: auto is deepmind-bf16 on a GPU, fp32 elsewhere"),
    "seed": (non_negative_int, "seed of the initial weights, the data order and augmentation"),
    "output_dir": (output_dir, "run folder: last.pth, model_config.json, metrics.jsonl, metrics.png"),
    "resume": (_or_words(existing_file, auto="auto", none=None),
               "auto: continue from <output-dir>/last.pth if it exists; a checkpoint file; none: start afresh"),
    "ckpt_every": (non_negative_int, "steps between checkpoints (also at every epoch end); 0: epoch ends only"),
    "log_every": (positive_int, "steps between training records in metrics.jsonl"),
    "eval_every": (non_negative_int, "epochs between evaluations (and after the last); 0: none"),
    "num_workers": (non_negative_int, "data-loading worker processes; 0: load in the training process"),
    "progress": (None, "a progress bar per epoch (the one-line epoch summary is printed either way)"),
    "plot": (None, "draw metrics.png (loss, top-1, learning rate) after every epoch; needs matplotlib"),
    "stop_on_nonfinite": (None, "end the run, marked diverged, at a non-finite loss"),
}


NF_REGNET_PREFIX = "dm_nf_regnet_"  # DeepMind's NF-RegNets, which have a recipe of their own


def _recipe_defaults(recipe: str, model: str = "") -> dict:
    """Every TrainConfig field's default under ``recipe`` for ``model``: DeepMind's recipe of a
    ``dm_nf_regnet_*`` model is the NF-RegNets' own."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING} | RECIPES[recipe]
    arch = model.split(".")[0]
    if recipe == "deepmind" and arch.removeprefix(NF_REGNET_PREFIX) in NF_REGNET_VARIANTS:
        defaults |= asdict(nf_regnet_recipe(arch))
    return defaults


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Train a timm or nfzoo model with the NFNet recipe; rerun the same "
                                              "command to continue an interrupted run.")
    p.add_argument("--model", required=True, help="a timm model name (nfzoo's models included), e.g. nfnet_f0")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                   help="defaults for the sizes: small (batch 128, 10 epochs, 1 warmup epoch) or deepmind "
                        "(DeepMind's ImageNet recipe: batch 4096, 360 epochs, 5 warmup epochs; for dm_nf_regnet_* "
                        "models the NF-RegNets' recipe); flags override it")
    p.add_argument("--dataset", choices=("fashion_mnist", "folder"), default="fashion_mnist",
                   help="folder: <data-dir>/train and <data-dir>/val in ImageFolder layout (a folder per class)")
    p.add_argument("--data-dir", type=existing_dir, default=None,
                   help=f"the dataset's folder; None: Fashion-MNIST's is {FASHION_MNIST_DIR}")
    p.add_argument("--train-limit", type=positive_int, default=None, help="use only the first N training images")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="training resolution (folder datasets); None: the model's")
    p.add_argument("--in-chans", type=positive_int, default=None,
                   help="image channels: 1 (grayscale) or 3 (RGB); None: from the data "
                        "(Fashion-MNIST 1; a folder: 1 if its first training image is grayscale, else 3)")
    p.add_argument("--drop-rate", type=_UNIT, default=None, help="dropout before the classifier; None: the model's")
    p.add_argument("--drop-path-rate", type=_UNIT, default=None, help="stochastic depth rate; None: the model's")
    p.add_argument("--pretrained", action="store_true", help="start from the model's pretrained weights")
    p.add_argument("--randaugment-magnitude", type=_or_words(non_negative_int, auto="auto", none=None), default="auto",
                   help="folder datasets: RandAugment (4 layers) magnitude; auto: DeepMind's for NFNets "
                        "(F0 5, F1-F2 10, F3-F7 15), none for other models; none: off")
    p.add_argument("--mixup-alpha", type=non_negative_float, default=0.2,
                   help="folder datasets: MixUp, ratio Beta(alpha, alpha), on half of each batch; 0: off")
    p.add_argument("--cutmix-alpha", type=non_negative_float, default=1.0,
                   help="folder datasets: CutMix, kept area Beta(alpha, alpha), on the other half; 0: off. "
                        "Each mixed output takes two raw images: a step then draws twice the batch")
    defaults, deepmind = _recipe_defaults(DEFAULT_RECIPE), _recipe_defaults("deepmind")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind, text = _FIELD_FLAGS[f.name]
        if deepmind[f.name] != defaults[f.name]:
            text += f" (--recipe deepmind: {deepmind[f.name]})"
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=defaults[f.name], help=text)
        elif f.name == "precision":
            p.add_argument(flag, choices=PRECISIONS, default=defaults[f.name], help=text)
        else:
            p.add_argument(flag, type=kind, default=defaults[f.name], metavar=f.name.upper(), help=text)
    p.add_argument("--no-resume", dest="resume", action="store_const", const=None, default=argparse.SUPPRESS,
                   help="start afresh even if <output-dir>/last.pth exists (same as --resume none)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with the defaults of the ``--recipe`` it names."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.recipe != DEFAULT_RECIPE:
        parser.set_defaults(**_recipe_defaults(args.recipe, args.model))
        args = parser.parse_args(argv)
    return args


def _train_config(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    values["output_dir"] = str(values["output_dir"])
    if isinstance(values["resume"], Path):
        values["resume"] = str(values["resume"])
    return TrainConfig(**values)


def _per_channel(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Mean or std for ``in_chans`` channels: the model's own when it has that many, else their
    average for every channel (a grayscale run of an RGB model, or the reverse)."""
    values = tuple(float(v) for v in values)
    return values if len(values) == in_chans else (sum(values) / len(values),) * in_chans


def _data_config(model: torch.nn.Module, in_chans: int, img_size: int | None = None, test: bool = False) -> dict:
    """timm's data config for ``model`` at ``in_chans`` channels (and ``img_size``, if given)."""
    cfg = resolve_data_config({}, model=model, use_test_size=test)
    size = (img_size, img_size) if img_size else tuple(cfg["input_size"][-2:])
    return {**cfg, "input_size": (in_chans, *size), "mean": _per_channel(cfg["mean"], in_chans),
            "std": _per_channel(cfg["std"], in_chans)}


def _open_as(mode: str, path: str) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(f).convert(mode)


def _image_folder(folder: Path, mode: str | None = None) -> ImageFolder:
    if not folder.is_dir():
        raise DatasetFolderError(f"{folder} is not a folder: --dataset folder needs <data-dir>/train and "
                                 "<data-dir>/val, each with a folder of images per class")
    loader = functools.partial(_open_as, mode) if mode else None
    try:
        return ImageFolder(str(folder), **({"loader": loader} if loader else {}))
    except FileNotFoundError as e:  # no class folders, or no images in them
        raise DatasetFolderError(f"{folder}: {e}") from None


class DatasetFolderError(NfzooError):
    """A dataset folder that is missing or not in ImageFolder layout."""


def _channels_of(path: str) -> int:
    with Image.open(path) as img:
        return 1 if img.mode in ("1", "L", "I", "I;16", "F") else 3


def _build(args: argparse.Namespace, cfg: TrainConfig) -> dict:
    """The model, datasets, collate function and model_config the run trains with."""
    kwargs = {"pretrained": args.pretrained}
    for name in ("drop_rate", "drop_path_rate"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if args.dataset == "fashion_mnist":
        if args.in_chans not in (None, 1):
            raise TrainConfigError(f"--in-chans {args.in_chans}: Fashion-MNIST's images have 1 channel")
        root = args.data_dir or FASHION_MNIST_DIR
        train_set, eval_set = fashion_mnist("train", root, args.train_limit), fashion_mnist("test", root)
        model = timm.create_model(args.model, num_classes=len(FASHION_MNIST_CLASSES), in_chans=1, **kwargs)
        return {"model": model, "train_set": train_set, "eval_set": eval_set, "collate": None, "in_chans": 1,
                "label_names": list(FASHION_MNIST_CLASSES), "eval_cfg": FASHION_MNIST_DATA_CONFIG, "magnitude": None}
    if args.data_dir is None:
        raise TrainConfigError("--dataset folder needs --data-dir (holding train/ and val/ class folders)")
    probe = _image_folder(args.data_dir / "train")
    in_chans = args.in_chans or _channels_of(probe.samples[0][0])
    if in_chans not in _FOLDER_MODES:
        raise TrainConfigError(f"--in-chans {in_chans}: folder images are read as grayscale (1) or RGB (3)")
    train_set = _image_folder(args.data_dir / "train", _FOLDER_MODES[in_chans])
    eval_set = _image_folder(args.data_dir / "val", _FOLDER_MODES[in_chans])
    if eval_set.classes != train_set.classes:
        raise DatasetFolderError(f"{args.data_dir}: val/ has classes {eval_set.classes}, train/ has "
                                 f"{train_set.classes}; both need the same class folders")
    model = timm.create_model(args.model, num_classes=len(train_set.classes), in_chans=in_chans, **kwargs)
    train_cfg = _data_config(model, in_chans, args.img_size)
    # validation at the test size (NFNets: larger than the train size), as the weights were evaluated
    eval_cfg = _data_config(model, in_chans, test=True)
    train_set.transform = train_transform(train_cfg["input_size"][-1])
    eval_set.transform = create_transform(**eval_cfg)
    magnitude = args.randaugment_magnitude
    if magnitude == "auto":
        magnitude = randaugment_magnitude(args.model)
    collate = DeepMindBatchAugment(len(train_set.classes), magnitude, mixup_alpha=args.mixup_alpha,
                                   cutmix_alpha=args.cutmix_alpha, mean=train_cfg["mean"], std=train_cfg["std"])
    label_names = list(train_set.classes)
    if args.train_limit is not None:
        train_set = torch.utils.data.Subset(train_set, range(min(args.train_limit, len(train_set))))
    return {"model": model, "train_set": train_set, "eval_set": eval_set, "collate": collate, "in_chans": in_chans,
            "label_names": label_names, "eval_cfg": eval_cfg, "magnitude": magnitude}


def _check_sizes(cfg: TrainConfig, built: dict, world_size: int) -> None:
    """The batch against the data and the processes, before any step runs."""
    per_process = cfg.per_process_batch(world_size)
    images = len(built["train_set"])
    if cfg.batch_size > images:
        raise TrainConfigError(f"--batch-size {cfg.batch_size} is larger than the training set ({images} images); "
                               f"use at most {images}")
    groups = getattr(built["collate"], "groups", 0)
    if groups and per_process % groups:
        raise TrainConfigError(f"MixUp and CutMix each take half of every process's batch: --batch-size "
                               f"{cfg.batch_size} over {world_size} process(es) gives {per_process}, not a multiple of "
                               f"{groups}; change the batch size or turn one of them off (--mixup-alpha 0)")


def _model_config(args: argparse.Namespace, built: dict) -> dict:
    cfg = built["eval_cfg"]
    return {"architecture": args.model.split(".")[0], "num_classes": len(built["label_names"]),
            "in_chans": built["in_chans"], "label_names": built["label_names"], "input_size": list(cfg["input_size"]),
            "mean": list(cfg["mean"]), "std": list(cfg["std"]), "interpolation": cfg["interpolation"],
            "crop_pct": float(cfg["crop_pct"]), "crop_mode": cfg["crop_mode"]}


def _run_flags(args: argparse.Namespace, built: dict) -> dict:
    """The command line's own settings, as the checkpoint stores them (``--recipe`` only fills in
    TrainConfig's values, which the checkpoint holds resolved)."""
    return {"model": args.model, "dataset": args.dataset,
            "data_dir": None if args.data_dir is None else str(args.data_dir), "train_limit": args.train_limit,
            "img_size": args.img_size, "in_chans": built["in_chans"],
            "drop_rate": args.drop_rate, "drop_path_rate": args.drop_path_rate, "pretrained": args.pretrained,
            "randaugment_magnitude": built["magnitude"], "mixup_alpha": args.mixup_alpha,
            "cutmix_alpha": args.cutmix_alpha}


def _run(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    if not timm.is_model(args.model.split(".")[0]):
        raise TrainConfigError(f"--model {args.model}: timm (with nfzoo's models) has no such model; "
                               "`timm.list_models('nf*')` lists the normalizer-free ones")
    cfg = _train_config(args)
    env = torchrun.start()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    built = _build(args, cfg)
    _check_sizes(cfg, built, env.world_size)
    trainer = Trainer(built["model"], built["train_set"], cfg, built["eval_set"], env=env, collate_fn=built["collate"],
                      model_config=_model_config(args, built), flags=_run_flags(args, built))
    result = trainer.fit()
    if result["diverged"]:
        print(f"{PROG}: error: the loss became non-finite at step {trainer.step}; the run stopped there "
              f"(checkpoint {cfg.output_dir}/last.pth). Lower the learning rate, or start afresh with --no-resume",
              file=sys.stderr)
        return 1
    if env.is_main:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Train as the command line says; returns the exit code (0: done, 1: an error or a diverged run, 2: bad flags)."""
    return run_cli(_run, argv, prog=PROG)
