"""Atomic file writes: the one place where nfzoo writes an output file or folder.

Every writer goes through a temporary file (or folder) in the target's own folder, named
``.<target>.<host>-<pid>-<random>.partial``. On success it is flushed to disk (fsync), given
the mode an ordinary new file gets under the user's umask, and renamed onto the target in one
step (``os.replace``); on any error it is removed and the target is left as it was. A reader
therefore sees the old file or the new one, never a half-written one.

A process killed mid-write cannot clean up after itself: the next write to the same target
removes the temporaries that dead processes of this host left behind (:func:`remove_stale_temporaries`).

A full disk (``ENOSPC``, a quota's ``EDQUOT``) or a file larger than the system allows
(``EFBIG``, e.g. under ``ulimit -f``) is reported as :class:`DiskFullError`, which names the file
and says what to do.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator, Mapping

from .errors import NfzooError

__all__ = ["DiskFullError", "atomic_path", "atomic_open", "write_atomic", "append_atomic", "write_files_atomic",
           "atomic_dir", "check_output_dir", "UnsafeOutputError", "remove_stale_temporaries"]

_SUFFIX = ".partial"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class _FileError(NfzooError, OSError):
    """An OSError whose message (``strerror``) is the whole sentence, file name included."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class DiskFullError(_FileError):
    """No space was left on the device (or in the quota), or the file grew past the largest size
    allowed, while writing a file; nothing was replaced. ``filename`` is the file that was
    being written; the message names it and says what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _prefix(path: Path) -> str:
    return f".{path.name}.{_host()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of writes to ``path`` whose process (on this host) no longer runs.

    Temporaries of live processes, and of other hosts sharing the folder, are left alone.
    Returns what was removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?P<host>.+)-(?P<pid>\d+)-[A-Za-z0-9_]+{re.escape(_SUFFIX)}$")
    removed = []
    for entry in path.parent.iterdir():
        m = pattern.match(entry.name)
        if m is None or m["host"] != _host() or _pid_alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _disk_full_errno(error: BaseException) -> int | None:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return error.errno
        error = error.__cause__ or error.__context__
    return None


def _disk_full(path: Path, error: BaseException, code: int) -> DiskFullError:
    if code == errno.EFBIG:
        what, fix = "the file grew past the largest size allowed", "raise the limit (ulimit -f) or write somewhere else"
    else:
        what, fix = "no space left on the device", "free some space on that disk (or write somewhere else)"
    return DiskFullError(code, f"{what} while writing {path} ({error}). {fix[0].upper()}{fix[1:]} and run again; "
                               f"{path} was left as it was and no partial file remains", str(path))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _temporary(path: Path, make_dir: bool = False) -> Iterator[Path]:
    """A fresh temporary file (or folder) for ``path``, removed if the block fails; disk-full
    errors become :class:`DiskFullError`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if make_dir:
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=_SUFFIX, dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=_prefix(path), suffix=_SUFFIX, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
    except BaseException as e:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        code = _disk_full_errno(e)
        if code is not None and not isinstance(e, DiskFullError):
            raise _disk_full(path, e, code) from e
        raise


def _finish_file(tmp: Path) -> None:
    """fsync ``tmp`` and give it an ordinary file's mode (mkstemp makes it private)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())


def _replace(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer that wants a file name; when the
    block succeeds the file replaces ``path`` in one step."""
    path = Path(path)
    with _temporary(path) as tmp:
        yield tmp
        _finish_file(tmp)
        _replace(tmp, path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """:func:`atomic_path`, opened for writing (``"wb"`` or ``"w"``)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes a new file: mode must be 'wb' or 'w', not {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def append_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Append ``data`` (bytes, or text as UTF-8) to ``path``, all of it or nothing: on any error
    the file is cut back to its old length (a log that grows by appending, too long to rewrite)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException as e:
            os.ftruncate(fd, size)
            code = _disk_full_errno(e)
            if code is not None:
                raise _disk_full(path, e, code) from e
            raise
    finally:
        os.close(fd)


def write_files_atomic(files: Mapping[str | os.PathLike, bytes | str]) -> None:
    """Write several files so that a failure while writing any of them replaces none.

    All of them are written to temporaries first; only when every one is complete on disk are
    they renamed into place (renames need no space). A kill during those few renames can
    still leave some files new and some old.
    """
    with contextlib.ExitStack() as stack:
        temporaries = []
        for path, data in files.items():
            tmp = stack.enter_context(_temporary(Path(path)))
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
            _finish_file(tmp)
            temporaries.append((tmp, Path(path)))
        for tmp, path in temporaries:
            _replace(tmp, path)


class UnsafeOutputError(_FileError, FileExistsError):
    """An output folder would replace or delete files nfzoo did not write: it is a file, it
    holds files already (without ``overwrite``), or it overlaps the input being read."""


def _overlap(path: Path, other: Path) -> bool:
    return path == other or path.is_relative_to(other) or other.is_relative_to(path)


def check_output_dir(path: str | os.PathLike, overwrite: bool = False,
                     apart_from: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse an output folder that writing into could harm: a file, a folder that is equal to,
    inside or above one of ``apart_from`` (the inputs), or, unless ``overwrite``, a folder that
    holds anything. Paths are compared by their real location (symlinks resolved)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UnsafeOutputError(errno.EEXIST, f"{path} is a file, not a folder; name a new folder to write into",
                                str(path))
    real = Path(os.path.realpath(path))
    for source in apart_from:
        if _overlap(real, Path(os.path.realpath(source))):
            raise UnsafeOutputError(errno.EEXIST, f"the output folder {path} is, holds or lies inside the input "
                                                  f"{source}; name a folder apart from it", str(path))
    if not overwrite and path.is_dir() and any(path.iterdir()):
        raise UnsafeOutputError(errno.EEXIST, f"{path} already holds files; name a new or empty folder, or let nfzoo "
                                              "replace the files it writes there (--overwrite, or overwrite=True; "
                                              "other files are kept)",
                                str(path))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False,
               apart_from: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a new temporary folder next to ``path`` to fill with files; when the block succeeds
    they are put in place, and nothing else is ever deleted or replaced.

    A ``path`` that does not exist yet is the temporary folder renamed in one step. Into an
    existing empty folder, or with ``overwrite`` into one that holds files, each file is renamed
    into place on its own: files of the same names are replaced, every other file is kept.
    :func:`check_output_dir` refuses the other cases before the block runs.
    """
    path = Path(path)
    check_output_dir(path, overwrite, apart_from)
    with _temporary(path, make_dir=True) as tmp:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_dir() or f.is_symlink():
                raise ValueError(f"atomic_dir writes files only, not {f.relative_to(tmp)}")
            _finish_file(f)
        os.chmod(tmp, 0o777 & ~_umask())
        if not path.exists():
            _replace(tmp, path)
            return
        check_output_dir(path, overwrite, apart_from)  # files may have arrived meanwhile
        clash = [f.name for f in tmp.iterdir() if (path / f.name).is_dir() and not (path / f.name).is_symlink()]
        if clash:
            raise UnsafeOutputError(errno.EISDIR, f"{path} holds folders named {clash}, where nfzoo writes files; "
                                                  "move them away or name another folder", str(path))
        for f in tmp.iterdir():
            os.replace(f, path / f.name)
        _fsync_dir(path)
        tmp.rmdir()
