"""DeepMind's training crop: TensorFlow's ``sample_distorted_bounding_box`` as
``nfnets/dataset.py`` (``_decode_and_random_crop``) calls it, and its centre-crop fallback.

The box is sampled over the whole image (the only "object") with ``min_object_covered=0.1``,
aspect ratios (3/4, 4/3), area range (0.08, 1) and 10 attempts. Each attempt draws an aspect
ratio, then a height uniformly among the integers whose box fits the area range, then an offset;
an attempt is kept when the box covers at least ``min_object_covered`` of the image, so the
smallest crop holds 10 % of the image, not 8 %. When every attempt fails the op returns the
whole image, and DeepMind then takes :func:`padded_center_box` instead (as it does whenever the
sampled box is the whole image).

The arithmetic follows the TensorFlow kernel (``sample_distorted_bounding_box_op.cc``): float32
areas and ratios, round-half-to-even (``lrintf``), an offset drawn from ``[0, size - crop)``
(so a crop smaller than the image never touches its bottom or right edge). Random numbers come
from torch's global generator.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["sample_distorted_box", "padded_center_box", "DeepMindRandomCrop"]

Box = tuple[int, int, int, int]  # top, left, height, width

_F32 = np.float32


def _lrint(x: np.float32) -> int:
    return int(np.rint(x))


def _uniform_int(n: int) -> int:
    """An integer in [0, n), as TensorFlow's ``SimplePhilox::Uniform(n)``."""
    return int(torch.randint(n, ()))


def _random_crop_size(height: int, width: int, min_area: np.float32, max_area: np.float32, aspect: np.float32
                      ) -> tuple[int, int] | None:
    """The kernel's ``GenerateRandomCrop`` without the offset: (crop height, crop width) or None."""
    crop_h = _lrint(np.sqrt(min_area / aspect))
    max_h = _lrint(np.sqrt(max_area / aspect))
    if _lrint(_F32(max_h) * aspect) > width:  # the tallest height whose rounded width fits
        max_h = int((width + 0.5 - float(_F32(1e-7))) / float(aspect))
        if _lrint(_F32(max_h) * aspect) > width:
            max_h -= 1
    max_h = min(max_h, height)
    crop_h = min(crop_h, max_h)
    if crop_h < max_h:
        crop_h += _uniform_int(max_h - crop_h + 1)
    crop_w = _lrint(_F32(crop_h) * aspect)
    area = _F32(crop_w * crop_h)
    if area < min_area:  # rounding left the box too small: one row taller
        crop_h += 1
        crop_w = _lrint(_F32(crop_h) * aspect)
        area = _F32(crop_w * crop_h)
    if area > max_area:  # or too large: one row shorter
        crop_h -= 1
        crop_w = _lrint(_F32(crop_h) * aspect)
        area = _F32(crop_w * crop_h)
    if area < min_area or area > max_area or not (0 < crop_w <= width and 0 < crop_h <= height):
        return None
    return crop_h, crop_w


def sample_distorted_box(height: int, width: int, *, min_object_covered: float = 0.1,
                         aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
                         area_range: tuple[float, float] = (0.08, 1.0), max_attempts: int = 10) -> Box:
    """A random crop box (top, left, height, width) of a ``height`` x ``width`` image, as
    ``tf.image.sample_distorted_bounding_box`` samples it with the whole image as the bounding
    box; the whole image when no attempt succeeds."""
    lo_aspect, hi_aspect = _F32(aspect_ratio_range[0]), _F32(aspect_ratio_range[1])
    image_area = _F32(height * width)
    min_area = _F32(area_range[0]) * _F32(width) * _F32(height)
    max_area = _F32(area_range[1]) * _F32(width) * _F32(height)
    for _ in range(max_attempts):
        aspect = _F32(torch.rand(())) * (hi_aspect - lo_aspect) + lo_aspect
        size = _random_crop_size(height, width, min_area, max_area, aspect)
        if size is None:
            continue
        crop_h, crop_w = size
        top = _uniform_int(height - crop_h) if crop_h < height else 0
        left = _uniform_int(width - crop_w) if crop_w < width else 0
        crop_area = _F32(crop_h * crop_w)
        if crop_area >= 1 and crop_area / image_area >= _F32(min_object_covered):
            return top, left, crop_h, crop_w
    return 0, 0, height, width


def padded_center_box(height: int, width: int, size: int, padding: int = 32) -> Box:
    """DeepMind's ``_decode_and_center_crop``: the centred box of the output's aspect ratio
    that leaves at least ``padding`` output pixels' worth of margin on the short side."""
    scale = min(_F32(height) / _F32(size + padding), _F32(width) / _F32(size + padding))
    crop = int(scale * _F32(size))
    return (height - crop + 1) // 2, (width - crop + 1) // 2, crop, crop


class DeepMindRandomCrop:
    """PIL image -> DeepMind's random crop of it (not resized): :func:`sample_distorted_box`,
    or :func:`padded_center_box` at ``size`` when the box is the whole image."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        width, height = img.size
        box = sample_distorted_box(height, width)
        if box == (0, 0, height, width):
            box = padded_center_box(height, width, self.size)
        top, left, crop_h, crop_w = box
        return img.crop((left, top, left + crop_w, top + crop_h))

    def __repr__(self) -> str:
        return f"DeepMindRandomCrop(size={self.size})"
