"""The errors the weights tools raise: each names the file, what was wrong and what to do."""
from __future__ import annotations

from ..errors import NfzooError

__all__ = ["CheckpointError", "ChecksumError", "WeightsUnavailableError"]


class CheckpointError(NfzooError, ValueError):
    """A file is not a usable checkpoint: unreadable, truncated, or made for another model."""


class ChecksumError(CheckpointError):
    """A file's sha256 differs from the one the nfzoo manifest records for it."""


class WeightsUnavailableError(NfzooError, FileNotFoundError):
    """Pretrained weights are not where nfzoo looks for them locally and cannot be downloaded."""
