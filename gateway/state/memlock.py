"""Per-upload locks for one gateway process, with "please let go".

Theory of operation: at most one request holds an upload. A newcomer (HEAD, PATCH, DELETE)
does not queue behind a possibly dead connection: it calls the holder's release callback,
which makes the holder stop reading its body, commit the bytes it has and release. The
newcomer waits on an event, bounded by its timeout (TUS-PATCH-13). Locks of different
uploads never interact. The disk backend allows one gateway process per data directory
(``DiskStore`` takes an exclusive lock on it), so in-process locks are complete there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol import errors


@dataclass(eq=False)
class _Holder:
    on_release_requested: Callable[[], None]
    released: asyncio.Event = field(default_factory=asyncio.Event)
    asked: bool = False

    def ask(self) -> None:
        if not self.asked:
            self.asked = True
            self.on_release_requested()


class MemoryLocker:
    def __init__(self) -> None:
        self._held: dict[str, _Holder] = {}

    def new_lock(self, upload_id: str) -> MemoryLock:
        return MemoryLock(self, upload_id)

    def held(self, upload_id: str) -> bool:
        return upload_id in self._held


class MemoryLock:
    def __init__(self, locker: MemoryLocker, upload_id: str) -> None:
        self._locker = locker
        self._id = upload_id
        self._holder: _Holder | None = None

    async def acquire(self, timeout_s: float, on_release_requested: Callable[[], None]) -> None:
        await self.wait_free(timeout_s)
        # No await since the upload was seen free: nobody can have taken it meanwhile.
        self._holder = _Holder(on_release_requested)
        self._locker._held[self._id] = self._holder

    async def wait_free(self, timeout_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        held = self._locker._held
        while (holder := held.get(self._id)) is not None:
            holder.ask()
            try:
                async with asyncio.timeout_at(deadline):
                    await holder.released.wait()
            except TimeoutError:
                raise errors.UploadLocked() from None

    async def release(self) -> None:
        holder, self._holder = self._holder, None
        if holder is None:
            return
        if self._locker._held.get(self._id) is holder:
            del self._locker._held[self._id]
        holder.released.set()
