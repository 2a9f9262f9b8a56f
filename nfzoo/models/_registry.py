"""Registering zoo models with timm.

Naming policy: nfzoo never replaces a timm name that has pretrained weights in timm. It does
replace, on purpose, timm names that have none (timm's weightless ``nfnet_f0`` ... ``nfnet_f7``),
so that ``timm.create_model('nfnet_f0', pretrained=True)`` gives the paper's model. timm would
warn on each such overwrite; we clear the old entry first, so that the replacement is silent
and is recorded in :data:`REPLACED_TIMM_MODELS` instead.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import timm
from timm.models import register_model

from ..timm_private import unregister_model

__all__ = ["register_zoo_model", "REPLACED_TIMM_MODELS", "ZOO_MODELS"]

F = TypeVar("F", bound=Callable)

REPLACED_TIMM_MODELS: set[str] = set()
ZOO_MODELS: set[str] = set()


def register_zoo_model(fn: F) -> F:
    """``timm.models.register_model`` for nfzoo, enforcing the naming policy above."""
    name = fn.__name__
    previous = timm.models.model_entrypoint(name) if timm.is_model(name) else None
    if previous is not None and not previous.__module__.startswith("nfzoo."):
        if timm.list_pretrained(f"{name}.*"):
            raise RuntimeError(
                f"nfzoo must not replace timm's {name!r}: timm has pretrained weights for it. "
                "Give the nfzoo model another name.")
        REPLACED_TIMM_MODELS.add(name)
    if previous is not None:  # timm's weightless model, or this module imported again (importlib.reload)
        unregister_model(name)
    ZOO_MODELS.add(name)
    return register_model(fn)
