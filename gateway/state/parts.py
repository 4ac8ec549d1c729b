"""What the gateway works with, built once from a store: the store's parts, and the rest.

Theory of operation
-------------------
A backend provides the core (``base.CoreStore``: records and bytes) and any of the optional
parts (``base.Concatenation``, ``SinkCheckpoints``, ``OwedWork``, ``Leases``,
``OpenSlots``, ``ExpiryIndex``, ``Owners``). ``StoreParts.of(store)`` looks once at which parts the
store provides (``isinstance`` against the runtime-checkable Protocols) and fills the gaps:

- what one process can keep, it keeps in memory (``gateway.state.local``): the owed-work
  indexes, the leases, the open-upload counts, the expiry index and each owner's uploads
  and held bytes (how those are found in a record: ``base.Indexing``). These are right only
  while one gateway process uses the store, as with the disk store; after a restart they
  are rebuilt from the records when the store opens (every record is read once: from the
  store's own reading at open where it shows it, ``base.ShowsRecordsAtOpen``, as the
  disk store does, else by reading each afterwards), except the owed sink and hook work,
  which the sink and the hook runner find by their own scan of the records at start-up.
- what needs the backend cannot be supplied, so it is not offered:
  * concatenation joins the partials' bytes: without it, ``offers`` leaves out the
    ``concatenation`` and ``concatenation-unfinished`` extensions, so a request that
    needs them is refused as when the configuration disables them;
  * sink checkpoints must be as durable as the record: the Notion sink refuses to start
    without them (``checkpoints`` is None).
- expiration needs only the expiry index, which is always there (the store's, or kept
  here), so it is offered whenever the configuration enables it.

``store`` is the one object the upload service, the hooks and the sinks call: the store
itself when it provides every part (the Redis store), else a composition that sends each
call to the store or to what is kept here (the disk store, a core-only store). In the
composition, ``terminate`` also takes the upload out of what is kept here (its slot, its
expiry, its owed finish, its owner's listing and held bytes), as a store providing those
parts does itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.state.base import (
    MAX_OWNER_CHARS,
    Concatenation,
    CoreStore,
    ExpiryIndex,
    Indexing,
    Leases,
    OpenSlots,
    OwedWork,
    Owners,
    ShowsRecordsAtOpen,
    SinkCheckpoints,
    UploadStore,
)
from gateway.state.local import (
    LocalExpiryIndex,
    LocalLeases,
    LocalOpenSlots,
    LocalOwedWork,
    LocalOwners,
)
from protocol import errors
from protocol.decisions import ALL_EXTENSIONS
from protocol.headers import Checksum
from protocol.model import Checkpoint, HookState, UploadInfo, UploadState

log = logging.getLogger(__name__)

# The tus extensions that need the store's ``Concatenation`` part.
CONCATENATION_EXTENSIONS = frozenset({"concatenation", "concatenation-unfinished"})


class MissingPart(RuntimeError):
    """A store part was used that the store does not provide and the gateway cannot supply;
    ``StoreParts`` keeps such calls from happening (the extension is not offered, the sink
    does not start), so this is a bug where it shows."""


@dataclass(frozen=True, slots=True)
class StoreParts:
    """A store's parts, each the store's own or kept in this process (see the module
    docstring); None for the parts that cannot be supplied and that it lacks."""

    core: CoreStore
    concatenation: Concatenation | None
    checkpoints: SinkCheckpoints | None
    owed: OwedWork
    leases: Leases
    open_slots: OpenSlots
    expiry: ExpiryIndex
    owners: Owners
    # The object every user of the store calls: every part, supplied or stood in for.
    store: UploadStore
    # Names of the parts kept in this process (the start-up log says which).
    kept_here: tuple[str, ...] = ()

    @classmethod
    def of(cls, store: CoreStore, indexing: Indexing | None = None) -> StoreParts:
        """The parts of ``store``; ``indexing`` says how the indexes kept here are rebuilt
        from the records when the store opens."""
        if isinstance(store, UploadStore):
            return cls(store, store, store, store, store, store, store, store, store)
        owed = store if isinstance(store, OwedWork) else LocalOwedWork()
        leases = store if isinstance(store, Leases) else LocalLeases()
        open_slots = store if isinstance(store, OpenSlots) else LocalOpenSlots()
        expiry = store if isinstance(store, ExpiryIndex) else LocalExpiryIndex()
        owners = store if isinstance(store, Owners) else LocalOwners()
        concatenation = store if isinstance(store, Concatenation) else None
        checkpoints = store if isinstance(store, SinkCheckpoints) else None
        kept = {"owed work": owed, "leases": leases, "open slots": open_slots,
                "expiry index": expiry, "owners": owners}
        composed = _Composed(store, concatenation or _NoConcatenation(),
                             checkpoints or _NoCheckpoints(), owed, leases, open_slots, expiry,
                             owners, indexing or Indexing())
        kept_here = tuple(name for name, part in kept.items() if part is not store)
        log.info("the store keeps %s; kept in this process: %s",
                 ", ".join(name for name, part in [*kept.items(),
                                                    ("concatenation", concatenation),
                                                    ("sink checkpoints", checkpoints)]
                           if part is store) or "records and bytes only",
                 ", ".join(kept_here) or "nothing")
        return cls(store, concatenation, checkpoints, owed, leases, open_slots, expiry,
                   owners, composed, kept_here)

    @property
    def offers(self) -> frozenset[str]:
        """The tus extensions this store allows; the gateway announces those of them that
        its configuration enables (``GatewayConfig.protocol_settings``)."""
        if self.concatenation is None:
            return frozenset(ALL_EXTENSIONS) - CONCATENATION_EXTENSIONS
        return frozenset(ALL_EXTENSIONS)


class _NoConcatenation:
    """Stands in for ``Concatenation`` where the store cannot join bytes: nothing ever waits
    for a partial, since no partial or final is ever made (the extension is not offered)."""

    async def assemble(self, final: UploadInfo, partial_ids: tuple[str, ...]) -> int:
        raise errors.InvalidConcat("concatenation is not enabled")

    async def register_final(self, final_id: str, partial_ids: tuple[str, ...], *,
                             max_per_partial: int = 0) -> None:
        raise errors.InvalidConcat("concatenation is not enabled")

    async def unregister_final(self, final_id: str) -> None:
        return None  # every removal unregisters its upload: nothing was registered

    async def waiting_finals(self) -> dict[str, tuple[str, ...]]:
        return {}

    async def finals_waiting_on(self, partial_id: str) -> list[str]:
        return []


class _NoCheckpoints:
    """Stands in for ``SinkCheckpoints`` where the store keeps none: the only sink that
    needs them (Notion) does not start on such a store."""

    async def checkpoint(self, upload_id: str) -> Checkpoint:
        raise MissingPart("this store keeps no sink checkpoints")

    async def start_remote(self, upload_id: str, remote_id: str, started_at: float) -> None:
        raise MissingPart("this store keeps no sink checkpoints")

    async def add_parts(self, upload_id: str, remote_id: str, parts: Sequence[int]) -> bool:
        raise MissingPart("this store keeps no sink checkpoints")


class _Composed:
    """``UploadStore`` made of a store's core and, for each optional part, the store's own
    or one that stands in for it."""

    def __init__(self, core: CoreStore, concatenation: Concatenation,
                 checkpoints: SinkCheckpoints, owed: OwedWork, leases: Leases,
                 open_slots: OpenSlots, expiry: ExpiryIndex, owners: Owners,
                 indexing: Indexing) -> None:
        self._core = core
        self._concatenation = concatenation
        self._checkpoints = checkpoints
        self._owed = owed
        self._leases = leases
        self._open_slots = open_slots
        self._expiry = expiry
        self._owners = owners
        self._indexing = indexing

    # --- the core ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the store and fill the indexes and counts kept here from its records: when
        each upload is due, which owe their finish, which are open, whose they are and
        what they hold."""
        if not isinstance(self._owed, LocalOwedWork) and \
                not isinstance(self._open_slots, LocalOpenSlots) and \
                not isinstance(self._expiry, LocalExpiryIndex) and \
                not isinstance(self._owners, LocalOwners):
            await self._core.open()
            return
        if isinstance(self._core, ShowsRecordsAtOpen):
            # The store reads every record as it opens: that one reading fills them.
            note = self._note
            self._core.at_open.append(note)
            try:
                await self._core.open()
            finally:
                self._core.at_open.remove(note)
            return
        await self._core.open()
        for upload_id in await self._core.upload_ids():
            try:
                state = await self._core.get(upload_id)
            except (errors.NotFound, errors.Gone):
                continue  # removed meanwhile, or unreadable (the store says so once)
            self._note(state)

    def _note(self, state: UploadState) -> None:
        """Note one upload read at open in the indexes and counts kept here. Runs before
        the store is used (in the store's reading thread, for ``ShowsRecordsAtOpen``)."""
        upload_id = state.info.upload_id
        if isinstance(self._expiry, LocalExpiryIndex):
            self._expiry.schedule(upload_id, self._indexing.expires_at(state))
        if isinstance(self._owed, LocalOwedWork) and self._indexing.owes_finish(state):
            self._owed.finishes.add(upload_id)
        if isinstance(self._open_slots, LocalOpenSlots) and state.info.sink is None \
                and not state.info.data_removed and not state.finished:
            self._open_slots.take(upload_id, state.info.client)
        if isinstance(self._owners, LocalOwners):
            owner = self._indexing.owner(state)
            if owner and len(owner) <= MAX_OWNER_CHARS:
                self._owners.take(owner, upload_id, state.info.created_at,
                                  self._indexing.held(state))

    async def close(self) -> None:
        await self._core.close()

    async def create(self, info: UploadInfo) -> UploadState:
        return await self._core.create(info)

    async def get(self, upload_id: str) -> UploadState:
        return await self._core.get(upload_id)

    async def append(self, upload_id: str, offset: int, chunks: AsyncIterator[bytes], *,
                     max_bytes: int | None, checksum: Checksum | None) -> int:
        return await self._core.append(upload_id, offset, chunks, max_bytes=max_bytes,
                                       checksum=checksum)

    async def save_info(self, info: UploadInfo, *, durable: bool = True) -> None:
        await self._core.save_info(info, durable=durable)

    async def save_hook(self, upload_id: str, hook: HookState) -> None:
        await self._core.save_hook(upload_id, hook)

    async def terminate(self, upload_id: str, reason: str, *,
                        if_offset: int | None = None) -> bool:
        if not await self._core.terminate(upload_id, reason, if_offset=if_offset):
            return False
        # What the store keeps, it cleans up itself; what is kept here is cleaned up here.
        if isinstance(self._open_slots, LocalOpenSlots):
            self._open_slots.release(upload_id)
        if isinstance(self._expiry, LocalExpiryIndex):
            self._expiry.schedule(upload_id, None)
        if isinstance(self._owed, LocalOwedWork):
            self._owed.finishes.discard(upload_id)
        if isinstance(self._owners, LocalOwners):
            self._owners.forget(upload_id)
        return True

    def data_path(self, upload_id: str) -> Path:
        return self._core.data_path(upload_id)

    async def discard_data(self, upload_id: str) -> None:
        await self._core.discard_data(upload_id)

    async def upload_ids(self) -> list[str]:
        return await self._core.upload_ids()

    async def purge_tombstones(self, older_than: float) -> int:
        return await self._core.purge_tombstones(older_than)

    async def remove_orphans(self, older_than: float) -> int:
        return await self._core.remove_orphans(older_than)

    @property
    def unreadable(self) -> int:
        return self._core.unreadable

    # --- concatenation -----------------------------------------------------------------------
    async def assemble(self, final: UploadInfo, partial_ids: tuple[str, ...]) -> int:
        return await self._concatenation.assemble(final, partial_ids)

    async def register_final(self, final_id: str, partial_ids: tuple[str, ...], *,
                             max_per_partial: int = 0) -> None:
        await self._concatenation.register_final(final_id, partial_ids,
                                                 max_per_partial=max_per_partial)

    async def unregister_final(self, final_id: str) -> None:
        await self._concatenation.unregister_final(final_id)

    async def waiting_finals(self) -> dict[str, tuple[str, ...]]:
        return await self._concatenation.waiting_finals()

    async def finals_waiting_on(self, partial_id: str) -> list[str]:
        return await self._concatenation.finals_waiting_on(partial_id)

    # --- sink checkpoints --------------------------------------------------------------------
    async def checkpoint(self, upload_id: str) -> Checkpoint:
        return await self._checkpoints.checkpoint(upload_id)

    async def start_remote(self, upload_id: str, remote_id: str, started_at: float) -> None:
        await self._checkpoints.start_remote(upload_id, remote_id, started_at)

    async def add_parts(self, upload_id: str, remote_id: str, parts: Sequence[int]) -> bool:
        return await self._checkpoints.add_parts(upload_id, remote_id, parts)

    # --- owed work ---------------------------------------------------------------------------
    async def owe_finish(self, upload_id: str, owed: bool) -> None:
        await self._owed.owe_finish(upload_id, owed)

    async def finish_owed(self) -> list[str]:
        return await self._owed.finish_owed()

    async def owe_sink(self, upload_id: str, owed: bool) -> None:
        await self._owed.owe_sink(upload_id, owed)

    async def sink_owed(self) -> list[str]:
        return await self._owed.sink_owed()

    async def owe_hook(self, upload_id: str, owed: bool) -> None:
        await self._owed.owe_hook(upload_id, owed)

    async def hooks_owed(self) -> list[str]:
        return await self._owed.hooks_owed()

    # --- leases ------------------------------------------------------------------------------
    async def claim_lease(self, name: str, ttl_s: float) -> bool:
        return await self._leases.claim_lease(name, ttl_s)

    async def hold_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return await self._leases.hold_lease(name, owner, ttl_s)

    async def drop_lease(self, name: str, owner: str) -> None:
        await self._leases.drop_lease(name, owner)

    # --- open slots --------------------------------------------------------------------------
    async def claim_open_slot(self, upload_id: str, client: str, *, max_total: int,
                              max_per_client: int) -> None:
        await self._open_slots.claim_open_slot(upload_id, client, max_total=max_total,
                                               max_per_client=max_per_client)

    async def release_open_slot(self, upload_id: str) -> None:
        await self._open_slots.release_open_slot(upload_id)

    async def open_slots_taken(self, client: str | None = None) -> int:
        return await self._open_slots.open_slots_taken(client)

    # --- the expiry index --------------------------------------------------------------------
    async def schedule_expiry(self, upload_id: str, at: float | None) -> None:
        await self._expiry.schedule_expiry(upload_id, at)

    async def due_for_expiry(self, now: float, limit: int) -> list[str]:
        return await self._expiry.due_for_expiry(now, limit)

    # --- owners ------------------------------------------------------------------------------
    async def note_owned(self, owner: str, upload_id: str, created_at: float) -> None:
        await self._owners.note_owned(owner, upload_id, created_at)

    async def owned(self, owner: str, *, before: tuple[float, str] | None,
                    limit: int) -> list[tuple[str, float]]:
        return await self._owners.owned(owner, before=before, limit=limit)

    async def hold_bytes(self, owner: str, upload_id: str, nbytes: int, *,
                         max_total: int) -> int | None:
        return await self._owners.hold_bytes(owner, upload_id, nbytes, max_total=max_total)

    async def release_bytes(self, owner: str, upload_id: str) -> None:
        await self._owners.release_bytes(owner, upload_id)

    async def bytes_held(self, owner: str) -> int:
        return await self._owners.bytes_held(owner)

    async def forget_owned(self, owner: str, upload_id: str) -> None:
        await self._owners.forget_owned(owner, upload_id)
