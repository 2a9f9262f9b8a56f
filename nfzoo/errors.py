"""The base of every error nfzoo raises for a user's input, file or machine.

An :class:`NfzooError`'s message is one sentence that names what was wrong and what to do; the
command-line tools print it as one line and exit non-zero (:func:`nfzoo.cli.run_cli`). A
Python caller can catch this one class.
"""
from __future__ import annotations

__all__ = ["NfzooError"]


class NfzooError(Exception):
    """A problem with the input (arguments, data, a file, the machine), with what to do about it."""
