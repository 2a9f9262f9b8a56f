#!/usr/bin/env python
"""Retrain the demo checkpoint ``nfnet_mini.nfzoo_fmnist`` and measure it (docs/demo.md):

    NFZOO_FASHION_MNIST=/usr/share/datasets/fashion-mnist python weights/train_demo.py

1. trains ``nfnet_mini`` on Fashion-MNIST with nfzoo's recipe (``python -m nfzoo.train``: SGD +
   Nesterov, AGC 0.01, label smoothing 0.1, cosine schedule), 3 epochs at batch 128 (about 10
   minutes on two CPU cores);
2. writes its weights to the file the manifest names (inside the package; ``--weights-out``);
3. writes the image sample ``make demo`` validates on: the first ``--sample`` test images, as
   PNGs in one folder per class, with the class map (``--sample-dir``);
4. validates the weights on that sample with the harness and prints the manifest lines to
   paste (sha256, top-1, top-5, number of images).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import safetensors.torch
from PIL import Image

from nfzoo.atomic_files import atomic_open, write_atomic
from nfzoo.cli import ArgumentParser, output_dir, positive_int, run_cli
from nfzoo.evaluation.model_setup import create_model
from nfzoo.evaluation.validate_cli import main as validate
from nfzoo.train.run_state import load_checkpoint, read_model_config
from nfzoo.train.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_idx
from nfzoo.train.train_cli import main as train
from nfzoo.weights import checkpoint
from nfzoo.weights.files import sha256_file

PROG = "weights/train_demo.py"
NAME = "nfnet_mini.nfzoo_fmnist"
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "fashion_mnist_sample"
RECIPE = ["--base-lr", "0.4", "--warmup-epochs", "0.2", "--ema-decay", "none",
          "--ckpt-every", "0", "--log-every", "100", "--no-progress"]


def export(run_dir: Path, out: Path) -> None:
    """The trained weights of ``run_dir/last.pth``, loaded strictly into the model its
    ``model_config`` describes (as ``nfzoo-validate --checkpoint`` loads them), as safetensors."""
    config = read_model_config(load_checkpoint(run_dir / "last.pth"))
    model = create_model(config["architecture"], "checkpoint", run_dir / "last.pth", model_config=config)
    # serialised in memory and written by nfzoo.atomic_files: safetensors' own writer reports a full
    # disk as a generic error
    write_atomic(out, safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items()}))


def write_sample(data_dir: Path, count: int, out: Path) -> Path:
    """The first ``count`` test images as ``out/<index>_<class>/<n>.png``; returns the class map."""
    images = read_idx(data_dir / "t10k-images-idx3-ubyte.gz")[:count]
    labels = read_idx(data_dir / "t10k-labels-idx1-ubyte.gz")[:count]
    folders = [f"{i}_{c.split('/')[0].replace(' ', '_').lower()}" for i, c in enumerate(FASHION_MNIST_CLASSES)]
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for n, (image, label) in enumerate(zip(images, labels)):
        with atomic_open(out / folders[label] / f"{n:05d}.png") as f:
            Image.fromarray(image, mode="L").save(f, format="PNG", optimize=True)
    class_map = out / "class_map.txt"
    write_atomic(class_map, "".join(f"{folder}\n" for folder in folders))  # timm's format: line i names class i
    return class_map


def _run(argv: Sequence[str] | None) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=FASHION_MNIST_DIR, help="Fashion-MNIST's four *-ubyte.gz files")
    p.add_argument("--run-dir", type=output_dir, default=Path("runs/nfnet_mini_fmnist"),
                   help="training output (resumable)")
    p.add_argument("--epochs", type=positive_int, default=3, help="training epochs")
    p.add_argument("--batch-size", type=positive_int, default=128, help="training batch")
    p.add_argument("--train-limit", type=positive_int, default=None, help="train on the first N images only")
    p.add_argument("--sample", type=positive_int, default=500, help="test images in the shipped sample")
    p.add_argument("--weights-out", type=Path, default=None,
                   help="where to write the weights (default: the manifest's file, inside the package)")
    p.add_argument("--sample-dir", type=output_dir, default=SAMPLE, help="where to write the image sample")
    args = p.parse_args(argv)

    limit = [] if args.train_limit is None else ["--train-limit", str(args.train_limit)]
    status = train(["--model", "nfnet_mini", "--dataset", "fashion_mnist", "--data-dir", str(args.data_dir),
                    "--output-dir", str(args.run_dir), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), *limit, *RECIPE])
    if status:
        return status
    weights = args.weights_out or checkpoint(NAME).file_path
    export(args.run_dir, weights)
    class_map = write_sample(args.data_dir, args.sample, args.sample_dir)
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.json"
        status = validate(["--model", "nfnet_mini", "--checkpoint", str(weights), "--data-dir", str(args.sample_dir),
                           "--class-map", str(class_map), "--workers", "0", "--no-progress",
                           "--results-file", str(results)])
        if status:
            return status
        (row,) = json.loads(results.read_text())
    print(f"\nmanifest entry {NAME}:\nsha256 = \"{sha256_file(weights)}\"\ntop1 = {row['top1']}\n"
          f"top5 = {row['top5']}\neval_images = {row['images']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
