"""The Notion sink as the gateway sees it: ``deliver`` hands a finished upload over and returns
at once; the drain and the records run in the background (design invariant 6: the sink
never blocks the upload path, and uploads keep being accepted while Notion is down).

Per upload, in the background:
1. choose a salt and hash the file (once: both are saved in the upload's record, so a
   restart looks for the same key and never records a file twice);
2. drain it (``drain.Drain``: parts, checkpoints, resume, expiry);
3. record it (``records.Recorder``: both pages exactly once);
4. save ``drained`` with the page ids; a permanent failure saves ``failed`` with the error.

A gateway restarted mid-drain resumes every upload left ``draining`` (``retain`` is called
after recovery with the live uploads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.aio import IoPool
from gateway.config import GatewayConfig
from gateway.state.base import UploadStore
from notion_sink.breaker import BreakerPolicy, CircuitBreaker
from notion_sink.client import ClientSettings, NotionClient, read_range
from notion_sink.drain import Drain, DrainProgress, Resilient, notion_name
from notion_sink.ratelimit import RateLimiter
from notion_sink.records import FileKey, Recorder, RecordSettings, new_salt, salted_sha512
from notion_sink.retry import Permanent, RetryPolicy, SinkError
from protocol import errors
from protocol.model import SinkState, UploadState
from protocol.names import metadata_filename, safe_filename
from protocol.state import Input, UploadStatus, advance

log = logging.getLogger(__name__)


@dataclass
class Tracked:
    """A drain in progress in this process, for the status endpoint."""

    task: asyncio.Task[None]
    progress: DrainProgress


class NotionSink:
    state_needs_saving = True  # the record is the only memory of a delivery

    def __init__(self, config: GatewayConfig, store: UploadStore, pool: IoPool,
                 session: aiohttp.ClientSession) -> None:
        self.store = store
        self.pool = pool
        self.client = NotionClient(
            session, ClientSettings(base_url=config.notion_base_url, token=config.notion_token,
                                    version=config.notion_version), self._read)
        self.breaker = CircuitBreaker(BreakerPolicy(open_for=config.notion_breaker_open_s))
        self.resilient = Resilient(self.breaker,
                                   # Evenly spaced, no burst of our own: Notion's burst
                                   # allowance then absorbs network jitter instead of
                                   # answering 429.
                                   RateLimiter(rate=config.notion_rate, burst=1),
                                   RetryPolicy(deadline=config.notion_retry_deadline_s))
        self.drain = Drain(self.client, store, self.resilient,
                           window=config.notion_window_bytes,
                           concurrency=config.notion_concurrency)
        self.recorder = Recorder(self.client, self.resilient,
                                 RecordSettings(config.notion_user_database,
                                                config.notion_index_database))
        self.active: dict[str, Tracked] = {}
        # Hashing is CPU and disk bound: a few at a time finish as fast as all at once, and
        # keep memory and worker threads free for uploads.
        self._hashing = asyncio.Semaphore(2)
        self.retry_failed_s = config.notion_retry_failed_s
        self._later: set[asyncio.Task[None]] = set()

    async def _read(self, path: Path, start: int, length: int) -> bytes:
        return await self.pool.run(read_range, path, start, length)

    # --- the Sink protocol -------------------------------------------------------------------
    async def deliver(self, state: UploadState, data: Path) -> SinkState:
        status = advance(state.status, Input.SINK_START)
        current = state.info.sink
        return SinkState(status, detail=current.detail if current else {})

    async def retain(self, upload_ids: set[str]) -> None:
        """After recovery: resume the drains a stop interrupted."""
        for upload_id in sorted(upload_ids):
            with contextlib.suppress(errors.NotFound, errors.Gone):
                state = await self.store.get(upload_id)
                if state.status is UploadStatus.DRAINING:
                    self.start(upload_id, self._data_path(upload_id))

    def handed_over(self, state: UploadState, data: Path) -> None:
        self.start(state.info.upload_id, data)

    def _data_path(self, upload_id: str) -> Path:
        return self.store.data_path(upload_id)

    # --- background work ---------------------------------------------------------------------
    def start(self, upload_id: str, data: Path) -> None:
        if upload_id in self.active and not self.active[upload_id].task.done():
            return
        progress = DrainProgress()
        task = asyncio.create_task(self._run(upload_id, data, progress),
                                   name=f"notion-drain-{upload_id}")
        self.active[upload_id] = Tracked(task, progress)

    async def close(self) -> None:
        for later in list(self._later):
            later.cancel()
        for tracked in self.active.values():
            tracked.task.cancel()
        for tracked in self.active.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await tracked.task

    async def _run(self, upload_id: str, data: Path, progress: DrainProgress) -> None:
        try:
            await self._deliver(upload_id, data, progress)
        except (errors.NotFound, errors.Gone):
            log.info("upload %s was removed during its Notion drain", upload_id)
        except SinkError as exc:
            will_retry = not isinstance(exc, Permanent) and self.retry_failed_s > 0
            log.warning("Notion drain of %s failed (%s): %s", upload_id,
                        "will retry" if will_retry else "for good", exc)
            await self._save(upload_id, UploadStatus.FAILED, error=str(exc),
                             will_retry=will_retry)
            if will_retry:
                later = asyncio.create_task(self._retry_later(upload_id))
                self._later.add(later)
                later.add_done_callback(self._later.discard)
        except Exception as exc:
            log.exception("Notion drain of %s failed", upload_id)
            await self._save(upload_id, UploadStatus.FAILED, error=repr(exc), will_retry=False)

    async def _deliver(self, upload_id: str, data: Path, progress: DrainProgress) -> None:
        state = await self.store.get(upload_id)
        detail = dict(state.info.sink.detail) if state.info.sink else {}
        if "salt" not in detail:
            salt = new_salt()
            async with self._hashing:
                digest = await self.pool.run(salted_sha512, data, salt)
            detail = {"salt": salt, "sha512": digest}
            await self._save(upload_id, UploadStatus.DRAINING, detail=detail)
        # One clean path component: what Notion gets (when its type is accepted) and what the
        # record shows.
        filename = safe_filename(metadata_filename(state.info.metadata), upload_id)
        name = notion_name(filename, upload_id)
        length = state.offset
        remote_id = await self.drain.run(upload_id, data, length, name, progress)
        page_id, index_id = await self.recorder.record(
            filename=filename, sent_as=name.filename, size=length,
            key=FileKey(detail["salt"], detail["sha512"]), created_at=state.info.created_at,
            remote_id=remote_id)
        await self._save(upload_id, UploadStatus.DRAINED, ref=page_id, detail={
            **detail, "file_upload": remote_id, "page": page_id, "index_page": index_id,
            "sent_as": name.filename})

    async def _save(self, upload_id: str, status: UploadStatus, *, ref: str | None = None,
                    error: str | None = None, will_retry: bool = False,
                    detail: Mapping[str, str] | None = None) -> None:
        state = await self.store.get(upload_id)
        old = state.info.sink
        sink = SinkState(status, ref, error,
                         dict(detail if detail is not None else (old.detail if old else {})),
                         will_retry)
        await self.store.save_info(state.info.replace(sink=sink))

    async def _retry_later(self, upload_id: str) -> None:
        await asyncio.sleep(self.retry_failed_s)
        with contextlib.suppress(errors.NotFound, errors.Gone, errors.SinkNotFailed):
            await self.retry(upload_id)

    async def retry(self, upload_id: str) -> None:
        """Start a failed delivery again (``tus-gateway sink retry``)."""
        state = await self.store.get(upload_id)
        if state.status is not UploadStatus.FAILED:
            raise errors.SinkNotFailed()
        await self._save(upload_id, advance(state.status, Input.SINK_START))
        self.start(upload_id, self._data_path(upload_id))

    # --- status ------------------------------------------------------------------------------
    def progress(self, upload_id: str) -> dict[str, object]:
        tracked = self.active.get(upload_id)
        out: dict[str, object] = {"breaker": str(self.breaker.state)}
        if tracked is not None:
            out.update(parts_sent=tracked.progress.parts_sent,
                       parts_total=tracked.progress.parts_total,
                       file_upload=tracked.progress.remote_id,
                       running=not tracked.task.done())
        retry_at = self.breaker.retry_at
        if retry_at is not None:
            out["breaker_retry_in_s"] = round(max(retry_at - time.monotonic(), 0.0), 1)
        return out
