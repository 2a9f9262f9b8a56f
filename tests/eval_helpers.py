"""Shared pieces of the harness tests: tiny generated images and a model whose predictions
are known in advance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PLANTED_SIZE = 16


def solid_image(code: int, size: tuple[int, int] = (20, 24)) -> Image.Image:
    """A solid image whose red value encodes ``code`` (0..11), read back by PlantedModel."""
    return Image.new("RGB", size, (20 * code + 10, 128, 128))


def random_image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


class PlantedModel(nn.Module):
    """Predicts class ``code`` first, then code+1 ... code+4, from a solid_image's red value."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # the harness counts parameters
        self.pretrained_cfg = dict(input_size=(3, PLANTED_SIZE, PLANTED_SIZE), crop_pct=1.0,
                                   interpolation="bilinear", mean=MEAN, std=STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = (x[:, 0].mean(dim=(1, 2)) * STD[0] + MEAN[0]) * 255
        code = ((red - 10) / 20).round().long()
        classes = torch.arange(1000, device=x.device)
        return -((classes[None, :] - code[:, None]) % 1000).float()


def planted_expectation(items: list[tuple[int, int]]) -> tuple[float, float]:
    """Top-1/top-5 (%) PlantedModel must score on (code, label) items, worked out by hand."""
    top1 = sum(code == label for code, label in items)
    top5 = sum(0 <= label - code <= 4 for code, label in items)
    return 100 * top1 / len(items), 100 * top5 / len(items)


def write_planted_folder(root: Path, items: list[tuple[int, int]]) -> Path:
    """An image folder with one folder per label (``c<label>``) and a class map file for it
    (timm's format: line i names class i); returns the class map's path."""
    for i, (code, label) in enumerate(items):
        folder = root / f"c{label:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        solid_image(code).save(folder / f"img_{i:04d}.png")
    class_map = root.parent / f"{root.name}_class_map.txt"
    class_map.write_text("".join(f"c{label:03d}\n" for label in range(max(lbl for _, lbl in items) + 1)))
    return class_map


def odd_items(n: int = 13) -> list[tuple[int, int]]:
    """(code, label) pairs mixing top-1 hits, top-5-only hits and misses."""
    return [(i % 12, (i % 12) + (i % 7)) for i in range(n)]
