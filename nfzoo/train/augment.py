"""DeepMind's NFNet training augmentation.

Source: ``nfnets/experiment_nfnets.py`` (``augment_name = 'cutmix_mixup_randaugment_<level>'``,
``augment_before_mix=False``), ``nfnets/dataset.py`` and ``nfnets/autoaugment.py``. Per image:
DeepMind's random crop (:mod:`nfzoo.train.crop`), a horizontal flip and a bicubic resize to the
train size; no colour jitter. Per step of B outputs, from 2B raw images (``my_mixup_cutmix``):
output i < B/2 is MixUp of raw image i with raw image B/2 + i (ratio Beta(0.2, 0.2) per output),
output B/2 + i is CutMix of raw image B + i (inside the box) with raw image 3B/2 + i (outside),
the box drawn per output as ``cutmix_padding`` draws it; each target is the ratio-weighted mix
of the two one-hot labels, the CutMix ratio being the box's area fraction (label smoothing is the
loss's). Then, on the *mixed* images (clipped to [0, 255] and cast to 8 bits), RandAugment with 4
layers, each layer always applying one of 16 ops chosen uniformly, at the variant's magnitude: 5
for F0, 10 for F1 and F2, 15 for F3 and up (levels '405', '410', '415'). Magnitudes above 10 are
not clipped, as in DeepMind's code; translations are up to ``100 * m / 10`` pixels and the fill
is grey (128).

The differences from DeepMind's pipeline that remain are listed in docs/training.md.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
from PIL import Image, ImageDraw
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, rand_augment_transform
from timm.data.auto_augment import RandAugment
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .crop import DeepMindRandomCrop

__all__ = ["RA_LEVELS", "randaugment_magnitude", "deepmind_randaugment", "train_transform", "cutmix_masks",
           "DeepMindBatchAugment"]

# experiment_nfnets.py: RandAugment level per variant, '4MM' = 4 layers at magnitude MM.
RA_LEVELS = {"F0": "405", "F1": "410", "F2": "410", "F3": "415", "F4": "415", "F5": "415", "F6": "415", "F7": "415"}
RA_LAYERS = 4
_MAX_LEVEL = 10.0  # autoaugment.py: magnitudes are fractions of this
_FILL = (128, 128, 128)  # autoaugment.py's replace value
# autoaugment.py's 16 RandAugment ops, in timm's names (Cutout is ours: timm has none)
_TIMM_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
             "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "SolarizeAdd"]


def randaugment_magnitude(model_name: str) -> int | None:
    """DeepMind's RandAugment magnitude for an NFNet variant (``nfnet_f3`` -> 15); None for other
    models (DeepMind's base experiment, used for its NF-ResNets, has no RandAugment)."""
    # FN+ (nfnet_fN_plus) inherits FN's level in base.py
    variant = model_name.split(".")[0].removeprefix("dm_").removeprefix("nfnet_").removesuffix("_plus").upper()
    level = RA_LEVELS.get(variant) if model_name.startswith(("nfnet_f", "dm_nfnet_f")) else None
    return None if level is None else int(level) % 100


class Cutout:
    """autoaugment.py's ``cutout``: a grey square of side ``2 * pad`` (clipped at the borders)
    centred on a uniformly drawn pixel, ``pad = int(m / 10 * 40)``."""

    def __init__(self, magnitude: float):
        self.pad = int(magnitude / _MAX_LEVEL * 40)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        cy, cx = random.randrange(h), random.randrange(w)
        img = img.copy()
        box = (max(0, cx - self.pad), max(0, cy - self.pad), min(w, cx + self.pad) - 1, min(h, cy + self.pad) - 1)
        if box[2] >= box[0] and box[3] >= box[1]:
            ImageDraw.Draw(img).rectangle(box, fill=_FILL)
        return img

    def __repr__(self) -> str:
        return f"Cutout(pad={self.pad})"


def _solarize_add_level(magnitude: float, _hparams: dict) -> tuple[int]:
    return (int(magnitude / _MAX_LEVEL * 110),)


def deepmind_randaugment(magnitude: int, num_layers: int = RA_LAYERS) -> RandAugment:
    """timm's RandAugment set up as ``autoaugment.distort_image_with_randaugment``: every layer
    applies its op (probability 1), magnitude not clipped at 10, absolute translations of up to
    100 px at magnitude 10, nearest-neighbour resampling (TF-Addons' default) with grey fill, and
    Cutout as the 16th op."""
    ra = rand_augment_transform(f"rand-m{magnitude}-n{num_layers}-p1.0-mmax{max(magnitude, 10)}",
                                hparams=dict(translate_const=100, img_mean=_FILL, interpolation=Image.NEAREST), transforms=list(_TIMM_OPS))
    for op in ra.ops:
        if op.name == "SolarizeAdd":  # timm caps the addition at 128; DeepMind's level has no cap
            op.level_fn = _solarize_add_level
    ra.ops.append(Cutout(magnitude))
    return ra


def train_transform(img_size: int) -> transforms.Compose:
    """The per-image part: DeepMind's random crop, a flip, a bicubic resize to ``img_size``
    squared; an 8-bit CHW tensor (mixing, RandAugment and normalization happen per step, in
    :class:`DeepMindBatchAugment`)."""
    return transforms.Compose([DeepMindRandomCrop(img_size), transforms.RandomHorizontalFlip(),
                               transforms.Resize((img_size, img_size), interpolation=InterpolationMode.BICUBIC),
                               transforms.PILToTensor()])


def cutmix_masks(n: int, height: int, width: int, alpha: float = 1.0) -> torch.Tensor:
    """``n`` CutMix masks (n, height, width), 1 inside the box, as ``dataset.cutmix_padding``
    draws them: a centre (x, y) uniform over the pixels, a kept fraction ``p`` (uniform, i.e.
    Beta(1, 1), for ``alpha`` 1), box sides ``int(sqrt(1 - p) * side)``, the box spanning
    ``centre -/+ side // 2`` clipped to the image. Draws (torch's global generator) x, y, then
    p, each for all n."""
    cx = torch.randint(width, (n,))
    cy = torch.randint(height, (n,))
    kept = torch.distributions.Beta(alpha, alpha).sample((n,))
    side = torch.sqrt(1 - kept)
    half_w = (side * width).to(torch.int32) // 2
    half_h = (side * height).to(torch.int32) // 2
    cols, rows = torch.arange(width), torch.arange(height)
    inside_x = (cols >= (cx - half_w).clamp(0, width)[:, None]) & (cols < (cx + half_w).clamp(0, width)[:, None])
    inside_y = (rows >= (cy - half_h).clamp(0, height)[:, None]) & (rows < (cy + half_h).clamp(0, height)[:, None])
    return (inside_y[:, :, None] & inside_x[:, None, :]).float()


class DeepMindBatchAugment:
    """A ``collate_fn``: ``[(uint8 CHW image, label), ...]`` of ``inputs_per_output`` x B raw
    images -> (normalized float images, soft targets (B, num_classes)): DeepMind's MixUp and
    CutMix (``my_mixup_cutmix``; the module docstring says which images pair), then RandAugment
    on each mixed image, then mean/std normalization (one value per channel).

    ``mixup_alpha`` or ``cutmix_alpha`` 0 turns that mixing off; with one of them on, raw image i
    of the first half is mixed with raw image B + i of the second (``my_mixup`` / ``my_cutmix``);
    with both off each output is one raw image and ``inputs_per_output`` is 1. ``ra_magnitude``
    None turns RandAugment off. Random numbers: torch's global generator, in this order: the MixUp
    ratios (Beta), then the CutMix boxes (:func:`cutmix_masks`).
    """

    def __init__(self, num_classes: int, ra_magnitude: int | None, ra_layers: int = RA_LAYERS,
                 mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD):
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.groups = int(mixup_alpha > 0) + int(cutmix_alpha > 0)  # output groups, each of its own mixing
        self.inputs_per_output = 2 if self.groups else 1
        self.randaugment = deepmind_randaugment(ra_magnitude, ra_layers) if ra_magnitude is not None else None
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255

    def _mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = torch.nn.functional.one_hot(y, self.num_classes).float()
        if not self.groups:
            return x, targets
        if len(x) % (2 * self.groups):
            raise ValueError(f"MixUp and CutMix take {2 * self.groups} equal parts of each step's raw images; "
                             f"got {len(x)}, make each process's batch a multiple of {self.groups}")
        part = len(x) // (2 * self.groups)
        ratios = []  # per output: the weight of its first image
        if self.mixup_alpha > 0:
            ratios.append(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample((part,)).view(-1, 1, 1, 1))
        if self.cutmix_alpha > 0:
            ratios.append(cutmix_masks(part, x.shape[-2], x.shape[-1], self.cutmix_alpha).unsqueeze(1))
        images, mixed_targets = [], []
        for g, ratio in enumerate(ratios):
            first, second = slice(2 * g * part, (2 * g + 1) * part), slice((2 * g + 1) * part, (2 * g + 2) * part)
            images.append(ratio * x[first] + (1 - ratio) * x[second])
            weight = ratio.mean((1, 2, 3)).view(-1, 1)
            mixed_targets.append(weight * targets[first] + (1 - weight) * targets[second])
        return torch.cat(images), torch.cat(mixed_targets)

    def __call__(self, samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([s[0] for s in samples]).float()
        y = torch.tensor([s[1] for s in samples], dtype=torch.long)
        x, y = self._mix(x, y)
        if self.randaugment is not None:
            pil = [TF.to_pil_image(img) for img in x.clamp_(0, 255).to(torch.uint8)]
            # RandAugment's ops and grey fill are RGB's; a grayscale image goes through as grey RGB (exact)
            x = torch.stack([TF.pil_to_tensor(self.randaugment(img.convert("RGB")).convert(img.mode))
                             for img in pil]).float()
        return (x - self.mean) / self.std, y
