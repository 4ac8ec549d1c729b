"""The optional store parts kept in this process's memory.

``gateway.state.parts`` supplies them to a backend that lacks them: the disk store (one
process owns its directory) and any backend that provides only the core. They rely on one
thing: a single gateway process uses the store, so memory is the whole truth while it runs.
Nothing here survives a restart; they are rebuilt from the records when the store opens (see
``base.Indexing``), or, for the owed sink and hook work, the sink and the hook runner scan
the records at their start.

Every operation runs on the event loop without awaiting in between its checks and its
changes, so two callers on the loop cannot interleave inside one.
"""

from __future__ import annotations

import heapq
import time

from protocol import errors


class LocalLeases:
    """``Leases`` for one process: nobody else shares periodic work, and a held lease only
    keeps this process's own tasks from doing one job twice."""

    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (owner, monotonic expiry)

    async def claim_lease(self, name: str, ttl_s: float) -> bool:
        return True  # one process: nobody to share periodic work with

    async def hold_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        now = time.monotonic()
        holder = self._leases.get(name)
        if holder is not None and holder[0] != owner and holder[1] > now:
            return False
        self._leases[name] = (owner, now + ttl_s)
        return True

    async def drop_lease(self, name: str, owner: str) -> None:
        holder = self._leases.get(name)
        if holder is not None and holder[0] == owner:
            del self._leases[name]


class LocalOpenSlots:
    """``OpenSlots`` counted in memory. ``take`` and ``release`` are the synchronous steps
    that a rebuild at open and a termination use."""

    def __init__(self) -> None:
        self._open: dict[str, str] = {}  # unfinished upload -> its client
        self._open_of: dict[str, set[str]] = {}  # client -> its unfinished uploads

    async def claim_open_slot(self, upload_id: str, client: str, *, max_total: int,
                              max_per_client: int) -> None:
        # No await between the checks and the change: claims on this loop cannot interleave.
        if upload_id in self._open:
            return
        if max_total > 0 and len(self._open) >= max_total:
            raise errors.OpenUploadsLimit()
        if max_per_client > 0 and len(self._open_of.get(client, ())) >= max_per_client:
            raise errors.ClientOpenUploadsLimit()
        self.take(upload_id, client)

    def take(self, upload_id: str, client: str) -> None:
        self._open[upload_id] = client
        self._open_of.setdefault(client, set()).add(upload_id)

    async def release_open_slot(self, upload_id: str) -> None:
        self.release(upload_id)

    def release(self, upload_id: str) -> None:
        client = self._open.pop(upload_id, None)
        mine = self._open_of.get(client or "")
        if client is not None and mine is not None:
            mine.discard(upload_id)
            if not mine:
                del self._open_of[client]

    async def open_slots_taken(self, client: str | None = None) -> int:
        return len(self._open) if client is None else len(self._open_of.get(client, ()))


class LocalOwedWork:
    """``OwedWork``: three sets in memory."""

    def __init__(self) -> None:
        self.finishes: set[str] = set()
        self.sinks: set[str] = set()
        self.hooks: set[str] = set()

    async def owe_finish(self, upload_id: str, owed: bool) -> None:
        _note(self.finishes, upload_id, owed)

    async def finish_owed(self) -> list[str]:
        return sorted(self.finishes)

    async def owe_sink(self, upload_id: str, owed: bool) -> None:
        _note(self.sinks, upload_id, owed)

    async def sink_owed(self) -> list[str]:
        return sorted(self.sinks)

    async def owe_hook(self, upload_id: str, owed: bool) -> None:
        _note(self.hooks, upload_id, owed)

    async def hooks_owed(self) -> list[str]:
        return sorted(self.hooks)


def _note(owed: set[str], upload_id: str, is_owed: bool) -> None:
    if is_owed:
        owed.add(upload_id)
    else:
        owed.discard(upload_id)


class LocalExpiryIndex:
    """``ExpiryIndex``: the noted time of each upload, and a heap of (time, id) in which
    entries that no longer match the dict are skipped (a move pushes a new one)."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def schedule(self, upload_id: str, at: float | None) -> None:
        if at is None:
            self._due.pop(upload_id, None)
            return
        if self._due.get(upload_id) == at:
            return
        self._due[upload_id] = at
        heap = self._heap
        heapq.heappush(heap, (at, upload_id))
        if len(heap) > 2 * len(self._due) + 1024:
            # Moves leave stale entries behind; rebuilding now and then keeps it small.
            self._heap = [(when, key) for key, when in self._due.items()]
            heapq.heapify(self._heap)

    async def schedule_expiry(self, upload_id: str, at: float | None) -> None:
        self.schedule(upload_id, at)

    async def due_for_expiry(self, now: float, limit: int) -> list[str]:
        heap, due = self._heap, self._due
        found: list[tuple[float, str]] = []
        while heap and len(found) < limit and heap[0][0] <= now:
            at, upload_id = heapq.heappop(heap)
            if due.get(upload_id) == at and (not found or found[-1][1] != upload_id):
                found.append((at, upload_id))
            # else: stale (moved, removed) or a twin of the entry just taken
        for entry in found:
            heapq.heappush(heap, entry)  # due until noted again or removed
        return [upload_id for _, upload_id in found]
