"""The store and lock contract, run against every backend.

Every backend of ``UploadStore`` and ``Locker`` must pass this suite unchanged; today that is
the disk store and the in-process locker. Real files in a temporary directory, no mocks.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.state.base import Locker, UploadStore
from gateway.state.disk import DiskStore
from gateway.state.memlock import MemoryLocker
from protocol import errors
from protocol.headers import Checksum, ConcatFinal, ConcatPartial
from protocol.model import UploadInfo

StoreFactory = Callable[[], Awaitable[UploadStore]]


@pytest.fixture(params=["disk"])
async def open_store(request: pytest.FixtureRequest,
                     tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens a store on the same backing state each time, like a restarted gateway."""
    pool = IoPool(4)
    opened: list[DiskStore] = []

    async def factory() -> UploadStore:
        for old in opened:
            await old.close()
        store = DiskStore(tmp_path / "data", pool, fsync=FsyncPolicy.ACK,
                          write_buffer_bytes=64 * 1024, commit_interval_bytes=256 * 1024)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()
    await asyncio.get_running_loop().run_in_executor(None, pool.close)


@pytest.fixture(params=["memory"])
def locker(request: pytest.FixtureRequest) -> Locker:
    return MemoryLocker()


def new_info(n: int, length: int | None = 100, **kw: object) -> UploadInfo:
    return UploadInfo(f"{n:032x}", length, created_at=time.time(), **kw)  # type: ignore[arg-type]


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def failing(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    raise errors.ClientDisconnected("cut off")


async def test_create_get_round_trip(open_store: StoreFactory) -> None:
    store = await open_store()
    info = new_info(1, None, metadata={"filename": "ü.txt".encode(), "empty": b""},
                    concat=ConcatPartial())
    await store.create(info)
    state = await store.get(info.upload_id)
    assert state.offset == 0 and state.info == info
    restarted = await open_store()
    assert (await restarted.get(info.upload_id)).info == info


async def test_unknown_is_not_found(open_store: StoreFactory) -> None:
    store = await open_store()
    with pytest.raises(errors.NotFound):
        await store.get("f" * 32)
    with pytest.raises(errors.NotFound):
        await store.get("../../etc/passwd")


async def test_append_advances_by_stored_bytes(open_store: StoreFactory) -> None:
    store = await open_store()
    info = new_info(2, 300_000)
    await store.create(info)
    body = bytes(range(256)) * 1000
    offset = await store.append(info.upload_id, 0, chunks(body[:100_000], body[100_000:256_000]),
                                max_bytes=300_000, checksum=None)
    assert offset == 256_000 == (await store.get(info.upload_id)).offset
    assert store.data_path(info.upload_id).read_bytes() == body
    restarted = await open_store()
    assert (await restarted.get(info.upload_id)).offset == 256_000


async def test_append_at_a_wrong_offset_changes_nothing(open_store: StoreFactory) -> None:
    store = await open_store()
    info = new_info(3)
    await store.create(info)
    await store.append(info.upload_id, 0, chunks(b"abc"), max_bytes=100, checksum=None)
    with pytest.raises(errors.MismatchedOffset):
        await store.append(info.upload_id, 1, chunks(b"xyz"), max_bytes=99, checksum=None)
    assert (await store.get(info.upload_id)).offset == 3
    assert store.data_path(info.upload_id).read_bytes() == b"abc"


async def test_append_past_the_limit_changes_nothing(open_store: StoreFactory) -> None:
    store = await open_store()
    info = new_info(4, 150_000)
    await store.create(info)
    with pytest.raises(errors.SizeExceeded):
        await store.append(info.upload_id, 0, chunks(b"a" * 100_000, b"b" * 100_000),
                           max_bytes=150_000, checksum=None)
    assert (await store.get(info.upload_id)).offset == 0


@pytest.mark.parametrize("good", [True, False])
async def test_checksum_verified_or_discarded(open_store: StoreFactory, good: bool) -> None:
    store = await open_store()
    info = new_info(5, 500_000)
    await store.create(info)
    await store.append(info.upload_id, 0, chunks(b"head"), max_bytes=500_000, checksum=None)
    body = b"q" * 300_000
    digest = hashlib.sha256(body if good else b"other").digest()
    call = store.append(info.upload_id, 4, chunks(body[:150_000], body[150_000:]),
                        max_bytes=499_996, checksum=Checksum("sha256", digest))
    if good:
        assert await call == 300_004
    else:
        with pytest.raises(errors.ChecksumMismatch):
            await call
        assert (await store.get(info.upload_id)).offset == 4
        assert store.data_path(info.upload_id).read_bytes() == b"head"


@pytest.mark.parametrize("with_checksum", [False, True])
async def test_interrupted_append_keeps_or_discards(open_store: StoreFactory,
                                                    with_checksum: bool) -> None:
    store = await open_store()
    info = new_info(6, 1_000_000)
    await store.create(info)
    checksum = Checksum("sha1", bytes(20)) if with_checksum else None
    with pytest.raises(errors.ClientDisconnected):
        await store.append(info.upload_id, 0, failing(b"k" * 200_000, b"j" * 50_000),
                           max_bytes=1_000_000, checksum=checksum)
    expected = 0 if with_checksum else 250_000
    assert (await store.get(info.upload_id)).offset == expected
    assert (await (await open_store()).get(info.upload_id)).offset == expected


async def test_save_info_declares_a_length(open_store: StoreFactory) -> None:
    store = await open_store()
    info = new_info(7, None)
    await store.create(info)
    await store.save_info(info.replace(length=42))
    assert (await store.get(info.upload_id)).info.length == 42
    assert (await (await open_store()).get(info.upload_id)).info.length == 42


async def test_terminate_then_gone(open_store: StoreFactory) -> None:
    store = await open_store()
    info = new_info(8)
    await store.create(info)
    await store.append(info.upload_id, 0, chunks(b"abc"), max_bytes=100, checksum=None)
    await store.terminate(info.upload_id, "terminated")
    with pytest.raises(errors.Gone):
        await store.get(info.upload_id)
    assert info.upload_id not in await store.upload_ids()
    restarted = await open_store()
    with pytest.raises(errors.Gone):
        await restarted.get(info.upload_id)
    assert await restarted.purge_tombstones(time.time() + 1) == 1
    with pytest.raises(errors.NotFound):
        await restarted.get(info.upload_id)


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


async def test_upload_ids_lists_live_uploads(open_store: StoreFactory) -> None:
    store = await open_store()
    for n in (20, 21, 22):
        await store.create(new_info(n))
    await store.terminate(new_info(21).upload_id, "terminated")
    assert await store.upload_ids() == [new_info(20).upload_id, new_info(22).upload_id]


async def test_lock_asks_the_holder_and_waits(locker: Locker) -> None:
    asked = asyncio.Event()
    first = locker.new_lock("a" * 32)
    await first.acquire(1.0, asked.set)
    second = locker.new_lock("a" * 32)
    waiter = asyncio.create_task(second.acquire(5.0, lambda: None))
    await asyncio.wait_for(asked.wait(), 1.0)  # the newcomer asked the holder to let go
    assert not waiter.done()
    await first.release()
    await asyncio.wait_for(waiter, 1.0)
    await second.release()


async def test_lock_times_out_when_the_holder_does_not_let_go(locker: Locker) -> None:
    holder = locker.new_lock("b" * 32)
    await holder.acquire(1.0, lambda: None)
    started = asyncio.get_running_loop().time()
    with pytest.raises(errors.UploadLocked):
        await locker.new_lock("b" * 32).acquire(0.2, lambda: None)
    assert asyncio.get_running_loop().time() - started < 2.0
    other = locker.new_lock("c" * 32)  # other uploads are never blocked
    await asyncio.wait_for(other.acquire(0.1, lambda: None), 1.0)
    await other.release()
    await holder.release()
    again = locker.new_lock("b" * 32)
    await asyncio.wait_for(again.acquire(0.1, lambda: None), 1.0)
    await again.release()
