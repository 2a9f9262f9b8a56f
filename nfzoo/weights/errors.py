"""The errors the weights tools raise: each names the file, what was wrong and what to do."""
from __future__ import annotations

__all__ = ["CheckpointError", "ChecksumError"]


class CheckpointError(ValueError):
    """A file is not a usable checkpoint: unreadable, truncated, or made for another model."""


class ChecksumError(CheckpointError):
    """A file's sha256 differs from the one the nfzoo manifest records for it."""
