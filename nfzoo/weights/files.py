"""File helpers shared by conversion, publishing and verified downloads: hashing, and cheap
integrity checks that fail with a clear message before anything is loaded."""
from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import IO, Literal

from safetensors import SafetensorError, safe_open

from ..errors import ChecksumError, CheckpointError

__all__ = ["file_digest", "sha256_file", "check_sha256", "check_digest", "check_readable", "checkpoint_format",
           "AllocationBudget", "BoundedReader"]


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


class AllocationBudget:
    """How many bytes the objects an unpickler builds may take: ``slack``, plus ``factor`` per
    byte of pickle read so far (``position``, which the unpickler advances).

    Every object that could be large is charged before it exists, so a file that asks for more
    than its size accounts for is refused with :class:`AllocationBudget.Exceeded` (an
    ``UnpicklingError``) before the memory is taken.
    """

    class Exceeded(pickle.UnpicklingError):
        """A charge went over the budget."""

    def __init__(self, slack: int, factor: int = 0):
        self.slack, self.factor, self.position, self.spent = slack, factor, 0, 0

    def charge(self, nbytes: int, what: str) -> None:
        self.spent += nbytes
        if self.spent > self.slack + self.factor * self.position:
            raise self.Exceeded(f"{what} would make the file allocate more memory than its own size accounts for")


class BoundedReader:
    """A file's first ``size`` bytes, never read past: a length a pickle declares can never make
    a read allocate more than the file holds (``pickletools.genops`` reads each argument with
    one ``read(n)``, and a buffered file allocates ``n`` bytes before it reads)."""

    def __init__(self, f: IO[bytes], size: int):
        self.f, self.size = f, size

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.f.tell()
        return self.f.read(left if n < 0 else min(n, left))

    def readline(self, limit: int = -1) -> bytes:
        left = self.size - self.f.tell()
        return self.f.readline(left if limit < 0 else min(limit, left))

    def tell(self) -> int:
        return self.f.tell()


def checkpoint_format(path: Path) -> Literal["zip", "safetensors", "legacy"]:
    """A PyTorch zip checkpoint, a safetensors file, or anything else (a legacy PyTorch pickle),
    told by the file's first bytes (a safetensors header: also by the name)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    return "safetensors" if head[8:9] == b"{" or path.suffix == ".safetensors" else "legacy"


def _check_zip(path: Path) -> None:
    """The members of a zip checkpoint must be stored as torch.save stores them (uncompressed)
    and fit in the file together (so none expands or overlaps another), and each must pass its
    CRC-32 check: torch.load never checks the CRC, so a file whose body is damaged but whose
    directory is intact would load with wrong values."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            compressed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
            oversized = sum(m.file_size for m in members) > path.stat().st_size
            bad = None if compressed or oversized else archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path} is a damaged PyTorch checkpoint ({e}); download or copy it again.") from e
    if compressed:
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint as torch.save writes it: its member {compressed[0]} is "
            "compressed; save it again with torch.save.")
    if oversized:
        raise CheckpointError(
            f"{path} is a damaged PyTorch checkpoint: its members' sizes add up to more than the file; "
            "download or copy it again.")
    if bad is not None:
        raise CheckpointError(
            f"{path} is a damaged PyTorch checkpoint: its member {bad} fails the zip CRC check "
            "(the file was corrupted after it was written); download or copy it again.")


def check_readable(path: str | os.PathLike) -> None:
    """Fail fast, with a clear message, on a checkpoint file that cannot be complete.

    A safetensors file must have a valid header whose tensors end exactly at the end of the
    file; a PyTorch zip checkpoint must have its zip directory (at the end of the file), and its
    members must be stored uncompressed, fit in the file and pass their CRC-32 checks (this
    reads the whole file). Legacy (pre-1.6) PyTorch pickles have no cheap check: their sha256
    is what protects them. The format is told by :func:`checkpoint_format`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    fmt = checkpoint_format(path)
    if fmt == "zip":
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path} is a damaged PyTorch checkpoint: truncated (its zip directory is missing).")
        _check_zip(path)
    elif fmt == "safetensors":
        try:
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"{path} is not a complete safetensors file ({e}): it is truncated or damaged.") from e
