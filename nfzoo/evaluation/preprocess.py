"""Eval preprocessing, exactly as the checkpoint's source evaluated it: timm's eval transform
built from the model's pretrained cfg at its *test* input size (``test_input_size`` when the
cfg has one), with its crop_pct, crop_mode, interpolation and mean/std."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn
from timm.data import create_transform, resolve_data_config
from torchvision import transforms

__all__ = ["eval_data_config", "eval_transform"]


def eval_data_config(model: nn.Module, img_size: int | None = None, crop_pct: float | None = None) -> dict[str, Any]:
    """The data config for evaluating ``model``; ``img_size``/``crop_pct`` override the cfg."""
    overrides = {"img_size": img_size, "crop_pct": crop_pct}
    return resolve_data_config({k: v for k, v in overrides.items() if v is not None}, model=model, use_test_size=True)


def eval_transform(data_config: dict[str, Any]) -> Callable:
    """PIL image -> normalised CHW float tensor; one channel for a one-channel (grayscale) model."""
    transform = create_transform(**data_config, is_training=False)
    if data_config["input_size"][0] == 1:  # the sources decode to RGB; R = G = B converts back exactly
        transform = transforms.Compose([transforms.Grayscale(1), transform])
    return transform
