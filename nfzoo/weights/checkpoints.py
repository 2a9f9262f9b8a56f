"""Reading PyTorch checkpoints safely, and checking that a state dict fits a model."""
from __future__ import annotations

import os
import pickle
from typing import Iterable

import torch
import torch.nn as nn
from timm.models import load_state_dict

from .errors import CheckpointError
from .files import check_readable

__all__ = ["load_torch_state_dict", "check_fits"]


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pth.tar``/``.safetensors`` file, loaded without running code.

    ``torch.load(weights_only=True)`` through timm's ``load_state_dict``: a ``state_dict``
    or ``model`` entry is unwrapped and DataParallel's ``module.`` prefix is dropped.
    """
    check_readable(path)
    try:
        state_dict = load_state_dict(str(path), use_ema=False, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True); it is not a plain PyTorch "
            f"state dict (or it is damaged): {str(e).splitlines()[0]}") from e
    except (EOFError, RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e}); "
            "it is truncated or not a checkpoint.") from e
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors.")
    return state_dict


def check_fits(
        state_dict: dict[str, torch.Tensor],
        model: nn.Module,
        source: str,
        allow_shape_mismatch: Iterable[str] = (),
) -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly the model's keys and shapes.

    ``allow_shape_mismatch`` names keys whose shapes may differ (a classifier being replaced,
    a first conv being adapted to other input channels). The message lists what differs, so
    that a checkpoint made for another model is recognised as such.
    """
    target = model.state_dict()
    missing = sorted(set(target) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(target))
    allowed = tuple(allow_shape_mismatch)
    shapes = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
        if k in state_dict and state_dict[k].shape != v.shape and not k.startswith(allowed))
    if missing or unexpected or shapes:
        parts = [f"{len(found)} {what} ({', '.join(found[:4])}{', ...' if len(found) > 4 else ''})"
                 for what, found in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches (checkpoint vs model)", shapes)) if found]
        raise CheckpointError(
            f"{source} does not fit {_model_name(model)}: {'; '.join(parts)}. "
            "It is a checkpoint for another model (or another variant of this one).")


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__
