"""Unwrapping a saved checkpoint to the model's state dict: the NFNet family's checkpoint filter,
and the first step of the GN+WS / BCN+WS one. The key and shape check that every family shares
runs after it, in the zoo's builder (:func:`nfzoo.weights.loading.fitting_filter`)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import clean_state_dict

__all__ = ["unwrap_state_dict", "checkpoint_filter_fn"]


def unwrap_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint (``{'state_dict': ...}`` or ``{'model': ...}``),
    without the prefixes DataParallel/DDP and ``torch.compile`` add (timm's ``clean_state_dict``)."""
    for container in ("state_dict", "model"):
        if isinstance(checkpoint.get(container), dict):
            checkpoint = checkpoint[container]
    return clean_state_dict(checkpoint)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """The NFNet family's filter: its keys are timm's ``dm_nfnet`` layout, used as they are once
    unwrapped."""
    return unwrap_state_dict(state_dict)
