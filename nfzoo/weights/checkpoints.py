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

__all__ = ["load_torch_state_dict", "check_fits", "check_values"]


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
        skip: Iterable[str] = (),
        first_conv: str | None = None,
) -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly the model's keys and shapes.

    Keys under the module names in ``skip`` are not compared (a classifier that timm replaces
    for another ``num_classes``); the ``first_conv`` weight may differ in its input channels
    (timm adapts it to ``in_chans``). The message lists what differs, so that a checkpoint made
    for another model is recognised as such.
    """
    prefixes = tuple(f"{name}." for name in skip)
    target = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    given = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
    missing = sorted(set(target) - set(given))
    unexpected = sorted(set(given) - set(target))

    def fits(key: str, a: torch.Size, b: torch.Size) -> bool:
        if key == f"{first_conv}.weight" and len(a) == len(b) == 4:
            return a[0] == b[0] and a[2:] == b[2:]
        return a == b

    shapes = sorted(f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
                    for k, v in target.items() if k in given and not fits(k, given[k].shape, v.shape))
    if missing or unexpected or shapes:
        parts = [f"{len(found)} {what} ({', '.join(found[:4])}{', ...' if len(found) > 4 else ''})"
                 for what, found in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches (checkpoint vs model)", shapes)) if found]
        raise CheckpointError(
            f"{source} does not fit {_model_name(model)}: {'; '.join(parts)}. "
            "It is a checkpoint for another model (or another variant of this one).")
    check_values({k: given[k] for k in target}, target, source)


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    return "complex" if dtype.is_complex else "float" if dtype.is_floating_point else "integer"


def check_values(given: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` when a tensor's dtype cannot be its parameter's (an int8
    or bool tensor for a float weight would be cast silently by ``load_state_dict``), or when a
    floating tensor holds NaN or infinity (a damaged file, or a diverged run)."""
    kinds = sorted(f"{k} ({v.dtype} for {target[k].dtype})" for k, v in given.items()
                   if _kind(v.dtype) != _kind(target[k].dtype))
    if kinds:
        raise CheckpointError(
            f"{source}: {len(kinds)} tensor(s) have a dtype the model's cannot take: {', '.join(kinds[:4])}"
            f"{', ...' if len(kinds) > 4 else ''}. The file is damaged or not weights for this model.")
    bad = sorted(f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()})" for k, v in given.items()
                 if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise CheckpointError(
            f"{source}: non-finite values (NaN or infinity) in {len(bad)} tensor(s): {', '.join(bad[:4])}"
            f"{', ...' if len(bad) > 4 else ''}. The file is damaged, or the run that wrote it diverged.")


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__
