"""DeepMind's NFNet training augmentation, built from timm's pieces.

Source: ``nfnets/experiment_nfnets.py`` (``augment_name = 'cutmix_mixup_randaugment_<level>'``,
``augment_before_mix=False``), ``nfnets/dataset.py`` and ``nfnets/autoaugment.py``. Per image:
a random-area crop (8-100 % of the area, aspect 3/4-4/3), a horizontal flip and a bicubic resize
to the train size; no colour jitter. Per batch: MixUp (Beta(0.2, 0.2) ratio per example) on the
first half and CutMix (a uniform area ratio, i.e. Beta(1, 1), per example) on the second; the
targets are the ratio-weighted mixes of the two one-hot labels (label smoothing is the loss's).
Then, on the *mixed* images (clipped to [0, 255] and cast to 8 bits), RandAugment with 4 layers,
each layer always applying one of 16 ops chosen uniformly, at the variant's magnitude: 5 for F0,
10 for F1 and F2, 15 for F3 and up (levels '405', '410', '415'). Magnitudes above 10 are not
clipped, as in DeepMind's code; translations are up to ``100 * m / 10`` pixels and the fill
is grey (128).

The differences from DeepMind's pipeline that remain are listed in docs/training.md.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
from PIL import Image, ImageDraw
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, rand_augment_transform
from timm.data.auto_augment import RandAugment
from timm.data.transforms_factory import transforms_imagenet_train
from torchvision.transforms import functional as TF

__all__ = ["RA_LEVELS", "randaugment_magnitude", "deepmind_randaugment", "train_transform", "DeepMindBatchAugment"]

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
    variant = model_name.split(".")[0].removeprefix("dm_").removeprefix("nfnet_").upper()
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


def train_transform(img_size: int):
    """The per-image part: random-area crop, flip, bicubic resize; an 8-bit CHW tensor (mixing,
    RandAugment and normalization happen per batch, in :class:`DeepMindBatchAugment`)."""
    return transforms_imagenet_train(img_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5,
                                     color_jitter=None, interpolation="bicubic", use_prefetcher=True)


class DeepMindBatchAugment:
    """A ``collate_fn``: ``[(uint8 CHW image, label), ...]`` -> (normalized float images, soft
    targets (N, num_classes)). MixUp on the first half, CutMix on the second (each half mixes
    within itself, element i with element n-1-i, a ratio per element: timm's ``Mixup`` in 'elem'
    mode), then RandAugment on each mixed image, then ImageNet mean/std normalization.

    ``mixup_alpha`` or ``cutmix_alpha`` 0 turns that half's mixing off; ``ra_magnitude`` None
    turns RandAugment off.
    """

    def __init__(self, num_classes: int, ra_magnitude: int | None, ra_layers: int = RA_LAYERS,
                 mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD):
        self.num_classes = num_classes
        self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=0.0, mode="elem", label_smoothing=0.0,
                           num_classes=num_classes) if mixup_alpha > 0 else None
        self.cutmix = Mixup(mixup_alpha=0.0, cutmix_alpha=cutmix_alpha, mode="elem", label_smoothing=0.0,
                            num_classes=num_classes) if cutmix_alpha > 0 else None
        self.randaugment = deepmind_randaugment(ra_magnitude, ra_layers) if ra_magnitude is not None else None
        self.mean = torch.tensor(mean).view(3, 1, 1) * 255
        self.std = torch.tensor(std).view(3, 1, 1) * 255

    def _mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mixup is None and self.cutmix is None:
            return x, torch.nn.functional.one_hot(y, self.num_classes).float()
        if len(x) % 4:
            raise ValueError(f"MixUp/CutMix on halves of the batch pair images within each half: each process's "
                             f"batch must be a multiple of 4, got {len(x)}; change the batch size")
        halves = []
        for mixer, xs, ys in zip((self.mixup, self.cutmix), x.chunk(2), y.chunk(2)):
            halves.append(mixer(xs, ys) if mixer is not None
                          else (xs, torch.nn.functional.one_hot(ys, self.num_classes).float()))
        return torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])

    def __call__(self, samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([s[0] for s in samples]).float()
        y = torch.tensor([s[1] for s in samples], dtype=torch.long)
        x, y = self._mix(x, y)
        if self.randaugment is not None:
            pil = [TF.to_pil_image(img) for img in x.clamp_(0, 255).to(torch.uint8)]
            x = torch.stack([TF.pil_to_tensor(self.randaugment(img)) for img in pil]).float()
        return (x - self.mean) / self.std, y
