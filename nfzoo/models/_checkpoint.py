"""Checking a state dict against the model it is loaded into, with an error a user can act on."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["checkpoint_filter_fn", "check_state_dict"]

_SHOWN = 5  # keys listed per kind of problem


def _under(key: str, prefix: str | None) -> bool:
    return bool(prefix) and (key == prefix or key.startswith(prefix + "."))


def check_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Raise a ``ValueError`` naming the missing, unexpected and mis-shaped keys, if any.

    The classifier (``pretrained_cfg['classifier']``) and the shape of the first conv are not
    checked: timm's loader drops or adapts them when ``num_classes`` or ``in_chans`` differ.
    """
    cfg: dict[str, Any] = getattr(model, "pretrained_cfg", None) or {}
    classifier, first_conv = cfg.get("classifier"), cfg.get("first_conv")
    expected = {k: v.shape for k, v in model.state_dict().items() if not _under(k, classifier)}
    given = {k: v for k, v in state_dict.items() if not _under(k, classifier)}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    mismatched = [f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k])}"
                  for k in sorted(expected.keys() & given.keys())
                  if given[k].shape != expected[k] and not _under(k, first_conv)]
    problems = [f"{len(keys)} {what}: {', '.join(keys[:_SHOWN])}{', ...' if len(keys) > _SHOWN else ''}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("shape mismatches", mismatched)) if keys]
    if problems:
        arch = cfg.get("architecture") or type(model).__name__
        raise ValueError(
            f"the state dict does not fit {arch}: " + "; ".join(problems) + ". It is probably for another "
            "model or variant: create the model it was saved from, or convert the original release with "
            "weights/convert.py first.")


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Unwrap a training checkpoint (``{'state_dict': ...}``, ``module.`` prefixes of
    DataParallel/DDP) and check it against ``model``; the keys are otherwise used as they are."""
    for container in ("state_dict", "model"):
        if isinstance(state_dict.get(container), dict):
            state_dict = state_dict[container]
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    check_state_dict(state_dict, model)
    return state_dict
