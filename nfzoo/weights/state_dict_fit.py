"""The one check that a state dict fits a model, and the report of what differs when it does not."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from ..errors import CheckpointError

__all__ = ["check_fits", "check_values"]


def check_fits(
        state_dict: dict[str, torch.Tensor],
        model: nn.Module,
        source: str,
        skip: Iterable[str] = (),
        first_conv: str | None = None,
        optional: tuple[str, ...] = (),
        describe: Callable[[dict[str, torch.Tensor]], str] | None = None,
) -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly the model's keys and shapes.

    Keys under the module names in ``skip`` are not compared (a classifier that timm replaces
    for another ``num_classes``); the ``first_conv`` weight may differ in its input channels
    (timm adapts it to ``in_chans``); model keys ending in one of ``optional`` may be absent
    (buffers that older checkpoints lack). The message lists what differs, and ``describe``
    (when given) summarises both sides, so that a checkpoint made for another model is
    recognised as such.
    """
    prefixes = tuple(f"{name}." for name in skip)
    target = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    given = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
    missing = sorted(k for k in set(target) - set(given) if not (optional and k.endswith(optional)))
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
        summary = f" Checkpoint: {describe(given)}; model: {describe(target)}." if describe else ""
        raise CheckpointError(
            f"{source} does not fit {_model_name(model)}: {'; '.join(parts)}. "
            f"It is a checkpoint for another model (or another variant of this one).{summary}")
    check_values({k: given[k] for k in target if k in given}, target, source)


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
