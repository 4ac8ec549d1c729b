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
import math
import time
from bisect import bisect_left, insort
from dataclasses import dataclass, field

from gateway.state.base import check_owner
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


@dataclass(slots=True)
class _Owned:
    """One owner's uploads and the bytes they hold."""

    # (created_at, upload id) of each listed upload, ascending: a page is read backwards
    # from the cursor's place, found by bisection.
    order: list[tuple[float, str]] = field(default_factory=list)
    # Set by a rebuild, which appends in the order the records are read: sorted once, when
    # the listing is first used, instead of an insertion in the middle per record.
    unsorted: bool = False
    when: dict[str, float] = field(default_factory=dict)  # listed upload -> its created_at
    held: dict[str, int] = field(default_factory=dict)  # upload -> bytes held (none: 0)
    total: int = 0  # the sum of ``held``

    def sorted_order(self) -> list[tuple[float, str]]:
        if self.unsorted:
            self.order.sort()
            self.unsorted = False
        return self.order


class LocalOwners:
    """``Owners`` in memory: per owner, its listed uploads in order and the bytes each
    holds. ``take`` and ``forget`` are the synchronous steps that a rebuild at open and a
    termination use. An owner with nothing listed or held is dropped, so memory follows
    the uploads kept (bounded by the limits and retention that bound the records)."""

    def __init__(self) -> None:
        self._of: dict[str, _Owned] = {}
        # Upload -> the owner it was last noted or held under: a termination knows the id
        # only. (An upload has one owner, its creator; ``forget_owned`` names any other.)
        self._owner: dict[str, str] = {}

    def take(self, owner: str, upload_id: str, created_at: float, held: int) -> None:
        """Note an upload read from its record at open (before the store is used)."""
        mine = self._of.setdefault(owner, _Owned())
        if upload_id in mine.when:
            self._unlist(mine, upload_id)
        mine.when[upload_id] = created_at
        mine.order.append((created_at, upload_id))
        mine.unsorted = True
        self._owner[upload_id] = owner
        self._set_held(mine, upload_id, max(held, 0))

    async def note_owned(self, owner: str, upload_id: str, created_at: float) -> None:
        check_owner(owner)
        if not math.isfinite(created_at):
            raise ValueError("an upload's creation time is a finite number")
        mine = self._of.setdefault(owner, _Owned())
        if mine.when.get(upload_id) == created_at:
            return
        if upload_id in mine.when:
            self._unlist(mine, upload_id)
        # Newer uploads go last: the insertion is an append as a rule.
        insort(mine.sorted_order(), (created_at, upload_id))
        mine.when[upload_id] = created_at
        self._owner[upload_id] = owner

    async def owned(self, owner: str, *, before: tuple[float, str] | None,
                    limit: int) -> list[tuple[str, float]]:
        check_owner(owner)
        if before is not None and not math.isfinite(before[0]):
            raise ValueError("a cursor's creation time is a finite number")
        mine = self._of.get(owner)
        if mine is None or limit < 1:
            return []
        order = mine.sorted_order()
        # Everything before the cursor's place (listed or not) is strictly older than it.
        end = len(order) if before is None else bisect_left(order, before)
        return [(upload_id, at) for at, upload_id in reversed(order[max(end - limit, 0):end])]

    async def hold_bytes(self, owner: str, upload_id: str, nbytes: int, *,
                         max_total: int) -> int | None:
        check_owner(owner)
        if nbytes < 0 or max_total < 0:
            raise ValueError("bytes held and their limit are not negative")
        # No await between the check and the change: holds on this loop cannot interleave.
        mine = self._of.get(owner)
        total = 0 if mine is None else mine.total
        current = 0 if mine is None else mine.held.get(upload_id, 0)
        if max_total > 0 and total - current + nbytes > max_total:
            return total
        mine = self._of.setdefault(owner, _Owned())
        self._set_held(mine, upload_id, nbytes)
        if nbytes:
            self._owner[upload_id] = owner
        self._drop_if_idle(owner, mine, upload_id)
        return None

    async def release_bytes(self, owner: str, upload_id: str) -> None:
        check_owner(owner)
        mine = self._of.get(owner)
        if mine is not None:
            self._set_held(mine, upload_id, 0)
            self._drop_if_idle(owner, mine, upload_id)

    async def bytes_held(self, owner: str) -> int:
        check_owner(owner)
        mine = self._of.get(owner)
        return 0 if mine is None else mine.total

    async def forget_owned(self, owner: str, upload_id: str) -> None:
        check_owner(owner)
        self._forget(owner, upload_id)

    def forget(self, upload_id: str) -> None:
        """Take a removed upload out of its owner's listing and release its bytes."""
        owner = self._owner.get(upload_id)
        if owner is not None:
            self._forget(owner, upload_id)

    def _forget(self, owner: str, upload_id: str) -> None:
        mine = self._of.get(owner)
        if mine is None:
            return
        if upload_id in mine.when:
            self._unlist(mine, upload_id)
        self._set_held(mine, upload_id, 0)
        self._drop_if_idle(owner, mine, upload_id)

    @staticmethod
    def _unlist(mine: _Owned, upload_id: str) -> None:
        order = mine.sorted_order()
        del order[bisect_left(order, (mine.when.pop(upload_id), upload_id))]

    @staticmethod
    def _set_held(mine: _Owned, upload_id: str, nbytes: int) -> None:
        mine.total += nbytes - mine.held.pop(upload_id, 0)
        if nbytes:
            mine.held[upload_id] = nbytes

    def _drop_if_idle(self, owner: str, mine: _Owned, upload_id: str) -> None:
        """Forget what no longer says anything: the upload's owner once it is neither
        listed nor holding bytes under it, the owner once it has no upload."""
        if upload_id not in mine.when and upload_id not in mine.held \
                and self._owner.get(upload_id) == owner:
            del self._owner[upload_id]
        if not mine.when and not mine.held:
            del self._of[owner]
