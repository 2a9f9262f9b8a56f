"""Optimizer, schedule and gradient clipping of the NFNet recipe, built from timm's pieces."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from timm.utils import adaptive_clip_grad

from .config import TrainConfig

__all__ = ["NO_DECAY_PATTERNS", "build_optimizer", "build_scheduler", "agc_parameters", "clip_gradients"]

# Besides biases and every other 0-d/1-d parameter (timm's rule): the scaled-WS gains, which
# are (out, 1, 1, 1) tensors, and the SkipInit gains.
NO_DECAY_PATTERNS = ("*.gain", "*_gain")


def build_optimizer(model: nn.Module, cfg: TrainConfig, world_size: int = 1) -> torch.optim.SGD:
    """SGD with Nesterov momentum; no weight decay on gains, biases and other vectors."""
    extra = tuple(getattr(model, "no_weight_decay", lambda: ())())
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=NO_DECAY_PATTERNS + extra)
    return torch.optim.SGD(groups, lr=cfg.learning_rate(world_size), momentum=cfg.momentum, nesterov=cfg.nesterov)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> CosineLRScheduler:
    """Linear warmup from 0 then cosine decay to ``min_lr``, stepped per update (``step_update``)."""
    return CosineLRScheduler(
        optimizer,
        t_initial=cfg.epochs * steps_per_epoch,
        lr_min=cfg.min_lr,
        warmup_t=round(cfg.warmup_epochs * steps_per_epoch),
        warmup_lr_init=0.0,
        warmup_prefix=False,
        t_in_epochs=False,
    )


def agc_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter AGC clips: all but the final classifier's, as in the NFNet paper."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(classifier, nn.Module):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        classifier = linears[-1] if linears else None
    skip = {id(p) for p in classifier.parameters()} if classifier is not None else set()
    return [p for p in model.parameters() if p.requires_grad and id(p) not in skip]


def clip_gradients(parameters: list[nn.Parameter], clip: float | None) -> None:
    """Adaptive Gradient Clipping (unit-wise, eps 1e-3) of ``parameters``' gradients, in place."""
    if clip:
        adaptive_clip_grad(parameters, clip_factor=clip, eps=1e-3)
