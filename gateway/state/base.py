"""The storage and locking contracts, as small Protocols.

``CoreStore`` is what every backend provides: upload records and their bytes; the offset it
reports is always what it has durably stored, never what a client claimed. The other parts
are optional, each a Protocol of its own that a backend provides or not:

- ``Concatenation``: final uploads assembled from partials, and the finals waiting for them;
- ``SinkCheckpoints``: a remote sink's progress (the Notion sink needs it);
- ``OwedWork``: indexes of uploads whose finish, sink work or post-finish hook may be owed;
- ``Leases``: background work that one process at a time does;
- ``OpenSlots``: unfinished uploads counted in total and per client;
- ``ExpiryIndex``: when each upload is next due for the sweeper;
- ``Owners``: each owner's uploads, and the bytes they hold against the owner's quota.

What a backend lacks, ``gateway.state.parts`` supplies in this process where one process
can (the indexes, leases, slots and owners), and the gateway does without where it cannot
(concatenation needs the bytes, checkpoints the backend's durability): ``UploadStore``, all
of them together, is what the rest of the gateway works with. ``Locker`` hands out
per-upload locks that a newcomer can ask to let go. The Redis implementation provides every
part; the disk store (``disk.py``, ``memlock.py``) provides the core, concatenation and sink
checkpoints, and the gateway keeps the rest for it in its process, as for any backend
without them. Any backend passes the contract tests of the parts it provides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from protocol.headers import Checksum
from protocol.model import Checkpoint, HookState, UploadInfo, UploadState
from protocol.state import UploadStatus


class ReleaseRequested(Exception):
    """Raised into a PATCH body read when another request asked for the upload."""


@runtime_checkable
class CoreStore(Protocol):
    """Upload records and their bytes: what every backend provides."""

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
        mismatch ``errors.ChecksumMismatch``; both leave the upload as it was. An ``offset``
        that is not the stored one raises ``errors.MismatchedOffset`` and changes nothing.
        """

    async def save_info(self, info: UploadInfo, *, durable: bool = True) -> None:
        """Replace the record atomically (declared length, sink progress, assembly).

        ``durable=False`` may keep the change in memory only: for facts that can be found
        again after a restart. Never brings a removed upload back: ``errors.NotFound`` or
        ``errors.Gone`` when the record is gone, also when a termination runs meanwhile (a
        background writer that read the record before a DELETE loses to it). Never undoes
        the hook state ``save_hook`` saved since the caller read the record."""

    # The post-finish hook's progress (``gateway.hooks``) is part of the record: a record
    # operation every backend provides, not an index the gateway could keep for it.
    async def save_hook(self, upload_id: str, hook: HookState) -> None:
        """Replace only the record's hook state, durably. It is kept apart from the rest of
        the record, so neither undoes the other: a ``save_info`` with an older hook state (a
        sink that read the record before) does not bring it back, and this does not touch
        the sink's state. A ``done`` state is never replaced. ``errors.NotFound``/``Gone``
        for a removed upload."""

    async def terminate(self, upload_id: str, reason: str, *,
                        if_offset: int | None = None) -> bool:
        """Remove the upload's bytes, record and checkpoint; a tombstone answers 410 afterwards.

        With ``if_offset``, only if the offset is still that (a sweeper's decision made on a
        snapshot); returns whether the upload was removed. A backend that provides
        ``OpenSlots``, ``ExpiryIndex``, ``OwedWork`` or ``Owners`` also takes the upload
        out of them (its slot, its expiry, its owed finish, its owner's listing and held
        bytes)."""

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

    @property
    def unreadable(self) -> int:
        """Records this store could not read (a newer version's, torn, corrupt), which it
        treats as not found: set aside on disk, left in place in Redis. For health and
        metrics; each is logged once."""


@runtime_checkable
class Concatenation(Protocol):
    """Final uploads made of partials (the tus ``concatenation`` extension): the bytes are
    joined by the backend, and the finals waiting for partials are visible to every process
    of the store."""

    async def assemble(self, final: UploadInfo, partial_ids: tuple[str, ...]) -> int:
        """Fill a final upload with its partials' bytes, in order; returns the length."""

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


@runtime_checkable
class SinkCheckpoints(Protocol):
    """A remote sink's checkpoint (see ``protocol.model.Checkpoint``), kept as durably as the
    record: the Notion sink resumes a drain from it without resending confirmed parts."""

    async def checkpoint(self, upload_id: str) -> Checkpoint:
        """The upload's checkpoint; an empty one if the sink has not started."""

    async def start_remote(self, upload_id: str, remote_id: str, started_at: float) -> None:
        """Record a new remote upload; its confirmed parts start empty."""

    async def add_parts(self, upload_id: str, remote_id: str, parts: Sequence[int]) -> bool:
        """Record confirmed parts of ``remote_id``; False (nothing recorded) if the
        checkpoint moved to another remote upload meanwhile."""


@runtime_checkable
class OwedWork(Protocol):
    """Indexes of uploads that may still owe work, so that a start or a scan reads those and
    not every upload ever kept. Each is an index: entries may be stale (the reader looks at
    the record), but an upload that owes the work is never missing."""

    # Finishing: its event, the hand-over to the sink, the release of the spool's copy.
    # Noted at creation, cleared once the finish is on record; ``terminate`` clears it.
    async def owe_finish(self, upload_id: str, owed: bool) -> None:
        """Note (or clear) that the upload's finish may be owed."""

    async def finish_owed(self) -> list[str]:
        """The uploads whose finish may be owed."""

    async def owe_sink(self, upload_id: str, owed: bool) -> None:
        """Note (or clear) that a background sink still owes work on this upload, so that
        periodic scans look at those uploads only, not at every upload ever kept."""

    async def sink_owed(self) -> list[str]:
        """The uploads a sink still owes work on."""

    async def owe_hook(self, upload_id: str, owed: bool) -> None:
        """Note (or clear) that the upload's post-finish hook has not succeeded yet."""

    async def hooks_owed(self) -> list[str]:
        """The uploads whose post-finish hook is owed."""


@runtime_checkable
class Leases(Protocol):
    """Background work that one process at a time does, among all processes sharing the
    store."""

    async def claim_lease(self, name: str, ttl_s: float) -> bool:
        """True for one caller per ``ttl_s`` among all processes sharing the store."""

    async def hold_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take the lease ``name`` for ``owner``, or extend it if ``owner`` holds it; False
        while someone else holds it. A lease its owner stops extending ends by itself."""

    async def drop_lease(self, name: str, owner: str) -> None:
        """End ``owner``'s lease now (nothing happens if someone else holds it)."""


@runtime_checkable
class OpenSlots(Protocol):
    """Open (unfinished) uploads, counted in total and per client so that creations can be
    refused before they use up inodes or memory. The caller claims a slot before it creates
    the record and releases it when the upload finishes; ``terminate`` releases it."""

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


@runtime_checkable
class ExpiryIndex(Protocol):
    """When each upload is next due to be looked at by the sweeper, so that a sweep reads the
    uploads that are due, not every upload kept. ``terminate`` takes an upload out; a record
    that is gone meanwhile is dropped by the sweeper when its time comes."""

    async def schedule_expiry(self, upload_id: str, at: float | None) -> None:
        """Note when the upload may be due (replacing any earlier note); None: never."""

    async def due_for_expiry(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` uploads noted due at or before ``now``, earliest first. An index:
        the caller reads the record and decides. An upload stays due until it is noted
        again or removed; after a restart it may come due sooner than noted, never later."""


# An owner names a few keys and index entries: its size is bounded (``gateway.clients``
# makes 32 hex digits; the bound leaves room for another kind of key, never for a name or
# an address in the clear).
MAX_OWNER_CHARS = 64


def check_owner(owner: str) -> str:
    """The owner, if its size is within the bound; else ``ValueError``."""
    if len(owner) > MAX_OWNER_CHARS:
        raise ValueError(f"an owner is at most {MAX_OWNER_CHARS} characters")
    return owner


@runtime_checkable
class Owners(Protocol):
    """Each owner's uploads (for listing them) and the bytes each upload holds against its
    owner's quota.

    An owner is the record's ``client`` (``gateway.clients``), opaque here and at most
    ``MAX_OWNER_CHARS`` characters: a longer one raises ``ValueError`` and changes nothing,
    as a negative byte count or ``max_total`` and a time that is not finite do. The
    listing is an index, like ``ExpiryIndex``: an entry may outlive its record (a removal
    that lost the store half-way), so its reader looks at the record. ``terminate``
    forgets the upload under its owner, and ``forget_owned`` does so again at no cost."""

    async def note_owned(self, owner: str, upload_id: str, created_at: float) -> None:
        """List the upload under its owner, created at ``created_at``. Idempotent; noting
        it again with another time moves it."""

    async def owned(self, owner: str, *, before: tuple[float, str] | None,
                    limit: int) -> list[tuple[str, float]]:
        """The owner's uploads as ``(upload_id, created_at)``, newest first (``created_at``
        descending, then ``upload_id`` descending), strictly after the cursor ``before``:
        the ``(created_at, upload_id)`` of the last item of the previous page, None for
        the first page; at most ``limit`` of them (the caller bounds it; below 1: none).
        A cursor whose upload was forgotten meanwhile still pages on from where it was."""

    async def hold_bytes(self, owner: str, upload_id: str, nbytes: int, *,
                         max_total: int) -> int | None:
        """Atomically across every process of the store: when ``max_total`` is 0 (no
        limit), or the bytes held by the owner's *other* uploads plus ``nbytes`` are at
        most ``max_total``, record ``nbytes`` for this upload (replacing its figure) and
        return None. Otherwise change nothing and return what the owner holds now (every
        upload, this one's current figure included)."""

    async def release_bytes(self, owner: str, upload_id: str) -> None:
        """The upload holds no bytes against its owner any more. Idempotent."""

    async def bytes_held(self, owner: str) -> int:
        """The bytes held by all the owner's uploads."""

    async def forget_owned(self, owner: str, upload_id: str) -> None:
        """Take the upload out of its owner's listing and release its bytes. Idempotent."""


@runtime_checkable
class ShowsRecordsAtOpen(Protocol):
    """A core whose ``open`` reads every record anyway (the disk store checks each one and
    sets aside what it cannot read) shows each upload it read to the callables in
    ``at_open``, so that the indexes ``gateway.state.parts`` keeps in this process are
    filled from that reading, not from a second one. Not a part: it only saves a reading.

    A list rather than a method, so that a wrapper that times every call of the store
    (``gateway.metrics.MeasuredStore``) hands it on as it is."""

    # Each is called with the state of every readable upload, in the thread that reads the
    # records, before ``open`` returns; an upload without its bytes and without a delivery
    # on record (it answers 404) is not shown.
    at_open: list[Callable[[UploadState], None]]


@runtime_checkable
class UploadStore(CoreStore, Concatenation, SinkCheckpoints, OwedWork, Leases, OpenSlots,
                  ExpiryIndex, Owners, Protocol):
    """Every part: what the Redis store provides, and what the gateway's upload
    service, hooks and sinks work with (``gateway.state.parts.StoreParts.store``)."""


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
    """How the indexes ``gateway.state.parts`` keeps in this process for a backend without
    them (the disk store: one process owns its directory) are rebuilt from the records read
    when the store opens. The defaults are the answers without a policy: every upload due
    at once, every complete upload owed (the safe answers), every upload listed under its
    creator's key and holding nothing against a quota (none is configured)."""

    # When an upload is due for expiry (see ``ExpiryIndex.schedule_expiry``).
    expires_at: Callable[[UploadState], float | None] = lambda state: 0.0
    # Whether an upload's finish is owed (see ``OwedWork.owe_finish``).
    owes_finish: Callable[[UploadState], bool] = lambda state: state.status is \
        UploadStatus.COMPLETE
    # Whose listing an upload is in (see ``Owners.note_owned``); '': nobody's (a record
    # from before its creator was kept), and an owner past ``MAX_OWNER_CHARS`` is nobody's.
    owner: Callable[[UploadState], str] = lambda state: state.info.client
    # The bytes an upload holds against its owner's quota (see ``Owners.hold_bytes``).
    held: Callable[[UploadState], int] = lambda state: 0
