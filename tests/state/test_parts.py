"""``StoreParts``: which parts a store provides, what the gateway keeps for it, what it
offers. Real stores (Redis, disk, the in-memory core-only one), no mocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.metrics import Metrics, measured
from gateway.state.base import Indexing
from gateway.state.disk import DiskStore
from gateway.state.local import LocalLeases
from gateway.state.parts import MissingPart, StoreParts
from gateway.state.redis import RedisBackend, RedisStore
from protocol import errors
from protocol.decisions import ALL_EXTENSIONS
from tests.state.memory import MemoryBacking, MemoryStore
from tests.state.stores import chunks, new_info

KEPT_HERE = ("owed work", "leases", "open slots", "expiry index", "owners")


@pytest.fixture
def pool() -> Iterator[IoPool]:
    workers = IoPool(2)
    yield workers
    workers.close()


class LeasingMemoryStore(MemoryStore, LocalLeases):
    """A core-only store that also keeps leases: one part of its own."""

    def __init__(self, backing: MemoryBacking) -> None:
        MemoryStore.__init__(self, backing)
        LocalLeases.__init__(self)


def test_a_store_with_every_part_is_used_as_it_is(tmp_path: Path, pool: IoPool) -> None:
    # Not opened: which parts it has is a matter of its type.
    redis = RedisStore(RedisBackend("redis://127.0.0.1:1"), tmp_path, pool,
                       fsync=FsyncPolicy.OFF, write_buffer_bytes=64 * 1024,
                       commit_interval_bytes=256 * 1024, sync_interval_bytes=256 * 1024,
                       tombstone_ttl_s=3600)
    parts = StoreParts.of(redis)
    assert parts.store is redis and parts.concatenation is redis and parts.checkpoints is redis
    assert parts.kept_here == ()
    assert parts.offers == frozenset(ALL_EXTENSIONS)
    wrapped = measured(redis, Metrics())
    assert StoreParts.of(wrapped).store is wrapped  # the metrics wrapper hides no part


@pytest.mark.parametrize("wrap", [False, True])
def test_the_disk_store_keeps_its_bytes_and_the_gateway_keeps_the_rest(
        tmp_path: Path, pool: IoPool, wrap: bool) -> None:
    disk = DiskStore(tmp_path, pool, fsync=FsyncPolicy.OFF, write_buffer_bytes=64 * 1024,
                     commit_interval_bytes=256 * 1024)
    store = measured(disk, Metrics()) if wrap else disk
    parts = StoreParts.of(store)
    assert parts.core is store and parts.concatenation is store and parts.checkpoints is store
    assert parts.kept_here == KEPT_HERE
    assert parts.offers == frozenset(ALL_EXTENSIONS)


async def test_the_disk_stores_reading_at_open_fills_what_is_kept(tmp_path: Path,
                                                                   pool: IoPool) -> None:
    """The indexes kept for the disk store come from the one reading of the records that
    its open does: no record is read again (no ``get`` through the metrics wrapper)."""
    disk = DiskStore(tmp_path, pool, fsync=FsyncPolicy.OFF, write_buffer_bytes=64 * 1024,
                     commit_interval_bytes=256 * 1024)
    await disk.open()
    infos = [new_info(n, 3, client="c" * 32) for n in (1, 2, 3)]
    for info in infos:
        await disk.create(info)
    await disk.append(infos[0].upload_id, 0, chunks(b"abc"), max_bytes=3, checksum=None)
    await disk.append(infos[1].upload_id, 0, chunks(b"a"), max_bytes=3, checksum=None)
    # Delivered: the record says the sink holds the bytes, so it is not open.
    await disk.save_info(infos[2].replace(data_removed=True))
    await disk.close()

    metrics = Metrics()
    due = {info.upload_id: 100.0 + n for n, info in enumerate(infos)}
    indexing = Indexing(expires_at=lambda state: due[state.info.upload_id])
    disk = DiskStore(tmp_path, pool, fsync=FsyncPolicy.OFF, write_buffer_bytes=64 * 1024,
                     commit_interval_bytes=256 * 1024)
    store = StoreParts.of(measured(disk, metrics), indexing).store
    await store.open()
    try:
        # (Looking for a part creates the label with no calls: the count is what says.)
        assert not metrics.registry.get_sample_value("tus_store_latency_seconds_count",
                                                     {"op": "get"})
        assert await store.open_slots_taken("c" * 32) == 1  # the partial one
        # Complete (its own bytes, or delivered): the default indexing owes their finish.
        assert await store.finish_owed() == sorted([infos[0].upload_id, infos[2].upload_id])
        assert await store.due_for_expiry(1_000.0, 10) == [info.upload_id for info in infos]
        assert disk.at_open == [], "the reading is shown to the parts only while opening"
    finally:
        await store.close()


@pytest.mark.parametrize("wrap", [False, True])
async def test_a_core_only_store_gets_what_one_process_can_keep(tmp_path: Path,
                                                                wrap: bool) -> None:
    core = MemoryStore(MemoryBacking(tmp_path))
    parts = StoreParts.of(measured(core, Metrics()) if wrap else core)
    assert parts.concatenation is None and parts.checkpoints is None
    assert parts.kept_here == KEPT_HERE
    assert parts.offers == frozenset(ALL_EXTENSIONS) - {"concatenation",
                                                        "concatenation-unfinished"}
    store = parts.store
    await store.open()
    # What cannot be supplied refuses loudly; what only reads finds nothing waiting.
    with pytest.raises(errors.InvalidConcat):
        await store.register_final("a" * 32, ("b" * 32,))
    assert await store.waiting_finals() == {}
    assert await store.finals_waiting_on("b" * 32) == []
    await store.unregister_final("a" * 32)
    with pytest.raises(MissingPart):
        await store.checkpoint("a" * 32)


def test_the_parts_a_store_has_are_its_own(tmp_path: Path) -> None:
    store = LeasingMemoryStore(MemoryBacking(tmp_path))
    parts = StoreParts.of(store)
    assert parts.leases is store
    assert parts.kept_here == tuple(name for name in KEPT_HERE if name != "leases")
