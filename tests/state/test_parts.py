"""``StoreParts``: which parts a store provides, what the gateway keeps for it, what it
offers. Real stores (disk, the in-memory core-only one), no mocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.metrics import Metrics, measured
from gateway.state.disk import DiskStore
from gateway.state.local import LocalLeases
from gateway.state.parts import MissingPart, StoreParts
from protocol import errors
from protocol.decisions import ALL_EXTENSIONS
from tests.state.memory import MemoryBacking, MemoryStore

KEPT_HERE = ("owed work", "leases", "open slots", "expiry index")


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
    disk = DiskStore(tmp_path, pool, fsync=FsyncPolicy.OFF, write_buffer_bytes=64 * 1024,
                     commit_interval_bytes=256 * 1024)
    parts = StoreParts.of(disk)
    assert parts.store is disk and parts.concatenation is disk and parts.checkpoints is disk
    assert parts.kept_here == ()
    assert parts.offers == frozenset(ALL_EXTENSIONS)
    wrapped = measured(disk, Metrics())
    assert StoreParts.of(wrapped).store is wrapped  # the metrics wrapper hides no part


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
