"""Every use of timm's private API in nfzoo, in one place.

timm (``>=1.0.31,<1.1``, pinned in pyproject.toml) has no public way to do these; each function
names what it relies on, and ``tests/test_timm_private.py`` fails with a pointer here when a
timm upgrade changes any of it:

* :func:`unregister_model` -- removing a registration, so that nfzoo can replace timm's
  weightless ``nfnet_f*`` silently (``timm.models._registry``: ``_model_entrypoints`` and
  ``_clear_model_entries``; timm only offers registering, which warns on an overwrite);
* :func:`register_unlisted_alias` -- a second name for a registered model that
  ``create_model`` resolves but ``list_models`` does not list, as timm's own deprecated names
  (``_model_entrypoints`` and ``_deprecated_models``);
* :func:`pretrained_source` -- where timm will load a pretrained cfg's weights from
  (``timm.models._builder._resolve_pretrained_source``), so that nfzoo checks the same file;
* :func:`hf_split` -- timm's ``repo@revision`` syntax for Hub ids (``timm.models._hub``);
* :func:`feature_take_indices` -- timm's reading of ``forward_intermediates(indices=...)``
  (``timm.models._features``), so that zoo models answer it exactly as timm's models do;
* :func:`save_config_for_hf` -- the ``config.json`` half of timm's public ``save_for_hf``
  (``timm.models._hub``), whose weights half (safetensors' writer) reports a full disk as a
  generic error, so that nfzoo writes the weights itself.
"""
from __future__ import annotations

import os
from typing import Any

from timm.models import _builder, _features, _hub, _registry

__all__ = ["unregister_model", "register_unlisted_alias", "pretrained_source", "hf_split", "feature_take_indices",
           "save_config_for_hf"]


def unregister_model(name: str) -> None:
    """Remove ``name`` from timm's registry: entry point, pretrained cfgs, tags, module lists.
    ``_clear_model_entries`` leaves the entry point, whose presence makes timm warn on the next
    registration, so it is removed too."""
    _registry._clear_model_entries(name)
    _registry._model_entrypoints.pop(name, None)


def register_unlisted_alias(alias: str, name: str) -> None:
    """Make ``timm.create_model(alias)`` build the registered model ``name``, without listing
    ``alias`` in ``timm.list_models()``."""
    _registry._model_entrypoints[alias] = _registry._model_entrypoints[name]
    _registry._deprecated_models[alias] = name


def pretrained_source(pretrained_cfg: dict[str, Any]) -> tuple[str, Any]:
    """``(load_from, location)`` as timm's loader decides them: ``'hf-hub'``, ``'url'``,
    ``'file'``, ``'state_dict'``, ``'local-dir'`` or ``''``."""
    return _builder._resolve_pretrained_source(pretrained_cfg)


def hf_split(hf_id: str) -> tuple[str, str | None]:
    """``'owner/name@revision'`` -> ``('owner/name', 'revision')``; no ``@``: revision None."""
    return _hub.hf_split(hf_id)


def feature_take_indices(num_features: int, indices: int | list[int] | tuple[int, ...] | None = None,
                         ) -> tuple[list[int], int]:
    """The feature indices to return and the highest one, for ``forward_intermediates``: an int
    ``n`` means the last ``n``, negative indices count from the end, None means all."""
    return _features.feature_take_indices(num_features, indices)


def save_config_for_hf(model: Any, config_path: str | os.PathLike) -> None:
    """Write the ``config.json`` that ``timm.models.save_for_hf(model, ...)`` writes."""
    _hub.save_config_for_hf(model, config_path)
