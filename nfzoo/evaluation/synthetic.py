"""A small generated dataset in ImageNet's folder layout, for running the harness offline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .labels import imagenet_synsets

__all__ = ["make_image_folder"]


def make_image_folder(root: Path, num_images: int, *, seed: int = 0, size: tuple[int, int] = (320, 240)) -> Path:
    """Write ``num_images`` smooth random JPEGs (``size`` = width, height; every other image
    transposed to portrait) into ``root/<synset>/`` for all 1000 ImageNet-1k synsets, the
    images spread evenly over the classes. Returns ``root``."""
    rng = np.random.default_rng(seed)
    synsets = imagenet_synsets()
    for wnid in synsets:
        (root / wnid).mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        w, h = size if i % 2 == 0 else size[::-1]
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        img = coarse.resize((w, h), Image.Resampling.BICUBIC)
        wnid = synsets[i * len(synsets) // num_images]
        img.save(root / wnid / f"generated_{i:05d}.JPEG", quality=90)
    return root
