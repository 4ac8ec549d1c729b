"""Small durable-file helpers; every function here blocks and runs in a worker thread."""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from pathlib import Path

_SYNC_FILE_RANGE_WRITE = 2
_libc: ctypes.CDLL | None = None
if sys.platform == "linux":
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                          ctypes.c_uint]
    except (OSError, AttributeError):
        _libc = None


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk, without waiting (Linux
    sync_file_range); elsewhere, wait for it with fdatasync."""
    if _libc is not None and _libc.sync_file_range(fd, offset, length,
                                                   _SYNC_FILE_RANGE_WRITE) == 0:
        return
    os.fdatasync(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, durable: bool, mode: int = 0o600) -> None:
    """Write a whole file so that readers see the old or the new content, never a mix.

    Each call writes its own temp file (a unique name, made with O_EXCL), so two threads
    saving one file at once each replace it whole: the last rename wins."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        if mode != 0o600:  # mkstemp makes 0600 whatever the umask
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        # A full disk: the old content stays, and no half-written temp file holds space.
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
