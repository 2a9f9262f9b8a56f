"""Datasets (the order of their images per step is :mod:`nfzoo.train.steps`'s).

Fashion-MNIST (Xiao et al. 2017) comes from Debian's ``dataset-fashion-mnist`` package, which
puts the four IDX files under ``/usr/share/datasets/fashion-mnist``.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import NfzooError
from ..models.nfnet_mini import FASHION_MNIST_CLASSES

__all__ = ["FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DATA_CONFIG", "fashion_mnist", "read_idx",
           "DatasetError", "DatasetNotFoundError"]

FASHION_MNIST_DIR = Path(os.environ.get("NFZOO_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
_FILES = {"train": "train-{}-idx{}-ubyte.gz", "test": "t10k-{}-idx{}-ubyte.gz"}
_MEAN, _STD = 0.2860, 0.3530  # of the Fashion-MNIST training images
# How a model trained on :func:`fashion_mnist` expects an image file (timm's data config keys).
FASHION_MNIST_DATA_CONFIG = {"input_size": (1, 28, 28), "mean": (_MEAN,), "std": (_STD,), "interpolation": "bilinear",
                             "crop_pct": 1.0, "crop_mode": "center"}


class DatasetError(NfzooError, ValueError):
    """A dataset file that is damaged or not in the expected format."""


class DatasetNotFoundError(NfzooError, FileNotFoundError):
    """A dataset that is not where it was looked for."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format: magic 0x0000 | type 0x08 | ndim, big-endian dims,
    uint8 data), gzipped or not.

    Written here rather than torchvision's ``read_image_file``/``read_label_file``: those read
    only uncompressed files (Debian ships the gzipped ones), check the header with bare asserts
    and accept a truncated image file; this one says what is wrong with a bad file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {dims} but holds {data.size} values (truncated?)")
    return data.reshape(dims)


def fashion_mnist(split: str = "train", root: str | os.PathLike | None = None,
                  limit: int | None = None) -> TensorDataset:
    """Fashion-MNIST as a ``TensorDataset`` of normalized (N, 1, 28, 28) float images and labels.

    ``limit`` keeps the first ``limit`` images (the files are class-balanced throughout).
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    images_path = root / _FILES[split].format("images", 3)
    labels_path = root / _FILES[split].format("labels", 1)
    if not images_path.is_file() or not labels_path.is_file():
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found: expected {images_path.name} and {labels_path.name} in {root}. "
            "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or point "
            "--data-dir (or NFZOO_FASHION_MNIST) at a folder holding the four *-ubyte.gz files.")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if len(images) != len(labels):
        raise DatasetError(f"{root}: {len(images)} images but {len(labels)} labels")
    images, labels = images[:limit], labels[:limit]
    x = (torch.from_numpy(images.copy()).float().div_(255).sub_(_MEAN).div_(_STD)).unsqueeze(1)
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))
