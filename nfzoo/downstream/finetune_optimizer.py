"""Optimizers for fine-tuning: weight decay on conv and linear weights only, AGC for NF backbones."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, param_groups_weight_decay

from ..optim import AGC, classifier_parameters
from .backbone import FeatureBackbone

__all__ = ["param_groups", "create_optimizer"]

_DECAYED = (nn.modules.conv._ConvNd, nn.Linear)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's weight-decay groups, with decay kept off everything but the weights of convolutions
    and linear layers: biases, norm affines (also BCN's per-group ones, which are not 1-d), the
    NF gains (ScaledStdConv2d's ``gain`` is 4-d) and SkipInit gains. Frozen parameters are left out.
    """
    decayed = {
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules() if isinstance(module, _DECAYED)
    }
    no_decay = [name for name, _ in model.named_parameters() if name not in decayed]
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay)


def create_optimizer(
    model: nn.Module,
    lr: float,
    *,
    opt: str = "momentum",
    weight_decay: float = 1e-4,
    agc_clip: float | None = None,
    **opt_kwargs: Any,
) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2`` over :func:`param_groups` (``opt`` is a timm optimizer
    name: ``'momentum'`` is SGD with momentum 0.9, ``'sgd'`` adds Nesterov, ``'adamw'`` ...).

    ``agc_clip`` wraps it in :class:`nfzoo.optim.AGC` with that threshold, for NF backbones. In a
    model built by :mod:`nfzoo.downstream` only the backbone is clipped: AGC is what stabilizes
    the normalizer-free network, the FPN and heads are normalized, and the final predictors are
    the layers the NFNet paper leaves unclipped. In a plain timm model the classifier is excluded.
    """
    optimizer = create_optimizer_v2(param_groups(model, weight_decay), opt=opt, lr=lr, **opt_kwargs)
    if agc_clip is None:
        return optimizer
    return AGC(optimizer, clip=agc_clip, exclude=_not_clipped(model))


def _not_clipped(model: nn.Module) -> list[nn.Parameter]:
    backbones = [m for m in model.modules() if isinstance(m, FeatureBackbone)]
    if not backbones:
        return classifier_parameters(model)
    clipped = {id(p) for backbone in backbones for p in backbone.parameters()}
    return [p for p in model.parameters() if id(p) not in clipped]
