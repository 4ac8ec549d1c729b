"""Where finished uploads go. The default: a plain directory.

``DirectorySink`` hard-links a finished upload into ``<data-dir>/complete/`` under a safe,
unique name derived from its metadata filename. The name is one path component built by
``protocol.names.safe_filename``, so no metadata can place a file outside that folder. Linking
is instant and idempotent: after a crash, delivering again finds the existing link by its
inode instead of making a second copy.

Each delivery is noted in an append-only journal (``<data-dir>/delivered.log``) so that a
file someone has taken out of ``complete/`` is never delivered again after a restart. The
journal is not fsynced: losing its last lines in a power cut only means the links that are
still there are found again. When several instances share the folder (the Redis store),
there is no journal: each upload's record in Redis keeps its delivery instead.

The delivered file is then the only copy: once the record says where it went (durably),
the upload's spool link is removed (``releases_spool``), so an operator who takes a file
out of ``complete/`` frees its space. The order is link, record, unlink; a stop between
any two is finished at the next start (the link is found by its inode, a recorded delivery
releases the spool's link). GET serves the delivered file while it is the one delivered:
the record keeps its inode, size and modification time, so a file that took the name after
the operator removed the original is never served in its place.

This module is also the one place that picks the sink (``sink_type``, ``opened_sink``): what
the rest of the gateway needs to know of it, it learns from the capabilities the sink
declares (``gateway.sink_api``), never from ``--sink``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from gateway.aio import IoPool
from gateway.config import FsyncPolicy, GatewayConfig
from gateway.files import atomic_write, fsync_dir
from gateway.metrics import Metrics
from gateway.sink_api import Closing, HasBreaker, Sink
from gateway.state.base import UploadStore
from gateway.state.lease import lease_ttl
from protocol import errors
from protocol.model import SinkState, UploadState
from protocol.names import metadata_filename, safe_filename
from protocol.state import Input, advance

if TYPE_CHECKING:
    from gateway.state.redis import RedisBackend

__all__ = ["DirectorySink", "Sink", "SinkCounters", "opened_sink", "sink_type"]

MAX_NAME_TRIES = 1000


class DirectorySink:
    releases_spool = True

    def __init__(self, folder: Path, journal: Path | None, pool: IoPool, *,
                 durable: bool, file_mode: int = 0o600) -> None:
        self.folder = folder
        self.journal = journal
        self._pool = pool
        self._durable = durable
        self._file_mode = file_mode
        self._delivered: dict[str, str] = {}  # upload id -> name in the folder
        # Without a journal (several instances share the folder), the upload's record keeps
        # the delivery instead.
        self.state_needs_saving = journal is None

    async def open(self) -> None:
        self._delivered = await self._pool.run(self._open_sync)

    def _open_sync(self) -> dict[str, str]:
        self.folder.mkdir(parents=True, exist_ok=True)
        delivered: dict[str, str] = {}
        if self.journal is None:
            return delivered
        try:
            text = self.journal.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return delivered
        for line in text.splitlines():
            upload_id, sep, name = line.partition("\t")
            if sep and name:
                delivered[upload_id] = name
        return delivered

    async def deliver(self, state: UploadState, data: Path) -> SinkState:
        status = advance(state.status, Input.SINK_START)
        upload_id = state.info.upload_id
        known = self._delivered.get(upload_id)
        if known is None:
            wanted = safe_filename(metadata_filename(state.info.metadata), upload_id)
            name, identity = await self._pool.run(self._link_and_note, data, wanted,
                                                  upload_id)
            self._delivered[upload_id] = name
        else:
            # Delivered before (a stop came before the record): the file is ours if it is
            # still the spool's inode.
            name = known
            identity = await self._pool.run(self._identity_if_linked, data, name)
        return SinkState(advance(status, Input.SINK_DONE), ref=name, detail=identity)

    def _link_and_note(self, data: Path, name: str, upload_id: str) -> tuple[str, dict[str, str]]:
        target = self._link(data, name, upload_id)
        identity = _identity(os.stat(target))
        if self.journal is None:
            return target.name, identity
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self._file_mode)
        try:
            os.write(fd, f"{upload_id}\t{target.name}\n".encode())
        finally:
            os.close(fd)
        return target.name, identity

    def _identity_if_linked(self, data: Path, name: str) -> dict[str, str]:
        try:
            target, source = os.stat(self.folder / name), os.stat(data)
        except FileNotFoundError:
            return {}  # taken away already: nothing to serve
        return _identity(target) if target.st_ino == source.st_ino else {}

    async def delivered_file(self, state: UploadState) -> Path:
        sink = state.info.sink
        detail = {} if sink is None else sink.detail
        name = None if sink is None else sink.ref
        if not name or name != Path(name).name or "inode" not in detail:
            raise errors.DeliveredFileRemoved()
        path = self.folder / name
        try:
            found = await self._pool.run(os.stat, path)
        except FileNotFoundError:
            raise errors.DeliveredFileRemoved() from None
        if _identity(found) != {k: detail.get(k) for k in IDENTITY}:
            raise errors.DeliveredFileRemoved()  # another file took the name
        return path

    def handed_over(self, state: UploadState, data: Path) -> None:
        return None  # a directory delivery is finished when ``deliver`` returns

    def receiving(self, state: UploadState) -> None:
        return None  # a file is linked whole, once complete

    async def retain(self, upload_ids: set[str]) -> None:
        keep = {k: v for k, v in self._delivered.items() if k in upload_ids}
        if len(keep) == len(self._delivered) or self.journal is None:
            return
        self._delivered = keep
        text = "".join(f"{k}\t{v}\n" for k, v in keep.items()).encode()
        await self._pool.run(atomic_write, self.journal, text, False, self._file_mode)

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
                fsync_dir(self.folder)
            return target
        raise FileExistsError(f"no free name for {name!r} in {self.folder}")

    def _copy_exclusive(self, data: Path, target: Path) -> bool:
        """Fallback when links are impossible: copy to a temp name of its own (two copies
        may be made at once), then claim the name."""
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial",
                                    dir=self.folder)
        tmp = Path(name)
        try:
            os.fchmod(fd, self._file_mode)
        finally:
            os.close(fd)
        try:
            shutil.copyfile(data, tmp)
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True


# What tells the delivered file from one that took its name later. Not the device: hosts that
# mount one shared volume may number it differently.
IDENTITY = ("inode", "size", "mtime_ns")


def _identity(st: os.stat_result) -> dict[str, str]:
    return {"inode": str(st.st_ino), "size": str(st.st_size), "mtime_ns": str(st.st_mtime_ns)}


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



# --- choosing and opening the sink ------------------------------------------------------------
async def sink_type(config: GatewayConfig) -> type[Sink]:
    """The sink ``--sink`` names, for what must be settled before it is made (a sink that
    ``SendsEarly`` needs the store to sync inside long requests). The Notion sink's module
    is imported only when chosen, and in a thread, since an import reads files."""
    if config.sink == "notion":
        await asyncio.to_thread(importlib.import_module, "notion_sink.sink")
        from notion_sink.sink import NotionSink  # loaded above: nothing is read here
        return NotionSink
    return DirectorySink


@contextlib.asynccontextmanager
async def opened_sink(config: GatewayConfig, store: UploadStore, pool: IoPool,
                      metrics: Metrics, *,
                      backend: RedisBackend | None = None) -> AsyncIterator[Sink]:
    """The sink ``--sink`` names, made, opened and wired to the metrics; closed (with its
    HTTP session, if it has one) on the way out."""
    kind = await sink_type(config)
    async with contextlib.AsyncExitStack() as stack:
        sink: Sink
        if kind is DirectorySink:
            # With Redis the folder is shared, and Redis records each delivery.
            journal = None if config.redis.url else config.data_dir / "delivered.log"
            directory = DirectorySink(config.data_dir / "complete", journal, pool,
                                      durable=config.fsync is FsyncPolicy.ACK,
                                      file_mode=config.file_mode)
            await directory.open()
            sink = directory
        else:
            sink = await _notion_sink(config, store, pool, metrics, backend, stack)
        if isinstance(sink, HasBreaker):
            metrics.watch_breaker(sink.breaker_state)
        if isinstance(sink, Closing):
            stack.push_async_callback(sink.close)
        yield sink


async def _notion_sink(config: GatewayConfig, store: UploadStore, pool: IoPool,
                       metrics: Metrics, backend: RedisBackend | None,
                       stack: contextlib.AsyncExitStack) -> Sink:
    from notion_sink.sink import NotionSink  # loaded by sink_type

    settings = config.notion
    limiter = None
    if backend is not None:
        # Several instances share one integration's request budget.
        await asyncio.to_thread(importlib.import_module, "notion_sink.shared_limit")
        from notion_sink.shared_limit import RedisRateLimiter
        limiter = RedisRateLimiter(backend, rate=settings.rate, burst=1)
    session = await stack.enter_async_context(aiohttp.ClientSession())
    return NotionSink(settings, store, pool, session, lease_s=lease_ttl(config.lock_ttl_s),
                      limiter=limiter, metrics=SinkCounters(metrics))


class SinkCounters:
    """The gateway's metrics as a sink's counters (``sink_api.SinkMetrics``)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def request_done(self, outcome: str) -> None:
        self._metrics.sink_requests.labels(outcome).inc()

    def part_done(self, outcome: str) -> None:
        self._metrics.sink_parts.labels(outcome).inc()
