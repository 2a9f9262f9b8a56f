"""Which parameters get weight decay and which ones AGC leaves alone: the one place for both rules.

Both follow DeepMind's NFNet training code (``nfnets/experiment_nfnets.py``, ``Experiment._make_opt``,
google-deepmind/deepmind-research), which sorts the parameters into three groups:

* gains and biases (Haiku names ``scale``, ``offset``, ``b`` and every name containing ``gain``
  or ``bias``): no weight decay, clipped;
* the weights of the final linear layer: weight decay, **not** clipped;
* every other weight (convolutions, squeeze-excite linears): weight decay, clipped.

In PyTorch terms: weight decay applies to the ``weight`` of convolutions and linear layers and to
nothing else (not to norm affines, BCN's per-group weights, the scaled-WS ``gain`` of each conv,
SkipInit gains, biases); AGC clips every parameter but the classifier's ``weight``. The
classifier's bias *is* clipped, as in DeepMind's grouping.

Every caller asks this module: the models' ``no_weight_decay``, the training recipe
(:mod:`nfzoo.train.sgd`), the fine-tuning optimizer (:func:`nfzoo.downstream.create_optimizer`),
and the AGC hook (:func:`~nfzoo.optim.attach_agc`).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch.nn as nn
from timm.optim import param_groups_weight_decay

__all__ = [
    "DECAYED_MODULES", "decayed_names", "no_weight_decay_names", "weight_decay_groups",
    "classifier_names", "agc_exempt_names", "agc_parameters",
]

# The layers whose ``weight`` is decayed; subclasses (WS and scaled-WS convs) included.
DECAYED_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                   nn.ConvTranspose3d, nn.Linear)


def decayed_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get weight decay: the weights of convolutions and linear layers."""
    return {f"{name}.weight" if name else "weight"
            for name, module in model.named_modules()
            if isinstance(module, DECAYED_MODULES) and isinstance(getattr(module, "weight", None), nn.Parameter)}


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of every other parameter (gains, biases, norm affines): what ``no_weight_decay`` returns."""
    decayed = decayed_names(model)
    return {name for name, _ in model.named_parameters() if name not in decayed}


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's two optimizer groups (``weight_decay`` and 0) under this rule; frozen parameters
    are left out."""
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_weight_decay_names(model))


def classifier_names(model: nn.Module) -> list[str]:
    """Module names of the final classifier: those ``pretrained_cfg['classifier']`` names (timm's
    convention; a tuple names several heads), else the one ``get_classifier()`` returns, else the
    last ``nn.Linear``. Raises when there is none of these."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = cfg.get("classifier")
    if names:
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            try:
                model.get_submodule(name)
            except AttributeError as e:
                raise ValueError(
                    f"pretrained_cfg['classifier'] = {name!r} is not a submodule of {type(model).__name__}; "
                    "give the parameters AGC should leave alone explicitly (attach_agc(..., exclude=[...]))") from e
        return names
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier) and isinstance(head := get_classifier(), nn.Module):
        return [name for name, module in model.named_modules() if module is head][:1]
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no classifier this rule can find (no pretrained_cfg['classifier'], "
            "no get_classifier(), no nn.Linear); give the parameters AGC should leave alone explicitly "
            "(attach_agc(..., exclude=[...]))")
    return linears[-1:]


def agc_exempt_names(model: nn.Module) -> set[str]:
    """Names of the parameters AGC does not clip: the classifier's weight only (its bias is clipped).
    Empty when the classifier was removed (``reset_classifier(0)`` leaves an ``nn.Identity``)."""
    exempt = set()
    for name in classifier_names(model):
        head = model.get_submodule(name)
        prefix = f"{name}." if name else ""
        # a head container (timm's ClassifierHead) holds the final layer(s) inside it
        exempt |= {prefix + n for n in decayed_names(head)}
    return exempt


def agc_parameters(model: nn.Module, within: Iterable[nn.Module] | None = None) -> list[nn.Parameter]:
    """The trainable parameters AGC clips: every one but the classifier's weight, or, with
    ``within``, exactly the parameters of those modules (a detector clips its normalizer-free
    backbone only, whose feature extractor has no classifier)."""
    if within is not None:
        inside = {id(p) for module in within for p in module.parameters()}
        return [p for p in model.parameters() if p.requires_grad and id(p) in inside]
    exempt = agc_exempt_names(model)
    return [p for name, p in model.named_parameters() if p.requires_grad and name not in exempt]
