"""Optimizer utilities: adaptive gradient clipping (AGC) for NFNets."""
from .agc import AGC, adaptive_grad_clip_, classifier_parameters

__all__ = ["AGC", "adaptive_grad_clip_", "classifier_parameters"]
