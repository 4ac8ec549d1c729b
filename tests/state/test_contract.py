"""The store and lock contract, run against every backend.

Every backend of ``UploadStore`` and ``Locker`` must pass this suite unchanged: the disk store
with the in-process locker, and the Redis store with Redis locks (against a real
redis-server). Real files in a temporary directory, no mocks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.state.base import Locker, UploadStore
from gateway.state.disk import DiskStore
from gateway.state.memlock import MemoryLocker
from gateway.state.redis import RedisBackend, RedisLocker, RedisStore
from protocol import errors
from protocol.headers import Checksum, ConcatFinal, ConcatPartial
from protocol.model import Checkpoint, UploadInfo
from tests.redis_server import RedisServer

StoreFactory = Callable[[], Awaitable[UploadStore]]


@pytest.fixture(params=["disk", "redis"])
async def open_store(request: pytest.FixtureRequest,
                     tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens a store on the same backing state each time, like a restarted gateway."""
    pool = IoPool(4)
    opened: list[DiskStore | RedisStore] = []
    backends: list[RedisBackend] = []
    prefix = f"c{uuid.uuid4().hex[:12]}"

    async def factory() -> UploadStore:
        for old in opened:
            await old.close()
        for backend in backends:
            await backend.close()
        store: DiskStore | RedisStore
        if request.param == "disk":
            store = DiskStore(tmp_path / "data", pool, fsync=FsyncPolicy.ACK,
                              write_buffer_bytes=64 * 1024, commit_interval_bytes=256 * 1024)
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            backend = RedisBackend(server.url, prefix=prefix)
            await backend.open()
            backends.append(backend)
            store = RedisStore(backend, tmp_path / "data", pool, fsync=FsyncPolicy.ACK,
                               write_buffer_bytes=64 * 1024, commit_interval_bytes=256 * 1024,
                               sync_interval_bytes=256 * 1024, tombstone_ttl_s=3600)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()
    for backend in backends:
        await backend.close()
    await asyncio.get_running_loop().run_in_executor(None, pool.close)


LockerFactory = Callable[[], Awaitable[Locker]]


@pytest.fixture(params=["memory", "redis"])
async def lockers(request: pytest.FixtureRequest) -> AsyncIterator[LockerFactory]:
    """Lockers of one deployment: the same one in-process, or one per instance with Redis."""
    backends: list[RedisBackend] = []
    memory = MemoryLocker()
    prefix = f"l{uuid.uuid4().hex[:12]}"

    async def factory() -> Locker:
        if request.param == "memory":
            return memory
        server: RedisServer = request.getfixturevalue("redis_server")
        backend = RedisBackend(server.url, prefix=prefix, lock_ttl_s=1.0)
        await backend.open()
        backends.append(backend)
        return RedisLocker(backend)

    yield factory
    for backend in backends:
        await backend.close()


@pytest.fixture
async def locker(lockers: LockerFactory) -> Locker:
    return await lockers()


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


async def test_terminate_only_if_the_offset_is_unchanged(open_store: StoreFactory) -> None:
    store = await open_store()
    info = new_info(30)
    await store.create(info)
    await store.append(info.upload_id, 0, chunks(b"abc"), max_bytes=100, checksum=None)
    assert not await store.terminate(info.upload_id, "expired", if_offset=0)
    assert (await store.get(info.upload_id)).offset == 3
    assert await store.terminate(info.upload_id, "expired", if_offset=3)
    with pytest.raises(errors.Gone):
        await store.get(info.upload_id)


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


async def test_checkpoint_records_parts_of_the_current_remote_upload(
        open_store: StoreFactory) -> None:
    store = await open_store()
    info = new_info(31)
    await store.create(info)
    upload_id = info.upload_id
    assert await store.checkpoint(upload_id) == Checkpoint()
    await store.start_remote(upload_id, "remote-1", 100.0)
    assert await store.add_parts(upload_id, "remote-1", [1, 3])
    assert await store.add_parts(upload_id, "remote-1", [3, 2])
    restarted = await open_store()
    assert await restarted.checkpoint(upload_id) == Checkpoint("remote-1", 100.0,
                                                               frozenset({1, 2, 3}))
    # A new remote upload (the old one expired) starts from no parts, and a late sender of
    # the old one cannot record into it.
    await restarted.start_remote(upload_id, "remote-2", 200.0)
    assert not await restarted.add_parts(upload_id, "remote-1", [4])
    assert await restarted.checkpoint(upload_id) == Checkpoint("remote-2", 200.0)
    await restarted.terminate(upload_id, "terminated")
    assert await restarted.checkpoint(upload_id) == Checkpoint()
    with pytest.raises((errors.NotFound, errors.Gone)):
        await restarted.start_remote(upload_id, "remote-3", 300.0)


async def test_parallel_part_records_are_all_kept(open_store: StoreFactory) -> None:
    store = await open_store()
    info = new_info(32)
    await store.create(info)
    await store.start_remote(info.upload_id, "r", 1.0)
    await asyncio.gather(*(store.add_parts(info.upload_id, "r", [n]) for n in range(1, 21)))
    assert (await store.checkpoint(info.upload_id)).parts == frozenset(range(1, 21))


async def test_lease_goes_to_one_caller_per_period(open_store: StoreFactory,
                                                   request: pytest.FixtureRequest) -> None:
    store = await open_store()
    assert await store.claim_lease("sweep", 0.3)
    shared = request.node.callspec.params["open_store"] == "redis"
    # With a shared store the second instance waits its turn; alone, the disk store's one
    # process always has it.
    assert await (await open_store()).claim_lease("sweep", 0.3) is not shared


async def test_a_delivered_upload_keeps_its_record_without_its_bytes(
        open_store: StoreFactory) -> None:
    store = await open_store()
    info = new_info(40, 5)
    await store.create(info)
    assert await store.append(info.upload_id, 0, chunks(b"hello"), max_bytes=5,
                              checksum=None) == 5
    await store.save_info(info.replace(data_removed=True))
    await store.discard_data(info.upload_id)
    await store.discard_data(info.upload_id)  # idempotent
    assert not store.data_path(info.upload_id).exists()
    state = await store.get(info.upload_id)
    assert (state.offset, state.info.data_removed) == (5, True)
    restarted = await open_store()
    state = await restarted.get(info.upload_id)
    assert (state.offset, state.info.data_removed) == (5, True)
    assert info.upload_id in await restarted.upload_ids()
    await restarted.terminate(info.upload_id, "terminated")
    with pytest.raises(errors.Gone):
        await restarted.get(info.upload_id)


async def test_owed_sink_work_is_an_index_any_instance_reads(
        open_store: StoreFactory, request: pytest.FixtureRequest) -> None:
    store = await open_store()
    await store.owe_sink("a" * 32, True)
    await store.owe_sink("b" * 32, True)
    await store.owe_sink("a" * 32, False)
    await store.owe_sink("c" * 32, False)  # never owed: nothing happens
    assert await store.sink_owed() == ["b" * 32]
    if request.node.callspec.params["open_store"] == "redis":
        # Shared: another instance (here, a restarted one) sees the same index.
        assert await (await open_store()).sink_owed() == ["b" * 32]


async def test_a_held_lease_is_one_owners_until_dropped_or_expired(
        open_store: StoreFactory) -> None:
    store = await open_store()
    assert await store.hold_lease("drain:x", "a", 0.4)
    assert not await store.hold_lease("drain:x", "b", 0.4)
    assert await store.hold_lease("drain:x", "a", 0.4), "the owner extends its lease"
    await store.drop_lease("drain:x", "b")  # not b's to drop
    assert not await store.hold_lease("drain:x", "b", 0.4)
    await store.drop_lease("drain:x", "a")
    assert await store.hold_lease("drain:x", "b", 0.2)
    await asyncio.sleep(0.3)
    assert await store.hold_lease("drain:x", "a", 0.4), "an unextended lease ends by itself"
    assert not await store.hold_lease("drain:x", "b", 0.4)


async def test_lock_asks_a_holder_in_another_instance(lockers: LockerFactory) -> None:
    """Instance A writes; a request on instance B makes A let go within about a second."""
    a, b = await lockers(), await lockers()
    asked = asyncio.Event()
    holder = a.new_lock("d" * 32)
    await holder.acquire(1.0, asked.set)
    started = time.monotonic()
    newcomer = asyncio.create_task(b.new_lock("d" * 32).acquire(5.0, lambda: None))
    await asyncio.wait_for(asked.wait(), 1.0)
    await holder.release()
    await asyncio.wait_for(newcomer, 1.0)
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("lockers", ["redis"], indirect=True)
async def test_lock_of_a_crashed_holder_expires(lockers: LockerFactory) -> None:
    crashed = await lockers()
    assert isinstance(crashed, RedisLocker)
    await crashed.new_lock("9" * 32).acquire(1.0, lambda: None)
    await crashed.backend.close()  # gone without releasing: no extension, no release
    started = time.monotonic()
    await (await lockers()).new_lock("9" * 32).acquire(5.0, lambda: None)
    assert 0.3 < time.monotonic() - started < 2.5  # the TTL is 1 s


@pytest.mark.parametrize("open_store", ["redis"], indirect=True)
async def test_a_holder_that_lost_its_lock_cannot_commit(open_store: StoreFactory) -> None:
    """Fencing: a writer paused past its lock's TTL must not overwrite its successor."""
    store = await open_store()
    assert isinstance(store, RedisStore)
    backend = store.backend
    info = new_info(33, 1000)
    await store.create(info)
    lock = RedisLocker(backend).new_lock(info.upload_id)
    await lock.acquire(1.0, lambda: None)
    # The lock changes hands behind the holder's back, as if it had expired.
    await backend.client.set(backend.keys.lock(info.upload_id), b"someone-else")
    with pytest.raises(errors.UploadInterrupted):
        await store.append(info.upload_id, 0, chunks(b"x" * 10), max_bytes=1000,
                           checksum=None)
    with pytest.raises(errors.UploadInterrupted):
        await store.save_info(info.replace(metadata={"k": b"v"}))
    assert (await store.get(info.upload_id)).offset == 0
    await lock.release()


@pytest.mark.parametrize("open_store", ["redis"], indirect=True)
async def test_uncommitted_bytes_of_a_dead_writer_are_cut_off(open_store: StoreFactory) -> None:
    """A writer killed between its write and its commit leaves bytes past the offset."""
    store = await open_store()
    info = new_info(36, 10)
    await store.create(info)
    await store.append(info.upload_id, 0, chunks(b"abc"), max_bytes=10, checksum=None)
    with store.data_path(info.upload_id).open("ab") as f:
        f.write(b"GARBAGE")
    assert (await store.get(info.upload_id)).offset == 3
    await store.append(info.upload_id, 3, chunks(b"defghij"), max_bytes=7, checksum=None)
    assert store.data_path(info.upload_id).read_bytes() == b"abcdefghij"


@pytest.mark.parametrize("open_store", ["redis"], indirect=True)
async def test_a_long_append_commits_windows_as_it_streams(open_store: StoreFactory) -> None:
    """An instance killed mid-PATCH must not lose more than a window: the offset moves while
    the body is still arriving (the sync interval here is 256 KiB)."""
    store = await open_store()
    info = new_info(37, 8 * 1024 * 1024)
    await store.create(info)
    seen: list[int] = []

    async def slow_body() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"w" * (64 * 1024)
            await asyncio.sleep(0.005)
            seen.append((await store.get(info.upload_id)).offset)

    assert await store.append(info.upload_id, 0, slow_body(), max_bytes=info.length,
                              checksum=None) == 4 * 1024 * 1024
    assert any(0 < offset < 4 * 1024 * 1024 for offset in seen), seen
    assert seen == sorted(seen), "the committed offset went back"


async def test_wait_free_asks_the_holder_but_takes_nothing(lockers: LockerFactory) -> None:
    a, b = await lockers(), await lockers()
    asked = asyncio.Event()
    holder = a.new_lock("8" * 32)
    await holder.acquire(1.0, asked.set)
    reader = asyncio.create_task(b.new_lock("8" * 32).wait_free(5.0))
    await asyncio.wait_for(asked.wait(), 1.0)
    assert not reader.done()
    await holder.release()
    await asyncio.wait_for(reader, 1.0)
    taker = a.new_lock("8" * 32)
    await asyncio.wait_for(taker.acquire(0.1, lambda: None), 1.0)  # nothing was left held
    with pytest.raises(errors.UploadLocked):
        await b.new_lock("8" * 32).wait_free(0.2)
    await taker.release()


# --- finals waiting for a partial: bounded per partial ----------------------------------------
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


# --- open uploads: an index bounded in total and per client -----------------------------------
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


async def test_the_expiry_index_returns_only_due_uploads(open_store: StoreFactory,
                                                         request: pytest.FixtureRequest) -> None:
    store = await open_store()
    now = 1_000_000.0
    ids = [new_info(n).upload_id for n in range(50, 56)]
    for i, upload_id in enumerate(ids):
        await store.create(new_info(50 + i))
        await store.schedule_expiry(upload_id, now + 10 * i)  # 0, 10, ..., 50 s from now
    assert await store.due_for_expiry(now - 1, 100) == []
    assert await store.due_for_expiry(now + 25, 100) == ids[:3]
    assert await store.due_for_expiry(now + 25, 2) == ids[:2], "earliest first, bounded"
    await store.schedule_expiry(ids[0], now + 100)  # bytes arrived: it moves
    await store.schedule_expiry(ids[1], None)  # never due
    await store.terminate(ids[2], "expired")  # removal takes it out of the index
    assert await store.due_for_expiry(now + 25, 100) == []
    assert await store.due_for_expiry(now + 100, 100) == [*ids[3:], ids[0]]
    # After a restart the index may return an upload sooner than noted (the sweeper reads
    # the record again), never later.
    restarted = await open_store()
    due = await restarted.due_for_expiry(now + 100, 100)
    assert set(due) >= {*ids[3:], ids[0]}
    if request.node.callspec.params["open_store"] == "redis":
        assert due == [*ids[3:], ids[0]]


async def test_uploads_owing_their_finish_are_an_index(open_store: StoreFactory) -> None:
    store = await open_store()
    infos = [new_info(n, 3) for n in (60, 61, 62)]
    for info in infos:
        await store.create(info)
        await store.owe_finish(info.upload_id, True)
    await store.owe_finish(infos[0].upload_id, False)
    await store.terminate(infos[1].upload_id, "terminated")
    assert await store.finish_owed() == [infos[2].upload_id]
    # Complete and not finished: still owed after a restart.
    await store.append(infos[2].upload_id, 0, chunks(b"abc"), max_bytes=3, checksum=None)
    assert infos[2].upload_id in await (await open_store()).finish_owed()


async def test_a_save_after_termination_does_not_bring_the_record_back(
        open_store: StoreFactory) -> None:
    """A background writer (a sink) that read the record before a DELETE must not undo it."""
    store = await open_store()
    for n in range(70, 90):
        info = new_info(n, 3)
        await store.create(info)
        await store.append(info.upload_id, 0, chunks(b"abc"), max_bytes=3, checksum=None)
        read = (await store.get(info.upload_id)).info
        late = read.replace(metadata={"sink": b"late"}, data_removed=True)
        # Both orders, with the termination and the save in flight at once.
        first, second = ((store.terminate(info.upload_id, "terminated"), store.save_info(late))
                         if n % 2 else
                         (store.save_info(late), store.terminate(info.upload_id, "terminated")))
        results = await asyncio.gather(first, second, return_exceptions=True)
        for result in results:
            assert result is None or result is True or isinstance(
                result, (errors.NotFound, errors.Gone)), result
        with pytest.raises(errors.Gone):
            await store.get(info.upload_id)
    restarted = await open_store()
    with pytest.raises(errors.Gone):
        await restarted.get(new_info(71).upload_id)
    assert await restarted.upload_ids() == []


@pytest.mark.parametrize("open_store", ["redis"], indirect=True)
async def test_an_unreadable_redis_record_is_not_found_and_counted(
        open_store: StoreFactory) -> None:
    store = await open_store()
    assert isinstance(store, RedisStore)
    info = new_info(91)
    await store.create(info)
    await store.backend.client.hset(store.keys.upload(info.upload_id), "info", b"{torn")
    for _ in range(2):
        with pytest.raises(errors.NotFound):
            await store.get(info.upload_id)
    assert store.unreadable == 1
