"""File helpers shared by conversion, publishing and verified downloads: hashing, and cheap
integrity checks that fail with a clear message before anything is loaded."""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

from safetensors import SafetensorError, safe_open

from .errors import ChecksumError, CheckpointError

__all__ = ["file_digest", "sha256_file", "check_sha256", "check_digest", "check_readable"]


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file (``hashlib.file_digest``, which reads it in chunks)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file."""
    return file_digest(path)


def check_digest(path: str | os.PathLike, expected: str, what: str, algorithm: str = "sha256") -> str:
    """Raise :class:`ChecksumError` unless ``path``'s hex digest starts with ``expected``.

    ``expected`` may be a prefix of the digest (OpenMMLab names its files with the first 8 hex
    digits of their sha256). Returns the full digest.
    """
    expected = expected.lower()
    actual = file_digest(path, algorithm)
    if not actual.startswith(expected):
        kind = algorithm if len(expected) == len(actual) else f"{algorithm} prefix ({len(expected)} hex digits)"
        raise ChecksumError(
            f"{path}: {algorithm} is {actual}, but the nfzoo manifest expects {kind} {expected} for {what}. "
            "The file is corrupt, truncated, or not the one the manifest describes.")
    return actual


def check_sha256(path: str | os.PathLike, expected: str, what: str) -> str:
    """:func:`check_digest` with sha256."""
    return check_digest(path, expected, what)


def _check_zip_crcs(path: Path) -> None:
    """torch.load never checks the CRC-32 that the zip format stores for every member, so a
    file whose body is damaged but whose directory is intact would load with wrong values."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path} is a damaged PyTorch checkpoint ({e}); download or copy it again.") from e
    if bad is not None:
        raise CheckpointError(
            f"{path} is a damaged PyTorch checkpoint: its member {bad} fails the zip CRC check "
            "(the file was corrupted after it was written); download or copy it again.")


def check_readable(path: str | os.PathLike) -> None:
    """Fail fast, with a clear message, on a checkpoint file that cannot be complete.

    A safetensors file must have a valid header whose tensors end exactly at the end of the
    file; a PyTorch zip checkpoint must have its zip directory (at the end of the file).
    Every member of a zip checkpoint must pass its CRC-32 check (this reads the whole file).
    Legacy (pre-1.6) PyTorch pickles have no cheap check: their sha256 is what protects them.
    The format is told by the file's first bytes, not its name.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path} is a truncated PyTorch checkpoint (its zip directory is missing).")
        _check_zip_crcs(path)
    elif head[8:9] == b"{" or path.suffix == ".safetensors":
        try:
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"{path} is not a complete safetensors file ({e}): it is truncated or damaged.") from e
