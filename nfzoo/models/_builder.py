"""The one path from a zoo entry point to a built (and, if asked, pretrained) model."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn
from timm.models import build_model_with_cfg

from ..weights.loading import fitting_filter, resolve_pretrained_file

__all__ = ["build_zoo_model"]


def build_zoo_model(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    *,
    checkpoint_filter: Callable[[dict, nn.Module], dict] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``model_cls`` through timm's ``build_model_with_cfg``.

    Every zoo family goes through here, so pretrained loading behaves the same for all of
    them: weights are fetched and checked against the manifest's sha256 first
    (:func:`~nfzoo.weights.loading.resolve_pretrained_file`), and a checkpoint that does not
    fit the model fails with a clear message. ``kwargs`` are passed to ``build_model_with_cfg``
    (``model_cfg``, ``feature_cfg``, model arguments ...).
    """
    if pretrained:
        kwargs["pretrained_cfg_overlay"] = resolve_pretrained_file(
            variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"), kwargs.get("cache_dir"))
        if kwargs.get("pretrained_strict", True):
            checkpoint_filter = fitting_filter(checkpoint_filter)
    return build_model_with_cfg(
        model_cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter, **kwargs)
