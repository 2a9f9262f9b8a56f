"""Optimizers for fine-tuning: weight decay on conv and linear weights only, AGC for NF backbones."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2

from ..optim import attach_agc
from ..optim.param_groups import agc_parameters, weight_decay_groups
from .backbone import FeatureBackbone

__all__ = ["param_groups", "create_optimizer"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's weight-decay groups, with decay on the weights of convolutions and linear layers
    only (:mod:`nfzoo.optim.param_groups`): not on biases, norm affines (also BCN's per-group
    ones, which are not 1-d), the NF gains (ScaledStdConv2d's ``gain`` is 4-d) or SkipInit gains.
    Frozen parameters are left out.
    """
    return weight_decay_groups(model, weight_decay)


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

    ``agc_clip`` attaches AGC with that threshold (:func:`nfzoo.optim.attach_agc`; its hook is
    ``nfzoo.optim.attached_agc(optimizer)``), for NF backbones. In a
    model built by :mod:`nfzoo.downstream` only the backbone is clipped: AGC is what stabilizes
    the normalizer-free network, the FPN and heads are normalized, and the final predictors are
    the layers the NFNet paper leaves unclipped. In a plain timm model the classifier's weight is
    excluded, as in DeepMind's recipe.
    """
    optimizer = create_optimizer_v2(param_groups(model, weight_decay), opt=opt, lr=lr, **opt_kwargs)
    if agc_clip is None:
        return optimizer
    backbones = [m for m in model.modules() if isinstance(m, FeatureBackbone)]
    clipped = {id(p) for p in agc_parameters(model, within=backbones or None)}
    attach_agc(optimizer, clip=agc_clip, exclude=[p for p in model.parameters() if id(p) not in clipped])
    return optimizer
