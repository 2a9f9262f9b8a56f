"""The NFNet recipe's update: SGD with Nesterov momentum and weight decay on conv and linear weights
only, its warmup-cosine schedule, and gradient clipping; built from timm's pieces."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.scheduler import CosineLRScheduler

from ..optim import adaptive_grad_clip_
from ..optim.param_groups import weight_decay_groups
from .config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "clip_gradients"]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with Nesterov momentum; weight decay on conv and linear weights only
    (:mod:`nfzoo.optim.param_groups`)."""
    groups = weight_decay_groups(model, cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.learning_rate(), momentum=cfg.momentum, nesterov=cfg.nesterov)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total: int, warmup: float) -> CosineLRScheduler:
    """DeepMind's ``WarmupCosineDecay`` (``nfnets/optim.py``), stepped per update (``step_update``):
    linear warmup from 0 over ``warmup`` steps, then a cosine to ``min_lr`` over the steps *after*
    the warmup, up to step ``total`` (timm's ``warmup_prefix=True``). The warmup need not be a
    whole number of steps (:mod:`nfzoo.train.steps` counts both as DeepMind does)."""
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total - warmup, 1),  # a run shorter than its warmup only ever warms up
        lr_min=cfg.min_lr,
        warmup_t=warmup,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def clip_gradients(parameters: list[nn.Parameter], clip: float | None) -> None:
    """Adaptive Gradient Clipping (unit-wise, eps 1e-3; :mod:`nfzoo.optim.agc`) in place; off when
    ``clip`` is None or 0."""
    if clip:
        adaptive_grad_clip_(parameters, clip=clip, eps=1e-3)
