"""A store with only the core (``gateway.state.base.CoreStore``): records in memory, bytes in
files (sinks and downloads read an upload's bytes from ``data_path``).

It shows what a new backend has to write, and nothing more: no concatenation, no sink
checkpoints, no indexes, leases or open-slot counts (``gateway.state.parts`` supplies those
in the gateway's process). ``MemoryBacking`` is what outlives one store object, as a
database outlives a connection, so a test can "restart" a store on the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from protocol import errors
from protocol.headers import UPLOAD_ID, Checksum
from protocol.model import HookState, UploadInfo, UploadState, newest_hook


@dataclass
class MemoryBacking:
    """The records: what a restarted store finds again."""

    spool: Path
    records: dict[str, UploadInfo] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    activity: dict[str, float] = field(default_factory=dict)  # when bytes last arrived
    tombstones: dict[str, float] = field(default_factory=dict)  # removed upload -> when


class MemoryStore:
    """``CoreStore`` on a ``MemoryBacking``; one gateway process at a time."""

    def __init__(self, backing: MemoryBacking) -> None:
        self.backing = backing

    async def open(self) -> None:
        await asyncio.to_thread(self.backing.spool.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    def data_path(self, upload_id: str) -> Path:
        if not UPLOAD_ID.fullmatch(upload_id):
            raise errors.NotFound()
        return self.backing.spool / f"{upload_id}.bin"

    def _info(self, upload_id: str) -> UploadInfo:
        info = self.backing.records.get(upload_id)
        if info is None:
            raise errors.Gone() if upload_id in self.backing.tombstones else errors.NotFound()
        return info

    async def create(self, info: UploadInfo) -> UploadState:
        path = self.data_path(info.upload_id)
        await asyncio.to_thread(lambda: os.close(os.open(path, os.O_WRONLY | os.O_CREAT
                                                         | os.O_EXCL, 0o600)))
        backing = self.backing
        backing.records[info.upload_id] = info
        backing.offsets[info.upload_id] = 0
        backing.activity[info.upload_id] = info.created_at
        return UploadState(info, 0, info.created_at)

    async def get(self, upload_id: str) -> UploadState:
        info = self._info(self.data_path(upload_id).stem)
        return UploadState(info, self.backing.offsets[upload_id],
                           self.backing.activity[upload_id])

    async def append(self, upload_id: str, offset: int, chunks: AsyncIterator[bytes], *,
                     max_bytes: int | None, checksum: Checksum | None) -> int:
        self._info(upload_id)
        stored = self.backing.offsets[upload_id]
        if offset != stored:
            raise errors.MismatchedOffset(headers={"Upload-Offset": str(stored)})
        path = self.data_path(upload_id)
        hasher = hashlib.new(checksum.algorithm) if checksum is not None else None
        fd = await asyncio.to_thread(os.open, path, os.O_WRONLY)
        end = offset
        try:
            try:
                async for chunk in chunks:
                    if max_bytes is not None and end - offset + len(chunk) > max_bytes:
                        raise errors.SizeExceeded(
                            f"the body would pass the upload's length at {offset + max_bytes}")
                    await asyncio.to_thread(os.pwrite, fd, chunk, end)
                    end += len(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
            except errors.SizeExceeded:
                await asyncio.to_thread(os.ftruncate, fd, offset)
                raise
            except BaseException:
                if hasher is not None:  # an unverifiable body is discarded whole
                    await asyncio.to_thread(os.ftruncate, fd, offset)
                else:
                    self._commit(upload_id, end)
                raise
            if checksum is not None and hasher is not None \
                    and hasher.digest() != checksum.digest:
                await asyncio.to_thread(os.ftruncate, fd, offset)
                raise errors.ChecksumMismatch()
            await asyncio.to_thread(os.fsync, fd)
        finally:
            await asyncio.to_thread(os.close, fd)
        self._commit(upload_id, end)
        return end

    def _commit(self, upload_id: str, offset: int) -> None:
        if upload_id in self.backing.records:  # not when removed meanwhile
            self.backing.offsets[upload_id] = offset
            self.backing.activity[upload_id] = time.time()

    async def save_info(self, info: UploadInfo, *, durable: bool = True) -> None:
        current = self._info(info.upload_id)
        self.backing.records[info.upload_id] = info.replace(
            hook=newest_hook(info.hook, current.hook))

    async def save_hook(self, upload_id: str, hook: HookState) -> None:
        current = self._info(upload_id)
        if current.hook is not None and current.hook.done:
            return
        self.backing.records[upload_id] = current.replace(
            hook=newest_hook(current.hook, hook))

    async def terminate(self, upload_id: str, reason: str, *,
                        if_offset: int | None = None) -> bool:
        if if_offset is not None and (await self.get(upload_id)).offset != if_offset:
            return False
        backing = self.backing
        backing.tombstones[upload_id] = time.time()
        backing.records.pop(upload_id, None)
        backing.offsets.pop(upload_id, None)
        backing.activity.pop(upload_id, None)
        await self.discard_data(upload_id)
        return True

    async def discard_data(self, upload_id: str) -> None:
        path = self.data_path(upload_id)
        await asyncio.to_thread(path.unlink, missing_ok=True)

    async def upload_ids(self) -> list[str]:
        return sorted(self.backing.records)

    async def purge_tombstones(self, older_than: float) -> int:
        old = [i for i, at in self.backing.tombstones.items() if at < older_than]
        for upload_id in old:
            del self.backing.tombstones[upload_id]
        return len(old)

    async def remove_orphans(self, older_than: float) -> int:
        records = set(self.backing.records)

        def scan() -> int:
            count = 0
            for data in self.backing.spool.glob("*.bin"):
                with contextlib.suppress(FileNotFoundError):
                    if data.stem not in records and data.stat().st_mtime < older_than:
                        data.unlink()
                        count += 1
            return count
        return await asyncio.to_thread(scan)

    @property
    def unreadable(self) -> int:
        return 0  # records are objects here: nothing to misread
