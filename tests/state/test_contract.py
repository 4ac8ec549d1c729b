"""The core store contract (``gateway.state.base.CoreStore``: records and bytes), run on
every backend: disk, Redis, and the in-memory store that provides nothing else. The optional
parts have contract modules of their own (see ``tests.state.stores``); the locks,
``test_locks.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

import pytest

from gateway.state.redis import RedisLocker, RedisStore
from protocol import errors
from protocol.headers import Checksum, ConcatPartial
from protocol.model import HookState, HookStatus
from tests.state.stores import StoreFactory, chunks, failing, new_info, store_fixture

open_store = store_fixture(None)


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


async def test_upload_ids_lists_live_uploads(open_store: StoreFactory) -> None:
    store = await open_store()
    for n in (20, 21, 22):
        await store.create(new_info(n))
    await store.terminate(new_info(21).upload_id, "terminated")
    assert await store.upload_ids() == [new_info(20).upload_id, new_info(22).upload_id]


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


async def test_the_hook_state_is_kept_apart_from_the_record(open_store: StoreFactory) -> None:
    """A record saved from an older read (a sink's) does not undo the hook's progress, and
    the hook's progress does not undo the record; a done hook is never replaced."""
    store = await open_store()
    info = new_info(96, 3)
    await store.create(info)
    stale = (await store.get(info.upload_id)).info
    await store.save_hook(info.upload_id, HookState(attempts=1, last_error="503"))
    await store.save_info(stale.replace(data_removed=True))
    saved = (await store.get(info.upload_id)).info
    assert saved.data_removed
    assert saved.hook == HookState(attempts=1, last_error="503")
    done = HookState(HookStatus.DONE, attempts=2, done_at=5.0)
    await store.save_hook(info.upload_id, done)
    await store.save_hook(info.upload_id, HookState(attempts=3, last_error="late"))
    assert (await store.get(info.upload_id)).info.hook == done
    store = await open_store()
    assert (await store.get(info.upload_id)).info.hook == done
    await store.terminate(info.upload_id, "terminated")
    with pytest.raises((errors.NotFound, errors.Gone)):
        await store.save_hook(info.upload_id, HookState(attempts=4))


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
