"""Registering zoo models with timm.

Naming policy: nfzoo never replaces a timm name that has pretrained weights in timm. It does
replace, on purpose, timm names that have none (timm's weightless ``nfnet_f0`` ... ``nfnet_f7``),
so that ``timm.create_model('nfnet_f0', pretrained=True)`` gives the paper's model. timm would
warn on each such overwrite; we clear the old entry first, so that the replacement is silent
and is recorded in :data:`REPLACED_TIMM_MODELS` instead.

Published name: every zoo model is also registered as ``nfzoo_<name>`` (:func:`published_name`),
and that is the ``architecture`` its pretrained cfg states, so it is the name that a Hub
``config.json`` carries, whether nfzoo's publisher or timm's own ``save_for_hf`` /
``push_to_hf_hub`` wrote it. Plain timm (or transformers' TimmWrapper) without ``import nfzoo``
does not know that name and stops with "Unknown model (nfzoo_...)", instead of building timm's
own, different ``nfnet_f0`` and loading part of the weights into it. The alias is kept out of
``timm.list_models()`` the way timm keeps its own old names out (``_deprecated_models``).
"""
from __future__ import annotations

from typing import Callable, TypeVar

import timm
from timm.models import register_model

from ..timm_private import register_unlisted_alias, unregister_model
from ..weights.publish import PUBLISHED_PREFIX, published_name

__all__ = ["register_zoo_model", "published_name", "zoo_name", "PUBLISHED_PREFIX", "REPLACED_TIMM_MODELS", "ZOO_MODELS"]

F = TypeVar("F", bound=Callable)

REPLACED_TIMM_MODELS: set[str] = set()
ZOO_MODELS: set[str] = set()


def zoo_name(architecture: str) -> str:
    """The zoo's own name for a published name (``nfzoo_nfnet_f0`` -> ``nfnet_f0``); others unchanged."""
    bare = architecture.removeprefix(PUBLISHED_PREFIX)
    return bare if bare in ZOO_MODELS else architecture


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
    registered = register_model(fn)
    register_unlisted_alias(published_name(name), name)
    return registered
