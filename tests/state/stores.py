"""The stores the contract suites run on, and which suite runs on which.

The core contract (``test_contract.py``) runs on every backend: disk, Redis, and the
in-memory store that provides only the core (``tests.state.memory``). Each optional part has
a module of its own (``test_concatenation.py``, ``test_checkpoints.py``, ``test_owed_work.py``,
``test_leases.py``, ``test_open_slots.py``, ``test_expiry_index.py``, ``test_owners.py``), run
on every backend that provides the part, and, for the parts that the gateway keeps in its
own process when a backend lacks them (``gateway.state.parts``), on the backends that get
them that way: the disk store and the in-memory store (``memory+kept``). The disk store
always runs as the gateway uses it, through ``StoreParts``, so its kept parts are rebuilt
from its own reading of the records at open.

A factory opens a store on the same backing state each time it is called, like a restarted
gateway. Real files in a temporary directory, a real redis-server, no mocks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.state.base import CoreStore, ExpiryIndex, Leases, OpenSlots, OwedWork, Owners
from gateway.state.disk import DiskStore
from gateway.state.parts import StoreParts
from gateway.state.redis import RedisBackend, RedisStore
from protocol import errors
from protocol.model import UploadInfo
from tests.redis_server import RedisServer
from tests.state.memory import MemoryBacking, MemoryStore

BACKENDS: dict[str, type] = {"disk": DiskStore, "redis": RedisStore, "memory": MemoryStore}
# The in-memory store seen through the parts the gateway keeps for it.
KEPT = "memory+kept"
# The parts ``StoreParts`` keeps in the gateway's process for a store without them.
KEPT_PARTS: tuple[type, ...] = (OwedWork, Leases, OpenSlots, ExpiryIndex, Owners)
# The stores seen through ``StoreParts``, which keeps the parts they lack.
THROUGH_PARTS = ("disk", KEPT)

StoreFactory = Callable[[], Awaitable[CoreStore]]


def backends_with(part: type | None) -> list[str]:
    """The stores a part's contract runs on (None: the core, on every backend itself)."""
    if part is None:
        return list(BACKENDS)
    own = [kind for kind, cls in BACKENDS.items() if issubclass(cls, part)]
    kept = [kind for kind in THROUGH_PARTS if kind not in own and part in KEPT_PARTS]
    return own + kept


def store_fixture(part: type | None) -> Any:
    """An ``open_store`` fixture over ``backends_with(part)``."""

    @pytest.fixture(params=backends_with(part))
    async def open_store(request: pytest.FixtureRequest,
                         tmp_path: Path) -> AsyncIterator[StoreFactory]:
        pool = IoPool(4)
        opened: list[CoreStore] = []
        backends: list[RedisBackend] = []
        prefix = f"c{uuid.uuid4().hex[:12]}"
        backing = MemoryBacking(tmp_path / "data" / "uploads")

        async def factory() -> CoreStore:
            for old in opened:
                await old.close()
            for old_backend in backends:
                await old_backend.close()
            store: CoreStore
            if request.param == "disk":
                store = StoreParts.of(DiskStore(tmp_path / "data", pool,
                                                fsync=FsyncPolicy.ACK,
                                                write_buffer_bytes=64 * 1024,
                                                commit_interval_bytes=256 * 1024)).store
            elif request.param == "redis":
                server: RedisServer = request.getfixturevalue("redis_server")
                backend = RedisBackend(server.url, prefix=prefix)
                await backend.open()
                backends.append(backend)
                store = RedisStore(backend, tmp_path / "data", pool, fsync=FsyncPolicy.ACK,
                                   write_buffer_bytes=64 * 1024,
                                   commit_interval_bytes=256 * 1024,
                                   sync_interval_bytes=256 * 1024, tombstone_ttl_s=3600)
            elif request.param == "memory":
                store = MemoryStore(backing)
            else:
                store = StoreParts.of(MemoryStore(backing)).store
            await store.open()
            opened.append(store)
            return store

        yield factory
        for store in opened:
            await store.close()
        for backend in backends:
            await backend.close()
        await asyncio.get_running_loop().run_in_executor(None, pool.close)

    return open_store


def new_info(n: int, length: int | None = 100, **kw: object) -> UploadInfo:
    return UploadInfo(f"{n:032x}", length, created_at=time.time(), **kw)  # type: ignore[arg-type]


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def failing(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    raise errors.ClientDisconnected("cut off")
