"""Weights: the manifest, checkpoint conversion, publishing and verified loading."""
from ..errors import CheckpointError, ChecksumError
from .manifest import Checkpoint, checkpoint, manifest, pretrained_cfg

__all__ = ["Checkpoint", "CheckpointError", "ChecksumError", "checkpoint", "manifest", "pretrained_cfg"]
