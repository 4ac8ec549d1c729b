"""The upload operations the handlers share: locking, loading, finishing, concatenation.

Handlers stay thin: they parse a request, ask ``protocol`` for a plan and call one of these.
Everything here runs under the upload's lock when it touches one upload's bytes or record;
finishing (sink delivery, assembling finals that waited for a partial) happens exactly once,
under that lock, and its outcome is recorded so a retried final request replays it.

Two indexes in the store keep start-up and sweeps from reading every upload ever kept:
uploads that may owe their finish (noted at creation, cleared once the finish is on record:
a start reads those) and when each upload is next due for expiry (unfinished ones
``expire_after_s`` after their last byte, finished ones ``finished_ttl_s`` after they
finished: a sweep reads those that are due, and notes again the ones not due after all).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import StreamReader

from gateway.aio import run_to_completion
from gateway.body import BodyReader
from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.events import EventBus, LocalBus, progress_event, status_event
from gateway.hooks import Hooks
from gateway.limits import EmptyPatches
from gateway.logs import log_event
from gateway.progress import Meters
from gateway.quotas import Creator, Quotas, held_bytes, uploads_refusal
from gateway.sink_api import sink_limited
from gateway.sinks import Sink
from gateway.state.base import Indexing, Locker, ReleaseRequested, UploadStore
from gateway.state.parts import StoreParts
from protocol import errors
from protocol.decisions import ProtocolSettings, expires_at, is_expired, plan_final_length
from protocol.effects import Append, DeclareLength, Effect, EndUpload, Finish, Terminate
from protocol.filetypes import AllowedTypes
from protocol.headers import UPLOAD_ID, Checksum, Concat, ConcatFinal
from protocol.model import SinkState, UploadInfo, UploadState
from protocol.state import Input, UploadStatus, advance, stored

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger(__name__)
# Live progress goes to the event streams at most this often per upload.
PROGRESS_EVERY_S = 0.25
# A data file without a record younger than this may be a create in progress.
ORPHAN_GRACE_S = 3600.0
# Due uploads read per index query, and at most per sweep (the rest wait for the next one,
# so one sweep's length stays bounded however many uploads come due at once).
SWEEP_BATCH = 500
SWEEP_MAX = 20_000


def forget_at(state: UploadState, settings: ProtocolSettings,
              finished_ttl_s: float) -> float | None:
    """When the upload is due to be removed: unfinished, ``expire_after_s`` after its last
    byte (sliding); finished, ``finished_ttl_s`` after it finished. None: never."""
    if not state.finished:
        return expires_at(state, settings)
    if finished_ttl_s <= 0:
        return None
    # A record from before finishes were timed: its last byte is when it finished.
    return (state.info.finished_at or state.last_activity) + finished_ttl_s


def delivery_settled(state: UploadState) -> bool:
    """Whether nothing more will happen to a finished upload's delivery: it was delivered,
    failed for good, or it is a partial (never delivered on its own). A delivery still in
    progress keeps the upload, however long it takes."""
    status, sink = state.status, state.info.sink
    if not state.finished:
        return False
    if state.info.is_partial or status in (UploadStatus.DRAINED, UploadStatus.REJECTED):
        return True
    return status is UploadStatus.FAILED and sink is not None and not sink.will_retry


def owes_finish(state: UploadState) -> bool:
    """Whether the upload is complete and its finish is not on record: a partial's (its
    event, its finals woken) or anything else's hand-over to the sink."""
    if state.status is not UploadStatus.COMPLETE:
        return False
    return not state.info.is_partial or state.info.finished_at is None


def indexing(config: GatewayConfig) -> Indexing:
    """How the disk store rebuilds its expiry and finish indexes when it opens."""
    settings, ttl = config.protocol_settings(), config.finished_ttl_s
    return Indexing(expires_at=lambda state: forget_at(state, settings, ttl),
                    owes_finish=owes_finish, held=held_bytes)


def new_upload_id() -> str:
    """128 random bits, hex: unguessable and safe in URLs and file names (TUS-GEN-06)."""
    return secrets.token_hex(16)


def checked_id(raw: str) -> str:
    """Ids come from URLs; anything that is not one of ours is simply not found."""
    if not UPLOAD_ID.fullmatch(raw):
        raise errors.NotFound()
    return raw


# Whether a finished upload's bytes are what it claimed (``gateway.screening``): None when
# they are, else the reason it is rejected.
Screener = Callable[[UploadState, Path], Awaitable[str | None]]


async def _accept_all(state: UploadState, data: Path) -> str | None:
    return None


class Admission(Protocol):
    """Whether a new request may start now (``gateway.resources.ResourceMonitor``)."""

    def check(self, kind: str) -> None:
        """Raise ``errors.Overloaded`` or ``errors.InsufficientStorage`` if a new request of
        ``kind`` (``"create"`` or ``"append"``) must wait."""
        ...


class Intake:
    """The request bodies streaming into this instance right now.

    Made before the upload service, because admission control counts them (``count``) and
    the service is built with admission control; a shutdown stops them all (``stop_all``):
    each commits the bytes it has and answers 503.
    """

    def __init__(self) -> None:
        self._readers: set[BodyReader] = set()
        self.shutting_down = False

    def count(self) -> int:
        return len(self._readers)

    @contextmanager
    def reading(self, reader: BodyReader) -> Iterator[None]:
        if self.shutting_down:
            raise errors.ServerShutdown()
        self._readers.add(reader)
        try:
            yield
        finally:
            self._readers.discard(reader)

    def stop_all(self) -> None:
        self.shutting_down = True
        for reader in list(self._readers):
            reader.stop(errors.ServerShutdown())


class Uploads:
    def __init__(self, config: GatewayConfig, parts: StoreParts, locker: Locker,
                 sink: Sink, *, intake: Intake, admission: Admission, metrics: Metrics,
                 clock: Clock, screen: Screener = _accept_all,
                 events: EventBus | None = None) -> None:
        self.config = config
        # What the store cannot do is neither announced nor accepted.
        self._settings = config.protocol_settings(parts.offers)
        self.store: UploadStore = parts.store
        self.quotas = Quotas(parts.store, parts.store.get, clock.now)
        self.screen = screen
        self.events: EventBus = events or LocalBus()
        # A sink may send bytes before the upload finishes; with --allowed-types nothing
        # leaves before the content check at the finish has seen the file.
        self.sends_early = not config.allowed_types
        self.allowed_types = AllowedTypes.parse(config.allowed_types)
        self.locker = locker
        self.sink = sink
        self.clock = clock
        self.hooks = Hooks(config, self._settings, self.store, clock=clock)
        # Empty PATCHes lately taken, by upload (``empty_patch``).
        self.empty_patches = EmptyPatches(config.empty_patch_interval_s)
        self.intake = intake
        self.meters = Meters(clock)  # live progress, speed and ETA of uploads receiving here
        self.metrics = metrics
        self.admission = admission
        # Bodies streaming right now, by upload: where each started, for live progress.
        self.inflight: dict[str, tuple[int, BodyReader]] = {}

    @property
    def settings(self) -> ProtocolSettings:
        # Lowered to the sink's own file size limit (sink_api.LimitsFileSize), read each time.
        return sink_limited(self._settings, self.sink)

    def _event(self, event: str, upload_id: str, **fields: Any) -> None:
        """An upload's life event: one log line, one count."""
        log_event(event, upload_id, **fields)
        self.metrics.uploads.labels(event).inc()

    async def sink_saved(self, state: UploadState) -> None:
        """A sink recorded a new delivery state in the background (``sink_api.Announces``):
        the event streams hear of it, and a delivered upload stops holding its owner's
        quota."""
        self.announce(state)
        if held_bytes(state) == 0:
            await self.quotas.release(state)

    def announce(self, state: UploadState) -> None:
        """Tell the upload's event streams (on every instance) that it changed."""
        self.events.publish(state.info.upload_id,
                            status_event(state.info.upload_id, str(state.status)))

    def admit(self, kind: str) -> None:
        """Refuse a new creation (``"create"``) or PATCH (``"append"``) with 503 while the
        gateway protects itself, or 507 while free disk space is low (see
        ``gateway.resources``)."""
        try:
            self.admission.check(kind)
        except (errors.Overloaded, errors.InsufficientStorage) as exc:
            self.metrics.admission.labels(str(exc.data.get("reason"))).inc()
            raise

    @property
    def active(self) -> int:
        """Request bodies streaming right now (admission control, health, metrics)."""
        return self.intake.count()

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
                metrics.release_requests.inc()
                body.stop(ReleaseRequested())
        lock = self.locker.new_lock(upload_id)
        started = time.perf_counter()
        await lock.acquire(self.config.lock_wait_s, on_release)
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
        with self.intake.reading(reader):
            yield

    def interrupt_all(self) -> None:
        """Shutdown: every body read stops, the bytes so far are committed, clients get 503."""
        self.intake.stop_all()

    # --- reading -----------------------------------------------------------------------------
    async def live(self, upload_id: str) -> UploadState:
        """The upload's state, or 404/410; an expired upload is gone even before the sweep."""
        state = await self.store.get(upload_id)
        now = self.clock.now()
        if is_expired(state, self.settings, now) or self._forgotten(state, now):
            raise errors.Gone("the upload has expired")
        return state

    def forget_at(self, state: UploadState) -> float | None:
        return forget_at(state, self.settings, self.config.finished_ttl_s)

    def _forgotten(self, state: UploadState, now: float) -> bool:
        """A finished upload past ``finished_ttl_s`` whose delivery is settled."""
        if not state.finished:
            return False
        due = self.forget_at(state)
        return due is not None and now >= due and delivery_settled(state)

    async def download(self, state: UploadState) -> tuple[Path, UploadState]:
        """Where a download reads the bytes, and the state to plan it with: the spool's
        copy, or, once a sink released it, the file the sink delivered here
        (``errors.DataDelivered`` if it keeps none here, ``errors.DeliveredFileRemoved`` if
        that file was taken away)."""
        if state.status is UploadStatus.REJECTED:
            raise errors.UploadRejected(f"the upload was rejected: {state.info.sink.error}"
                                        if state.info.sink is not None else None)
        if not state.info.data_removed:
            return self.store.data_path(state.info.upload_id), state
        delivered = await self.sink.delivered_file(state)
        if delivered is None:
            raise errors.DataDelivered()
        # The bytes are at hand after all.
        return delivered, UploadState(state.info.replace(data_removed=False), state.offset,
                                      state.last_activity)

    # --- writing -----------------------------------------------------------------------------
    async def create(self, length: int | None, metadata: dict[str, bytes],
                     concat: Concat | None, *, creator: Creator) -> UploadState:
        info = UploadInfo(upload_id=new_upload_id(), length=length, metadata=metadata,
                          concat=concat, created_at=self.clock.now(), client=creator.client,
                          subject=creator.subject, database=creator.database)
        async with self._open_slot(info, creator):
            state = await self._create_record(info)
        self._event("created", info.upload_id, length=length, partial=info.is_partial)
        return state

    @asynccontextmanager
    async def _open_slot(self, info: UploadInfo, creator: Creator) -> AsyncIterator[None]:
        """Count the new upload as open, in total and for its client, and its bytes against
        the creator's quota (``gateway.quotas``), before anything of it is stored: over a
        limit, 429 and nothing is made. Should making it fail, all is given back. The
        upload stops being open when it finishes (``finish``) or is removed (the store's
        ``terminate``, for deletions and expiry alike)."""
        per_client = creator.quota_uploads or self.config.max_open_uploads_per_client
        try:
            await self.store.claim_open_slot(
                info.upload_id, info.client, max_total=self.config.max_open_uploads,
                max_per_client=per_client)
        except errors.ClientOpenUploadsLimit:
            if not creator.quota_uploads:
                raise
            raise uploads_refusal(creator, await self.store.open_slots_taken(info.client)) \
                from None
        try:
            await self.quotas.hold(creator, info.upload_id, info.length or 0)
            await self.store.note_owned(info.client, info.upload_id, info.created_at)
            yield
        except BaseException:
            with suppress(Exception):  # a slot left behind is dropped by the sweeper
                await run_to_completion(self.store.release_open_slot(info.upload_id))
                await run_to_completion(self.store.forget_owned(info.client, info.upload_id))
            raise

    async def quota_room(self, state: UploadState, creator: Creator) -> int | None:
        """For an upload whose length is deferred: how many more bytes it may take within
        the creator's byte quota (None: no quota). Its own figure is first brought to the
        bytes it has (a request cut off may have left it behind)."""
        if not creator.quota_bytes:
            return None
        upload_id = state.info.upload_id
        await self.quotas.hold(creator, upload_id, state.offset)
        return max(creator.quota_bytes - await self.store.bytes_held(creator.client), 0)

    async def admit_length(self, state: UploadState, length: int, creator: Creator) -> None:
        """Before a deferred length is declared: hold the new length against the creator's
        quota (``errors.QuotaExceeded`` and nothing changes if it does not fit)."""
        if length != state.info.length:
            await self.quotas.hold(creator, state.info.upload_id, length)

    def empty_patch(self, upload_id: str) -> None:
        """A PATCH that carries no bytes and declares no length: 429 if this upload had one
        less than ``empty_patch_interval_s`` ago, else noted. Checked before the lock and
        the store, which a client looping on such PATCHes would otherwise keep busy."""
        if self.config.empty_patch_interval_s <= 0:
            return
        now = self.clock.monotonic()
        wait = self.empty_patches.retry_after(upload_id, now)
        if wait is not None:
            raise errors.EmptyPatchTooSoon(headers={"Retry-After": str(wait)})
        self.empty_patches.hit(upload_id, now)

    async def _create_record(self, info: UploadInfo) -> UploadState:
        """Note the new upload in the expiry and finish indexes, then store it: an entry
        without a record is dropped when it is next read, while a record missing from them
        would never expire, nor be finished after a stop."""
        upload_id = info.upload_id
        await asyncio.gather(
            self.store.schedule_expiry(upload_id, self.forget_at(
                UploadState(info, 0, info.created_at))),
            self.store.owe_finish(upload_id, True))
        return await self.store.create(info)

    # --- performing a plan ---------------------------------------------------------------------
    async def perform(self, state: UploadState, effects: Sequence[Effect],
                      reader: BodyReader | None = None, *,
                      before_body: Callable[[], Awaitable[None]] | None = None) -> UploadState:
        """Carry out a plan's effects in order, under the upload's lock, for tus and the IETF
        draft alike; returns the upload's state after the last one.

        Each effect moves the status through the lifecycle table (``protocol.state``). The
        plan refused bad input already, so a move the table does not allow, or a stored
        state that disagrees with the table, is a bug here and fails loudly.
        ``before_body`` runs once, right before the body is read (a 100 Continue).
        """
        for effect in effects:
            match effect:
                case DeclareLength(length=length):
                    expected = stored(state.status, False, length, state.offset)
                    state = self._moved(await self.declare_length(state, length), expected)
                case Append():
                    if reader is None:
                        raise TypeError("an append needs the request's body")
                    if before_body is not None:
                        await before_body()
                    after = await self.append(state, effect.offset, reader, effect.max_bytes,
                                              effect.checksum)
                    if after.info.length is None and after.offset != state.offset:
                        # A deferred upload holds the bytes it has (``gateway.quotas``).
                        await self.store.hold_bytes(after.info.client, after.info.upload_id,
                                                    after.offset, max_total=0)
                    expected = stored(state.status, after.offset > state.offset,
                                      after.info.length, after.offset)
                    state = self._moved(after, expected)
                case EndUpload():
                    state = await self._end_upload(state)
                case Finish():
                    if state.status is UploadStatus.COMPLETE:
                        state = await self.finish(state)
                case Terminate(reason=reason):
                    advance(state.status, Input.TERMINATE)
                    await self.terminate(state.info, reason)
        self.announce(state)
        return state

    @staticmethod
    def _moved(state: UploadState, expected: UploadStatus) -> UploadState:
        if state.status is not expected:
            raise RuntimeError(f"upload {state.info.upload_id} is {state.status} after a step "
                               f"the lifecycle table says ends in {expected}")
        return state

    async def _end_upload(self, state: UploadState) -> UploadState:
        """The request said it ends the upload: an unknown length becomes the offset; a
        known one the offset falls short of is refused, with the bytes kept."""
        if state.info.length is None:
            expected = stored(state.status, False, state.offset, state.offset)
            state = self._moved(await self.declare_length(state, state.offset), expected)
        if state.offset != state.info.length:
            raise errors.InconsistentLength(
                f"the upload ended at {state.offset} bytes, not at its length "
                f"{state.info.length}")
        return state

    async def append(self, state: UploadState, offset: int, reader: BodyReader,
                     max_bytes: int | None, checksum: Checksum | None) -> UploadState:
        """Stream the body into the store; returns the new state (``Finish`` finishes it)."""
        upload_id = state.info.upload_id
        if state.info.data_removed:
            return await self._append_nothing(state, reader, checksum)
        if self.sends_early:
            self.sink.receiving(state)
        feed = self.meters.feeder(upload_id)
        counter = self.metrics.bytes_received
        meter, clock, events = self.meters.get(upload_id), self.clock, self.events
        length = state.info.length
        last_told = -PROGRESS_EVERY_S

        def on_chunk(n: int) -> None:
            nonlocal last_told
            feed(n)
            counter.inc(n)
            now = clock.monotonic()
            if now - last_told >= PROGRESS_EVERY_S:
                # Live progress for the event streams, a few times a second at most.
                last_told = now
                received = offset + reader.received
                events.publish(upload_id, progress_event(
                    upload_id, offset=offset, bytes_received=received, length=length,
                    speed_bytes_per_s=None if meter is None else meter.speed(now),
                    eta_s=None if meter is None or length is None
                    else meter.eta(length - received, now)))
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
                if self.sends_early:
                    self.sink.receiving(state)
                if self.inflight.get(upload_id, (0, None))[1] is reader:
                    del self.inflight[upload_id]
        return UploadState(state.info, new_offset, self.clock.now())

    async def _append_nothing(self, state: UploadState, reader: BodyReader,
                              checksum: Checksum | None) -> UploadState:
        """A body for an upload whose bytes the sink holds now (the spool's copy is gone):
        it is complete, so only an empty body is taken, as the store would take it (a
        retried final PATCH), and nothing is opened."""
        async for chunk in reader.chunks():
            if chunk:
                raise errors.SizeExceeded(
                    f"the body would pass the upload's length at {state.offset}")
        if checksum is not None and \
                hashlib.new(checksum.algorithm, b"").digest() != checksum.digest:
            raise errors.ChecksumMismatch()
        return state

    async def finish(self, state: UploadState) -> UploadState:
        """Run once the last byte is stored (under the lock): record the finish, deliver,
        release the spool's copy if the sink holds the file, then wake finals. What is on
        record is not done again (a retried final PATCH, a restart): the event is logged
        and counted once.

        Partial uploads are pieces of a file, not files: only their final is delivered.
        """
        info = state.info
        upload_id = info.upload_id
        data = self.store.data_path(upload_id)
        await self.store.release_open_slot(upload_id)  # every byte is in: no longer open
        self.meters.forget(upload_id)  # no more bytes to measure
        if info.finished_at is None:
            info = info.replace(finished_at=self.clock.now())
            self._event("finished", upload_id, length=state.offset, partial=info.is_partial)
        rejected = None
        if state.status is UploadStatus.COMPLETE and not info.is_partial:
            try:
                rejected = await self.screen(state, data)
            except OSError as exc:
                # As for a delivery that could not read the file: retried at the next start.
                log.error("could not check the content of %s: %s", upload_id, exc)
                if info is not state.info:
                    await self.store.save_info(info)
                return UploadState(info, state.offset, state.last_activity)
        if rejected is not None:
            # Not what it claimed: never delivered, its bytes go (``_settle_finish``).
            advance(state.status, Input.REJECT)
            self._event("rejected", upload_id, reason=rejected)
            info = await self.hooks.owe_post_finish(info.replace(
                sink=SinkState(UploadStatus.REJECTED, error=rejected), data_removed=True))
            await self.store.save_info(info)
            state = UploadState(info, state.offset, state.last_activity)
            self.hooks.start_post_finish(state)
        elif state.status is UploadStatus.COMPLETE and not info.is_partial:
            try:
                sink_state = await self.sink.deliver(state, data)
            except OSError as exc:
                # Delivery is retried at the next start; the upload itself is complete and
                # safe. Its finish time is kept, so the retry logs no second event.
                log.error("sink could not deliver %s: %s", upload_id, exc)
                if info is not state.info:
                    await self.store.save_info(info)
                return UploadState(info, state.offset, state.last_activity)
            released = self.sink.releases_spool and sink_state.status is UploadStatus.DRAINED
            info = await self.hooks.owe_post_finish(info.replace(
                sink=sink_state, data_removed=info.data_removed or released))
            # Durably, before anything else: the spool's copy goes next, and a restart must
            # find the delivery on record, not finish the upload again.
            await self.store.save_info(info)
            state = UploadState(info, state.offset, state.last_activity)
            # Only now, with the hand-over on record, may background work begin.
            self.sink.handed_over(state, data)
            self.hooks.start_post_finish(state)
        elif info is not state.info:
            await self.store.save_info(info)
            state = UploadState(info, state.offset, state.last_activity)
        await self._settle_finish(state)
        if info.is_partial:
            await self._wake_finals(upload_id)
        return state

    async def _settle_finish(self, state: UploadState) -> None:
        """The finish is on record: release the spool's copy where the sink holds the file
        now, note when the upload will be forgotten, and stop owing its finish (last, so a
        stop before it repeats these steps, and only these, at the next start)."""
        upload_id = state.info.upload_id
        if state.info.data_removed:
            await self.store.discard_data(upload_id)
        if held_bytes(state) == 0:
            await self.quotas.release(state)
        await self.store.schedule_expiry(upload_id, self.forget_at(state))
        await self.store.owe_finish(upload_id, False)

    async def declare_length(self, state: UploadState, length: int) -> UploadState:
        # The quota was asked before the plan was performed (``admit_length``); here the
        # upload's own figure follows its length, which only grows from its offset.
        info = state.info.replace(length=length)
        await self.store.save_info(info)
        return UploadState(info, state.offset, state.last_activity)

    async def terminate(self, info: UploadInfo, reason: str) -> None:
        upload_id = info.upload_id
        await self.store.terminate(upload_id, reason)
        await self.store.unregister_final(upload_id)
        await self.store.forget_owned(info.client, upload_id)
        self._event("terminated", upload_id, reason=reason)
        self.events.publish(upload_id, status_event(upload_id, "terminated"))

    # --- concatenation -----------------------------------------------------------------------
    async def create_final(self, concat: ConcatFinal, declared_length: int | None,
                           metadata: dict[str, bytes], *, creator: Creator) -> UploadState:
        """A final concatenation: assembled now if its partials are finished, else when the
        last of them finishes. Its size is held to --max-size now, with the lengths known so
        far (a partial named twice counts twice), and again at assembly."""
        partials = await self._partials(concat.upload_ids, self.live)
        length = plan_final_length(concat, partials, declared_length, self.settings)
        info = UploadInfo(upload_id=new_upload_id(), length=length, metadata=metadata,
                          concat=concat, created_at=self.clock.now(), client=creator.client,
                          subject=creator.subject, database=creator.database)
        waits = not all(p.finished for p in partials)
        async with self._open_slot(info, creator):
            if waits:
                # Registered before the record exists, so that a partial with as many finals
                # waiting as allowed (409) leaves nothing made. A partial that finishes
                # meanwhile finds no record yet and leaves the final to the look below.
                await self.store.register_final(
                    info.upload_id, concat.upload_ids,
                    max_per_partial=self.config.max_finals_per_partial)
            try:
                state = await self._create_record(info)
            except BaseException:
                if waits:
                    await run_to_completion(self.store.unregister_final(info.upload_id))
                raise
        self._event("created", info.upload_id, length=length, final=True)
        async with self.locked(info.upload_id):
            if waits:
                # Look again: a partial that finished since either found this final's
                # record, or is seen finished here.
                try:
                    partials = await self._partials(concat.upload_ids, self.store.get)
                except (errors.NotFound, errors.Gone):
                    return state  # a partial vanished meanwhile: the final waits, then expires
            if all(p.finished for p in partials):
                # Read again too: a partial's last PATCH may have assembled it meanwhile.
                return await self._assemble(await self.store.get(info.upload_id), partials)
            return state

    async def _partials(self, upload_ids: tuple[str, ...],
                        get: Callable[[str], Awaitable[UploadState]]) -> list[UploadState]:
        """The partials' states in order, each read once however often it is named."""
        states: dict[str, UploadState] = {}
        for upload_id in upload_ids:
            if upload_id not in states:
                states[upload_id] = await get(upload_id)
        return [states[upload_id] for upload_id in upload_ids]

    async def _wake_finals(self, partial_id: str) -> None:
        """Assemble the finals that waited for this partial and now have all their partials.

        This runs inside the partial's last request, which answers once they are assembled,
        so the client may look at its finals right after. The work is bounded: at most
        --max-finals-per-partial finals wait for one partial (creation refuses more), each
        at most --max-size (``_assemble``).
        """
        for final_id in await self.store.finals_waiting_on(partial_id):
            try:
                final = await self.store.get(final_id)
            except (errors.NotFound, errors.Gone):
                # Not written yet (its creation looks at the partials itself once it is), or
                # removed while it waited (its removal unregisters it).
                continue
            concat = final.info.concat
            if not isinstance(concat, ConcatFinal) or final.info.assembled:
                continue
            try:
                partials = await self._partials(concat.upload_ids, self.store.get)
            except (errors.NotFound, errors.Gone):
                log.warning("final upload %s lost a partial; it cannot be assembled", final_id)
                continue
            if all(p.finished for p in partials):
                async with self.locked(final_id):
                    try:
                        await self._assemble(await self.store.get(final_id), partials)
                    except (errors.NotFound, errors.Gone, errors.TooLarge):
                        pass  # removed meanwhile, or now (``_assemble`` says why)
                    except FileNotFoundError:
                        log.warning("final upload %s lost a partial while it was assembled",
                                    final_id)

    async def _assemble(self, state: UploadState, partials: list[UploadState]) -> UploadState:
        """Join the finished partials into the final, under the final's lock.

        A final made while a partial's length was deferred may turn out larger than
        --max-size now that every length is known (one partial of 8 KiB named 200 times):
        it is not assembled but removed, reason "too_large" (it answers 410 from now on, and
        the log says by how much), and ``errors.TooLarge`` is raised.
        """
        info = state.info
        if info.assembled or not isinstance(info.concat, ConcatFinal):
            return state
        try:
            plan_final_length(info.concat, partials, None, self.settings)
        except errors.TooLarge as exc:
            await self.terminate(info, "too_large")
            log.warning("final upload %s was removed instead of assembled: %s",
                        info.upload_id, exc.detail)
            raise
        length = await self.store.assemble(info, info.concat.upload_ids)
        info = info.replace(assembled=True, length=length)
        await self.store.save_info(info)
        await self.store.unregister_final(info.upload_id)
        return await self.finish(UploadState(info, length, self.clock.now()))

    # --- start-up recovery and expiry --------------------------------------------------------
    async def recover(self) -> None:
        """Finish what a stop interrupted: deliveries, releases of the spool's copy, finals
        whose partials are done. Only the uploads that may owe their finish are read (an
        index), not every upload kept; finals waiting for partials are kept by the store."""
        for upload_id in await self.store.finish_owed():
            try:
                state = await self.store.get(upload_id)
                if owes_finish(state):
                    async with self.locked(upload_id):
                        # Another instance may have finished it meanwhile.
                        state = await self.store.get(upload_id)
                        if owes_finish(state):
                            await self.finish(state)
                elif state.finished:
                    await self._settle_finish(state)  # stopped after the finish's record
                # else: still receiving; owed until it finishes, expires or is removed
            except (errors.NotFound, errors.Gone):
                await self.store.owe_finish(upload_id, False)
        for parts in list((await self.store.waiting_finals()).values()):
            if parts:
                await self._wake_finals(parts[0])
        # A listing of ids, not a read of each record.
        await self.sink.retain(set(await self.store.upload_ids()))

    async def sweep(self, now: float) -> int:
        """Remove expired uploads (``expire_due``), old tombstones and orphaned bytes.

        Instances sharing a store take turns: one sweep per interval among them."""
        if not await self.store.claim_lease("sweep", self.config.sweep_interval_s * 0.9):
            return 0
        removed = await self.expire_due(now)
        await self.store.purge_tombstones(now - self.config.tombstone_ttl_s)
        await self.store.remove_orphans(now - ORPHAN_GRACE_S)
        return removed

    async def expire_due(self, now: float) -> int:
        """Remove the uploads whose time has come (tombstoned: they answer 410), reading only
        those the expiry index says are due; returns how many went. Unfinished uploads
        expire ``expire_after_s`` after their last byte, finished ones ``finished_ttl_s``
        after they finished (their delivered files stay: they are the operator's)."""
        removed = 0
        seen: set[str] = set()
        while len(seen) < SWEEP_MAX:
            due = await self.store.due_for_expiry(now, SWEEP_BATCH)
            batch = [upload_id for upload_id in due if upload_id not in seen]
            if not batch:
                break  # nothing due, or only uploads that are busy right now
            for upload_id in batch:
                seen.add(upload_id)
                try:
                    removed += await self._expire(upload_id, now)
                except (errors.NotFound, errors.Gone):
                    await self.store.schedule_expiry(upload_id, None)
                except errors.UploadLocked:
                    continue  # busy: still due, looked at again next time
        return removed

    async def _expire(self, upload_id: str, now: float) -> int:
        if not await self._due_now(await self.store.get(upload_id), now):
            return 0
        async with self.locked(upload_id):
            state = await self.store.get(upload_id)  # bytes may have arrived meanwhile
            if not await self._due_now(state, now):
                return 0
            # Unfinished, it expires; finished, it is forgotten after --finished-ttl.
            advance(state.status, Input.TERMINATE if state.finished else Input.EXPIRE)
            if not await self.store.terminate(upload_id, "expired", if_offset=state.offset):
                return 0
        await self.store.unregister_final(upload_id)
        await self.store.forget_owned(state.info.client, upload_id)
        self._event("expired", upload_id, offset=state.offset, finished=state.finished)
        self.events.publish(upload_id, status_event(upload_id, "terminated"))
        return 1

    async def _due_now(self, state: UploadState, now: float) -> bool:
        """Whether the upload goes now; if not, note when to look at it again (its last
        byte moved its expiry, or its delivery is still in progress)."""
        due = self.forget_at(state)
        if due is not None and due <= now and not delivery_settled(state) and state.finished:
            due = now + self.config.finished_ttl_s
        if due is None or due > now:
            await self.store.schedule_expiry(state.info.upload_id, due)
            return False
        return True


def _nothing() -> None:
    return None
