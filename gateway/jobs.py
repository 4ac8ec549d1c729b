"""Owed background work: one task per upload, under a lease, and a scan that takes over.

Theory of operation
-------------------
Some work on an upload goes on after the request that caused it has been answered: the
Notion drain (``notion_sink.sink``), the post-finish hook (``gateway.hooks``). Each kind of
such work is a ``LeasedJobs``, and every kind runs the same way:

1. Whoever makes work owed notes the upload in the store's index of owed work
   (``OwedIndex``: ``owe_sink``/``sink_owed``, ``owe_hook``/``hooks_owed``) before the
   record write that owes it, so no owed upload is ever missing from the index. The work
   clears the entry once nothing is owed any more.
2. ``start`` runs the work in a task of its own, at most one per upload in this process; a
   ``start`` while it runs only wakes it (``work`` gets the event). The task first takes the
   lease ``<lease>:<upload id>`` (``gateway.state.lease.held_lease``) and ends at once if
   another instance holds it: one instance at a time does an upload's work, however the
   load balancer spreads the requests. A task that ends is forgotten.
3. Every ``scan_s`` (and once at start-up, over every upload, since the disk store keeps its
   index in memory) ``scan`` reads the index and starts the owed uploads that no task in
   this process runs. Where another instance runs one, the lease turns the task away; where
   that instance died, its lease runs out within ``lease_s`` and the next scan here takes the
   work over. An optional ``decide`` looks at each upload first (``Verdict``): run it now,
   later, never again, or leave the index as it is.

Retries: how long a failed attempt waits before the next is the work's own policy (each draws
its waits from ``protocol.retry``). The runner's part is that owed work whose task ended
without finishing (the store was unreachable, the process was too slow to keep its lease, a
failure that may pass) is started again by a later scan, at most ``scan_s`` later.

Invariants: at most one task per upload and kind in a process, and at most one process doing
an upload's work of a kind at any moment (the lease); a task never outlives ``close`` by
more than ``gateway.aio.stop_tasks``'s grace; owed work whose instance died is taken over.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from gateway.aio import stop_tasks
from gateway.state.base import Leases
from gateway.state.lease import held_lease
from protocol import errors


@dataclass(frozen=True)
class JobNames:
    """What a kind of work is called. ``lease`` is shared by every instance through the
    store: renaming it would let instances of two versions do the same upload's work at
    once. The others only name tasks (a stop that hangs names its task) and log lines."""

    lease: str
    """The lease of an upload's work is ``<lease>:<upload id>``, e.g. ``drain:<id>``."""
    task: str
    """The task of an upload's work is ``<task>-<upload id>``, e.g. ``notion-drain-<id>``."""
    scanner: str
    """The periodic scan's task, e.g. ``notion-scan``."""
    scan: str
    """The scan in log lines: ``the <scan> scan failed``."""


@dataclass(frozen=True)
class OwedIndex:
    """The store's index of the uploads a kind of work is owed on, e.g.
    ``OwedIndex(store.owe_sink, store.sink_owed)``. An index: entries may be stale, so a
    scan checks each one (``decide``) before it acts on it."""

    owe: Callable[[str, bool], Awaitable[None]]
    """Note (True) or clear (False) that work is owed on an upload."""
    owed: Callable[[], Awaitable[list[str]]]
    """The uploads noted."""


class Verdict(enum.Enum):
    """What a scan does with one upload."""

    RUN = "run"
    """Owed now: kept in the index, and started here (the lease decides who runs it)."""
    WAIT = "wait"
    """Owed later: kept in the index, nothing started yet."""
    DONE = "done"
    """Nothing owed any more: out of the index."""
    LEAVE = "leave"
    """Nothing to do now: the index stays as it is."""


@dataclass(frozen=True)
class Scanned:
    """What a scan knows about an upload when it asks ``decide``."""

    owed: bool
    """The upload is in the index of owed work."""
    at_start: bool
    """The start-up scan, which looks at every upload, not only the index."""
    now: float
    """The scan's wall-clock time."""


Work = Callable[[str, asyncio.Event], Awaitable[None]]
"""The work on one upload, run under its lease. The event is set by a ``start`` while the
work runs (something changed: look again); the work clears it when it looks."""
Decide = Callable[[str, Scanned], Awaitable[Verdict]]
"""The scan's decision on one upload that no task here runs. ``errors.NotFound`` or
``errors.Gone`` means ``Verdict.DONE``."""


async def run_what_is_owed(upload_id: str, scanned: Scanned) -> Verdict:
    """The decision without one: every upload in the index is run (the work finds out
    whether anything is left to do), and no other."""
    return Verdict.RUN if scanned.owed else Verdict.LEAVE


@dataclass(frozen=True)
class _Job:
    task: asyncio.Task[None]
    wake: asyncio.Event


class LeasedJobs:
    """One kind of owed background work in this process: its tasks, leases and scan."""

    def __init__(self, names: JobNames, *, index: OwedIndex, leases: Leases,
                 work: Work, lease_s: float, scan_s: float,
                 decide: Decide = run_what_is_owed, log: logging.Logger) -> None:
        """``leases`` is the store whose ``hold_lease``/``drop_lease`` keep one instance at
        a time on an upload's work; ``log`` is the user's logger, so that log lines name the
        module whose work failed."""
        self.names = names
        self.lease_s = lease_s
        self.scan_s = scan_s
        # Random per process: a restarted process must not inherit a dead one's leases.
        self.owner = secrets.token_hex(8)
        self._index = index
        self._leases = leases
        self._work = work
        self._decide = decide
        self._log = log
        self._jobs: dict[str, _Job] = {}
        self._scanner: asyncio.Task[None] | None = None
        self._closed = False

    # --- tasks -------------------------------------------------------------------------------
    def start(self, upload_id: str) -> None:
        """Run the upload's work in the background, or wake the task that runs it."""
        if self._closed:
            return  # a stop is under way: the next process's scan starts it
        job = self._jobs.get(upload_id)
        if job is not None and not job.task.done():
            job.wake.set()
            return
        wake = asyncio.Event()
        task = asyncio.create_task(self._run(upload_id, wake),
                                   name=f"{self.names.task}-{upload_id}")
        self._jobs[upload_id] = _Job(task, wake)
        task.add_done_callback(functools.partial(self._forget, upload_id))

    def _forget(self, upload_id: str, task: asyncio.Task[None]) -> None:
        job = self._jobs.get(upload_id)
        if job is not None and job.task is task:  # not a newer task for the same upload
            del self._jobs[upload_id]

    async def _run(self, upload_id: str, wake: asyncio.Event) -> None:
        async with held_lease(self._leases, f"{self.names.lease}:{upload_id}", self.owner,
                              self.lease_s) as held:
            if not held:
                return  # another instance runs it; the scan takes over if it dies
            await self._work(upload_id, wake)

    def running(self, upload_id: str) -> bool:
        """Whether a task in this process runs the upload's work (for the status API)."""
        job = self._jobs.get(upload_id)
        return job is not None and not job.task.done()

    def active(self) -> list[str]:
        """The uploads whose work runs in this process."""
        return sorted(upload_id for upload_id, job in self._jobs.items()
                      if not job.task.done())

    async def close(self) -> None:
        """Stop every task and the scan (each within ``stop_tasks``'s grace); no later
        ``start`` runs anything. A stopped task's lease is dropped on its way out, so
        another instance can take its work over at once."""
        self._closed = True
        await stop_tasks([*(job.task for job in self._jobs.values()), self._scanner])

    # --- scanning ----------------------------------------------------------------------------
    async def resume(self, every: Iterable[str]) -> None:
        """After recovery: start what a stop interrupted (a scan of ``every`` upload and of
        the index), then scan the index every ``scan_s``."""
        await self.scan(every)
        if self._scanner is None and not self._closed:
            self._scanner = asyncio.create_task(self._scan_forever(),
                                                name=self.names.scanner)

    async def _scan_forever(self) -> None:
        while True:
            await asyncio.sleep(self.scan_s)
            try:
                await self.scan()
            except errors.StateUnavailable:
                self._log.warning("the state store is unreachable; the %s scan tries again",
                                  self.names.scan)
            except Exception:
                self._log.exception("the %s scan failed", self.names.scan)

    async def scan(self, every: Iterable[str] | None = None, *,
                   now: float | None = None) -> None:
        """Start the owed work that no task here runs: that of the uploads in the index,
        and (at start-up) of ``every`` upload, as ``decide`` says."""
        owed = set(await self._index.owed())
        at = time.time() if now is None else now
        for upload_id in sorted(owed | set(every or ())):
            if self._closed:
                return
            if self.running(upload_id):
                continue
            in_index = upload_id in owed
            try:
                verdict = await self._decide(upload_id, Scanned(in_index, every is not None, at))
            except (errors.NotFound, errors.Gone):
                verdict = Verdict.DONE
            if verdict in (Verdict.RUN, Verdict.WAIT) and not in_index:
                await self._index.owe(upload_id, True)
            elif verdict is Verdict.DONE and in_index:
                await self._index.owe(upload_id, False)
            if verdict is Verdict.RUN:
                self.start(upload_id)
