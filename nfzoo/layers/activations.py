"""Gamma-scaled activations of the NF-ResNet and NFNet papers (Brock et al. 2021).

Each nonlinearity g is multiplied by gamma = 1 / sqrt(Var[g(z)]) for z ~ N(0, 1), so that a
unit-variance input gives a unit-variance output and signal propagation holds without
normalization layers. The constants are DeepMind's published values.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

__all__ = ["NONLINEARITIES", "GAMMA", "GammaAct"]

NONLINEARITIES: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,  # exact (erf) GELU, timm's choice
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # jax.nn.gelu's default, DeepMind's choice
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}

GAMMA: dict[str, float] = {
    "gelu": 1.7015043497085571,
    "gelu_tanh": 1.7015043497085571,  # DeepMind computed the constant for their (tanh) GELU
    "relu": 1.7139588594436646,
    "silu": 1.7881293296813965,
}


class GammaAct(nn.Module):
    """``gamma * g(x)``: a nonlinearity rescaled to preserve variance (see module docstring)."""

    def __init__(self, name: str = "gelu_tanh", gamma: float | None = None):
        super().__init__()
        if name not in NONLINEARITIES:
            raise ValueError(f"unknown activation {name!r}; choose one of {sorted(NONLINEARITIES)}")
        self.name = name
        self.act = NONLINEARITIES[name]()
        self.gamma = GAMMA[name] if gamma is None else gamma
        # GELU's and SiLU's backward read x, so their fresh g(x) can be scaled in place, saving a
        # tensor and a pass; ReLU's backward reads its output, which must stay unchanged
        self.scale_in_place = name != "relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(x)
        return y.mul_(self.gamma) if self.scale_in_place else y * self.gamma

    def extra_repr(self) -> str:
        return f"{self.name}, gamma={self.gamma}"
