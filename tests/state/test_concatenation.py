"""The ``Concatenation`` part: partials joined into a final, and the finals waiting for
their partials. A store without it serves no concatenation (``gateway.state.parts``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.state.base import Concatenation, UploadStore
from gateway.state.redis import RedisBackend, RedisStore
from protocol import errors
from protocol.headers import ConcatFinal, ConcatPartial
from tests.redis_server import RedisServer
from tests.state.stores import chunks, new_info, store_fixture

# Every store this module runs on has the part, its own or kept in the gateway's process.
StoreFactory = Callable[[], Awaitable[UploadStore]]

open_store = store_fixture(Concatenation)


async def test_assemble_joins_partials_in_order(open_store: StoreFactory) -> None:
    store = await open_store()
    parts = []
    for n, data in ((10, b"hello "), (11, b"world")):
        info = new_info(n, len(data), concat=ConcatPartial())
        await store.create(info)
        await store.append(info.upload_id, 0, chunks(data), max_bytes=len(data), checksum=None)
        parts.append(info.upload_id)
    final = new_info(12, None, concat=ConcatFinal((parts[1], parts[0], parts[1])))
    await store.create(final)
    assert final.concat is not None
    total = await store.assemble(final, (parts[1], parts[0], parts[1]))
    assert total == 16
    assert store.data_path(final.upload_id).read_bytes() == b"worldhello world"


async def test_waiting_finals_are_shared_and_kept(open_store: StoreFactory) -> None:
    store = await open_store()
    waiting = new_info(34, None, concat=ConcatFinal(("a" * 32, "b" * 32)))
    removed = new_info(35, None, concat=ConcatFinal(("c" * 32,)))
    for info in (waiting, removed):
        await store.create(info)
        assert isinstance(info.concat, ConcatFinal)
        await store.register_final(info.upload_id, info.concat.upload_ids)
    await store.terminate(removed.upload_id, "terminated")
    await store.unregister_final(removed.upload_id)
    expected = {waiting.upload_id: ("a" * 32, "b" * 32)}
    assert await store.waiting_finals() == expected
    assert await (await open_store()).waiting_finals() == expected


async def test_finals_waiting_on_a_partial_are_bounded(open_store: StoreFactory) -> None:
    store = await open_store()
    p, q = "a" * 32, "b" * 32
    first, second, third = (new_info(n, None, concat=ConcatFinal((p,))) for n in (40, 41, 42))
    await store.register_final(first.upload_id, (p, p), max_per_partial=2)
    await store.register_final(second.upload_id, (p,), max_per_partial=2)
    # Registering again (recovery does) neither counts twice nor is refused.
    await store.register_final(first.upload_id, (p, p), max_per_partial=2)
    with pytest.raises(errors.TooManyFinals):
        await store.register_final(third.upload_id, (q, p), max_per_partial=2)
    # Refused whole: nothing of it stays, not even on the partial that had room.
    assert await store.finals_waiting_on(q) == []
    assert third.upload_id not in await store.waiting_finals()
    assert sorted(await store.finals_waiting_on(p)) == sorted([first.upload_id,
                                                                second.upload_id])
    await store.unregister_final(first.upload_id)
    await store.register_final(third.upload_id, (q, p), max_per_partial=2)
    assert await store.finals_waiting_on(q) == [third.upload_id]
    assert sorted(await store.finals_waiting_on(p)) == sorted([second.upload_id,
                                                                third.upload_id])


async def test_finals_waiting_on_a_partial_survive_a_restart(open_store: StoreFactory) -> None:
    store = await open_store()
    p = "c" * 32
    final = new_info(43, None, concat=ConcatFinal((p, "d" * 32)))
    await store.create(final)
    await store.register_final(final.upload_id, (p, "d" * 32), max_per_partial=1)
    store = await open_store()
    assert await store.finals_waiting_on(p) == [final.upload_id]
    with pytest.raises(errors.TooManyFinals):
        await store.register_final("e" * 32, (p,), max_per_partial=1)


async def test_finals_registered_before_the_per_partial_sets_are_found(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """A final that waited before each partial kept its set of finals (only the global hash
    names it) is found through its partials once a store opens."""
    pool = IoPool(2)
    backend = RedisBackend(redis_server.url, prefix=f"w{uuid.uuid4().hex[:12]}")
    await backend.open()
    try:
        final, partial = "1" * 32, "2" * 32
        await backend.client.hset(backend.keys.finals, final, json.dumps([partial, partial]))
        store = RedisStore(backend, tmp_path / "data", pool, fsync=FsyncPolicy.OFF,
                           write_buffer_bytes=64 * 1024, commit_interval_bytes=256 * 1024,
                           sync_interval_bytes=256 * 1024, tombstone_ttl_s=3600)
        assert await store.finals_waiting_on(partial) == []
        await store.open()
        assert await store.finals_waiting_on(partial) == [final]
    finally:
        await backend.close()
        await asyncio.get_running_loop().run_in_executor(None, pool.close)
