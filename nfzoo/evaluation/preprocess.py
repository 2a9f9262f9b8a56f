"""Eval preprocessing, exactly as the checkpoint's source evaluated it: timm's eval transform
built from the model's pretrained cfg at its *test* input size (``test_input_size`` when the
cfg has one), with its crop_pct, crop_mode, interpolation and mean/std.

Two resizes are offered: ``pil`` (timm's transform, PIL's resize: what the manifest's
accuracies were measured with) and ``tf-bicubic`` (TensorFlow's bicubic, as DeepMind evaluated
the NFNets; see :mod:`nfzoo.evaluation.tf_resize`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torchvision import transforms

from ..errors import EvaluationError
from .tf_resize import tf_bicubic_resize

__all__ = ["RESIZES", "DEEPMIND_MARGIN", "eval_data_config", "eval_transform", "TfBicubicEval"]

RESIZES = ("pil", "tf-bicubic")
# DeepMind's NFNet eval ('resize_crop_32'): the whole image to a (test + 32) square, then the
# central test x test crop. The manifest writes it as crop_mode 'squash', crop_pct = test / (test + 32).
DEEPMIND_MARGIN = 32


def _resized(size: int, crop_pct: float) -> int:
    """The side timm resizes to before cropping ``size``."""
    return math.floor(size / crop_pct)


def _crop_pct_for_margin(size: int, margin: int) -> float:
    """The crop_pct that makes timm resize to ``size + margin``: size / (size + margin), or the
    next float below it where rounding would land timm's floor one pixel short."""
    crop_pct = size / (size + margin)
    while _resized(size, crop_pct) < size + margin:
        crop_pct = math.nextafter(crop_pct, 0.0)
    return crop_pct


def eval_data_config(model: nn.Module, img_size: int | None = None, crop_pct: float | None = None) -> dict[str, Any]:
    """The data config for evaluating ``model``; ``img_size``/``crop_pct`` override the cfg.

    A cfg with DeepMind's NFNet rule (squash crop, resized to test + 32) keeps the rule at another
    ``img_size``: resize to ``img_size + 32``, crop ``img_size``. Other cfgs keep their crop_pct.
    """
    cfg = resolve_data_config({}, model=model, use_test_size=True)
    size = cfg["input_size"][-1]
    if (img_size is not None and crop_pct is None and cfg["crop_mode"] == "squash"
            and _resized(size, cfg["crop_pct"]) - size == DEEPMIND_MARGIN):
        crop_pct = _crop_pct_for_margin(img_size, DEEPMIND_MARGIN)
    overrides = {"img_size": img_size, "crop_pct": crop_pct}
    return resolve_data_config({k: v for k, v in overrides.items() if v is not None}, model=model, use_test_size=True)


def _check(data_config: dict[str, Any]) -> None:
    """Refuse a config no image can be preprocessed with, before any image is read."""
    channels, height, width = data_config["input_size"]
    crop_pct = data_config["crop_pct"]
    if min(channels, height, width) < 1:
        raise EvaluationError(f"input size {tuple(data_config['input_size'])} must be positive in every dimension")
    if not 0 < crop_pct <= 1:
        raise EvaluationError(f"crop_pct {crop_pct} is outside (0, 1]: it is the fraction of the resized image kept")
    if len(data_config["mean"]) != channels or len(data_config["std"]) != channels or min(data_config["std"]) <= 0:
        raise EvaluationError(f"mean {data_config['mean']} and std {data_config['std']} must have {channels} "
                              "value(s) each, std positive")


def eval_transform(data_config: dict[str, Any], resize: str = "pil") -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised CHW float tensor; one channel for a one-channel (grayscale) model."""
    _check(data_config)
    if resize == "tf-bicubic":
        return TfBicubicEval(data_config)
    if resize != "pil":
        raise EvaluationError(f"resize {resize!r} is not one of {', '.join(RESIZES)}")
    transform = create_transform(**data_config, is_training=False)
    if data_config["input_size"][0] == 1:  # the sources decode to RGB; R = G = B converts back exactly
        transform = transforms.Compose([transforms.Grayscale(1), transform])
    return transform


class TfBicubicEval:
    """DeepMind's eval pipeline with TF's resize: the uint8 image as float32, resized with
    :func:`~nfzoo.evaluation.tf_resize.tf_bicubic_resize` to the size timm's transform resizes
    to (``squash``: both sides; ``center``: the short side, the long one in proportion), the
    central crop at offset ``((resized - crop) + 1) // 2`` (DeepMind's), then
    ``(x - 255 mean) / (255 std)``."""

    def __init__(self, data_config: dict[str, Any]):
        if data_config["crop_mode"] not in ("squash", "center"):
            raise EvaluationError(f"--resize tf-bicubic supports crop modes 'squash' and 'center', not "
                                  f"{data_config['crop_mode']!r}")
        self.channels, self.height, self.width = data_config["input_size"]
        self.crop_pct, self.crop_mode = data_config["crop_pct"], data_config["crop_mode"]
        self.mean = torch.tensor([255 * m for m in data_config["mean"]], dtype=torch.float32)[:, None, None]
        self.std = torch.tensor([255 * s for s in data_config["std"]], dtype=torch.float32)[:, None, None]

    def _resize_size(self, height: int, width: int) -> tuple[int, int]:
        target = (_resized(self.height, self.crop_pct), _resized(self.width, self.crop_pct))
        if self.crop_mode == "squash":
            return target
        short = target[0]  # timm resizes the short side (square crops)
        return (short, int(short * width / height)) if height <= width else (int(short * height / width), short)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("L" if self.channels == 1 else "RGB")
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).reshape(image.height, image.width, -1))
        resized = tf_bicubic_resize(pixels.permute(2, 0, 1), self._resize_size(image.height, image.width))
        top = (resized.shape[1] - self.height + 1) // 2
        left = (resized.shape[2] - self.width + 1) // 2
        crop = resized[:, top:top + self.height, left:left + self.width]
        return (crop - self.mean) / self.std
