"""Fine-tuning the downstream models: their optimizer (:func:`create_optimizer`), and a small
loop that measures images/s and peak memory (:func:`finetune`).

It trains any of the builders' models (detection: the sum of torchvision's losses; DeepLabV3:
per-pixel cross-entropy on the ``semantic`` maps) on a dataset in :mod:`.shapes`' format. It is
a check that the pipeline trains, and a speed probe, not a full training recipe.
"""
from __future__ import annotations

import itertools
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from ..optim import agc_parameters, attach_agc, weight_decay_groups
from .backbone import FeatureBackbone
from .shapes import collate

__all__ = ["FinetuneResult", "create_optimizer", "finetune"]


def create_optimizer(
    model: nn.Module,
    lr: float,
    *,
    opt: str = "momentum",
    weight_decay: float = 1e-4,
    agc_clip: float | None = None,
    **opt_kwargs: Any,
) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2`` over :func:`nfzoo.optim.weight_decay_groups` (decay on
    the weights of convolutions and linear layers only; frozen parameters left out) (``opt`` is a timm optimizer
    name: ``'momentum'`` is SGD with momentum 0.9, ``'sgd'`` adds Nesterov, ``'adamw'`` ...).

    ``agc_clip`` attaches AGC with that threshold (:func:`nfzoo.optim.attach_agc`; its hook is
    ``nfzoo.optim.attached_agc(optimizer)``), for NF backbones. In a
    model built by :mod:`nfzoo.downstream` only the backbone is clipped: AGC is what stabilizes
    the normalizer-free network, the FPN and heads are normalized, and the final predictors are
    the layers the NFNet paper leaves unclipped. In a plain timm model the classifier's weight is
    excluded, as in DeepMind's recipe.
    """
    optimizer = create_optimizer_v2(weight_decay_groups(model, weight_decay), opt=opt, lr=lr, **opt_kwargs)
    if agc_clip is None:
        return optimizer
    backbones = [m for m in model.modules() if isinstance(m, FeatureBackbone)]
    clipped = {id(p) for p in agc_parameters(model, within=backbones or None)}
    attach_agc(optimizer, clip=agc_clip, exclude=[p for p in model.parameters() if id(p) not in clipped])
    return optimizer


@dataclass
class FinetuneResult:
    losses: list[float]
    """The training loss at every step."""
    images_per_s: float
    """Training throughput after the first (warm-up) step."""
    peak_memory_mb: float
    """Peak CUDA memory allocated on a GPU; the process's peak resident memory on CPU."""
    device: str


def finetune(
    model: nn.Module,
    dataset: Dataset,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    batch_size: int = 2,
    device: str | torch.device | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Train ``model`` for ``steps`` optimizer steps of ``batch_size`` images from ``dataset``
    (reshuffled each epoch with ``seed``), on CUDA when available unless ``device`` says otherwise."""
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (the first one is a warm-up), got {steps}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).train()
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate,
        generator=torch.Generator().manual_seed(seed))
    if len(loader) == 0:
        raise ValueError(f"the dataset has {len(dataset)} images, fewer than batch_size={batch_size}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    losses = []
    for step, (images, targets) in zip(range(steps), batches):
        if step == 1:
            _sync(device)
            start = time.perf_counter()
        images = [image.to(device) for image in images]
        targets = [{k: v.to(device) for k, v in target.items()} for target in targets]
        loss = _loss(model, images, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log:
            log(f"step {step + 1}/{steps}  loss {losses[-1]:.4f}")
    _sync(device)
    elapsed = time.perf_counter() - start
    return FinetuneResult(losses, (steps - 1) * batch_size / elapsed, _peak_memory_mb(device), str(device))


def _loss(model: nn.Module, images: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
    if isinstance(model, GeneralizedRCNN):
        return sum(model(images, targets).values())
    logits = model(torch.stack(images))["out"]
    return F.cross_entropy(logits, torch.stack([t["semantic"] for t in targets]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
