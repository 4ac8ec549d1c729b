"""The upload operations the handlers share: locking, loading, finishing, concatenation.

Handlers stay thin: they parse a request, ask ``protocol`` for a plan and call one of these.
Everything here runs under the upload's lock when it touches one upload's bytes or record;
finishing (sink delivery, assembling finals that waited for a partial) happens exactly once,
under that lock, and its outcome is recorded so a retried final request replays it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

from aiohttp import StreamReader

from gateway.aio import run_to_completion
from gateway.body import BodyReader
from gateway.config import GatewayConfig
from gateway.hooks import Hooks
from gateway.logs import log_event
from gateway.progress import Meters
from gateway.sinks import Sink
from gateway.state.base import Locker, ReleaseRequested, UploadStore
from protocol import errors
from protocol.decisions import is_expired, plan_final_length
from protocol.headers import UPLOAD_ID, Checksum, Concat, ConcatFinal
from protocol.model import UploadInfo, UploadState
from protocol.state import UploadStatus

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.resources import ResourceMonitor

log = logging.getLogger(__name__)
# A data file without a record younger than this may be a create in progress.
ORPHAN_GRACE_S = 3600.0


def new_upload_id() -> str:
    """128 random bits, hex: unguessable and safe in URLs and file names (TUS-GEN-06)."""
    return secrets.token_hex(16)


def checked_id(raw: str) -> str:
    """Ids come from URLs; anything that is not one of ours is simply not found."""
    if not UPLOAD_ID.fullmatch(raw):
        raise errors.NotFound()
    return raw


class Uploads:
    def __init__(self, config: GatewayConfig, store: UploadStore, locker: Locker,
                 sink: Sink) -> None:
        self.config = config
        self.settings = config.protocol_settings()
        self.store = store
        self.locker = locker
        self.sink = sink
        self.hooks = Hooks(config, self.settings, store)
        # Requests currently reading a body, so shutdown can make them commit and answer.
        self._receiving: set[BodyReader] = set()
        self.shutting_down = False
        self.meters = Meters()  # live progress, speed and ETA of uploads receiving here
        self.metrics: Metrics | None = None
        self.monitor: ResourceMonitor | None = None
        # Bodies streaming right now, by upload: where each started, for live progress.
        self.inflight: dict[str, tuple[int, BodyReader]] = {}

    def _event(self, event: str, upload_id: str, **fields: Any) -> None:
        """An upload's life event: one log line, one count."""
        log_event(event, upload_id, **fields)
        if self.metrics is not None:
            self.metrics.uploads.labels(event).inc()

    def admit(self, kind: str) -> None:
        """Refuse a new creation (``"create"``) or PATCH (``"append"``) with 503 while the
        gateway protects itself, or 507 while free disk space is low (see
        ``gateway.resources``)."""
        if self.monitor is None:
            return
        try:
            self.monitor.check(kind)
        except (errors.Overloaded, errors.InsufficientStorage) as exc:
            if self.metrics is not None:
                self.metrics.admission.labels(str(exc.data.get("reason"))).inc()
            raise

    @property
    def active(self) -> int:
        """Request bodies streaming right now (admission control, health, metrics)."""
        return len(self._receiving)

    # --- locking -----------------------------------------------------------------------------
    def body_reader(self, content: StreamReader) -> BodyReader:
        return BodyReader(content, self.config.stall_timeout_s)

    @asynccontextmanager
    async def locked(self, upload_id: str,
                     reader: BodyReader | None = None) -> AsyncIterator[None]:
        """Hold the upload's lock; a later request makes our body read stop and let go."""
        on_release: Callable[[], None] = _nothing
        metrics = self.metrics
        if reader is not None:
            body = reader

            def on_release() -> None:
                if metrics is not None:
                    metrics.release_requests.inc()
                body.stop(ReleaseRequested())
        lock = self.locker.new_lock(upload_id)
        started = time.perf_counter()
        await lock.acquire(self.config.lock_wait_s, on_release)
        if metrics is not None:
            metrics.lock_wait.observe(time.perf_counter() - started)
        try:
            yield
        finally:
            await asyncio.shield(lock.release())

    async def settled(self, upload_id: str) -> None:
        """Wait until nobody writes the upload, asking a writer to commit and let go."""
        await self.locker.new_lock(upload_id).wait_free(self.config.lock_wait_s)

    @asynccontextmanager
    async def receiving(self, reader: BodyReader) -> AsyncIterator[None]:
        if self.shutting_down:
            raise errors.ServerShutdown()
        self._receiving.add(reader)
        try:
            yield
        finally:
            self._receiving.discard(reader)

    def interrupt_all(self) -> None:
        """Shutdown: every body read stops, the bytes so far are committed, clients get 503."""
        self.shutting_down = True
        for reader in list(self._receiving):
            reader.stop(errors.ServerShutdown())

    # --- reading -----------------------------------------------------------------------------
    async def live(self, upload_id: str) -> UploadState:
        """The upload's state, or 404/410; an expired upload is gone even before the sweep."""
        state = await self.store.get(upload_id)
        if is_expired(state, self.settings, time.time()):
            raise errors.Gone("the upload has expired")
        return state

    # --- writing -----------------------------------------------------------------------------
    async def create(self, length: int | None, metadata: dict[str, bytes],
                     concat: Concat | None) -> UploadState:
        info = UploadInfo(upload_id=new_upload_id(), length=length, metadata=metadata,
                          concat=concat, created_at=time.time())
        state = await self.store.create(info)
        self._event("created", info.upload_id, length=length, partial=info.is_partial)
        return state

    async def append(self, state: UploadState, offset: int, reader: BodyReader,
                     max_bytes: int | None, checksum: Checksum | None) -> UploadState:
        """Stream the body into the store; returns the new state (finished if complete)."""
        upload_id = state.info.upload_id
        self.sink.receiving(state)
        feed = self.meters.feeder(upload_id)
        counter = self.metrics.bytes_received if self.metrics is not None else None

        def on_chunk(n: int) -> None:
            feed(n)
            if counter is not None:
                counter.inc(n)
        reader.on_chunk = on_chunk
        self.inflight[upload_id] = (offset, reader)
        async with self.receiving(reader):
            task = asyncio.ensure_future(self.store.append(
                upload_id, offset, reader.chunks(), max_bytes=max_bytes, checksum=checksum))
            try:
                new_offset = await asyncio.shield(task)
            except ReleaseRequested:
                raise errors.UploadInterrupted() from None
            except asyncio.CancelledError:
                # aiohttp cancels the handler when the client goes away (or at the end of a
                # shutdown). Stop the read instead, so the bytes already received are
                # committed, and only then let the cancellation through.
                if not task.done():
                    reader.stop(errors.ClientDisconnected("the request was cancelled"))
                    with suppress(Exception):
                        await run_to_completion(task)
                raise
            finally:
                self.sink.receiving(state)
                if self.inflight.get(upload_id, (0, None))[1] is reader:
                    del self.inflight[upload_id]
        new_state = UploadState(state.info, new_offset, time.time())
        if new_state.status is UploadStatus.COMPLETE:
            new_state = await self.finish(new_state)
        return new_state

    async def finish(self, state: UploadState) -> UploadState:
        """Run once the last byte is stored (under the lock): deliver, then wake finals.

        Partial uploads are pieces of a file, not files: only their final is delivered.
        """
        self._event("finished", state.info.upload_id, length=state.offset,
                  partial=state.info.is_partial)
        if state.status is UploadStatus.COMPLETE and not state.info.is_partial:
            try:
                sink_state = await self.sink.deliver(state, self.store.data_path(
                    state.info.upload_id))
            except OSError as exc:
                # Delivery is retried at the next start; the upload itself is complete and safe.
                log.error("sink could not deliver %s: %s", state.info.upload_id, exc)
            else:
                info = await self.hooks.owe_post_finish(state.info.replace(sink=sink_state))
                await self.store.save_info(info, durable=self.sink.state_needs_saving or
                                           info.hook is not None)
                state = UploadState(info, state.offset, state.last_activity)
                # Only now, with the hand-over on record, may background work begin.
                self.sink.handed_over(state, self.store.data_path(state.info.upload_id))
                self.hooks.start_post_finish(state)
        if state.info.is_partial:
            await self._wake_finals(state.info.upload_id)
        return state

    async def declare_length(self, state: UploadState, length: int) -> UploadState:
        info = state.info.replace(length=length)
        await self.store.save_info(info)
        return UploadState(info, state.offset, state.last_activity)

    async def terminate(self, upload_id: str, reason: str) -> None:
        await self.store.terminate(upload_id, reason)
        await self.store.unregister_final(upload_id)
        self._event("terminated", upload_id, reason=reason)

    # --- concatenation -----------------------------------------------------------------------
    async def create_final(self, concat: ConcatFinal, declared_length: int | None,
                           metadata: dict[str, bytes]) -> UploadState:
        partials = [await self.live(upload_id) for upload_id in concat.upload_ids]
        length = plan_final_length(concat, partials, declared_length, self.settings)
        info = UploadInfo(upload_id=new_upload_id(), length=length, metadata=metadata,
                          concat=concat, created_at=time.time())
        state = await self.store.create(info)
        self._event("created", info.upload_id, length=length, final=True)
        async with self.locked(info.upload_id):
            if not all(p.finished for p in partials):
                # Register first, then look again: a partial that finished in between either
                # sees this final registered, or is seen finished here.
                await self.store.register_final(info.upload_id, concat.upload_ids)
                try:
                    partials = [await self.store.get(p) for p in concat.upload_ids]
                except (errors.NotFound, errors.Gone):
                    return state  # a partial vanished meanwhile: the final waits, then expires
            if all(p.finished for p in partials):
                return await self._assemble(state)
            return state

    async def _wake_finals(self, partial_id: str) -> None:
        for final_id, parts in (await self.store.waiting_finals()).items():
            if partial_id not in parts:
                continue
            try:
                states = [await self.store.get(p) for p in parts]
            except (errors.NotFound, errors.Gone):
                log.warning("final upload %s lost a partial; it cannot be assembled", final_id)
                continue
            if all(s.finished for s in states):
                async with self.locked(final_id):
                    try:
                        await self._assemble(await self.store.get(final_id))
                    except (errors.NotFound, errors.Gone):
                        pass
                    except FileNotFoundError:
                        log.warning("final upload %s lost a partial while it was assembled",
                                    final_id)

    async def _assemble(self, state: UploadState) -> UploadState:
        info = state.info
        if info.assembled or not isinstance(info.concat, ConcatFinal):
            return state
        length = await self.store.assemble(info, info.concat.upload_ids)
        info = info.replace(assembled=True, length=length)
        await self.store.save_info(info)
        await self.store.unregister_final(info.upload_id)
        return await self.finish(UploadState(info, length, time.time()))

    # --- start-up recovery and expiry --------------------------------------------------------
    async def recover(self) -> None:
        """Finish what a crash interrupted: deliveries, and finals whose partials are done."""
        live: set[str] = set()
        for upload_id in await self.store.upload_ids():
            try:
                state = await self.store.get(upload_id)
            except (errors.NotFound, errors.Gone):
                continue
            live.add(upload_id)
            info = state.info
            if isinstance(info.concat, ConcatFinal) and not info.assembled:
                await self.store.register_final(upload_id, info.concat.upload_ids)
            elif state.status is UploadStatus.COMPLETE:
                async with self.locked(upload_id):
                    # Another instance may have finished it meanwhile.
                    state = await self.store.get(upload_id)
                    if state.status is UploadStatus.COMPLETE:
                        await self.finish(state)
        for parts in list((await self.store.waiting_finals()).values()):
            if parts:
                await self._wake_finals(parts[0])
        await self.sink.retain(live)

    async def sweep(self, now: float) -> int:
        """Remove expired unfinished uploads (tombstoned: they answer 410) and old tombstones.

        Instances sharing a store take turns: one sweep per interval among them."""
        removed = 0
        if not await self.store.claim_lease("sweep", self.config.sweep_interval_s * 0.9):
            return 0
        for upload_id in await self.store.upload_ids():
            try:
                state = await self.store.get(upload_id)
                if not is_expired(state, self.settings, now):
                    continue
                async with self.locked(upload_id):
                    state = await self.store.get(upload_id)  # bytes may have arrived meanwhile
                    if is_expired(state, self.settings, time.time()) and \
                            await self.store.terminate(upload_id, "expired",
                                                       if_offset=state.offset):
                        await self.store.unregister_final(upload_id)
                        removed += 1
                        self._event("expired", upload_id, offset=state.offset)
            except (errors.NotFound, errors.Gone, errors.UploadLocked):
                continue
        await self.store.purge_tombstones(now - self.config.tombstone_ttl_s)
        await self.store.remove_orphans(now - ORPHAN_GRACE_S)
        return removed


def _nothing() -> None:
    return None
