"""Batch-independent heads: GroupNorm, and optionally Weight Standardization, in place of
batch norm in the FPN and task heads, as the GN and GN+WS papers train them."""
from __future__ import annotations

from math import gcd
from typing import Literal

import torch
import torch.nn as nn

from ..layers import WSConv2d

__all__ = ["HeadNorm", "HEAD_NORMS", "GN_GROUPS", "GN_CHANNELS_PER_GROUP", "gn_groups", "to_group_norm"]

HeadNorm = Literal["gn", "gn_ws"] | None
HEAD_NORMS = ("gn", "gn_ws", None)
GN_GROUPS = 32  # Wu & He's default, also in the GN+WS papers' detection and segmentation heads
GN_CHANNELS_PER_GROUP = 16  # where 32 groups do not divide the width


def gn_groups(channels: int) -> int:
    """The number of GroupNorm groups for ``channels``: a valid count for any width.

    Group Normalization (Wu & He 2018, arXiv 1803.08494) divides the channels into G = 32
    groups by default; its ablation also divides them the other way, into groups of a fixed
    number of channels. Where 32 does not divide the width (decoder widths such as 16 or 48),
    we take that second rule with 16 channels per group (48 -> 3 groups, 16 -> 1), or, when 16
    does not divide it either, the largest divisor of 16 that does (40 -> 8 per group, 5
    groups), so that every group holds the same number of channels, as GroupNorm requires.
    """
    if channels < 1:
        raise ValueError(f"GroupNorm needs at least one channel, got {channels}")
    if channels % GN_GROUPS == 0:
        return GN_GROUPS
    return channels // gcd(channels, GN_CHANNELS_PER_GROUP)


def to_group_norm(module: nn.Module, weight_standardization: bool = True) -> nn.Module:
    """Return ``module`` with every ``BatchNorm2d`` replaced by ``GroupNorm(gn_groups(C), C)``
    (see :func:`gn_groups`) and, if ``weight_standardization``, every plain ``Conv2d`` by a
    :class:`~nfzoo.layers.WSConv2d` holding the same weights (the GN+WS release's numerics).

    All or nothing: every replacement is built first and only then swapped in, so a failure
    leaves ``module`` as it was. Works in place on the children (like
    ``SyncBatchNorm.convert_sync_batchnorm``); convert the parts that should change and leave
    out final prediction layers.
    """
    replacement = _replacement(module, weight_standardization)
    if replacement is not None:
        return replacement
    swaps = [(parent, name, new) for parent in module.modules() for name, child in parent.named_children()
             if (new := _replacement(child, weight_standardization)) is not None]
    for parent, name, new in swaps:
        setattr(parent, name, new)
    return module


def _replacement(module: nn.Module, weight_standardization: bool) -> nn.Module | None:
    if isinstance(module, nn.BatchNorm2d):
        return _to_gn(module)
    if weight_standardization and type(module) is nn.Conv2d:
        return _to_ws(module)
    return None


def _to_gn(bn: nn.BatchNorm2d) -> nn.GroupNorm:
    like = bn.weight if bn.weight is not None else bn.running_mean
    factory = {} if like is None else dict(device=like.device, dtype=like.dtype)
    return nn.GroupNorm(gn_groups(bn.num_features), bn.num_features, eps=bn.eps, affine=bn.affine, **factory)


def _to_ws(conv: nn.Conv2d) -> WSConv2d:
    ws = WSConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        ws.weight.copy_(conv.weight)
        if conv.bias is not None:
            ws.bias.copy_(conv.bias)
    return ws
