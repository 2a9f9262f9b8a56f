"""Optimizer, schedule and gradient clipping of the NFNet recipe, built from timm's pieces."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler

from ..optim import adaptive_grad_clip_, classifier_parameters
from .config import TrainConfig

__all__ = ["NO_DECAY_PATTERNS", "build_optimizer", "build_scheduler", "agc_parameters", "clip_gradients"]

# Besides biases and every other 0-d/1-d parameter (timm's rule): the scaled-WS gains, which
# are (out, 1, 1, 1) tensors, and the SkipInit gains.
NO_DECAY_PATTERNS = ("*.gain", "*_gain")


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with Nesterov momentum; no weight decay on gains, biases and other vectors."""
    extra = tuple(getattr(model, "no_weight_decay", lambda: ())())
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=NO_DECAY_PATTERNS + extra)
    return torch.optim.SGD(groups, lr=cfg.learning_rate(), momentum=cfg.momentum, nesterov=cfg.nesterov)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> CosineLRScheduler:
    """DeepMind's ``WarmupCosineDecay`` (``nfnets/optim.py``), stepped per update (``step_update``):
    linear warmup from 0 over ``warmup_epochs``, then a cosine to ``min_lr`` over the steps *after*
    the warmup (timm's ``warmup_prefix=True``). The warmup length is not rounded to whole steps
    (DeepMind's is 5 x 1281167 / 4096 = 1563.9 steps)."""
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total - warmup, 1),  # a run shorter than its warmup only ever warms up
        lr_min=cfg.min_lr,
        warmup_t=warmup,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def agc_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter AGC clips: all but the final classifier's, as in the NFNet paper. The
    classifier is the one timm's ``pretrained_cfg`` names, else ``get_classifier()``, else the
    last ``nn.Linear``."""
    if (getattr(model, "pretrained_cfg", None) or {}).get("classifier"):
        head = classifier_parameters(model)
    elif isinstance(getattr(model, "get_classifier", None) and model.get_classifier(), nn.Module):
        head = list(model.get_classifier().parameters())
    else:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        head = list(linears[-1].parameters()) if linears else []
    skip = {id(p) for p in head}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in skip]


def clip_gradients(parameters: list[nn.Parameter], clip: float | None) -> None:
    """Adaptive Gradient Clipping (unit-wise, eps 1e-3; :mod:`nfzoo.optim.agc`) in place; off when
    ``clip`` is None or 0."""
    if clip:
        adaptive_grad_clip_(parameters, clip=clip, eps=1e-3)
