"""Weights: the manifest, checkpoint conversion, publishing and verified loading."""
from .manifest import Checkpoint, checkpoint, manifest, pretrained_cfg

__all__ = ["Checkpoint", "checkpoint", "manifest", "pretrained_cfg"]
