"""The storage and locking contracts, as small Protocols.

``UploadStore`` keeps upload records and their bytes; the offset it reports is always what it
has durably stored, never what a client claimed. ``Locker`` hands out per-upload locks that a
newcomer can ask to let go. A disk implementation lives in ``disk.py`` and ``memlock.py``;
any other backend passes the same contract tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from protocol.headers import Checksum
from protocol.model import Checkpoint, HookState, UploadInfo, UploadState
from protocol.state import UploadStatus


class ReleaseRequested(Exception):
    """Raised into a PATCH body read when another request asked for the upload."""


class UploadStore(Protocol):
    async def open(self) -> None:
        """Prepare the backing state (folders, connections, crash clean-up)."""

    async def close(self) -> None: ...

    async def create(self, info: UploadInfo) -> UploadState:
        """Persist a new, empty upload. Raises nothing for a fresh id."""

    async def get(self, upload_id: str) -> UploadState:
        """The current snapshot; raises ``errors.NotFound`` or ``errors.Gone``."""

    async def append(self, upload_id: str, offset: int, chunks: AsyncIterator[bytes], *,
                     max_bytes: int | None, checksum: Checksum | None) -> int:
        """Store the chunks at ``offset`` and return the new durable offset.

        If ``chunks`` raises, every byte received so far is stored and committed before the
        exception propagates, unless the request carried a checksum: an unverifiable body is
        discarded whole. ``max_bytes`` exceeded raises ``errors.SizeExceeded`` and a checksum
        mismatch ``errors.ChecksumMismatch``; both leave the upload as it was.
        """

    async def save_info(self, info: UploadInfo, *, durable: bool = True) -> None:
        """Replace the record atomically (declared length, sink progress, assembly).

        ``durable=False`` may keep the change in memory only: for facts that can be found
        again after a restart. Never brings a removed upload back: ``errors.NotFound`` or
        ``errors.Gone`` when the record is gone, also when a termination runs meanwhile (a
        background writer that read the record before a DELETE loses to it)."""

    async def assemble(self, final: UploadInfo, partial_ids: tuple[str, ...]) -> int:
        """Fill a final upload with its partials' bytes, in order; returns the length."""

    async def terminate(self, upload_id: str, reason: str, *,
                        if_offset: int | None = None) -> bool:
        """Remove the upload's bytes, record and checkpoint; a tombstone answers 410 afterwards.

        With ``if_offset``, only if the offset is still that (a sweeper's decision made on a
        snapshot); returns whether the upload was removed."""

    def data_path(self, upload_id: str) -> Path:
        """Where the bytes of an upload live (for downloads and sinks)."""

    async def discard_data(self, upload_id: str) -> None:
        """Delete the spool copy of an upload whose record says ``data_removed`` (a sink
        holds the bytes now); the record stays. Idempotent."""

    async def upload_ids(self) -> list[str]:
        """Every live upload id (a listing, no record is read)."""

    async def purge_tombstones(self, older_than: float) -> int:
        """Forget tombstones written before ``older_than``; returns how many."""

    async def remove_orphans(self, older_than: float) -> int:
        """Remove bytes that have no record (an interrupted create) from before ``older_than``."""

    # Final concatenations that wait for partials, visible to every process of the store.
    async def register_final(self, final_id: str, partial_ids: tuple[str, ...], *,
                             max_per_partial: int = 0) -> None:
        """Note that the final waits for these partials. With ``max_per_partial`` (0: no
        limit), ``errors.TooManyFinals`` if one of them already has that many finals
        waiting, and nothing is noted. Registering a final again changes nothing."""

    async def unregister_final(self, final_id: str) -> None: ...

    async def waiting_finals(self) -> dict[str, tuple[str, ...]]: ...

    async def finals_waiting_on(self, partial_id: str) -> list[str]:
        """The finals registered as waiting for this partial (at most the limit they were
        registered with), without reading every waiting final."""

    # Open (unfinished) uploads, counted in total and per client so that creations can be
    # refused before they use up inodes or memory. The caller claims a slot before it
    # creates the record and releases it when the upload finishes; ``terminate`` releases it.
    async def claim_open_slot(self, upload_id: str, client: str, *, max_total: int,
                              max_per_client: int) -> None:
        """Count the upload as open for ``client`` (a short key, see ``gateway.clients``);
        atomic across every process of the store. ``errors.OpenUploadsLimit`` when
        ``max_total`` are open, ``errors.ClientOpenUploadsLimit`` when ``max_per_client``
        of this client are (0: no limit); a refused claim counts nothing. Claiming an
        upload already counted changes nothing."""

    async def release_open_slot(self, upload_id: str) -> None:
        """Stop counting the upload as open (finished or removed). Idempotent."""

    async def open_slots_taken(self, client: str | None = None) -> int:
        """How many uploads are open: in total, or of one client."""

    # Expiry: when each upload is next due to be looked at by the sweeper, so that a sweep
    # reads the uploads that are due, not every upload kept. ``terminate`` takes an upload
    # out; a record that is gone meanwhile is dropped by the sweeper when its time comes.
    async def schedule_expiry(self, upload_id: str, at: float | None) -> None:
        """Note when the upload may be due (replacing any earlier note); None: never."""

    async def due_for_expiry(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` uploads noted due at or before ``now``, earliest first. An index:
        the caller reads the record and decides. An upload stays due until it is noted
        again or removed; after a restart it may come due sooner than noted, never later."""

    # Finishing: uploads whose finish (its event, the hand-over to the sink, the release of
    # the spool's copy) may still be owed, so that a restart looks at those and not at every
    # finished upload. Noted at creation, cleared once the finish is on record;
    # ``terminate`` clears it.
    async def owe_finish(self, upload_id: str, owed: bool) -> None:
        """Note (or clear) that the upload's finish may be owed."""

    async def finish_owed(self) -> list[str]:
        """The uploads whose finish may be owed (an index: entries may be stale; an upload
        that owes its finish is never missing)."""

    @property
    def unreadable(self) -> int:
        """Records this store could not read (a newer version's, torn, corrupt), which it
        treats as not found: set aside on disk, left in place in Redis. For health and
        metrics; each is logged once."""

    # A remote sink's checkpoint (see ``protocol.model.Checkpoint``).
    async def checkpoint(self, upload_id: str) -> Checkpoint:
        """The upload's checkpoint; an empty one if the sink has not started."""

    async def start_remote(self, upload_id: str, remote_id: str, started_at: float) -> None:
        """Record a new remote upload; its confirmed parts start empty."""

    async def add_parts(self, upload_id: str, remote_id: str, parts: Sequence[int]) -> bool:
        """Record confirmed parts of ``remote_id``; False (nothing recorded) if the
        checkpoint moved to another remote upload meanwhile."""

    async def owe_sink(self, upload_id: str, owed: bool) -> None:
        """Note (or clear) that a background sink still owes work on this upload, so that
        periodic scans look at those uploads only, not at every upload ever kept."""

    async def sink_owed(self) -> list[str]:
        """The uploads a sink still owes work on (an index: entries may be stale)."""

    # The post-finish hook (``gateway.hooks``): its progress, and an index like the sink's.
    async def save_hook(self, upload_id: str, hook: HookState) -> None:
        """Replace only the record's hook state, durably. It is kept apart from the rest of
        the record, so neither undoes the other: a ``save_info`` with an older hook state (a
        sink that read the record before) does not bring it back, and this does not touch
        the sink's state. A ``done`` state is never replaced. ``errors.NotFound``/``Gone``
        for a removed upload."""

    async def owe_hook(self, upload_id: str, owed: bool) -> None:
        """Note (or clear) that the upload's post-finish hook has not succeeded yet."""

    async def hooks_owed(self) -> list[str]:
        """The uploads whose post-finish hook is owed (an index: entries may be stale)."""

    async def claim_lease(self, name: str, ttl_s: float) -> bool:
        """True for one caller per ``ttl_s`` among all processes sharing the store."""

    async def hold_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take the lease ``name`` for ``owner``, or extend it if ``owner`` holds it; False
        while someone else holds it. A lease its owner stops extending ends by itself."""

    async def drop_lease(self, name: str, owner: str) -> None:
        """End ``owner``'s lease now (nothing happens if someone else holds it)."""


class Lock(Protocol):
    async def acquire(self, timeout_s: float, on_release_requested: Callable[[], None]) -> None:
        """Take the lock, asking a current holder to let go; ``errors.UploadLocked`` on timeout.

        ``on_release_requested`` is called (at most once) when a later request wants the lock.
        """

    async def release(self) -> None:
        """Give the lock back; waiting requests may proceed."""

    async def wait_free(self, timeout_s: float) -> None:
        """Ask a current holder to let go and wait until nobody holds the upload, without
        taking it (a reader of committed state); ``errors.UploadLocked`` on timeout."""


class Locker(Protocol):
    def new_lock(self, upload_id: str) -> Lock:
        """A lock object for one request on one upload."""


@dataclass(frozen=True, slots=True)
class Indexing:
    """How a store that keeps its indexes in memory (the disk store: one process owns its
    directory) rebuilds them from the records it reads when it opens. The defaults are the
    safe answers without a policy: every upload due at once, every complete upload owed."""

    # When an upload is due for expiry (see ``UploadStore.schedule_expiry``).
    expires_at: Callable[[UploadState], float | None] = lambda state: 0.0
    # Whether an upload's finish is owed (see ``UploadStore.owe_finish``).
    owes_finish: Callable[[UploadState], bool] = lambda state: state.status is \
        UploadStatus.COMPLETE
