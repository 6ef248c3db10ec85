"""Atomic file writes (temp file beside the target, fsync, rename): a reader never sees a half-written file.

One helper for everything rbnn writes: checkpoints, packed models, configs, metrics, summaries. A failed
write (a full disk, a read-only file system) leaves the previous file untouched and no temp file behind,
and is reported as one line naming the file. Imports nothing but the standard library (the torch-free
runtime uses it too).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import RbnnError


class WriteError(RbnnError):
    """A file could not be written (disk full, read-only, permissions); the old file, if any, is unchanged."""


def _mkstemp(path: Path) -> tuple[int, str]:
    """A temp file beside ``path`` with ordinary permissions (mkstemp's default is owner-only 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (the file's own bytes are fsynced before the rename)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def check_file_target(path: str | os.PathLike) -> Path:
    """``path`` can be written as a file: it is not a directory and its directory exists."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a directory (give a file name)")
    if not path.parent.is_dir():
        raise WriteError(f"cannot write {path}: directory {path.parent} does not exist")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync, then rename over ``path``."""
    path = check_file_target(path)
    tmp = None
    try:
        fd, tmp = _mkstemp(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        reason = os.strerror(e.errno) if e.errno in errno.errorcode else str(e)
        raise WriteError(f"cannot write {path}: {reason}; the previous file (if any) is unchanged") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())
