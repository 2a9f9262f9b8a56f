"""Estimated batch statistics in BCN backbones, for training with micro-batches.

The released BCN+WS weights were trained with ordinary batch statistics in BCN's batch part.
Fine-tuned with one or two images per device those statistics are noise, so the authors switch
the batch part to *estimated* statistics (Qiao et al., arXiv 1903.10520, and their
Batch-Channel-Normalization release): running estimates updated without gradient and always
used to normalize, which makes each image's output independent of the rest of the batch. GN+WS and NF backbones need nothing of the kind.
"""
from __future__ import annotations

import torch.nn as nn

from ..layers import BatchChannelNorm2d, EstimatedBatchNorm2d

__all__ = ["use_estimated_batch_stats"]


def use_estimated_batch_stats(model: nn.Module, moving_speed: float = 0.0) -> nn.Module:
    """Give every BCN layer of ``model`` an estimated-statistics batch part with ``moving_speed``,
    starting from its current running statistics and affine parameters and keeping whether it
    synchronizes across processes; in place, returns ``model``. The default speed, 0, is the
    authors': the estimates stay the running statistics the weights came with.

    Building the backbone with ``norm='bcn_ws_est'`` does the same from the start; this converts
    a model that exists already (e.g. a detector built over ``resnet50_bcn_ws`` with its released
    weights).
    """
    layers = [m for m in model.modules() if isinstance(m, BatchChannelNorm2d)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no BatchChannelNorm2d layer: estimated batch statistics apply "
            f"to BCN backbones (e.g. resnet50_bcn_ws) only")
    for layer in layers:
        pbn = layer.pbn
        estimated = EstimatedBatchNorm2d(
            pbn.num_features, eps=pbn.eps, moving_speed=moving_speed, process_group=pbn.process_group,
            synchronize=pbn.synchronize, device=pbn.running_mean.device, dtype=pbn.running_mean.dtype)
        state = {k: v for k, v in pbn.state_dict().items() if k != "estbn_moving_speed"}
        estimated.load_state_dict(state)
        layer.pbn = estimated.train(pbn.training)
    return model
