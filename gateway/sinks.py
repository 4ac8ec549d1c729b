"""Where finished uploads go. The default: a plain directory.

``DirectorySink`` hard-links a finished upload into ``<data-dir>/complete/`` under a safe,
unique name derived from its metadata filename. The name is one path component built by
``protocol.names.safe_filename``, so no metadata can place a file outside that folder. Linking
is instant and idempotent: after a crash, delivering again finds the existing link by its
inode instead of making a second copy.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from gateway.state.disk import IoPool, _fsync_dir
from protocol.model import SinkState, UploadState
from protocol.names import metadata_filename, safe_filename
from protocol.state import Input, UploadStatus, advance

MAX_NAME_TRIES = 1000


class Sink(Protocol):
    state_needs_saving: bool
    """False when the delivered output is its own record (delivering again finds it), so the
    sink state need not be written to disk after every delivery."""

    async def deliver(self, state: UploadState, data: Path) -> SinkState:
        """Deliver a complete upload; returns the sink state to record."""


class DirectorySink:
    # The link in complete/ is the record: after a restart, recovery delivers every complete
    # upload again, which finds the link by its inode and changes nothing.
    state_needs_saving = False

    def __init__(self, folder: Path, pool: IoPool, *, durable: bool) -> None:
        self.folder = folder
        self._pool = pool
        self._durable = durable

    async def open(self) -> None:
        await self._pool.run(lambda: self.folder.mkdir(parents=True, exist_ok=True))

    async def deliver(self, state: UploadState, data: Path) -> SinkState:
        status = advance(state.status, Input.SINK_START)
        name = safe_filename(metadata_filename(state.info.metadata), state.info.upload_id)
        target = await self._pool.run(self._link, data, name, state.info.upload_id)
        return SinkState(advance(status, Input.SINK_DONE), ref=target.name)

    def _link(self, data: Path, name: str, upload_id: str) -> Path:
        source_inode = os.stat(data).st_ino
        for candidate in _candidates(name, upload_id):
            target = self.folder / candidate
            try:
                os.link(data, target)
            except FileExistsError:
                try:
                    if os.stat(target).st_ino == source_inode:
                        return target  # delivered before a crash; nothing to do
                except FileNotFoundError:
                    pass
                continue
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                if not self._copy_exclusive(data, target):
                    continue
            if self._durable:
                _fsync_dir(self.folder)
            return target
        raise FileExistsError(f"no free name for {name!r} in {self.folder}")

    def _copy_exclusive(self, data: Path, target: Path) -> bool:
        """Fallback when links are impossible: copy to a temp name, then claim the name."""
        tmp = self.folder / f".{target.name}.partial"
        shutil.copyfile(data, tmp)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True


def _candidates(name: str, upload_id: str) -> Iterator[str]:
    """``a.txt``, ``a (1).txt`` ... and finally ``a-<id>.txt``, which is always free."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    yield name
    for i in range(1, MAX_NAME_TRIES):
        yield f"{stem} ({i}){suffix}"
    yield f"{stem}-{upload_id}{suffix}"


def is_delivered(state: UploadState) -> bool:
    return state.info.sink is not None and state.info.sink.status is UploadStatus.DRAINED
