"""nfzoo's errors: the base of every error nfzoo raises for a user's input, file or machine, and
the errors that more than one part of nfzoo raises or catches.

An :class:`NfzooError`'s message is one sentence that names what was wrong and what to do; the
command-line tools print it as one line and exit non-zero (:func:`nfzoo.cli.run_cli`). A
Python caller can catch this one class.
"""
from __future__ import annotations

__all__ = ["NfzooError", "CheckpointError", "ChecksumError", "WeightsUnavailableError", "EvaluationError"]


class NfzooError(Exception):
    """A problem with the input (arguments, data, a file, the machine), with what to do about it."""


class CheckpointError(NfzooError, ValueError):
    """A file is not a usable checkpoint: unreadable, truncated, or made for another model."""


class ChecksumError(CheckpointError):
    """A file's sha256 differs from the one the nfzoo manifest records for it."""


class WeightsUnavailableError(NfzooError, FileNotFoundError):
    """Pretrained weights are not where nfzoo looks for them locally and cannot be downloaded."""


class EvaluationError(NfzooError):
    """A problem with the evaluation harness's input (data, model, options), with what to do about it."""
