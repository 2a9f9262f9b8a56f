"""Squeeze-and-excite as DeepMind's NFNets define it (Brock et al. 2021, arXiv 2102.06171).

Global average pool -> linear -> ReLU -> linear -> ``2 * sigmoid``. The factor 2 keeps the
expected output scale at 1 (sigmoid of a zero-mean input averages 0.5), which the
normalizer-free signal propagation relies on. The linears are 1x1 convs so that the parameter
layout matches timm's ``dm_nfnet`` checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SqueezeExcite"]


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DeepMind's initialisation, haiku's ``hk.Linear`` default: weights from a normal of std
        ``1 / sqrt(fan_in)`` truncated at two of those stds (``hk.initializers.TruncatedNormal``),
        zero biases."""
        for fc in (self.fc1, self.fc2):
            std = fc.in_channels ** -0.5
            nn.init.trunc_normal_(fc.weight, 0.0, std, -2.0 * std, 2.0 * std)
            nn.init.zeros_(fc.bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The gate's pre-sigmoid values, (N, C, 1, 1): the 1x1 convs of the pooled map, run as the
        matrix products they are."""
        h = torch.relu(F.linear(x.mean((2, 3)), self.fc1.weight.flatten(1), self.fc1.bias))
        return F.linear(h, self.fc2.weight.flatten(1), self.fc2.bias)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the 2 applied last, in place: autograd then keeps only the sigmoid's output, which its
        # own backward needs anyway, instead of a second (N, C, 1, 1) tensor per block
        return (x * torch.sigmoid(self.logits(x))).mul_(2.0)
