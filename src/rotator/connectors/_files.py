"""Writing files that other programs read: atomically, durably, with a chosen mode.

A reader (a JWT verifier polling its JWK Set, a server reloading its certificate) sees either
the old file or the new one, never a half-written one: the bytes go to a temporary file in the
same directory, are fsynced, and the temporary file replaces the target with ``os.replace``;
then the directory is fsynced so the rename itself survives a crash.

Read-modify-write cycles (adding a key to a shared JWK Set) hold an exclusive ``flock`` on the
target's directory, so two rotations (threads, or processes on the same machine) that publish
into the same file never lose each other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rotator.errors import ConnectorError

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


def parse_mode(text: str) -> int:
    """``"0644"`` / ``"644"`` / ``"0o644"`` -> 0o644; ValueError for anything else."""
    s = text.strip().lower().removeprefix("0o")
    if not s or len(s) > 4 or any(ch not in "01234567" for ch in s):
        raise ValueError(f"file mode must be octal like 0600 or 0644, not {text!r}")
    mode = int(s, 8)
    if mode & ~0o777:
        raise ValueError(f"file mode must be permission bits only (0000-0777), not {text!r}")
    return mode


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = SECRET_MODE) -> None:
    """Replace ``path`` with ``data`` atomically, readable as ``mode`` (default 0600).

    The file never exists with a wider mode than asked: the temporary file is created 0600 and
    changed to ``mode`` before it is renamed into place. Raises OSError.
    """
    target = Path(path)
    directory = target.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def read_or_none(path: str | os.PathLike[str]) -> bytes | None:
    """The file's bytes, or None when it does not exist. Raises OSError otherwise."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of ``path`` (blocks; use in a thread).

    The lock is an ``flock`` on the directory holding ``path``, so no lock file appears next
    to the published file and the lock outlives ``os.replace`` of the file itself.
    """
    directory = Path(path).parent
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def io_error(what: str, path: str, exc: OSError) -> ConnectorError:
    """A connector error for a failed file operation: a missing directory or a permission
    problem will not fix itself (permanent); other I/O might (transient, retried)."""
    from rotator.connectors.base import PermanentError, TransientError

    msg = f"cannot {what} {path}: {exc.strerror or exc}"
    if isinstance(exc, FileNotFoundError | NotADirectoryError | PermissionError):
        return PermanentError(msg)
    return TransientError(msg)
