"""TensorFlow's bicubic resize, as DeepMind's NFNet evaluation ran it.

DeepMind's eval (``nfnets/dataset.py``) calls ``tf.image.resize(image, size, BICUBIC)`` on the
decoded uint8 image. With ``antialias=False`` (the default) TF runs its ``ResizeBicubic`` kernel
with half-pixel centres (``tensorflow/core/kernels/image/resize_bicubic_op.cc``):

* output pixel ``o`` samples the input at ``(o + 0.5) * in / out - 0.5`` (float32 arithmetic);
* the four taps around it are weighted by Keys' cubic convolution with ``a = -0.5``, read from
  a table of 1024 steps per pixel (the fractional position is rounded to the nearest 1/1024);
* a tap outside the image gets weight 0 and the four weights are divided by their sum (the
  border rule of TF's scale-and-translate kernel, which the bicubic kernel adopted);
* no antialiasing when shrinking, and a float32 result: no rounding to 8 bits, no clamping
  (overshoots below 0 and above 255 stay).

PIL's bicubic, timm's default eval resize, differs on the first and the last two points: it
widens the kernel when shrinking (antialiasing) and rounds its result to uint8.
"""
from __future__ import annotations

from functools import cache

import numpy as np
import torch

__all__ = ["KEYS_A", "TABLE_SIZE", "tf_bicubic_taps", "tf_bicubic_resize"]

KEYS_A = -0.5
TABLE_SIZE = 1024


@cache
def _coefficients() -> np.ndarray:
    """TF's table: row i holds Keys' kernel at distance i / 1024 (near taps) and 1 + i / 1024
    (far taps), computed in float64 and stored as float32."""
    a = KEYS_A
    x = np.arange(TABLE_SIZE + 1, dtype=np.float64) / TABLE_SIZE
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a
    return np.stack([near, far], axis=1).astype(np.float32)


def tf_bicubic_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of ``out_size`` output positions along one axis: the four input indices
    (int64, clamped into the image) and their float32 weights (0 for a tap outside the image)."""
    table = _coefficients()
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    position = (np.arange(out_size, dtype=np.float32) + f32(0.5)) * scale - f32(0.5)
    floor = np.floor(position).astype(np.int64)
    offset = np.rint((position - floor.astype(np.float32)) * f32(TABLE_SIZE)).astype(np.int64)  # lrintf
    raw = np.stack([table[offset, 1], table[offset, 0], table[TABLE_SIZE - offset, 0],
                    table[TABLE_SIZE - offset, 1]], axis=1)
    taps = floor[:, None] + np.arange(-1, 3)
    weights = np.where((taps >= 0) & (taps < in_size), raw, f32(0))
    total = ((weights[:, 0] + weights[:, 1]) + weights[:, 2]) + weights[:, 3]
    usable = np.abs(total) >= 1000 * np.finfo(np.float32).tiny
    weights = np.where(usable[:, None], weights * (f32(1) / np.where(usable, total, f32(1)))[:, None], weights)
    return torch.from_numpy(np.clip(taps, 0, in_size - 1)), torch.from_numpy(weights.astype(np.float32))


def _interpolate(image: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    index, weight = tf_bicubic_taps(image.shape[dim], out_size)
    shape = [1] * image.ndim
    shape[dim] = out_size
    out = torch.zeros(())
    for k in range(4):  # tap by tap, in TF's order of summation
        out = out + image.index_select(dim, index[:, k]) * weight[:, k].reshape(shape)
    return out


def tf_bicubic_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``tf.image.resize(image, size, BICUBIC)`` of a (C, H, W) image to ``size`` = (height,
    width), as float32: along the height first, then the width, as TF does."""
    image = image.to(torch.float32)
    return _interpolate(_interpolate(image, 1, size[0]), 2, size[1])
