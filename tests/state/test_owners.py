"""The ``Owners`` part: each owner's uploads, listed newest first, and the bytes they hold
against the owner's quota. Redis keeps it itself; the disk store and the core-only store get
it from the gateway's process, rebuilt from the records at open (``base.Indexing``)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.state.base import MAX_OWNER_CHARS, CoreStore, Indexing, Owners, UploadStore
from gateway.state.disk import DiskStore
from gateway.state.parts import StoreParts
from gateway.state.redis import RedisBackend, RedisStore
from gateway.state.redis_keys import Keys
from protocol.model import UploadInfo
from tests.redis_server import RedisServer
from tests.state.memory import MemoryBacking, MemoryStore
from tests.state.stores import new_info, store_fixture

# Every store this module runs on has the part, its own or kept in the gateway's process.
StoreFactory = Callable[[], Awaitable[UploadStore]]

open_store = store_fixture(Owners)

OWNER = "a" * 32
OTHER = "b" * 32
# A time as the clock gives it: its digits must come back exactly, or a cursor misses.
T = 1_718_000_000.123456


def uid(n: int) -> str:
    return f"{n:032x}"


def newest_first(entries: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return sorted(entries, key=lambda entry: (entry[1], entry[0]), reverse=True)


async def page_through(store: UploadStore, owner: str, limit: int) -> list[tuple[str, float]]:
    """Every page of the owner's listing, each asked for with the last item before it."""
    seen: list[tuple[str, float]] = []
    before: tuple[float, str] | None = None
    for _ in range(1_000):  # a cursor that does not move on would page forever
        page = await store.owned(owner, before=before, limit=limit)
        assert len(page) <= limit
        if not page:
            return seen
        seen.extend(page)
        before = (page[-1][1], page[-1][0])
    raise AssertionError(f"the listing never ends: {seen[:10]}...")


async def test_the_listing_is_newest_first_and_pages_through_ties(
        open_store: StoreFactory) -> None:
    store = await open_store()
    times = {1: T, 2: T + 2, 3: T, 4: T + 1, 5: T + 2, 6: T, 7: T - 1, 8: T + 0.000001}
    entries = [(uid(n), at) for n, at in times.items()]
    for upload_id, at in reversed(entries):
        await store.note_owned(OWNER, upload_id, at)
    await store.note_owned(OTHER, uid(9), T + 5)
    expected = newest_first(entries)
    assert await store.owned(OWNER, before=None, limit=100) == expected
    for limit in (1, 2, 3, 8):
        assert await page_through(store, OWNER, limit) == expected
    assert await store.owned(OTHER, before=None, limit=100) == [(uid(9), T + 5)]
    assert await store.owned("c" * 32, before=None, limit=100) == []
    assert await store.owned(OWNER, before=None, limit=0) == []
    assert await store.owned(OWNER, before=(T - 1, uid(7)), limit=100) == []


async def test_a_cursor_pages_on_after_its_upload_is_forgotten(
        open_store: StoreFactory) -> None:
    store = await open_store()
    times = {1: T, 2: T + 2, 3: T, 4: T + 1, 5: T + 2, 6: T, 7: T - 1}
    for n, at in times.items():
        await store.note_owned(OWNER, uid(n), at)
    first = await store.owned(OWNER, before=None, limit=4)
    assert first == [(uid(5), T + 2), (uid(2), T + 2), (uid(4), T + 1), (uid(6), T)]
    # The last item goes (terminated) before the next page is asked for: the page goes
    # on from where it was, among the uploads tied with it too.
    await store.forget_owned(OWNER, uid(6))
    assert await store.owned(OWNER, before=(T, uid(6)), limit=4) == [
        (uid(3), T), (uid(1), T), (uid(7), T - 1)]
    # A cursor that was never listed, between tied uploads.
    assert await store.owned(OWNER, before=(T, uid(2)), limit=2) == [(uid(1), T),
                                                                     (uid(7), T - 1)]
    # The cursor's upload listed again at another time: the cursor keeps its own place.
    await store.note_owned(OWNER, uid(3), T + 3)
    assert await store.owned(OWNER, before=(T, uid(3)), limit=4) == [(uid(1), T),
                                                                     (uid(7), T - 1)]


async def test_a_cursor_among_many_tied_uploads(open_store: StoreFactory) -> None:
    store = await open_store()
    for n in range(1, 251):
        await store.note_owned(OWNER, uid(n), T)  # a clock that stood still
    await store.note_owned(OWNER, uid(300), T - 1)
    expected = [(uid(n), T) for n in range(250, 0, -1)] + [(uid(300), T - 1)]
    assert await page_through(store, OWNER, 7) == expected
    await store.forget_owned(OWNER, uid(70))
    assert await store.owned(OWNER, before=(T, uid(70)), limit=100) == expected[181:]
    assert await store.owned(OWNER, before=(T, uid(1)), limit=3) == [(uid(300), T - 1)]


async def test_noting_and_forgetting_again_change_nothing(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.note_owned(OWNER, uid(1), T)
    await store.note_owned(OWNER, uid(1), T)
    assert await store.owned(OWNER, before=None, limit=10) == [(uid(1), T)]
    await store.note_owned(OWNER, uid(1), T + 1)  # noted again at another time: moved
    assert await store.owned(OWNER, before=None, limit=10) == [(uid(1), T + 1)]
    assert await store.hold_bytes(OWNER, uid(1), 5, max_total=0) is None
    for _ in range(2):
        await store.forget_owned(OWNER, uid(1))
        assert await store.owned(OWNER, before=None, limit=10) == []
        assert await store.bytes_held(OWNER) == 0
    await store.release_bytes(OWNER, uid(1))
    await store.forget_owned("d" * 32, uid(1))  # an owner never seen
    assert await store.bytes_held("d" * 32) == 0


async def test_holding_bytes_against_a_quota(open_store: StoreFactory) -> None:
    store = await open_store()
    assert await store.hold_bytes(OWNER, uid(1), 30, max_total=100) is None
    assert await store.hold_bytes(OWNER, uid(2), 50, max_total=100) is None
    assert await store.bytes_held(OWNER) == 80
    # 80 + 30 would pass 100: refused, nothing changes, the answer is what is held now.
    assert await store.hold_bytes(OWNER, uid(3), 30, max_total=100) == 80
    assert await store.bytes_held(OWNER) == 80
    # An upload's new figure replaces its old one: 50 + 50.
    assert await store.hold_bytes(OWNER, uid(1), 50, max_total=100) is None
    assert await store.bytes_held(OWNER) == 100
    # Refused, and the answer counts this upload's current figure too.
    assert await store.hold_bytes(OWNER, uid(1), 51, max_total=100) == 100
    assert await store.bytes_held(OWNER) == 100
    # Another owner's quota is its own; 0 is no limit.
    assert await store.hold_bytes(OTHER, uid(3), 100, max_total=100) is None
    assert await store.hold_bytes(OWNER, uid(4), 10**13, max_total=0) is None
    assert await store.bytes_held(OWNER) == 100 + 10**13
    for _ in range(2):
        await store.release_bytes(OWNER, uid(4))
        assert await store.bytes_held(OWNER) == 100
    # A figure of 0 holds nothing; releasing frees the room for another upload.
    assert await store.hold_bytes(OWNER, uid(2), 0, max_total=100) is None
    await store.release_bytes(OWNER, uid(1))
    assert await store.bytes_held(OWNER) == 0
    assert await store.bytes_held(OTHER) == 100
    assert await store.hold_bytes(OWNER, uid(5), 100, max_total=100) is None
    # Holding bytes lists nothing: the listing is what ``note_owned`` says.
    assert await store.owned(OWNER, before=None, limit=10) == []


async def test_bad_arguments_are_refused_and_change_nothing(open_store: StoreFactory) -> None:
    store = await open_store()
    long = "x" * (MAX_OWNER_CHARS + 1)
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.note_owned(long, uid(1), T),
        lambda: store.owned(long, before=None, limit=10),
        lambda: store.hold_bytes(long, uid(1), 1, max_total=0),
        lambda: store.release_bytes(long, uid(1)),
        lambda: store.bytes_held(long),
        lambda: store.forget_owned(long, uid(1)),
        lambda: store.hold_bytes(OWNER, uid(1), -1, max_total=0),
        lambda: store.hold_bytes(OWNER, uid(1), 1, max_total=-1),
        lambda: store.note_owned(OWNER, uid(1), float("nan")),
        lambda: store.note_owned(OWNER, uid(1), float("inf")),
        lambda: store.owned(OWNER, before=(float("nan"), uid(1)), limit=10),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            await call()
    assert await store.owned(OWNER, before=None, limit=10) == []
    assert await store.bytes_held(OWNER) == 0
    longest = "x" * MAX_OWNER_CHARS
    await store.note_owned(longest, uid(1), T)
    assert await store.hold_bytes(longest, uid(1), 7, max_total=10) is None
    assert await store.owned(longest, before=None, limit=10) == [(uid(1), T)]
    assert await store.bytes_held(longest) == 7


async def test_racing_holds_never_pass_the_quota(open_store: StoreFactory) -> None:
    store = await open_store()
    results = await asyncio.gather(
        *(store.hold_bytes(OWNER, uid(n), 10, max_total=95) for n in range(1, 31)))
    assert sum(r is None for r in results) == 9
    assert all(r is None or 90 >= r >= 0 for r in results)
    assert await store.bytes_held(OWNER) == 90


async def test_terminating_an_upload_forgets_it(open_store: StoreFactory) -> None:
    store = await open_store()
    gone, kept = new_info(1, client=OWNER), new_info(2, client=OWNER)
    for info in (gone, kept):
        await store.create(info)
        await store.note_owned(OWNER, info.upload_id, info.created_at)
        assert await store.hold_bytes(OWNER, info.upload_id, 40, max_total=100) is None
    assert await store.terminate(gone.upload_id, "terminated")
    assert await store.owned(OWNER, before=None, limit=10) == [(kept.upload_id,
                                                               kept.created_at)]
    assert await store.bytes_held(OWNER) == 40
    await store.forget_owned(OWNER, gone.upload_id)  # the caller doing it too: no harm
    assert await store.bytes_held(OWNER) == 40
    assert await store.hold_bytes(OWNER, uid(3), 60, max_total=100) is None


async def test_the_listing_survives_a_restart(open_store: StoreFactory) -> None:
    store = await open_store()
    infos = [new_info(n, client=OWNER if n % 2 else OTHER) for n in range(1, 7)]
    for info in infos:
        await store.create(info)
        await store.note_owned(info.client, info.upload_id, info.created_at)
    store = await open_store()
    for owner in (OWNER, OTHER):
        assert await page_through(store, owner, 2) == newest_first(
            [(i.upload_id, i.created_at) for i in infos if i.client == owner])


async def test_instances_sharing_redis_share_each_quota(redis_server: RedisServer,
                                                       tmp_path: Path) -> None:
    """Holds from two gateways on one Redis are checked and counted in one step: however
    they interleave, an owner never holds more than its quota."""
    pool = IoPool(4)
    prefix = f"q{uuid.uuid4().hex[:12]}"
    backends = [RedisBackend(redis_server.url, prefix=prefix) for _ in range(2)]
    try:
        stores = []
        for backend in backends:
            await backend.open()
            stores.append(RedisStore(backend, tmp_path / "data", pool, fsync=FsyncPolicy.OFF,
                                     write_buffer_bytes=64 * 1024,
                                     commit_interval_bytes=256 * 1024,
                                     sync_interval_bytes=256 * 1024, tombstone_ttl_s=3600))
        results = await asyncio.gather(
            *(stores[n % 2].hold_bytes(OWNER, uid(n), 10, max_total=95)
              for n in range(1, 61)))
        holders = [n for n, r in zip(range(1, 61), results, strict=True) if r is None]
        assert len(holders) == 9
        # Every holder grows by one byte at once: 90 + 5 fit, the rest are refused.
        grown = await asyncio.gather(
            *(stores[n % 2].hold_bytes(OWNER, uid(n), 11, max_total=95) for n in holders))
        assert sum(r is None for r in grown) == 5
        assert [await s.bytes_held(OWNER) for s in stores] == [95, 95]
        assert await stores[1].bytes_held(OTHER) == 0
    finally:
        for backend in backends:
            await backend.close()
        await asyncio.get_running_loop().run_in_executor(None, pool.close)


@pytest.mark.parametrize("kind", ["disk", "memory"])
async def test_kept_owners_are_rebuilt_from_the_records_at_open(kind: str,
                                                                tmp_path: Path) -> None:
    """Without a part of its own, the store's records say whose each upload is and what it
    holds (``Indexing.owner`` and ``Indexing.held``): a restart loses neither."""
    pool = IoPool(2)
    backing = MemoryBacking(tmp_path / "data" / "uploads")

    def core() -> CoreStore:
        if kind == "disk":
            return DiskStore(tmp_path / "data", pool, fsync=FsyncPolicy.OFF,
                             write_buffer_bytes=64 * 1024, commit_interval_bytes=256 * 1024)
        return MemoryStore(backing)

    @contextlib.asynccontextmanager
    async def opened(indexing: Indexing | None = None) -> AsyncIterator[UploadStore]:
        store = StoreParts.of(core(), indexing).store
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    infos = [UploadInfo(uid(1), 100, created_at=T, client=OWNER),
             UploadInfo(uid(2), 200, created_at=T, client=OWNER),  # tied with the first
             UploadInfo(uid(3), None, created_at=T + 1, client=OWNER),  # deferred length
             UploadInfo(uid(4), 400, created_at=T - 1, client=OTHER),
             UploadInfo(uid(5), 500, created_at=T, client=""),  # nobody's
             UploadInfo(uid(6), 600, created_at=T, client="x" * (MAX_OWNER_CHARS + 1))]
    try:
        async with opened() as store:
            for info in infos:
                await store.create(info)
        held = Indexing(held=lambda state: state.info.length or 0)
        mine = [(uid(3), T + 1), (uid(2), T), (uid(1), T)]
        async with opened(held) as store:
            assert await page_through(store, OWNER, 2) == mine
            assert await store.owned(OTHER, before=None, limit=10) == [(uid(4), T - 1)]
            assert await store.owned("", before=None, limit=10) == []
            assert await store.bytes_held(OWNER) == 300
            assert await store.bytes_held(OTHER) == 400
            # The rebuilt figures are what a hold is checked against.
            assert await store.hold_bytes(OWNER, uid(7), 1, max_total=300) == 300
            assert await store.hold_bytes(OWNER, uid(1), 99, max_total=300) is None
            # A rebuilt upload is forgotten when it is terminated.
            assert await store.terminate(uid(2), "terminated")
            assert await store.owned(OWNER, before=None, limit=10) == [mine[0], mine[2]]
            assert await store.bytes_held(OWNER) == 99
        async with opened() as store:  # the default: listed, holding nothing
            assert await store.owned(OWNER, before=None, limit=10) == [mine[0], mine[2]]
            assert await store.bytes_held(OWNER) == 0
        by_subject = Indexing(owner=lambda state: "same", held=lambda state: 1)
        async with opened(by_subject) as store:
            assert len(await store.owned("same", before=None, limit=10)) == 5
            assert await store.bytes_held("same") == 5
    finally:
        await asyncio.get_running_loop().run_in_executor(None, pool.close)


def test_an_owners_keys_share_one_hash_slot() -> None:
    keys = Keys("tus")
    for owner in (OWNER, "", "a}b{c", "x" * MAX_OWNER_CHARS):
        own = [keys.owned(owner), keys.held(owner)]
        assert len(set(own)) == 2
        assert len({key_slot(k.encode()) for k in own}) == 1
    assert keys.owned(OWNER) != keys.owned(OTHER)
    with pytest.raises(ValueError):
        keys.held("x" * (MAX_OWNER_CHARS + 1))
