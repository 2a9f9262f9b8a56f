"""``python -m nfzoo.train``: train a timm / nfzoo model with the NFNet recipe.

    python -m nfzoo.train --model nf_resnet26 --dataset fashion_mnist --epochs 10 --batch-size 128
    torchrun --nproc_per_node 8 -m nfzoo.train --model nfnet_f0 --dataset folder --data-dir /data/imagenet \\
        --drop-rate 0.2 --drop-path-rate 0.25 --amp bf16 --output-dir runs/f0

Every field of :class:`~nfzoo.train.config.TrainConfig` is a flag (``--agc-clip none`` turns
AGC off; the default ``batch`` takes the published threshold for the global batch). Rerunning the same command after a kill resumes from ``<output-dir>/last.pth``.
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Callable, Sequence

import timm
import torch
from timm.data import create_transform, resolve_data_config
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

import nfzoo  # noqa: F401  (registers the zoo's models with timm)

from .. import torchrun
from ..atomic_files import DiskFullError
from ..weights.errors import CheckpointError
from .augment import DeepMindBatchAugment, randaugment_magnitude, train_transform
from .config import TrainConfig
from .data import FASHION_MNIST_CLASSES, fashion_mnist
from .trainer import Trainer

__all__ = ["main", "build_parser"]


def _flag_type(annotation: str) -> Callable[[str], object]:
    base = float if "float" in annotation else int if "int" in annotation else str

    def parse(s: str) -> object:
        if "None" in annotation and s.lower() == "none":
            return None
        try:
            return base(s)
        except ValueError:
            if "str" in annotation:  # a named setting, e.g. --agc-clip batch
                return s
            raise
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nfzoo.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="any timm model name (after `import nfzoo`)")
    p.add_argument("--dataset", choices=("fashion_mnist", "folder"), default="fashion_mnist",
                   help="'folder': <data-dir>/train and <data-dir>/val in ImageFolder layout")
    p.add_argument("--data-dir", default=None, help="the dataset's folder (Fashion-MNIST: the Debian package's)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--img-size", type=int, default=None, help="training resolution (folder datasets)")
    p.add_argument("--drop-rate", type=float, default=None, help="dropout before the classifier")
    p.add_argument("--drop-path-rate", type=float, default=None, help="stochastic depth rate")
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--randaugment-magnitude", type=int, default=None,
                   help="folder datasets: RandAugment (4 layers) magnitude; default: DeepMind's for NFNets "
                        "(F0 5, F1-F2 10, F3-F7 15), off for other models; -1 turns it off")
    p.add_argument("--mixup-alpha", type=float, default=0.2, help="folder datasets: MixUp on half of each batch; 0: off")
    p.add_argument("--cutmix-alpha", type=float, default=1.0, help="folder datasets: CutMix on the other half; 0: off")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(flag, type=_flag_type(str(f.type)), default=f.default)
    return p


def _model_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {"pretrained": args.pretrained}
    if args.drop_rate is not None:
        kwargs["drop_rate"] = args.drop_rate
    if args.drop_path_rate is not None:
        kwargs["drop_path_rate"] = args.drop_path_rate
    return kwargs


def _datasets(args: argparse.Namespace, model_name: str, kwargs: dict
              ) -> tuple[torch.nn.Module, Dataset, Dataset, Callable | None]:
    """The model, the training and validation sets, and the training batches' collate function."""
    if args.dataset == "fashion_mnist":
        model = timm.create_model(model_name, num_classes=len(FASHION_MNIST_CLASSES), in_chans=1, **kwargs)
        return (model, fashion_mnist("train", args.data_dir, args.train_limit), fashion_mnist("test", args.data_dir), None)
    if args.data_dir is None:
        raise SystemExit("--dataset folder needs --data-dir (holding train/ and val/ class folders)")
    train_set = ImageFolder(f"{args.data_dir}/train")
    model = timm.create_model(model_name, num_classes=len(train_set.classes), **kwargs)
    data_cfg = resolve_data_config({"input_size": (3, args.img_size, args.img_size)} if args.img_size else {}, model=model)
    train_set.transform = train_transform(data_cfg["input_size"][-1])
    magnitude = randaugment_magnitude(model_name) if args.randaugment_magnitude is None else args.randaugment_magnitude
    collate = DeepMindBatchAugment(len(train_set.classes), None if magnitude is None or magnitude < 0 else magnitude,
                                   mixup_alpha=args.mixup_alpha, cutmix_alpha=args.cutmix_alpha,
                                   mean=data_cfg["mean"], std=data_cfg["std"])
    # validation at the test size (NFNets: larger than the train size), as the weights were evaluated
    eval_cfg = resolve_data_config({}, model=model, use_test_size=True)
    eval_set = ImageFolder(f"{args.data_dir}/val", transform=create_transform(**eval_cfg))
    if args.train_limit is not None:
        train_set = torch.utils.data.Subset(train_set, range(min(args.train_limit, len(train_set))))
    return model, train_set, eval_set, collate


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    env = torchrun.start()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    model, train_set, eval_set, collate = _datasets(args, args.model, _model_kwargs(args))
    try:
        result = Trainer(model, train_set, cfg, eval_set, env=env, collate_fn=collate).fit()
    except (DiskFullError, CheckpointError) as e:
        raise SystemExit(f"nfzoo.train: error: {e}") from e
    if env.is_main:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
    return result
