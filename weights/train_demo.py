#!/usr/bin/env python
"""Retrain the demo checkpoint ``nfnet_mini.nfzoo_fmnist`` and measure it (docs/demo.md):

    NFZOO_FASHION_MNIST=/usr/share/datasets/fashion-mnist python weights/train_demo.py

1. trains ``nfnet_mini`` on Fashion-MNIST with nfzoo's recipe (``python -m nfzoo.train``: SGD +
   Nesterov, AGC 0.01, label smoothing 0.1, cosine schedule), 3 epochs at batch 128 (about 10
   minutes on two CPU cores);
2. writes its weights to the file the manifest names (inside the package);
3. writes the image sample ``make demo`` validates on: the first ``--sample`` test images, as
   PNGs in one folder per class, with the class map;
4. validates the weights on that sample with the harness and prints the manifest lines to
   paste (sha256, top-1, top-5, number of images).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import safetensors.torch
import timm
from PIL import Image

import nfzoo  # noqa: F401  (registers nfnet_mini)
from nfzoo.evaluation.validate_cli import main as validate
from nfzoo.train.checkpoint import load_checkpoint
from nfzoo.train.cli import main as train
from nfzoo.train.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_idx
from nfzoo.weights import checkpoint
from nfzoo.weights.files import atomic_path, sha256_file

NAME = "nfnet_mini.nfzoo_fmnist"
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "fashion_mnist_sample"
RECIPE = ["--epochs", "3", "--batch-size", "128", "--base-lr", "0.4", "--warmup-epochs", "0.2",
          "--ema-decay", "none", "--ckpt-every", "0", "--log-every", "100", "--no-progress"]


def export(run_dir: Path, out: Path) -> None:
    """The trained weights of ``run_dir/last.pth``, checked to load strictly, as safetensors."""
    state = load_checkpoint(run_dir / "last.pth")["model"]  # the run's own file, as the trainer resumes it
    model = timm.create_model("nfnet_mini")
    model.load_state_dict(state, strict=True)
    with atomic_path(out) as tmp:
        safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)


def write_sample(data_dir: Path, count: int, out: Path) -> Path:
    """The first ``count`` test images as ``out/<index>_<class>/<n>.png``; returns the class map."""
    images = read_idx(data_dir / "t10k-images-idx3-ubyte.gz")[:count]
    labels = read_idx(data_dir / "t10k-labels-idx1-ubyte.gz")[:count]
    folders = [f"{i}_{c.split('/')[0].replace(' ', '_').lower()}" for i, c in enumerate(FASHION_MNIST_CLASSES)]
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for n, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image, mode="L").save(out / folders[label] / f"{n:05d}.png", optimize=True)
    class_map = out / "class_map.txt"
    class_map.write_text("".join(f"{folder}\n" for folder in folders))  # timm's format: line i names class i
    return class_map


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=FASHION_MNIST_DIR, help="Fashion-MNIST's four *-ubyte.gz files")
    p.add_argument("--run-dir", type=Path, default=Path("runs/nfnet_mini_fmnist"), help="training output (resumable)")
    p.add_argument("--sample", type=int, default=500, help="test images in the shipped sample")
    args = p.parse_args()

    train(["--model", "nfnet_mini", "--dataset", "fashion_mnist", "--data-dir", str(args.data_dir),
           "--output-dir", str(args.run_dir), *RECIPE])
    weights = checkpoint(NAME).file_path
    export(args.run_dir, weights)
    class_map = write_sample(args.data_dir, args.sample, SAMPLE)
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.json"
        validate(["--model", "nfnet_mini", "--checkpoint", str(weights), "--data-dir", str(SAMPLE),
                  "--class-map", str(class_map), "--workers", "0", "--no-progress", "--results-file", str(results)])
        (row,) = json.loads(results.read_text())
    print(f"\nmanifest entry {NAME}:\nsha256 = \"{sha256_file(weights)}\"\ntop1 = {row['top1']}\n"
          f"top5 = {row['top5']}\neval_images = {row['images']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
