"""Draining one finished upload to Notion: parts in parallel, checkpointed, resumable.

Theory of operation
-------------------
``plan_parts`` fixes how the file is cut (one ``single_part`` send up to 20 MiB, otherwise
``multi_part`` parts of at least the window). The Notion upload is created when its first
part is ready, and its id goes into the store's checkpoint; every part Notion confirms is
recorded there too, so a gateway restarted mid-drain sends only the parts that are missing.

Every Notion call goes through ``Resilient.run``: it waits for the circuit breaker (while
Notion is failing, nothing is sent, and nothing is lost: the bytes stay in the spool), then
for the shared rate limiter, then retries retryable failures by the ``RetryPolicy``, and
makes every sender pause when Notion answers 429 or 529 with a Retry-After.

A Notion upload expires one hour after it was created, and sends do not extend it. A drain
that finds its upload expired (or too old to finish in time) creates a new one and sends
every part again from the spool.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from gateway.sink_api import SinkStore
from notion_sink.breaker import CircuitBreaker
from notion_sink.client import FileUpload, NotionClient
from notion_sink.filetypes import DEFAULT_FILE_TYPES, extension_of
from notion_sink.ratelimit import Limiter
from notion_sink.retry import Permanent, RateLimited, RetryPolicy, SinkError
from notion_sink.windows import PartPlan, part_range, plan_parts, ready_parts

log = logging.getLogger(__name__)
T = TypeVar("T")

# Notion uploads live one hour; one that has less than this left is not worth resuming.
UPLOAD_LIFETIME_S = 3600.0
RESUME_MARGIN_S = 600.0
# A drain that keeps losing its Notion upload to expiry gives up after this many new ones.
MAX_FRESH_UPLOADS = 3


class Resilient:
    """The one loop where a Notion call meets the breaker, the rate limiter and retries."""

    def __init__(self, breaker: CircuitBreaker, limiter: Limiter, policy: RetryPolicy, *,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] | None = None,
                 on_outcome: Callable[[str], None] | None = None) -> None:
        self.breaker = breaker
        # Told "ok" or "failed" after every request (metrics, the health endpoint).
        self.on_outcome = on_outcome or _ignore
        self.limiter = limiter
        self.policy = policy
        self._rng = rng or random.Random()
        self._clock = clock
        # The last 429 or 529: (wall time, status, rate_limit_reason, Retry-After), for health.
        self.last_limited: tuple[float, int | None, str | None, float | None] | None = None

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def run(self, call: Callable[[], Awaitable[T]], *, retry: bool = True) -> T:
        """``call`` once the breaker and the limiter allow it; with ``retry``, again after
        each retryable failure as the policy says (without, the first failure is raised:
        for requests whose repetition is not safe, like creating a page)."""
        attempt = 0
        started = self._now()
        while True:
            permit = self.breaker.admit(self._now())
            if permit is None:
                # Notion is failing: wait for the breaker's probe instead of spending
                # attempts; the time spent waiting does not count against the deadline.
                retry_at = self.breaker.retry_at
                await asyncio.sleep(0.05 if retry_at is None else
                                    max(retry_at - self._now(), 0.05))
                started = self._now()
                continue
            try:
                # Inside the try: a wait cut short (cancelled, or a shared limiter whose
                # Redis is gone) hands the breaker's permit back, or a half-open probe that
                # never ran would keep the breaker shut for good.
                await self.limiter.acquire()
                result = await call()
            except SinkError as error:
                self.on_outcome("failed")
                self.breaker.record_failure(self._now(), error, permit)
                if isinstance(error, RateLimited):
                    self.last_limited = (time.time(), error.status, error.reason,
                                         error.retry_after)
                    if error.retry_after:
                        self.limiter.penalize(error.retry_after)
                attempt += 1
                delay = self.policy.next_delay(attempt, error, self._now() - started,
                                               self._rng)
                if delay is None or not retry:
                    raise
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self.breaker.record_abandoned(self._now(), permit)
                raise
            self.on_outcome("ok")
            self.breaker.record_success(self._now(), permit)
            return result


def finishes_in_time(*, offset: int, length: int, created_at: float, now: float, parts: int,
                     rate: float) -> bool:
    """Whether an upload still receiving bytes, at its pace since creation, and then its
    ``parts`` sends at ``rate`` requests a second, would be done well within the hour a
    Notion upload lives. Starting the Notion upload early only pays if so: one that expires
    must be sent again in full."""
    pace = offset / max(now - created_at, 1e-3)
    if pace <= 0:
        return False
    remaining = (length - offset) / pace
    return remaining + parts / rate < UPLOAD_LIFETIME_S - RESUME_MARGIN_S


@dataclass(frozen=True, slots=True)
class NotionName:
    """How a file is presented to Notion, and whether its real name had to be hidden."""

    filename: str
    content_type: str
    opaque: bool


def notion_name(filename: str, upload_id: str) -> NotionName:
    """Notion accepts a fixed list of types: anything else goes as opaque ``.txt`` text."""
    ext = extension_of(filename)
    if ext is not None and ext in DEFAULT_FILE_TYPES:
        return NotionName(filename, DEFAULT_FILE_TYPES[ext][0], False)
    return NotionName(f"{upload_id}.txt", "text/plain", True)


@dataclass
class DrainProgress:
    """One upload's drain as this process knows it: for the status page, and so the sends
    made while the upload still receives bytes go on where the last round stopped."""

    parts_total: int = 0
    remote_id: str | None = None
    confirmed: set[int] = field(default_factory=set)  # parts of remote_id Notion confirmed
    fresh_uploads: int = 0

    @property
    def parts_sent(self) -> int:
        return len(self.confirmed)

    def use(self, remote_id: str, confirmed: frozenset[int]) -> None:
        self.remote_id = remote_id
        self.confirmed = set(confirmed)


class Drain:
    """Sends one complete upload to Notion; ``run`` returns the Notion file upload id."""

    def __init__(self, client: NotionClient, store: SinkStore, resilient: Resilient, *,
                 window: int, concurrency: int, wall_clock: Callable[[], float] = time.time,
                 on_part: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.store = store
        self.resilient = resilient
        self.window = window
        self.concurrency = concurrency
        self.wall_clock = wall_clock
        # Told "sent", "retried" (sent again after a failure) or "failed" for every part.
        self.on_part = on_part or _ignore
        # Shared by every upload this drain serves: ``concurrency`` parts in flight in all,
        # so memory and sockets stay bounded however many uploads drain at once.
        self._slots = asyncio.Semaphore(concurrency)

    async def run(self, upload_id: str, data: Path, length: int, name: NotionName,
                  progress: DrainProgress | None = None) -> str:
        progress = progress or DrainProgress()
        plan = self.plan(length)
        progress.parts_total = plan.number_of_parts
        remote_id, done = await self._remote_upload(upload_id, plan, name, progress)
        while True:
            missing = [n for n in range(1, plan.number_of_parts + 1) if n not in done]
            try:
                await self._send_parts(upload_id, data, plan, name, remote_id, missing,
                                       progress)
                if plan.mode == "multi_part":
                    await self._complete(remote_id)
                return remote_id
            except Permanent as refusal:
                await self._replace_if_expired(upload_id, plan, name, remote_id, progress,
                                               refusal)
                remote_id, done = progress.remote_id or "", frozenset()

    def plan(self, length: int) -> PartPlan:
        return plan_parts(length, self.window)

    async def send_ready(self, upload_id: str, data: Path, plan: PartPlan, name: NotionName,
                         offset: int, progress: DrainProgress) -> None:
        """While the upload still receives bytes: send the parts wholly below ``offset``
        that Notion has not confirmed. The Notion upload is created (or the checkpointed
        one resumed) only once a first part is ready, because its hour starts then."""
        progress.parts_total = plan.number_of_parts
        if not ready_parts(plan, offset, frozenset(progress.confirmed)):
            return
        if progress.remote_id is None:
            await self._remote_upload(upload_id, plan, name, progress)
        remote_id = progress.remote_id or ""
        ready = ready_parts(plan, offset, frozenset(progress.confirmed))
        try:
            await self._send_parts(upload_id, data, plan, name, remote_id, ready, progress)
        except Permanent as refusal:
            await self._replace_if_expired(upload_id, plan, name, remote_id, progress, refusal)

    async def _replace_if_expired(self, upload_id: str, plan: PartPlan, name: NotionName,
                                  remote_id: str, progress: DrainProgress,
                                  refusal: Permanent) -> None:
        """After a refusal: an expired Notion upload refuses sends and complete with a 400,
        and is replaced by a new one; anything else was a real refusal and is raised."""
        state = await self._retrieve(remote_id)
        if state.status != "expired":
            raise refusal
        log.info("Notion upload %s of %s expired; starting a new one", remote_id, upload_id)
        await self._start_fresh(upload_id, plan, name, progress)

    async def _remote_upload(self, upload_id: str, plan: PartPlan, name: NotionName,
                             progress: DrainProgress) -> tuple[str, frozenset[int]]:
        checkpoint = await self.store.checkpoint(upload_id)
        age = self.wall_clock() - checkpoint.started_at
        if checkpoint.remote_id is not None and age < UPLOAD_LIFETIME_S - RESUME_MARGIN_S:
            remote = checkpoint.remote_id
            if remote == progress.remote_id:
                # This process made or checked it and has been sending to it: no need to
                # spend a request asking (an expiry shows as a refused send anyway).
                progress.use(remote, checkpoint.parts)
                return remote, checkpoint.parts
            state = await self._retrieve(remote)
            if state.status == "pending" and _parts_total(state) in (None,
                                                                    plan.number_of_parts):
                progress.use(remote, checkpoint.parts)
                return remote, checkpoint.parts
            if state.status == "uploaded" and len(checkpoint.parts) == plan.number_of_parts:
                progress.use(remote, checkpoint.parts)
                return remote, checkpoint.parts  # only the complete (or the record) is left
        return await self._start_fresh(upload_id, plan, name, progress), frozenset()

    async def _start_fresh(self, upload_id: str, plan: PartPlan, name: NotionName,
                           progress: DrainProgress) -> str:
        if progress.fresh_uploads >= MAX_FRESH_UPLOADS:
            raise Permanent(f"{upload_id}: {MAX_FRESH_UPLOADS} Notion uploads expired before "
                            "the file was complete")
        progress.fresh_uploads += 1
        parts = plan.number_of_parts if plan.mode == "multi_part" else None
        created = await self.resilient.run(lambda: self.client.create_upload(
            filename=name.filename, content_type=name.content_type, number_of_parts=parts))
        await self.store.start_remote(upload_id, created.id, self.wall_clock())
        progress.use(created.id, frozenset())
        return created.id

    async def _send_parts(self, upload_id: str, data: Path, plan: PartPlan,
                          name: NotionName, remote_id: str, parts: list[int],
                          progress: DrainProgress) -> None:
        slots = self._slots
        multi = plan.mode == "multi_part"

        async def send(n: int) -> None:
            start, end = part_range(plan, n)
            tries = 0

            async def attempt() -> FileUpload:
                nonlocal tries
                tries += 1
                if tries > 1:
                    self.on_part("retried")
                return await self.client.send_part(
                    remote_id, data, start, end - start, part_number=n if multi else None,
                    filename=name.filename, content_type=name.content_type)

            async with slots:
                try:
                    await self.resilient.run(attempt)
                except Permanent:
                    # A single-part send whose answer was lost may have landed: Notion then
                    # refuses the repeat because the upload is no longer pending. (A part
                    # of a multi-part upload may simply be sent again.)
                    if multi or (await self._retrieve(remote_id)).status != "uploaded":
                        self.on_part("failed")
                        raise
                except SinkError:
                    self.on_part("failed")
                    raise
            self.on_part("sent")
            if not await self.store.add_parts(upload_id, remote_id, [n]):
                raise Permanent(f"{upload_id}: the checkpoint moved to another Notion upload")
            if progress.remote_id == remote_id:
                progress.confirmed.add(n)

        missing = list(parts)
        failures: list[BaseException] = []

        async def worker() -> None:
            # A few workers take the parts in turn: a thousand-part file does not become a
            # thousand waiting coroutines. After a failure, no new part is started; every
            # send that began runs to its own end, so none is left half-sent.
            while missing and not failures:
                n = missing.pop(0)
                try:
                    await send(n)
                except Exception as exc:
                    failures.append(exc)

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(missing)))))
        if failures:
            raise next((f for f in failures if isinstance(f, Permanent)), failures[0])

    async def _retrieve(self, remote_id: str) -> FileUpload:
        return await self.resilient.run(lambda: self.client.retrieve(remote_id))

    async def _complete(self, remote_id: str) -> None:
        try:
            await self.resilient.run(lambda: self.client.complete(remote_id))
        except Permanent:
            # An earlier attempt whose answer was lost may have completed it already.
            state = await self._retrieve(remote_id)
            if state.status != "uploaded":
                raise


def _parts_total(state: FileUpload) -> int | None:
    parts = state.raw.get("number_of_parts")
    total = parts.get("total") if isinstance(parts, dict) else None
    return total if isinstance(total, int) else None


def _ignore(outcome: str) -> None:
    return None
