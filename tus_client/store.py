"""Where an interrupted upload is found again: the fingerprint store.

A file's fingerprint (server URL, absolute path, size, mtime and a SHA-256 of its first MiB)
keys the upload URL the server gave it, so running the same command again resumes instead
of starting over.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
# The fingerprint reads this much of the file: enough to tell two files apart whose path,
# size and mtime collide (a file rewritten within the mtime's resolution), cheap for any size.
FINGERPRINT_HEAD_BYTES = MiB


def default_store_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/tus-gateway/uploads.json``, else ``~/.local/state/...`` (XDG Base
    Directory: state that survives restarts but is not worth backing up)."""
    xdg = environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path(environ.get("HOME", "~")).expanduser() / ".local" / "state"
    return base / "tus-gateway" / "uploads.json"


def fingerprint(server_url: str, path: Path, size: int, mtime_ns: int, head_sha256: str) -> str:
    """The store key of one file on one server."""
    raw = json.dumps([server_url, str(path), size, mtime_ns, head_sha256])
    return hashlib.sha256(raw.encode()).hexdigest()


class FingerprintStore:
    """Upload URLs of unfinished uploads in one JSON file, safe for concurrent processes.

    Every change is read-modify-write under an exclusive ``flock`` on a sibling lock file and
    lands with ``os.replace``, so two uploaders sharing a store never lose each other's
    entries and a kill never leaves half a file. All file work runs in a worker thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    async def get(self, key: str) -> str | None:
        entry = (await asyncio.to_thread(self._read)).get(key)
        url = entry.get("url") if isinstance(entry, dict) else None
        return url if isinstance(url, str) else None

    async def put(self, key: str, url: str, path: Path, size: int) -> None:
        entry = {"url": url, "path": str(path), "size": size, "created_at": time.time()}
        await asyncio.to_thread(self._update, key, entry)

    async def remove(self, key: str) -> None:
        await asyncio.to_thread(self._update, key, None)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (ValueError, OSError):
            # A store we cannot read costs resumability, not the upload itself.
            return {}
        uploads = data.get("uploads") if isinstance(data, dict) else None
        return uploads if isinstance(uploads, dict) else {}

    def _update(self, key: str, entry: dict[str, Any] | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            uploads = self._read()
            if entry is None:
                if uploads.pop(key, None) is None:
                    return
            else:
                uploads[key] = entry
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".uploads-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"version": 1, "uploads": uploads}, f, indent=1)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    Path(tmp).unlink()
                raise


def file_facts(path: Path) -> tuple[int, int, str]:
    """Size, mtime and the SHA-256 of the head: what ``fingerprint`` needs besides names.
    Blocking: run it in a worker thread."""
    stat = path.stat()
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(FINGERPRINT_HEAD_BYTES)).hexdigest()
    return stat.st_size, stat.st_mtime_ns, head
