"""The one path from a zoo entry point to a built (and, if asked, pretrained) model."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import LocalEntryNotFoundError
from timm.models import build_model_with_cfg, get_arch_pretrained_cfgs, resolve_pretrained_cfg

from ..weights.loading import fitting_filter, resolve_pretrained_file
from ._registry import published_name

__all__ = ["build_zoo_model"]


def build_zoo_model(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    *,
    checkpoint_filter: Callable[[dict, nn.Module], dict] | None = None,
    fit_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``model_cls`` through timm's ``build_model_with_cfg``.

    Every zoo family goes through here, so pretrained loading behaves the same for all of
    them: weights are fetched and checked against the manifest's sha256 first
    (:func:`~nfzoo.weights.loading.resolve_pretrained_file`), and a checkpoint that does not
    fit the model fails with a clear message. ``checkpoint_filter`` maps a checkpoint onto the
    model's keys; the fit is checked once, after it (``pretrained_strict=False`` skips the
    check), with a family's ``fit_options`` (:func:`~nfzoo.weights.state_dict_fit.check_fits`'s
    ``optional`` and ``describe``). ``kwargs`` are passed to ``build_model_with_cfg``
    (``model_cfg``, ``feature_cfg``, model arguments ...).
    A pretrained tag (``create_model('name.tag')``) that the model does not have is refused
    with the list of those it has; Hub weights missing from an offline cache are reported with
    the repository's name. The built model's pretrained cfg names its architecture by the
    zoo's published name (``nfzoo_<variant>``, see :mod:`nfzoo.models._registry`), so that a
    ``config.json`` written from it never resolves to another model in plain timm.
    """
    tag = kwargs.get("pretrained_cfg")
    if isinstance(tag, str):
        known = sorted(name.split(".", 1)[1] for name in get_arch_pretrained_cfgs(variant) if "." in name)
        if tag not in known:
            hint = (f"use one of {known}, e.g. '{variant}.{known[0]}'" if known
                    else "no weights exist for it: create it without a tag")
            raise ValueError(f"{variant} has no pretrained tag {tag!r}; {hint}")
    try:
        if pretrained:
            kwargs["pretrained_cfg_overlay"] = resolve_pretrained_file(
                variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"), kwargs.get("cache_dir"))
            if kwargs.get("pretrained_strict", True):
                checkpoint_filter = fitting_filter(checkpoint_filter, **(fit_options or {}))
        model = build_model_with_cfg(
            model_cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter, **kwargs)
        model.pretrained_cfg["architecture"] = published_name(variant)
        return model
    except IndexError as e:
        if kwargs.get("out_indices") is None:
            raise
        levels = len(build_model_with_cfg(model_cls, variant, False, model_cfg=kwargs.get("model_cfg")).feature_info)
        raise ValueError(
            f"{variant}: out_indices={kwargs['out_indices']!r} is out of range; the model has {levels} feature "
            f"levels, so each index must be in 0 ... {levels - 1} (or -{levels} ... -1 from the last)") from e
    except LocalEntryNotFoundError as e:
        repo = resolve_pretrained_cfg(
            variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")).hf_hub_id
        raise LocalEntryNotFoundError(
            f"the weights of {variant} (Hugging Face repository {repo}) are not in the local cache "
            f"(expected under {hf_constants.HF_HUB_CACHE}/models--{str(repo).replace('/', '--')}) and the Hub cannot be reached (offline: "
            f"HF_HUB_OFFLINE={int(hf_constants.HF_HUB_OFFLINE)}). Download them once with network access "
            f"(`hf download {repo}`), or point HF_HUB_CACHE at a cache that holds them.") from e
