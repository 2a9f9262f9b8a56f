"""Batch-independent heads: GroupNorm, and optionally Weight Standardization, in place of
batch norm in the FPN and task heads, as the GN and GN+WS papers train them."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from ..layers import WSConv2d

__all__ = ["HeadNorm", "HEAD_NORMS", "GN_GROUPS", "to_group_norm"]

HeadNorm = Literal["gn", "gn_ws"] | None
HEAD_NORMS = ("gn", "gn_ws", None)
GN_GROUPS = 32  # Wu & He's default, also in the GN+WS papers' detection and segmentation heads


def to_group_norm(module: nn.Module, weight_standardization: bool = True) -> nn.Module:
    """Return ``module`` with every ``BatchNorm2d`` replaced by ``GroupNorm(32, C)`` and, if
    ``weight_standardization``, every plain ``Conv2d`` by a :class:`~nfzoo.layers.WSConv2d`
    holding the same weights (the GN+WS release's numerics).

    Works in place on the children (like ``SyncBatchNorm.convert_sync_batchnorm``); convert the
    parts that should change and leave out final prediction layers.
    """
    if isinstance(module, nn.BatchNorm2d):
        if module.num_features % GN_GROUPS:
            raise ValueError(f"GroupNorm needs channels divisible by {GN_GROUPS}, got {module.num_features}")
        return nn.GroupNorm(GN_GROUPS, module.num_features, eps=module.eps)
    if weight_standardization and type(module) is nn.Conv2d:
        return _to_ws(module)
    for name, child in module.named_children():
        module.add_module(name, to_group_norm(child, weight_standardization))
    return module


def _to_ws(conv: nn.Conv2d) -> WSConv2d:
    ws = WSConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        ws.weight.copy_(conv.weight)
        if conv.bias is not None:
            ws.bias.copy_(conv.bias)
    return ws
