"""The spool: streaming a request body into an upload's data file, shared by every store.

Theory of operation
-------------------
The event loop gathers body chunks into batches of ``buffer_bytes`` and hands each batch to a
worker thread (design invariant 7). One batch is written while the next one fills, so an
upload holds two buffers at most; when many uploads are active at once, one each (the others
keep the disk busy anyway), so memory stays flat (invariant 5).

A ``SpoolWriter`` owns one append's file handle. Its methods run in worker threads, one at a
time. Stores adapt it through two hooks: ``prepare`` (checks or repairs the file before the
first write) and ``after_close``. Inside a long body, every ``commit_interval`` bytes are
either written back without waiting (the disk store, whose offset is the file size) or
synced and offered as a committable offset (stores that keep the offset elsewhere, which then
record it through ``on_batch``).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.aio import IoPool, run_to_completion
from gateway.files import start_writeback
from protocol import errors
from protocol.headers import Checksum

# Up to this many concurrent appends, each overlaps its disk write with reading the next
# batch (two buffers); beyond it, the other uploads keep the disk busy and one buffer each
# keeps memory flat.
OVERLAP_UP_TO = 8


def pwrite_all(fd: int, buffers: list[bytes], offset: int, hasher: Any) -> int:
    """Write every buffer at ``offset`` (looping over short writes); feed the hasher too."""
    total = 0
    if hasher is not None:
        for buf in buffers:
            hasher.update(buf)
    pending: list[bytes | memoryview] = list(buffers)
    while pending:
        written = os.pwritev(fd, pending, offset + total)
        if written == 0:
            raise OSError(errno.EIO, "short write")
        total += written
        while pending and written >= len(pending[0]):
            written -= len(pending[0])
            pending.pop(0)
        if pending and written:
            pending[0] = memoryview(pending[0])[written:]
    return total


class SpoolWriter:
    """One append's file handle; every method runs in a worker thread, one at a time."""

    def __init__(self, path: Path, offset: int, checksum: Checksum | None, *, durable: bool,
                 commit_interval: int, sync_windows: bool = False) -> None:
        self.path = path
        self.offset = offset
        self.checksum = checksum
        self.hasher = hashlib.new(checksum.algorithm) if checksum is not None else None
        self.durable = durable
        self.commit_interval = commit_interval
        # An unverified body must not become visible before its checksum is known.
        self.sync_windows = sync_windows and checksum is None
        self.fd: int | None = None
        self.submitted = 0  # bytes handed to writes (maintained by the event loop side)
        self.written = 0
        self.window_start = 0
        self.synced = offset  # bytes known durable, for stores that commit windows
        self.size = offset

    # --- hooks -------------------------------------------------------------------------------
    def prepare(self, fd: int) -> None:
        """Check the file before the first write; raise to refuse it."""

    def after_close(self, keep: bool) -> None:
        """Clean-up after the final sync and close."""

    # --- worker-thread steps -----------------------------------------------------------------
    def _open(self) -> int:
        if self.fd is None:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                self.prepare(fd)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
        return self.fd

    def write(self, buffers: list[bytes]) -> None:
        fd = self._open()
        self.written += pwrite_all(fd, buffers, self.offset + self.written, self.hasher)
        if self.written - self.window_start < self.commit_interval:
            return
        if self.sync_windows:
            if self.durable:
                os.fdatasync(fd)
            self.synced = self.offset + self.written
        elif self.durable:
            # Start writing this window back without waiting for it: receiving goes on,
            # and the fdatasync that acknowledges the bytes later has little left to do.
            start_writeback(fd, self.offset + self.window_start,
                            self.written - self.window_start)
        self.window_start = self.written

    def finish(self, buffers: list[bytes], keep: bool) -> None:
        """Write the rest, verify, then commit (sync) or roll back (truncate); close."""
        try:
            fd = self._open()
            if buffers:
                self.write(buffers)
            if keep and self.hasher is not None and self.checksum is not None \
                    and self.hasher.digest() != self.checksum.digest:
                keep = False
                raise errors.ChecksumMismatch()
        finally:
            if self.fd is not None:
                self.fd = None
                self._close(fd, keep)

    def _close(self, fd: int, keep: bool) -> None:
        try:
            if not keep:
                # Bytes already offered as committable stay: they may have been reported.
                os.ftruncate(fd, self.synced)
            if self.durable:
                os.fdatasync(fd)
            self.size = os.fstat(fd).st_size
            self.synced = self.size
        finally:
            os.close(fd)
        self.after_close(keep)


async def pump(writer: SpoolWriter, chunks: AsyncIterator[bytes], pool: IoPool, *,
               buffer_bytes: int, max_bytes: int | None, crowded: Callable[[], bool],
               on_batch: Callable[[], Awaitable[None]] | None = None,
               on_settled: Callable[[bool], None] | None = None) -> int:
    """Stream ``chunks`` through ``writer``; returns the new size of the data file.

    Stalls, disconnects, lock release and shutdown keep the bytes that arrived (TUS-PATCH-06)
    unless they are unverifiable or over the limit. The final write, sync and close run to
    completion even when the caller is cancelled, so a lock is never released before the
    commit. ``on_batch`` runs after each batch is written; ``on_settled(ok)`` after the close.
    """
    buffers: list[bytes] = []
    buffered = 0
    pending: asyncio.Future[None] | None = None
    keep = True
    try:
        async for chunk in chunks:
            if max_bytes is not None and writer.submitted + buffered + len(chunk) > max_bytes:
                raise errors.SizeExceeded(
                    f"the body would pass the upload's length at {writer.offset + max_bytes}")
            buffers.append(chunk)
            buffered += len(chunk)
            if buffered < buffer_bytes:
                continue
            if pending is not None:
                # Shielded: cancelling the handler must not cancel a write in flight.
                await asyncio.shield(pending)
                if on_batch is not None:
                    await on_batch()
            # One batch is written while the next one fills: two buffers per upload.
            pending = pool.submit(writer.write, buffers)
            writer.submitted += buffered
            buffers, buffered = [], 0
            if crowded():
                # Many uploads keep the disk busy already; one buffer each bounds memory.
                await asyncio.shield(pending)
    except BaseException as exc:
        keep = writer.checksum is None and not isinstance(exc, errors.SizeExceeded)
        raise
    finally:
        await run_to_completion(_settle(pool, pending, writer, buffers, keep, on_settled))
    return writer.size


async def _settle(pool: IoPool, pending: asyncio.Future[None] | None, writer: SpoolWriter,
                  buffers: list[bytes], keep: bool,
                  on_settled: Callable[[bool], None] | None) -> None:
    try:
        if pending is not None:
            await pending
    finally:
        try:
            # The last batch, the checksum verdict, the sync and the close in one step: a
            # small body costs a single trip to a worker thread.
            await pool.run(writer.finish, buffers if keep else [], keep)
        except BaseException:
            if on_settled is not None:
                on_settled(False)
            raise
        if on_settled is not None:
            on_settled(True)


def concatenate(target: Path, sources: list[tuple[Path, int | None]], durable: bool) -> int:
    """Fill ``target`` with the sources' bytes in order (blocking); returns the length.

    Each source is a path and how many of its bytes count (None: all of them)."""
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
    finally:
        os.close(out)
    return total
