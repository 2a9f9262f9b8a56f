"""A generated dataset of shapes with boxes, instance masks and a semantic map, so the whole
detection/segmentation pipeline can be trained and checked offline.

Image ``i`` is a function of ``(seed, i)`` only, drawn on the fly: no files, no downloads, the
same tensors on every machine.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

__all__ = ["CLASSES", "ShapesDataset", "collate"]

CLASSES = ("background", "rectangle", "ellipse", "triangle")
_MIN_VISIBLE_PIXELS = 16  # an occluded shape with fewer visible pixels is dropped


class ShapesDataset(Dataset):
    """Noisy backgrounds with 1..``max_shapes`` filled shapes, later ones occluding earlier ones.

    ``dataset[i]`` is ``(image, target)``: ``image`` float ``[3, H, W]`` in [0, 1]; ``target`` in
    torchvision's detection format (``boxes`` float ``[N, 4]`` xyxy, ``labels`` int64 ``[N]``
    indexing :data:`CLASSES`, ``masks`` uint8 ``[N, H, W]`` of the visible parts) plus
    ``semantic``, the int64 ``[H, W]`` class map for semantic segmentation.
    """

    def __init__(self, num_images: int = 64, image_size: int = 128, max_shapes: int = 3, seed: int = 0):
        if num_images < 1 or max_shapes < 1:
            raise ValueError(f"need num_images >= 1 and max_shapes >= 1, got {num_images} and {max_shapes}")
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
        self.num_images = num_images
        self.image_size = image_size
        self.max_shapes = max_shapes
        self.seed = seed

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        size = self.image_size
        image = torch.rand(3, 1, 1, generator=g) * 0.5 + 0.05 * torch.randn(3, size, size, generator=g)
        semantic = torch.zeros(size, size, dtype=torch.int64)
        instance = torch.full((size, size), -1, dtype=torch.int64)  # index of the visible shape
        labels = []
        for k in range(int(torch.randint(1, self.max_shapes + 1, (1,), generator=g))):
            label = int(torch.randint(1, len(CLASSES), (1,), generator=g))
            mask = _draw(label, size, g)
            image[:, mask] = 0.5 + 0.5 * torch.rand(3, 1, generator=g)
            semantic[mask] = label
            instance[mask] = k
            labels.append(label)
        masks = torch.stack([instance == k for k in range(len(labels))])
        keep = masks.flatten(1).sum(1) >= _MIN_VISIBLE_PIXELS
        masks, labels = masks[keep], torch.tensor(labels, dtype=torch.int64)[keep]
        target = dict(boxes=_boxes(masks), labels=labels, masks=masks.to(torch.uint8), semantic=semantic)
        return image.clamp_(0, 1), target


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Lists of images and targets, as torchvision's detection models take them."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def _draw(label: int, size: int, g: torch.Generator) -> torch.Tensor:
    """A boolean ``[size, size]`` mask of one shape of class ``label`` at a random place."""
    lo, hi = size // 8, size // 3  # half-extents
    cx, cy = torch.randint(hi, size - hi, (2,), generator=g).tolist()
    a, b = torch.randint(lo, hi + 1, (2,), generator=g).tolist()
    y, x = torch.meshgrid(torch.arange(size) - cy, torch.arange(size) - cx, indexing="ij")
    if CLASSES[label] == "rectangle":
        return (x.abs() <= a) & (y.abs() <= b)
    if CLASSES[label] == "ellipse":
        return (x / a) ** 2 + (y / b) ** 2 <= 1
    # an isosceles triangle, apex up, base 2a wide at y = +b
    return (y <= b) & (y >= -b) & (x.abs() * 2 * b <= a * (y + b))


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes (pixel edges) around each mask."""
    boxes = torch.zeros(len(masks), 4)
    for i, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    return boxes
