"""The spool: streaming a request body into an upload's data file, shared by every store.

Theory of operation
-------------------
The event loop gathers body chunks into batches of ``buffer_bytes`` and hands each batch to a
worker thread, off the loop. One batch is written while the next one fills, so an
upload holds two buffers at most; when many uploads are active at once, one each (the others
keep the disk busy anyway), so memory stays flat (TUS-ROB-04).

A ``SpoolWriter`` owns one append's file handle. Its write steps run in worker threads, one
at a time. Stores adapt it through three hooks: ``prepare`` (checks or repairs the file before
the first write), ``fence`` (checked in the worker thread right before every write, truncation
and sync: a writer that may have lost the file to another process touches it no more) and
``after_close``. Inside a long body, write-back of every
``commit_interval`` bytes is started without waiting. A store whose offset is the file size
(disk) needs no more. A store that keeps the offset elsewhere (Redis) also wants windows made
durable and committed while the body streams: ``pump`` then runs an fdatasync in another
worker thread, beside the writes, and calls ``on_window`` with the durable end once it is
done; the writes never wait for a sync.

A full disk (ENOSPC, or EDQUOT for a quota) is an operational condition, not a bug. A write
that fails, even after part of its buffer landed, ends the body: the writer counts every byte
that reached the file, writes nothing after the failure, and keeps the bytes before it, so the
offset the store reports is exactly what the file holds and the client resumes from there once
space is back. A failed sync is different: the kernel may have dropped pages it could not
write and does not say so twice, so only the bytes known durable before it stay. ``pump``
turns a full disk into ``errors.InsufficientStorage`` (507, Retry-After) with one warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

from gateway.aio import IoPool, run_to_completion
from gateway.files import start_writeback
from protocol import errors
from protocol.headers import Checksum

log = logging.getLogger(__name__)

# A full filesystem, or a used-up quota: space comes back (an operator, an expiry, a delivery
# that frees the spool), so the client is told to wait and resume, not that the server broke.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


# Up to this many concurrent appends, each overlaps its disk write with reading the next
# batch (two buffers); beyond it, the other uploads keep the disk busy and one buffer each
# keeps memory flat.
OVERLAP_UP_TO = 8
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
# Body pieces below this are gathered into one buffer: as objects of their own, a body sent
# in one-byte chunks would cost some forty times its size in memory.
SMALL_PIECE = 16 * 1024


def pwrite_steps(fd: int, buffers: list[bytes], offset: int,
                 fence: Callable[[], None] | None = None) -> Iterator[int]:
    """Write every buffer at ``offset``, looping over short writes; yields each write's count
    as it lands, so that the caller knows how far the file got if a later write fails (a
    full disk takes part of a buffer, then refuses the rest). ``fence`` runs right before
    each write and raises to refuse it."""
    total = 0
    pending: list[bytes | memoryview] = list(buffers)
    while pending:
        if fence is not None:
            fence()
        # The kernel takes at most IOV_MAX buffers a call (EINVAL beyond).
        written = os.pwritev(fd, pending[:IOV_MAX], offset + total)
        if written == 0:
            raise OSError(errno.EIO, "short write")
        total += written
        yield written
        while pending and written >= len(pending[0]):
            written -= len(pending[0])
            pending.pop(0)
        if pending and written:
            pending[0] = memoryview(pending[0])[written:]


class SpoolWriter:
    """One append's file handle; write steps run in worker threads, one at a time."""

    def __init__(self, path: Path, offset: int, checksum: Checksum | None, *, durable: bool,
                 commit_interval: int, sync_interval: int | None = None) -> None:
        self.path = path
        self.offset = offset
        self.checksum = checksum
        self.hasher = hashlib.new(checksum.algorithm) if checksum is not None else None
        self.durable = durable
        self.commit_interval = commit_interval
        # Windows made durable and offered for commit while the body streams; never for an
        # unverified body, which must not become visible before its checksum is known.
        self.sync_interval = sync_interval if checksum is None else None
        self.sync_windows = self.sync_interval is not None
        self.fd: int | None = None
        self.submitted = 0  # bytes handed to writes (maintained by the event loop side)
        self.written = 0
        self.window_start = 0
        self.window_end = offset  # end of the last full window written (absolute)
        self.synced = offset  # bytes known durable and committable (absolute)
        self.size = offset
        # The write that failed (a full disk): nothing is written after it.
        self.failed: OSError | None = None
        # A sync failed: bytes past ``synced`` may be lost without a trace, so they go.
        self.sync_failed = False

    # --- hooks -------------------------------------------------------------------------------
    def prepare(self, fd: int) -> None:
        """Check the file before the first write; raise to refuse it."""

    def after_close(self, keep: bool) -> None:
        """Clean-up after the final sync and close."""

    def fence(self) -> None:
        """Raise to refuse touching the file: called in the worker thread right before every
        write, truncation and sync of its bytes, so that a check made before a long pause
        cannot let a write through after it (a store whose writers may lose the file to
        another process; see ``gateway.state.redis``)."""

    # --- worker-thread steps -----------------------------------------------------------------
    def _open(self) -> int:
        if self.fd is None:
            # Fenced like a write: a holder paused past its lock may find the file gone (its
            # successor finished the upload and the sink took the file), and must not open it.
            self.fence()
            fd = os.open(self.path, os.O_WRONLY)
            try:
                self.prepare(fd)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
        return self.fd

    def write(self, buffers: list[bytes]) -> None:
        try:
            fd = self._open()
            if self.hasher is not None:
                for buf in buffers:
                    self.hasher.update(buf)
            for written in pwrite_steps(fd, buffers, self.offset + self.written, self.fence):
                self.written += written
        except OSError as exc:
            self.failed = exc
            raise
        if self.written - self.window_start < self.commit_interval:
            return
        if self.durable:
            # Start writing this window back without waiting for it: receiving goes on,
            # and the fdatasync that makes it durable later has little left to do.
            try:
                start_writeback(fd, self.offset + self.window_start,
                                self.written - self.window_start)
            except OSError as exc:
                self.failed = exc
                self.sync_failed = True
                raise
        self.window_start = self.written
        if self.sync_interval is not None and \
                self.offset + self.written - self.window_end >= self.sync_interval:
            self.window_end = self.offset + self.written

    def sync_window(self, end: int) -> int:
        """Make everything up to ``end`` durable; runs beside the writes, never after close."""
        if self.durable and self.fd is not None:
            self._sync(self.fd)
        return end

    def _sync(self, fd: int) -> None:
        self.fence()
        try:
            os.fdatasync(fd)
        except OSError:
            self.sync_failed = True
            raise

    def finish(self, buffers: list[bytes], keep: bool) -> None:
        """Write the rest, verify, then commit (sync) or roll back (truncate); close.

        After a failed write nothing more is written: the rest of the body lies past a gap.
        """
        if self.failed is not None and self.fd is None:
            return  # the file was never opened: the check before the first write failed
        fd: int | None = None
        try:
            fd = self._open()
            if buffers and self.failed is None:
                self.write(buffers)
            if keep and self.hasher is not None and self.checksum is not None \
                    and self.hasher.digest() != self.checksum.digest:
                keep = False
                raise errors.ChecksumMismatch()
        finally:
            if fd is not None and self.fd is not None:
                self.fd = None
                self._close(fd, keep)

    def _close(self, fd: int, keep: bool) -> None:
        try:
            # A writer fenced off only closes: even a truncation would cut another's bytes.
            self.fence()
            if not keep or self.sync_failed:
                # Bytes already offered as committable stay: they may have been reported.
                os.ftruncate(fd, self.synced)
            if self.durable:
                try:
                    self._sync(fd)
                except OSError:
                    # Which of the new bytes reached the disk is unknown: keep the durable
                    # ones only, so no offset ever counts a byte a crash could take back.
                    self.fence()
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, self.synced)
                        os.fdatasync(fd)
                    self.size = self.synced
                    raise
            self.size = os.fstat(fd).st_size
            self.synced = self.size
        finally:
            os.close(fd)
        self.after_close(keep)


class _Pump:
    """The event-loop side of one append: batches, the write in flight, the window sync."""

    def __init__(self, writer: SpoolWriter, pool: IoPool,
                 on_window: Callable[[], Awaitable[None]] | None) -> None:
        self.writer = writer
        self.pool = pool
        self.on_window = on_window
        self.pending: asyncio.Future[None] | None = None
        self.syncing: asyncio.Future[int] | None = None
        self.committing: asyncio.Future[None] | None = None

    def after_write(self) -> None:
        """Between batches: note a finished window sync or commit, start the next ones.

        Neither is waited for: the body keeps streaming while a window syncs in a worker
        thread and its offset is recorded; one of each is in flight at a time."""
        writer = self.writer
        if not writer.sync_windows:
            return
        if self.committing is not None and self.committing.done():
            committing, self.committing = self.committing, None
            committing.result()  # a commit that failed (lock lost, conflict) ends the body
        if self.syncing is not None and self.syncing.done():
            writer.synced = self.syncing.result()
            self.syncing = None
            if self.on_window is not None and self.committing is None:
                self.committing = asyncio.ensure_future(self.on_window())
        if self.syncing is None and writer.window_end > writer.synced:
            self.syncing = self.pool.submit_background(writer.sync_window, writer.window_end)

    async def settle(self, buffers: list[bytes], keep: bool,
                     on_settled: Callable[[bool], None] | None) -> None:
        writer = self.writer
        try:
            if self.pending is not None:
                await self.pending
        finally:
            # The file must stay open until the sync is done (the close syncs anyway); the
            # store's last commit follows this one, and repeats an error it had.
            for step in (self.syncing, self.committing):
                if step is not None:
                    with contextlib.suppress(Exception):
                        await step
            try:
                # The last batch, the checksum verdict, the sync and the close in one step:
                # a small body costs a single trip to a worker thread.
                await self.pool.run(writer.finish, buffers if keep else [], keep)
            except BaseException:
                if on_settled is not None:
                    on_settled(False)
                raise
            if on_settled is not None:
                on_settled(True)


async def pump(writer: SpoolWriter, chunks: AsyncIterator[bytes], pool: IoPool, *,
               buffer_bytes: int, max_bytes: int | None, crowded: Callable[[], bool],
               on_window: Callable[[], Awaitable[None]] | None = None,
               on_settled: Callable[[bool], None] | None = None) -> int:
    """Stream ``chunks`` through ``writer``; returns the new size of the data file.

    Stalls, disconnects, lock release and shutdown keep the bytes that arrived (TUS-PATCH-06)
    unless they are unverifiable or over the limit. The final write, sync and close run to
    completion even when the caller is cancelled, so a lock is never released before the
    commit. ``on_window`` is started when a window became durable (``writer.synced`` moved)
    and runs beside the stream; ``on_settled(ok)`` runs after the close. A full disk ends
    the body with ``errors.InsufficientStorage``; the bytes written before it stay.
    """
    try:
        return await _stream(writer, chunks, pool, buffer_bytes=buffer_bytes,
                             max_bytes=max_bytes, crowded=crowded, on_window=on_window,
                             on_settled=on_settled)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        upload_id = writer.path.stem
        # One line, no traceback: nothing is wrong with the gateway, an operator has to
        # make room (and the bytes kept are the client's to resume from).
        log.warning("no space left on the spool's disk for upload %s (%s); the %d bytes this "
                    "request stored before it are kept", upload_id, exc.strerror,
                    writer.size - writer.offset, extra={"upload_id": upload_id})
        raise errors.InsufficientStorage(
            "the server's disk is full; the bytes received before that are kept: ask HEAD "
            "for the offset and resume later") from exc


async def _stream(writer: SpoolWriter, chunks: AsyncIterator[bytes], pool: IoPool, *,
                  buffer_bytes: int, max_bytes: int | None, crowded: Callable[[], bool],
                  on_window: Callable[[], Awaitable[None]] | None,
                  on_settled: Callable[[bool], None] | None) -> int:
    state = _Pump(writer, pool, on_window)
    buffers: list[bytes] = []
    small = bytearray()  # the small pieces since the last large one (``SMALL_PIECE``)
    buffered = 0
    keep = True
    try:
        async for chunk in chunks:
            if max_bytes is not None and writer.submitted + buffered + len(chunk) > max_bytes:
                raise errors.SizeExceeded(
                    f"the body would pass the upload's length at {writer.offset + max_bytes}")
            buffered += len(chunk)
            if len(chunk) < SMALL_PIECE:
                small += chunk
            else:
                if small:
                    buffers.append(bytes(small))
                    small.clear()
                buffers.append(chunk)
            if buffered < buffer_bytes:
                continue
            if small:
                buffers.append(bytes(small))
                small.clear()
            if state.pending is not None:
                # Shielded: cancelling the handler must not cancel a write in flight.
                await asyncio.shield(state.pending)
                state.after_write()
            # One batch is written while the next one fills: two buffers per upload.
            state.pending = pool.submit(writer.write, buffers)
            writer.submitted += buffered
            buffers, buffered = [], 0
            if crowded():
                # Many uploads keep the disk busy already; one buffer each bounds memory.
                await asyncio.shield(state.pending)
    except BaseException as exc:
        keep = writer.checksum is None and not isinstance(exc, errors.SizeExceeded)
        raise
    finally:
        if small:
            buffers.append(bytes(small))
        await run_to_completion(state.settle(buffers, keep, on_settled))
    return writer.size


def concatenate(target: Path, sources: list[tuple[Path, int | None]], durable: bool) -> int:
    """Fill ``target`` with the sources' bytes in order (blocking); returns the length.

    Each source is a path and how many of its bytes count (None: all of them). A copy that
    fails (a full disk) leaves ``target`` empty again, so its half does not hold the space."""
    out = os.open(target, os.O_WRONLY | os.O_TRUNC)
    try:
        total = 0
        for source_path, counted in sources:
            source = os.open(source_path, os.O_RDONLY)
            try:
                size = os.fstat(source).st_size if counted is None else counted
                copied = 0
                while copied < size:
                    # copy_file_range stays in the kernel (and may share extents).
                    n = os.copy_file_range(source, out, size - copied, copied, total + copied)
                    if n == 0:
                        raise OSError(errno.EIO, "partial upload shrank while copying")
                    copied += n
                total += size
            finally:
                os.close(source)
        if durable:
            os.fdatasync(out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(out, 0)
        raise
    finally:
        os.close(out)
    return total
