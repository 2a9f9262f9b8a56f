"""The NFNet family's checkpoint filter. The key and shape check that every family shares runs
after it, in the zoo's builder (:func:`nfzoo.weights.loading.fitting_filter`)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["checkpoint_filter_fn"]


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Unwrap a training checkpoint (``{'state_dict': ...}``, ``module.`` prefixes of
    DataParallel/DDP); the keys are otherwise timm's ``dm_nfnet`` layout and used as they are."""
    for container in ("state_dict", "model"):
        if isinstance(state_dict.get(container), dict):
            state_dict = state_dict[container]
    return {k.removeprefix("module."): v for k, v in state_dict.items()}
