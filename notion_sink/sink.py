"""The Notion sink as the gateway sees it: ``deliver`` hands a finished upload over and returns
at once; the drain and the records run in the background (the sink
never blocks the upload path, and uploads keep being accepted while Notion is down).

Theory of operation
-------------------
One task per upload in this process (``_drain``, run by ``gateway.jobs.LeasedJobs``), under a
lease in the state store, so that one instance at a time drains an upload however the load
balancer spreads its requests:

1. While the upload still receives bytes (the gateway calls ``receiving`` at the start and
   end of every PATCH), the task watches the committed offset, and every window wholly below
   it becomes a part and is sent (``Drain.send_ready``). The Notion upload is created when
   its first part is ready, and only if the upload looks set to finish within Notion's hour
   at its pace so far; otherwise its parts wait for the end. A task whose upload goes quiet
   lets its lease go and ends; the next PATCH starts another.
2. Once the upload is complete and handed over (``draining``), the same task chooses the
   file's user database (``UserDatabases``: the one the creator's credentials named, else
   the creator's subject's entry in ``notion_user_databases``, else the default) and saves
   the choice in the sink state's detail before anything else, so a restarted or retried
   delivery records the file where it was going to, whatever the configuration says by
   then. It makes sure Notion lets it write there (``Recorder.check``, once per database and
   process), salts and hashes the file (once: both go in the record, so a restart looks for
   the same key), sends what is missing (``Drain.run``: parts, checkpoints, resume, expiry),
   records it (``Recorder``: both pages exactly once), saves ``drained`` with the page ids
   and only then deletes the spool copy. A permanent failure saves ``failed`` with the
   error: among them a database id that is not one, and a database Notion does not know or
   has not shared with the integration.

Every instance also scans the store now and then (``_at_scan``): an upload left ``draining``
whose lease nobody extends (its instance died) is taken over, and a failure that may pass is
retried once ``notion_retry_failed_s`` has gone by, whichever instance is alive then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import aiohttp

from gateway.jobs import JobNames, LeasedJobs, OwedIndex, Scanned, Verdict
from gateway.sink_api import (
    Announces,
    Closing,
    HasBreaker,
    LimitsFileSize,
    NeedsCheckpoints,
    Offloader,
    ReportsProgress,
    Retrying,
    SendsEarly,
    SinkMetrics,
    SinkStore,
)
from notion_sink.breaker import BreakerPolicy, CircuitBreaker
from notion_sink.client import ClientSettings, NotionClient, read_range
from notion_sink.drain import (
    Drain,
    DrainProgress,
    Resilient,
    finishes_in_time,
    notion_name,
)
from notion_sink.ratelimit import Limiter, RateLimiter
from notion_sink.records import (
    DatabaseChoice,
    FileKey,
    Recorder,
    RecordRefused,
    RecordSettings,
    UserDatabases,
    new_salt,
    salted_sha512,
)
from notion_sink.retry import Permanent, RetryPolicy, SinkError
from notion_sink.settings import NotionSettings, parse_data_sources
from notion_sink.windows import SINGLE_PART_MAX, PartPlan, ready_parts
from protocol import errors
from protocol.model import SinkState, UploadState
from protocol.names import metadata_filename, safe_filename
from protocol.state import Input, UploadStatus, advance

log = logging.getLogger(__name__)
T = TypeVar("T")

# While an upload receives bytes, its drain looks at the committed offset this often (and
# at once when a PATCH on this instance starts or ends).
WATCH_S = 1.0
# How long health shows a rate limit Notion answered (at least its Retry-After).
RATE_LIMIT_SHOWN_S = 60.0
# A drain whose upload received nothing for this long lets its lease go and ends.
QUIET_S = 30.0


class NotionSink(ReportsProgress, Retrying, HasBreaker, SendsEarly, NeedsCheckpoints, Announces,
                 LimitsFileSize, Closing):
    """A ``gateway.sink_api.Sink`` with every capability: parts leave while the upload
    arrives, a failed delivery can be retried, a breaker guards Notion, the status shows
    the drain's progress, and its background work stops with the gateway."""

    state_needs_saving = True  # the record is the only memory of a delivery
    # The drain deletes the spool copy itself, once Notion holds the file and both records
    # exist (``_deliver``); a download of a drained upload answers 410.
    releases_spool = False

    def __init__(self, settings: NotionSettings, store: SinkStore, pool: Offloader,
                 session: aiohttp.ClientSession, *, lease_s: float,
                 limiter: Limiter | None = None, metrics: SinkMetrics | None = None) -> None:
        """``lease_s``: how long a drain's lease outlives an instance that stopped extending
        it (the gateway derives it from its lock TTL)."""
        self.store = store
        self.pool = pool
        self.client = NotionClient(
            session, ClientSettings(base_url=settings.base_url, token=settings.token,
                                    version=settings.version), self._read,
            data_sources=parse_data_sources(settings.data_sources))
        self.breaker = CircuitBreaker(BreakerPolicy(open_for=settings.breaker_open_s))
        self.rate = settings.rate
        self.resilient = Resilient(self.breaker,
                                   # Evenly spaced, no burst of our own: Notion's burst
                                   # allowance then absorbs network jitter instead of
                                   # answering 429.
                                   limiter or RateLimiter(rate=settings.rate, burst=1),
                                   RetryPolicy(deadline=settings.retry_deadline_s),
                                   on_outcome=None if metrics is None else metrics.request_done)
        self.drain = Drain(self.client, store, self.resilient,
                           window=settings.window_bytes,
                           concurrency=settings.concurrency,
                           on_part=None if metrics is None else metrics.part_done)
        self.recorder = Recorder(self.client, self.resilient,
                                 RecordSettings(settings.user_database,
                                                settings.index_database
                                                ).named(settings.properties))
        self.databases = UserDatabases(settings.user_database, settings.user_databases)
        # Hashing is CPU and disk bound: a few at a time finish as fast as all at once, and
        # keep memory and worker threads free for uploads.
        self._hashing = asyncio.Semaphore(2)
        self.retry_failed_s = settings.retry_failed_s
        self._announce: Callable[[UploadState], Awaitable[None]] | None = None
        # The workspace's upload limit (docs/notion-contract.md §3.6), read now and every
        # ``limit_refresh_s``; None until the first answer.
        self.upload_limit: int | None = None
        # Through the same breaker and limiter, but not counted with the deliveries' requests
        # (the health's success rate is theirs).
        self._quiet = Resilient(self.breaker, self.resilient.limiter,
                                RetryPolicy(deadline=settings.retry_deadline_s))
        self.limit_refresh_s = settings.limit_refresh_s
        self._limit_task = asyncio.get_running_loop().create_task(
            self._watch_limit(), name="notion-upload-limit")
        self.drains = LeasedJobs(
            JobNames(lease="drain", task="notion-drain", scanner="notion-scan", scan="Notion"),
            index=OwedIndex(store.owe_sink, store.sink_owed), leases=store, work=self._drain,
            lease_s=lease_s, scan_s=settings.scan_s,
            decide=self._at_scan, log=log)

    async def _read(self, path: Path, start: int, length: int) -> bytes:
        return await self.pool.run(read_range, path, start, length)

    # --- the Sink protocol -------------------------------------------------------------------
    async def deliver(self, state: UploadState, data: Path) -> SinkState:
        status = advance(state.status, Input.SINK_START)
        current = state.info.sink
        await self.store.owe_sink(state.info.upload_id, True)
        return SinkState(status, detail=current.detail if current else {})

    async def retain(self, upload_ids: set[str]) -> None:
        """After recovery: resume the drains a stop interrupted, then keep scanning. This
        first scan reads every record (and rebuilds the index of owed work); the periodic
        ones read only the index."""
        await self.drains.resume(upload_ids)

    def handed_over(self, state: UploadState, data: Path) -> None:
        self.drains.start(state.info.upload_id)

    async def delivered_file(self, state: UploadState) -> Path | None:
        return None  # Notion holds the file; nothing is kept here to serve

    def receiving(self, state: UploadState) -> None:
        """Bytes are arriving: windows may become parts before the upload is complete."""
        info = state.info
        if info.is_partial or info.length is None or info.length <= SINGLE_PART_MAX:
            return  # nothing to send before the end (or not yet known)
        self.drains.start(info.upload_id)

    file_size_limit_name = "the Notion workspace's file upload limit"

    def max_file_size(self) -> int | None:
        return self.upload_limit

    # --- background work ---------------------------------------------------------------------
    async def _watch_limit(self) -> None:
        """Read the workspace's upload limit now and then; a failed read keeps the last one
        (Notion still refuses a file above it, only later)."""
        while True:
            try:
                limit = await self._quiet.run(self.client.upload_limit)
            except SinkError as exc:
                log.warning("notion: the workspace's upload limit could not be read: %s", exc)
            else:
                if limit != self.upload_limit:
                    log.info("notion: the workspace takes files up to %s bytes", limit)
                self.upload_limit = limit
            await asyncio.sleep(self.limit_refresh_s)

    async def close(self) -> None:
        self._limit_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._limit_task
        await self.drains.close()
        await self.resilient.limiter.close()  # a shared limiter's pending writes

    async def _drain(self, upload_id: str, wake: asyncio.Event) -> None:
        """The drain of one upload, under its lease (``self.drains``)."""
        progress = DrainProgress()
        try:
            if await self._watch(upload_id, progress, wake):
                await self._finish(upload_id, progress)
        except (errors.NotFound, errors.Gone):
            log.info("upload %s was removed during its Notion drain", upload_id)
            with contextlib.suppress(errors.StateUnavailable):
                await self.store.owe_sink(upload_id, False)
        except errors.StateUnavailable:
            log.warning("the state store is unreachable; the drain of %s resumes later",
                        upload_id)

    async def _watch(self, upload_id: str, progress: DrainProgress,
                     wake: asyncio.Event) -> bool:
        """Send the windows that fill while the upload receives bytes; True once it was
        handed over (``draining``), False if it went quiet or needs nothing from us.
        ``wake`` is set when a PATCH here starts or ends."""
        early = True
        last_offset, last_change = -1, time.monotonic()
        while True:
            wake.clear()
            state = await self.store.get(upload_id)
            if state.status is UploadStatus.DRAINING:
                return True
            if state.status not in (UploadStatus.CREATED, UploadStatus.RECEIVING,
                                    UploadStatus.COMPLETE) or state.info.is_partial:
                return False
            now = time.monotonic()
            if state.offset != last_offset:
                last_offset, last_change = state.offset, now
            elif now - last_change > QUIET_S:
                return False
            if early:
                try:
                    await self._send_early(state, progress)
                except (SinkError, ValueError) as exc:
                    # Not fatal: the parts go after completion instead.
                    log.warning("early Notion sends of %s stopped: %s", upload_id, exc)
                    early = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), WATCH_S)

    async def _send_early(self, state: UploadState, progress: DrainProgress) -> None:
        length = state.info.length
        if length is None or length <= SINGLE_PART_MAX or state.offset >= length:
            return
        plan = self.drain.plan(length)
        if not ready_parts(plan, state.offset, frozenset(progress.confirmed)):
            return
        if progress.remote_id is None and not self._finishes_in_time(state, plan):
            return
        try:
            self.databases.choose(state.info.subject, state.info.database)
        except Permanent:
            return  # its delivery fails at completion: sending its parts would be waste
        upload_id = state.info.upload_id
        name = notion_name(self._filename(state), upload_id)
        await self.drain.send_ready(upload_id, self._data_path(upload_id), plan, name,
                                    state.offset, progress)

    def _finishes_in_time(self, state: UploadState, plan: PartPlan) -> bool:
        return finishes_in_time(offset=state.offset, length=plan.length,
                                created_at=state.info.created_at, now=time.time(),
                                parts=plan.number_of_parts, rate=self.rate)

    async def _finish(self, upload_id: str, progress: DrainProgress) -> None:
        try:
            await self._deliver(upload_id, progress)
        except SinkError as exc:
            will_retry = not isinstance(exc, Permanent) and self.retry_failed_s > 0
            log.warning("Notion drain of %s failed (%s): %s", upload_id,
                        "will retry" if will_retry else "for good", exc)
            await self._save(upload_id, Input.SINK_FAIL, error=str(exc),
                             will_retry=will_retry, failed_at=time.time())
        except (errors.NotFound, errors.Gone, errors.StateUnavailable, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("Notion drain of %s failed", upload_id)
            await self._save(upload_id, Input.SINK_FAIL, error=repr(exc), will_retry=False,
                             failed_at=time.time())

    async def _deliver(self, upload_id: str, progress: DrainProgress) -> None:
        state = await self.store.get(upload_id)
        detail = dict(state.info.sink.detail) if state.info.sink else {}
        choice = await self._user_database(upload_id, state, detail)
        # Before a byte goes out for it: a database Notion refuses fails the delivery now.
        await self._for(choice, state, self.recorder.check(choice.database))
        data = self._data_path(upload_id)
        filename = self._filename(state)
        name = notion_name(filename, upload_id)
        length = state.offset
        # The hash is needed only for the records: it runs beside the last sends.
        keying = asyncio.ensure_future(self._key(upload_id, detail, data))
        try:
            remote_id = await self.drain.run(upload_id, data, length, name, progress)
        except BaseException:
            keying.cancel()
            with contextlib.suppress(BaseException):
                await keying
            raise
        detail, fresh = await keying
        page_id, index_id = await self._for(choice, state, self.recorder.record(
            filename=filename, sent_as=name.filename, size=length,
            key=FileKey(detail["salt"], detail["sha512"]), created_at=state.info.created_at,
            remote_id=remote_id, fresh=fresh, database=choice.database))
        await self._save(upload_id, Input.SINK_DONE, ref=page_id, data_removed=True,
                         detail={**detail, "file_upload": remote_id, "page": page_id,
                                 "index_page": index_id, "sent_as": name.filename})
        # Notion holds the file and both records exist: the spool copy has done its job.
        await self.store.discard_data(upload_id)
        await self.store.owe_sink(upload_id, False)

    async def _user_database(self, upload_id: str, state: UploadState,
                             detail: dict[str, str]) -> DatabaseChoice:
        """The upload's user database: the one chosen before (kept in ``detail``), or
        chosen now and saved before any page is looked up or made. A retry after a restart
        or a change of ``notion_user_databases`` thus goes where the first try went."""
        if "database" in detail:
            return DatabaseChoice(detail["database"], detail.get("database_source", "default"))
        choice = self.databases.choose(state.info.subject, state.info.database)
        detail.update(database=choice.database, database_source=choice.source)
        await self._save(upload_id, None, detail=detail)
        return choice

    @staticmethod
    async def _for(choice: DatabaseChoice, state: UploadState, work: Awaitable[T]) -> T:
        """``work``, its refusals in the user database saying which database that is."""
        try:
            return await work
        except RecordRefused as exc:
            if exc.database != choice.database:
                raise  # the index database: configured, not chosen
            raise Permanent(f"the upload's user database ({choice.describe(state.info.subject)})"
                            f": {exc}", status=exc.status, code=exc.code) from exc

    async def _key(self, upload_id: str, detail: dict[str, str],
                   data: Path) -> tuple[dict[str, str], bool]:
        """The record's salt and salted hash, and whether they are new: chosen once and
        saved before any page is made, so a restart looks for the same key."""
        if "salt" in detail:
            return detail, False
        salt = new_salt()
        async with self._hashing:
            digest = await self.pool.run(salted_sha512, data, salt)
        detail = {**detail, "salt": salt, "sha512": digest}
        await self._save(upload_id, None, detail=detail)
        return detail, True

    @staticmethod
    def _filename(state: UploadState) -> str:
        # One clean path component: what Notion gets (when its type is accepted) and what
        # the record shows.
        return safe_filename(metadata_filename(state.info.metadata), state.info.upload_id)

    def _data_path(self, upload_id: str) -> Path:
        return self.store.data_path(upload_id)

    async def _save(self, upload_id: str, event: Input | None, *, ref: str | None = None,
                    error: str | None = None, will_retry: bool = False,
                    detail: Mapping[str, str] | None = None, data_removed: bool = False,
                    failed_at: float | None = None) -> None:
        """Record the delivery's progress; its status moves only through the lifecycle
        table, by ``event`` (None: it stays where it is)."""
        state = await self.store.get(upload_id)
        status = state.status if event is None else advance(state.status, event)
        old = state.info.sink
        kept = dict(detail if detail is not None else (old.detail if old else {}))
        kept.pop("failed_at", None)
        if failed_at is not None:
            kept["failed_at"] = f"{failed_at:.3f}"
        sink = SinkState(status, ref, error, kept, will_retry)
        info = state.info.replace(sink=sink,
                                  data_removed=data_removed or state.info.data_removed)
        await self.store.save_info(info)
        if self._announce is not None:
            try:
                await self._announce(UploadState(info, state.offset, state.last_activity))
            except Exception:
                log.exception("announcing the delivery state of %s failed", upload_id)

    def announce_to(self, saved: Callable[[UploadState], Awaitable[None]]) -> None:
        self._announce = saved

    # --- scanning ----------------------------------------------------------------------------
    async def _at_scan(self, upload_id: str, scanned: Scanned) -> Verdict:
        """What a scan does with an upload no drain here runs (``self.drains``): take over a
        drain nobody runs, retry a failure that is due, finish a clean-up."""
        state = await self.store.get(upload_id)
        sink = state.info.sink
        retry_later = sink is not None and sink.will_retry and self.retry_failed_s > 0
        if state.status is UploadStatus.DRAINING:
            return Verdict.RUN  # its lease decides whether this instance runs it
        if state.status is UploadStatus.FAILED and retry_later:
            assert sink is not None
            if float(sink.detail.get("failed_at", 0)) + self.retry_failed_s > scanned.now:
                return Verdict.WAIT
            try:
                await self._restart(upload_id)
            except errors.SinkNotFailed:
                return Verdict.WAIT  # restarted meanwhile (``tus-gateway sink retry``)
            return Verdict.RUN
        if scanned.owed and state.status in (UploadStatus.DRAINED, UploadStatus.FAILED):
            # (Not while ``complete``: the hand-over notes the work just before it
            # saves ``draining``.)
            if state.info.data_removed:
                # A stop between the record and the deletion left the spool copy.
                await self.store.discard_data(upload_id)
            return Verdict.DONE  # nothing owed any more
        if scanned.at_start and state.info.data_removed:
            # The disk store's index lives in memory: after a stop, every delivered
            # upload is checked once for a spool copy left behind.
            await self.store.discard_data(upload_id)
        return Verdict.LEAVE

    async def retry(self, upload_id: str) -> None:
        """Start a failed delivery again (``tus-gateway sink retry``)."""
        await self._restart(upload_id)
        await self.store.owe_sink(upload_id, True)
        self.drains.start(upload_id)

    async def _restart(self, upload_id: str) -> None:
        state = await self.store.get(upload_id)
        if state.status is not UploadStatus.FAILED:
            raise errors.SinkNotFailed()
        await self._save(upload_id, Input.SINK_START)

    # --- status ------------------------------------------------------------------------------
    def breaker_state(self) -> str:
        return str(self.breaker.state)

    def rate_limit(self) -> dict[str, object] | None:
        """The last 429/529 (its ``rate_limit_reason``, docs/notion-contract.md §9) while
        it is recent: within its Retry-After or a minute, whichever is longer."""
        seen = [r.last_limited for r in (self.resilient, self._quiet) if r.last_limited]
        if not seen:
            return None
        at, status, reason, retry_after = max(seen, key=lambda limited: limited[0])
        if time.time() > at + max(retry_after or 0.0, RATE_LIMIT_SHOWN_S):
            return None
        return {"status": status, "reason": reason, "retry_after_s": retry_after, "at": at}

    async def progress(self, upload_id: str) -> dict[str, object]:
        """The drain's progress; parts come from the shared checkpoint, so any instance
        answers the same wherever the drain runs."""
        out: dict[str, object] = {"breaker": str(self.breaker.state)}
        state = await self.store.get(upload_id)
        length = state.info.length
        if length is not None and not state.info.is_partial:
            try:
                plan = self.drain.plan(length)
            except ValueError as exc:  # empty, or too large for Notion
                out["unsendable"] = str(exc)
            else:
                checkpoint = await self.store.checkpoint(upload_id)
                out.update(parts_sent=len(checkpoint.parts),
                           parts_total=plan.number_of_parts,
                           file_upload=checkpoint.remote_id)
        out["running_here"] = self.drains.running(upload_id)
        out["phase"] = delivery_phase(state, out)
        retry_at = self.breaker.retry_at
        if retry_at is not None:
            out["breaker_retry_in_s"] = round(max(retry_at - time.monotonic(), 0.0), 1)
        return out


def delivery_phase(state: UploadState, progress: Mapping[str, object]) -> str:
    """One word for where the delivery stands: ``waiting`` (nothing sent yet: the file is
    still arriving, or Notion is failing or rate-limited), ``draining`` (parts going out),
    ``completing`` (every part sent; completion and the records remain), ``recorded``,
    ``failed``."""
    status = state.status
    if status is UploadStatus.DRAINED:
        return "recorded"
    if status is UploadStatus.FAILED:
        return "failed"
    sent, total = progress.get("parts_sent", 0), progress.get("parts_total")
    if status is UploadStatus.DRAINING and sent == total:
        return "completing"
    return "draining" if isinstance(sent, int) and sent > 0 else "waiting"
