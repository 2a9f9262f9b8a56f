"""The ``norm=`` choices of the zoo's ResNets: one name per (normalization layer, convolution)
pair, so that the same network can be built with each, for ablations and downstream use.

Every norm layer factory is called as ``norm_layer(num_channels, device=..., dtype=...)``
(torch's and timm's convention, which timm's ResNet follows); grouped norms also take
``num_groups``. Add a choice with :func:`register_norm`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch.nn as nn
from timm.layers import GroupNorm

from .bcn import BatchChannelNorm2d
from .ablation_norms import (
    BatchInstanceNorm2d, BatchRenorm2d, SwitchableNorm2d, instance_norm, layer_norm, weight_norm_conv2d,
)
from .std_conv import WSConv2d

__all__ = ["NormChoice", "NORMS", "register_norm", "get_norm"]


@dataclass(frozen=True)
class NormChoice:
    """What one ``norm=`` name builds.

    Attributes:
        norm_layer: ``norm_layer(num_channels, **kw)`` -> module.
        conv_layer: the class (or factory with nn.Conv2d's signature) of every convolution.
        num_groups: the default group count of a grouped norm (passed as ``num_groups``);
            None for norms without groups.
        description: one line for docs and error messages.
    """

    norm_layer: Callable[..., nn.Module]
    conv_layer: Callable[..., nn.Conv2d] = nn.Conv2d
    num_groups: int | None = None
    description: str = ""

    def layer_factory(self, num_groups: int | None = None) -> Callable[..., nn.Module]:
        """``norm_layer`` with the group count bound (``num_groups`` overrides the default)."""
        if self.num_groups is None:
            if num_groups is not None:
                raise ValueError(f"this norm has no groups ({self.description}); do not pass num_groups")
            return self.norm_layer
        return partial(self.norm_layer, num_groups=num_groups or self.num_groups)


NORMS: dict[str, NormChoice] = {}


def register_norm(name: str, choice: NormChoice) -> NormChoice:
    """Add a ``norm=`` choice; names are unique."""
    if name in NORMS:
        raise ValueError(f"norm {name!r} is already registered ({NORMS[name].description})")
    NORMS[name] = choice
    return choice


def get_norm(name: str) -> NormChoice:
    """The choice called ``name``, with an error listing the known ones."""
    try:
        return NORMS[name]
    except KeyError:
        known = ", ".join(f"{n!r} ({c.description})" for n, c in NORMS.items())
        raise ValueError(f"unknown norm {name!r}; choose one of {known}") from None


register_norm("bn", NormChoice(nn.BatchNorm2d, description="BatchNorm"))
register_norm("gn", NormChoice(GroupNorm, num_groups=32, description="GroupNorm, 32 groups"))
# The authors' GN+WS release divides by (unbiased std + eps), the BCN+WS release by sqrt(unbiased var + eps).
register_norm("gn_ws", NormChoice(
    GroupNorm, partial(WSConv2d, eps_in="std"), num_groups=32,
    description="GroupNorm + Weight Standardization"))
register_norm("bcn_ws", NormChoice(
    BatchChannelNorm2d, partial(WSConv2d, eps_in="var"), num_groups=32,
    description="Batch-Channel Normalization + Weight Standardization"))
register_norm("bcn_ws_est", NormChoice(
    partial(BatchChannelNorm2d, batch_stats="estimate"), partial(WSConv2d, eps_in="var"), num_groups=32,
    description="BCN with estimated batch statistics (micro-batch training) + Weight Standardization"))
# The rest of the batch-size ablation (nfzoo.layers.ablation_norms; each class names its paper).
register_norm("ln", NormChoice(layer_norm, description="LayerNorm (GroupNorm with one group)"))
register_norm("in", NormChoice(instance_norm, description="InstanceNorm (one channel per group), affine"))
register_norm("brn", NormChoice(BatchRenorm2d, description="Batch Renormalization (r_max 3, d_max 5)"))
register_norm("bin", NormChoice(BatchInstanceNorm2d, description="Batch-Instance Normalization"))
register_norm("sn", NormChoice(SwitchableNorm2d, description="Switchable Normalization (IN, LN, BN)"))
register_norm("wn", NormChoice(nn.Identity, weight_norm_conv2d,
                               description="Weight Normalization on the convs, no activation normalization"))
