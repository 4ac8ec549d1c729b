"""The ``OpenSlots`` part: unfinished uploads, bounded in total and per client."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.state.base import OpenSlots, UploadStore
from gateway.state.redis import RedisBackend, RedisStore
from protocol import errors
from protocol.headers import ConcatFinal
from protocol.model import UploadInfo
from tests.redis_server import RedisServer
from tests.state.stores import chunks, new_info, store_fixture

# Every store this module runs on has the part, its own or kept in the gateway's process.
StoreFactory = Callable[[], Awaitable[UploadStore]]

open_store = store_fixture(OpenSlots)


LIMITS = {"max_total": 3, "max_per_client": 2}


async def _open(store: UploadStore, n: int, client: str, **limits: int) -> UploadInfo:
    """A new upload counted as open, the way ``Uploads.create`` makes one."""
    info = new_info(n, client=client)
    await store.claim_open_slot(info.upload_id, client, **(limits or LIMITS))
    await store.create(info)
    return info


async def test_open_slots_are_bounded_in_total_and_per_client(open_store: StoreFactory) -> None:
    store = await open_store()
    a1 = await _open(store, 50, "a" * 32)
    await _open(store, 51, "a" * 32)
    with pytest.raises(errors.ClientOpenUploadsLimit) as refused:
        await store.claim_open_slot(new_info(52).upload_id, "a" * 32, **LIMITS)
    assert refused.value.status == 429 and "Retry-After" in refused.value.extra_headers
    await _open(store, 53, "b" * 32)
    with pytest.raises(errors.OpenUploadsLimit):
        await store.claim_open_slot(new_info(54).upload_id, "c" * 32, **LIMITS)
    # A refused claim took nothing; a claim made again for the same upload counts once.
    assert await store.open_slots_taken() == 3
    assert await store.open_slots_taken("a" * 32) == 2
    assert await store.open_slots_taken("c" * 32) == 0
    await store.claim_open_slot(a1.upload_id, "a" * 32, **LIMITS)
    assert await store.open_slots_taken() == 3
    # Finishing (the caller releases) or terminating frees a slot, once.
    await store.release_open_slot(a1.upload_id)
    await store.release_open_slot(a1.upload_id)
    assert await store.open_slots_taken() == 2
    await store.claim_open_slot(new_info(55).upload_id, "c" * 32, **LIMITS)
    with pytest.raises(errors.OpenUploadsLimit):
        await store.claim_open_slot(new_info(56).upload_id, "d" * 32, **LIMITS)


async def test_open_slots_with_no_limit(open_store: StoreFactory) -> None:
    store = await open_store()
    for n in range(60, 66):
        await _open(store, n, "a" * 32, max_total=0, max_per_client=0)
    assert await store.open_slots_taken() == 6


async def test_terminating_an_upload_frees_its_open_slot(open_store: StoreFactory) -> None:
    store = await open_store()
    info = await _open(store, 70, "a" * 32)
    assert await store.open_slots_taken("a" * 32) == 1
    await store.terminate(info.upload_id, "expired")
    assert await store.open_slots_taken("a" * 32) == 0
    assert await store.open_slots_taken() == 0


async def test_open_slots_are_right_after_a_restart(open_store: StoreFactory) -> None:
    store = await open_store()
    unfinished = await _open(store, 80, "a" * 32)
    await store.append(unfinished.upload_id, 0, chunks(b"abc"), max_bytes=100, checksum=None)
    finished = await _open(store, 81, "a" * 32)
    await store.append(finished.upload_id, 0, chunks(b"x" * 100), max_bytes=100,
                       checksum=None)
    await store.release_open_slot(finished.upload_id)
    final = new_info(82, None, concat=ConcatFinal(("f" * 32,)), client="b" * 32)
    await store.claim_open_slot(final.upload_id, "b" * 32, **LIMITS)
    await store.create(final)
    # A claim whose record was never written (a crash in between) is not an upload.
    await store.claim_open_slot(new_info(83).upload_id, "b" * 32, **LIMITS)
    store = await open_store()
    await store.remove_orphans(time.time() + 1)
    assert await store.open_slots_taken("a" * 32) == 1
    assert await store.open_slots_taken("b" * 32) == 1
    assert await store.open_slots_taken() == 2
    await store.claim_open_slot(new_info(84).upload_id, "a" * 32, **LIMITS)
    with pytest.raises(errors.OpenUploadsLimit):
        await store.claim_open_slot(new_info(85).upload_id, "c" * 32, **LIMITS)


async def test_racing_claims_never_pass_the_limit(open_store: StoreFactory) -> None:
    store = await open_store()
    results = await asyncio.gather(
        *(store.claim_open_slot(new_info(n).upload_id, f"{n % 2:032x}", max_total=5,
                                max_per_client=0) for n in range(90, 110)),
        return_exceptions=True)
    assert sum(r is None for r in results) == 5
    assert all(r is None or isinstance(r, errors.OpenUploadsLimit) for r in results)
    assert await store.open_slots_taken() == 5


async def test_instances_sharing_redis_share_the_open_limit(redis_server: RedisServer,
                                                            tmp_path: Path) -> None:
    """Several gateways on one Redis: their claims count against one limit, atomically."""
    pool = IoPool(4)
    prefix = f"o{uuid.uuid4().hex[:12]}"
    backends = [RedisBackend(redis_server.url, prefix=prefix) for _ in range(3)]
    try:
        stores = []
        for backend in backends:
            await backend.open()
            stores.append(RedisStore(backend, tmp_path / "data", pool, fsync=FsyncPolicy.OFF,
                                     write_buffer_bytes=64 * 1024,
                                     commit_interval_bytes=256 * 1024,
                                     sync_interval_bytes=256 * 1024, tombstone_ttl_s=3600))
        results = await asyncio.gather(
            *(stores[n % 3].claim_open_slot(new_info(n).upload_id, "a" * 32, max_total=100,
                                            max_per_client=7) for n in range(120, 150)),
            return_exceptions=True)
        assert sum(r is None for r in results) == 7
        assert all(r is None or isinstance(r, errors.ClientOpenUploadsLimit) for r in results)
        assert [await s.open_slots_taken("a" * 32) for s in stores] == [7, 7, 7]
    finally:
        for backend in backends:
            await backend.close()
        await asyncio.get_running_loop().run_in_executor(None, pool.close)
