"""Upload state and bytes on local disk: the embedded default, nothing to install.

Theory of operation
-------------------
Layout below the data directory::

    uploads/<id>.info    the record (JSON): created in place with O_EXCL and fsynced before
                         the 201; later replaced atomically (temp file, fsync, rename)
    uploads/<id>.bin     the bytes; the upload's offset IS this file's size
    uploads/<id>.stage   present while a checksummed body is unverified: the offset before it
    uploads/<id>.hook    the post-finish hook's progress, replaced atomically; kept apart from
                         the record so that a record saved from an older read cannot undo it
    tombstones/<id>      a removed upload (reason, time): 410 instead of 404
    quarantine/<id>.*    an upload whose record could not be read at open (a newer
                         version's, torn, corrupt), set aside with its files for the operator
    .lock                held exclusively by the one gateway process using this directory

Invariants:
- The offset is the data file's size (TUS-ROB-02), so bytes and offset can never disagree
  after a crash. With the ``ack`` fsync policy the size is fdatasync'ed before it is reported
  or acknowledged. This process owns the directory, so an in-memory cache of records and
  durable sizes is authoritative; a miss (after a restart) reads the disk and syncs first.
- A checksummed body lands past the committed offset with a ``.stage`` marker written first.
  Only a verified body loses its marker; a mismatch, an interruption or a crash (found at
  start-up) truncates the file back to the marker. Thus a 460 changes nothing.
- Every write and stat runs in a worker thread; the event loop only moves buffers.
- Memory per upload is two write buffers at most: one being filled, one being written (one,
  when many uploads are active).
- The finals waiting for partials live in memory and are rebuilt from the records at open,
  which reads every record once anyway. The other indexes (expiry times, uploads owing
  their finish, open uploads), the owed sink and hook work and the leases are not the
  store's: the gateway keeps them in its process (``gateway.state.parts``), as for any
  backend without them, filled from the reading at open (``at_open``).
- A record is replaced or removed under its upload's record lock, and a save checks that the
  record still exists: a background writer that read it before a termination cannot bring
  it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.files import atomic_write, fsync_dir
from gateway.state.spool import OVERLAP_UP_TO, SpoolWriter, concatenate, is_disk_full, pump
from protocol import errors
from protocol.headers import UPLOAD_ID, Checksum, ConcatFinal
from protocol.model import Checkpoint, HookState, UploadInfo, UploadState, newest_hook

log = logging.getLogger(__name__)

# Enough for every upload that is active at once on a busy gateway; each entry is a record.
CACHE_ENTRIES = 4096
# Every way a record from elsewhere (a newer version, a torn write, corruption) fails to parse.
UNREADABLE = (ValueError, KeyError, TypeError, AttributeError)


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    info: UploadInfo
    size: int  # durable bytes (synced, under the ack policy)
    mtime: float  # when bytes last arrived
    data_gone: bool = False  # the spool's copy was removed with the record's last save


class _DiskWriter(SpoolWriter):
    """Appends where the offset is the file size: a stage marker guards checksummed bodies."""

    def __init__(self, store: DiskStore, upload_id: str, offset: int,
                 checksum: Checksum | None) -> None:
        super().__init__(store.data_path(upload_id), offset, checksum, durable=store._durable,
                         commit_interval=store._commit_interval,
                         sync_interval=store._sync_interval)
        self.store = store
        self.upload_id = upload_id

    def prepare(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size != self.offset:
            # Checked under the upload's lock just before; a difference means a race with
            # termination or a stale stage marker. Never write at a wrong place.
            raise errors.MismatchedOffset(headers={"Upload-Offset": str(size)})
        if self.checksum is not None:
            atomic_write(self.store._path(self.upload_id, ".stage"),
                         str(self.offset).encode(), self.store._durable,
                         self.store._file_mode)

    def after_close(self, keep: bool) -> None:
        if self.checksum is not None:
            self.store._path(self.upload_id, ".stage").unlink(missing_ok=True)
            if self.store._durable:
                fsync_dir(self.store.uploads)


class DiskStore:
    """``CoreStore``, ``Concatenation`` and ``SinkCheckpoints`` on a local directory (see the
    module docstring for the layout); ``ShowsRecordsAtOpen``."""

    def __init__(self, root: Path, pool: IoPool, *, fsync: FsyncPolicy,
                 write_buffer_bytes: int, commit_interval_bytes: int,
                 sync_interval_bytes: int | None = None, file_mode: int = 0o600) -> None:
        self.root = root
        self.uploads = root / "uploads"
        self.tombstones = root / "tombstones"
        self.quarantine = root / "quarantine"
        self._file_mode = file_mode
        self._pool = pool
        self._durable = fsync is FsyncPolicy.ACK
        self._buffer_bytes = write_buffer_bytes
        self._commit_interval = commit_interval_bytes
        # When a sink sends windows of an upload still arriving (Notion), a long PATCH makes
        # its bytes durable every this many bytes and reports them committed; otherwise the
        # offset moves only when the request ends.
        self._sync_interval = sync_interval_bytes
        # Records and durable sizes of recent uploads. This process owns the directory (see
        # ``.lock``), so the cache cannot go stale; it saves a worker-thread trip per request.
        # Mutated on the event loop only.
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._appending = 0  # appends in progress, to choose between one and two buffers
        self._changes = 0  # counts cache writes, so a racing lockless read is not cached
        self._dir_lock_fd: int | None = None
        self._finals: dict[str, tuple[str, ...]] = {}
        self._waiting: dict[str, set[str]] = {}  # partial -> the finals waiting for it
        self._ckpt_locks: dict[str, asyncio.Lock] = {}
        self._record_locks = _KeyedLocks()
        # ``ShowsRecordsAtOpen``: who else learns what ``open`` reads (the indexes the
        # gateway keeps for this store), so that nobody reads every record a second time.
        self.at_open: list[Callable[[UploadState], None]] = []
        self._unreadable: set[str] = set()  # ids set aside at open or unreadable since

    # --- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        await self._pool.run(self._open_sync)

    def _open_sync(self) -> None:
        for folder in (self.root, self.uploads, self.tombstones):
            folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"another gateway process is using {self.root}; the disk backend allows one "
                "process per data directory") from None
        self._dir_lock_fd = fd
        for leftover in self.uploads.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        for marker in self.uploads.glob("*.stage"):
            self._rollback_stage(marker.name.removesuffix(".stage"))
        for record in self.uploads.glob("*.info"):
            try:
                info = UploadInfo.from_json(json.loads(record.read_bytes()))
                if isinstance(info.concat, ConcatFinal) and not info.assembled:
                    self._note_final(info.upload_id, info.concat.upload_ids)
                self._reindex(info, record)
            except UNREADABLE as exc:
                self._set_aside(record, exc)
        with contextlib.suppress(FileNotFoundError):
            self._unreadable.update(p.name.partition(".")[0] for p in self.quarantine.iterdir())

    def _set_aside(self, record: Path, why: BaseException) -> None:
        """Move an upload whose record cannot be read (a status from a newer version, a
        torn write, corruption) and its files to quarantine/, where the operator can look:
        not deleted, since it may hold the only copy of someone's bytes."""
        upload_id = record.name.removesuffix(".info")
        self.quarantine.mkdir(exist_ok=True)
        for suffix in (".info", ".bin", ".stage", ".ckpt", ".hook"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.uploads / f"{upload_id}{suffix}",
                           self.quarantine / f"{upload_id}{suffix}")
        if self._durable:
            fsync_dir(self.quarantine)
            fsync_dir(self.uploads)
        log.error("upload %s: its record cannot be read (%s: %s); its files were moved to %s",
                  upload_id, type(why).__name__, why, self.quarantine)

    def _reindex(self, info: UploadInfo, record: Path) -> None:
        """At open: show the upload to ``at_open`` (the indexes the gateway keeps), and
        release a spool copy that a stop left behind after its delivery was recorded."""
        upload_id = info.upload_id
        if upload_id != record.name.removesuffix(".info"):
            raise ValueError(f"the record names another upload, {upload_id!r}")
        data = self.data_path(upload_id)
        try:
            st = os.stat(data)
        except FileNotFoundError:
            if not info.data_removed:
                return  # no bytes and no delivery: it answers 404 and nothing is owed
            size, mtime = info.length or 0, record.stat().st_mtime
        else:
            size, mtime = st.st_size, st.st_mtime
            if info.data_removed:
                # The record says the sink holds the bytes: the spool's copy is released.
                data.unlink()
                size, mtime = info.length or 0, record.stat().st_mtime
        state = UploadState(info, size, max(info.created_at, mtime))
        for note in self.at_open:
            note(state)

    @property
    def unreadable(self) -> int:
        return len(self._unreadable)

    async def close(self) -> None:
        if self._dir_lock_fd is not None:
            os.close(self._dir_lock_fd)
            self._dir_lock_fd = None

    # --- paths -------------------------------------------------------------------------------
    def _path(self, upload_id: str, suffix: str) -> Path:
        # Ids are validated at the HTTP edge; this assert keeps any caller from escaping.
        if not UPLOAD_ID.fullmatch(upload_id):
            raise errors.NotFound()
        return self.uploads / f"{upload_id}{suffix}"

    def data_path(self, upload_id: str) -> Path:
        return self._path(upload_id, ".bin")

    # --- the cache ---------------------------------------------------------------------------
    def _remember(self, entry: _Entry) -> _Entry:
        cache = self._cache
        cache[entry.info.upload_id] = entry
        cache.move_to_end(entry.info.upload_id)
        while len(cache) > CACHE_ENTRIES:
            cache.popitem(last=False)
        return entry

    def _forget(self, upload_id: str) -> None:
        self._changes += 1
        self._cache.pop(upload_id, None)

    def _update(self, upload_id: str, **changes: Any) -> None:
        self._changes += 1
        entry = self._cache.get(upload_id)
        if entry is not None:
            self._cache[upload_id] = dataclasses.replace(entry, **changes)

    async def create(self, info: UploadInfo) -> UploadState:
        await self._pool.run(self._create_sync, info)
        self._remember(_Entry(info, 0, info.created_at))
        return UploadState(info, 0, info.created_at)

    def _create_sync(self, info: UploadInfo) -> None:
        data = self.data_path(info.upload_id)
        fd = os.open(data, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self._file_mode)
        try:
            os.fchmod(fd, self._file_mode)  # exactly the setting, whatever the umask
        finally:
            os.close(fd)
        # The record is written last, and whole (a temp file renamed into place): an upload
        # without a record is not visible, so a crash in between leaves only an empty orphan
        # that the sweeper removes. A record torn by a crash would instead be set aside at
        # the next start as damage, with an error for the operator, for a creation that
        # was never acknowledged.
        try:
            atomic_write(self._path(info.upload_id, ".info"), _encode(info), self._durable,
                         self._file_mode)
        except BaseException:
            # A full disk: the creation fails and leaves nothing behind.
            data.unlink(missing_ok=True)
            raise

    async def get(self, upload_id: str) -> UploadState:
        entry = self._cache.get(upload_id)
        if entry is None:
            changes = self._changes
            entry = await self._pool.run(self._get_sync, upload_id)
            if changes == self._changes:
                self._remember(entry)
            # else: a write or a removal overlapped this lockless read; the snapshot is
            # good for this answer but must not become the cache's truth.
        else:
            self._cache.move_to_end(upload_id)
        info, offset = entry.info, entry.size
        if info.is_final and info.assembled and info.length is not None:
            offset = info.length
        return UploadState(info, offset, max(info.created_at, entry.mtime))

    def _get_sync(self, upload_id: str) -> _Entry:
        info_path = self._path(upload_id, ".info")
        try:
            raw = info_path.read_bytes()
        except FileNotFoundError:
            if (self.tombstones / upload_id).exists():
                raise errors.Gone() from None
            raise errors.NotFound() from None
        try:
            info = UploadInfo.from_json(json.loads(raw))
        except UNREADABLE as exc:
            # Records are replaced whole, so this is damage from outside the gateway (or a
            # newer version's record written since open): not found, and said once.
            if upload_id not in self._unreadable:
                self._unreadable.add(upload_id)
                log.error("upload %s: its record cannot be read (%s: %s); it answers 404",
                          upload_id, type(exc).__name__, exc)
            raise errors.NotFound() from None
        with contextlib.suppress(FileNotFoundError):
            saved = HookState.from_json(json.loads(self._path(upload_id, ".hook").read_bytes()))
            info = info.replace(hook=newest_hook(info.hook, saved))
        try:
            st = os.stat(self.data_path(upload_id))
        except FileNotFoundError:
            if info.data_removed:
                # Delivered and its spool copy deleted: the record alone says it was whole.
                return _Entry(info, info.length or 0, info_path.stat().st_mtime,
                              data_gone=True)
            if (self.tombstones / upload_id).exists():
                raise errors.Gone() from None
            raise errors.NotFound() from None
        offset = st.st_size
        stage = self._path(upload_id, ".stage")
        with contextlib.suppress(FileNotFoundError):
            offset = min(offset, int(stage.read_text()))
        if self._durable:
            # Bytes written by an earlier process (or while this read ran) are synced before
            # their offset is ever reported (TUS-ROB-01).
            fd = os.open(self.data_path(upload_id), os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        return _Entry(info, offset, st.st_mtime)

    async def save_info(self, info: UploadInfo, *, durable: bool = True) -> None:
        upload_id = info.upload_id
        async with self._record_locks.hold(upload_id):
            if not durable and upload_id in self._cache:
                # Rewriting the record costs a new inode and the old one's deletion; for a
                # fact that recovery finds again, the cache is enough.
                self._update(upload_id, info=self._keep_hook(info))
                return
            # A record that says the sink holds the bytes lets the spool's copy go in the
            # same trip to a thread, once the record is on disk (``discard_data`` then has
            # nothing left to do): one trip fewer for every finished small upload.
            gone = info.data_removed
            await self._pool.run(self._save_info_sync, upload_id, _encode(info), gone)
            self._update(upload_id, info=self._keep_hook(info),
                         **({"size": info.length or 0, "data_gone": True} if gone else {}))

    def _save_info_sync(self, upload_id: str, data: bytes, discard: bool = False) -> None:
        path = self._path(upload_id, ".info")
        self._check_exists(upload_id)
        atomic_write(path, data, self._durable, self._file_mode)
        if discard:
            self._discard_sync(upload_id)

    def _discard_sync(self, upload_id: str) -> None:
        for suffix in (".bin", ".stage"):
            self._path(upload_id, suffix).unlink(missing_ok=True)

    def _check_exists(self, upload_id: str) -> None:
        """Under the record lock: a removed upload is not written again (a writer that read
        the record before a DELETE would bring it back)."""
        if not self._path(upload_id, ".info").exists():
            if (self.tombstones / upload_id).exists():
                raise errors.Gone()
            raise errors.NotFound()

    def _keep_hook(self, info: UploadInfo) -> UploadInfo:
        """The hook's progress saved since the caller read the record stays (``.hook``)."""
        entry = self._cache.get(info.upload_id)
        if entry is None or entry.info.hook is None:
            return info
        return info.replace(hook=newest_hook(info.hook, entry.info.hook))

    async def save_hook(self, upload_id: str, hook: HookState) -> None:
        current = (await self.get(upload_id)).info.hook
        if current is not None and current.done:
            return
        async with self._record_locks.hold(upload_id):
            await self._pool.run(self._save_hook_sync, upload_id, hook)
        self._changes += 1
        entry = self._cache.get(upload_id)
        if entry is not None:
            self._cache[upload_id] = dataclasses.replace(
                entry, info=entry.info.replace(hook=newest_hook(entry.info.hook, hook)))

    def _save_hook_sync(self, upload_id: str, hook: HookState) -> None:
        path = self._path(upload_id, ".hook")
        self._check_exists(upload_id)
        atomic_write(path, json.dumps(hook.to_json()).encode(), self._durable, self._file_mode)
        if not self._path(upload_id, ".info").exists():
            # Terminated meanwhile: its clean-up may have run before this write landed.
            path.unlink(missing_ok=True)

    async def discard_data(self, upload_id: str) -> None:
        entry = self._cache.get(upload_id)
        if entry is not None and entry.data_gone:
            return  # removed with the record that allowed it (``save_info``)
        await self._pool.run(self._discard_sync, upload_id)
        entry = self._cache.get(upload_id)
        if entry is not None and entry.info.data_removed:
            # What a read of the record would find now (the record alone says the upload
            # was whole): kept, so the HEAD that follows a finish costs no trip to a thread.
            self._update(upload_id, size=entry.info.length or 0, data_gone=True)
        else:
            self._forget(upload_id)

    async def upload_ids(self) -> list[str]:
        def scan() -> list[str]:
            return sorted(p.name.removesuffix(".info") for p in self.uploads.glob("*.info")
                          if UPLOAD_ID.fullmatch(p.name.removesuffix(".info")))
        return await self._pool.run(scan)

    # --- bytes -------------------------------------------------------------------------------
    async def append(self, upload_id: str, offset: int, chunks: AsyncIterator[bytes], *,
                     max_bytes: int | None, checksum: Checksum | None) -> int:
        writer = _DiskWriter(self, upload_id, offset, checksum)

        def settled(ok: bool) -> None:
            if ok:
                self._update(upload_id, size=writer.size, mtime=time.time())
            else:
                self._forget(upload_id)  # size unknown: read it again

        async def window() -> None:
            self._update(upload_id, size=writer.synced, mtime=time.time())

        self._appending += 1
        try:
            return await pump(writer, chunks, self._pool, buffer_bytes=self._buffer_bytes,
                              max_bytes=max_bytes,
                              crowded=lambda: self._appending > OVERLAP_UP_TO,
                              on_settled=settled,
                              on_window=window if self._sync_interval else None)
        finally:
            self._appending -= 1

    def _rollback_stage(self, upload_id: str) -> None:
        marker = self._path(upload_id, ".stage")
        try:
            offset = int(marker.read_text())
            os.truncate(self.data_path(upload_id), offset)
        except (FileNotFoundError, ValueError):
            pass
        marker.unlink(missing_ok=True)

    async def assemble(self, final: UploadInfo, partial_ids: tuple[str, ...]) -> int:
        total = await self._pool.run(
            concatenate, self.data_path(final.upload_id),
            [(self.data_path(p), None) for p in partial_ids], self._durable)
        self._update(final.upload_id, size=total, mtime=time.time())
        return total

    # --- removal -----------------------------------------------------------------------------
    async def terminate(self, upload_id: str, reason: str, *,
                        if_offset: int | None = None) -> bool:
        # Every writer holds the upload's lock in this one process, as does our caller, so
        # the check and the removal cannot be separated by a write. The record lock keeps
        # saves of writers without the upload's lock (a sink, a hook) out meanwhile.
        async with self._record_locks.hold(upload_id):
            if if_offset is not None and (await self.get(upload_id)).offset != if_offset:
                return False
            self._forget(upload_id)
            self._ckpt_locks.pop(upload_id, None)
            try:
                await self._pool.run(self._terminate_sync, upload_id, reason)
            finally:
                self._forget(upload_id)
        return True

    def _terminate_sync(self, upload_id: str, reason: str) -> None:
        # The tombstone goes first: after a crash in between, the upload answers 410 and the
        # leftovers are removed again by the next termination or sweep.
        tomb = json.dumps({"reason": reason, "at": time.time()}).encode()
        try:
            atomic_write(self.tombstones / upload_id, tomb, self._durable, self._file_mode)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # Removing uploads is how a full disk gets room back (DELETE, the sweep): the
            # bytes go first to make room for the tombstone. If even that finds none, the
            # upload goes without one and answers 404 instead of 410.
            self._path(upload_id, ".bin").unlink(missing_ok=True)
            try:
                atomic_write(self.tombstones / upload_id, tomb, self._durable, self._file_mode)
            except OSError as again:
                if not is_disk_full(again):
                    raise
        for suffix in (".info", ".stage", ".ckpt", ".hook", ".bin"):
            self._path(upload_id, suffix).unlink(missing_ok=True)
        if self._durable:
            fsync_dir(self.uploads)

    async def purge_tombstones(self, older_than: float) -> int:
        def purge() -> int:
            count = 0
            for tomb in self.tombstones.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if tomb.stat().st_mtime < older_than:
                        tomb.unlink()
                        count += 1
            return count
        return await self._pool.run(purge)

    async def remove_orphans(self, older_than: float) -> int:
        """Data files without a record: a crash between the two steps of ``create``.

        Only old ones, since a create in progress looks the same for a moment.
        """
        def scan() -> int:
            count = 0
            for data in self.uploads.glob("*.bin"):
                upload_id = data.name.removesuffix(".bin")
                with contextlib.suppress(FileNotFoundError):
                    if (not (self.uploads / f"{upload_id}.info").exists()
                            and data.stat().st_mtime < older_than):
                        data.unlink()
                        count += 1
            return count
        return await self._pool.run(scan)

    # --- finals waiting for partials: one process owns the directory, so memory (rebuilt
    # from the records at open) is enough ----------------------------------------------------
    async def register_final(self, final_id: str, partial_ids: tuple[str, ...], *,
                             max_per_partial: int = 0) -> None:
        if final_id not in self._finals and max_per_partial > 0:
            for partial_id in set(partial_ids):
                if len(self._waiting.get(partial_id, ())) >= max_per_partial:
                    raise errors.TooManyFinals(f"partial upload {partial_id} has "
                                               f"{max_per_partial} finals waiting for it")
        self._note_final(final_id, partial_ids)

    def _note_final(self, final_id: str, partial_ids: tuple[str, ...]) -> None:
        self._finals[final_id] = partial_ids
        for partial_id in partial_ids:
            self._waiting.setdefault(partial_id, set()).add(final_id)

    async def unregister_final(self, final_id: str) -> None:
        for partial_id in self._finals.pop(final_id, ()):
            waiting = self._waiting.get(partial_id)
            if waiting is not None:
                waiting.discard(final_id)
                if not waiting:
                    del self._waiting[partial_id]

    async def waiting_finals(self) -> dict[str, tuple[str, ...]]:
        return dict(self._finals)

    async def finals_waiting_on(self, partial_id: str) -> list[str]:
        return sorted(self._waiting.get(partial_id, ()))

    # --- sink checkpoints: uploads/<id>.ckpt, replaced atomically ------------------------
    async def checkpoint(self, upload_id: str) -> Checkpoint:
        def read() -> Checkpoint:
            try:
                return Checkpoint.from_json(json.loads(self._path(upload_id, ".ckpt")
                                                       .read_bytes()))
            except FileNotFoundError:
                return Checkpoint()
        return await self._pool.run(read)

    async def start_remote(self, upload_id: str, remote_id: str, started_at: float) -> None:
        async with self._checkpoint_lock(upload_id):
            await self.get(upload_id)  # raises for a removed upload
            await self._write_checkpoint(upload_id, Checkpoint(remote_id, started_at))

    async def add_parts(self, upload_id: str, remote_id: str, parts: Sequence[int]) -> bool:
        async with self._checkpoint_lock(upload_id):
            current = await self.checkpoint(upload_id)
            if current.remote_id != remote_id:
                return False
            if not set(parts) <= current.parts:
                await self._write_checkpoint(upload_id, dataclasses.replace(
                    current, parts=current.parts | frozenset(parts)))
            return True

    async def _write_checkpoint(self, upload_id: str, checkpoint: Checkpoint) -> None:
        data = json.dumps(checkpoint.to_json()).encode()

        def write() -> None:
            self._check_exists(upload_id)  # no checkpoint outliving its upload
            atomic_write(self._path(upload_id, ".ckpt"), data, self._durable, self._file_mode)
        async with self._record_locks.hold(upload_id):
            await self._pool.run(write)

    @contextlib.asynccontextmanager
    async def _checkpoint_lock(self, upload_id: str) -> AsyncIterator[None]:
        """Parallel senders of one upload record their parts one at a time."""
        async with self._ckpt_locks.setdefault(upload_id, asyncio.Lock()):
            yield


def _encode(info: UploadInfo) -> bytes:
    return json.dumps(info.to_json(), separators=(",", ":")).encode()


class _KeyedLocks:
    """An asyncio lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
