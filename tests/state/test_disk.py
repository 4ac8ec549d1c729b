"""Crash leftovers the disk store must clean up when it opens (a gateway restart)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.state.disk import DiskStore
from protocol import errors
from protocol.model import UploadInfo

ID = "a" * 32


@pytest.fixture
async def pool() -> AsyncIterator[IoPool]:
    workers = IoPool(2)
    yield workers
    await asyncio.get_running_loop().run_in_executor(None, workers.close)


async def opened(root: Path, pool: IoPool) -> DiskStore:
    store = DiskStore(root, pool, fsync=FsyncPolicy.ACK, write_buffer_bytes=64 * 1024,
                      commit_interval_bytes=256 * 1024)
    await store.open()
    return store


async def test_unverified_checksum_bytes_are_rolled_back_at_open(tmp_path: Path,
                                                                 pool: IoPool) -> None:
    store = await opened(tmp_path, pool)
    await store.create(UploadInfo(ID, 100, created_at=time.time()))
    await store.close()
    # What a crash in the middle of a checksummed PATCH leaves: bytes past the committed
    # offset and the marker naming that offset.
    (tmp_path / "uploads" / f"{ID}.bin").write_bytes(b"kept" + b"unverified")
    (tmp_path / "uploads" / f"{ID}.stage").write_text("4")
    store = await opened(tmp_path, pool)
    assert (await store.get(ID)).offset == 4
    assert (tmp_path / "uploads" / f"{ID}.bin").read_bytes() == b"kept"
    assert not (tmp_path / "uploads" / f"{ID}.stage").exists()
    await store.close()


async def test_torn_record_is_set_aside_at_open(tmp_path: Path, pool: IoPool,
                                                caplog: pytest.LogCaptureFixture) -> None:
    store = await opened(tmp_path, pool)
    await store.close()
    (tmp_path / "uploads" / f"{ID}.bin").write_bytes(b"")
    (tmp_path / "uploads" / f"{ID}.info").write_text('{"id": "' + ID)  # torn by a crash
    good = "b" * 32
    (tmp_path / "uploads" / f"{good}.bin").write_bytes(b"xy")
    (tmp_path / "uploads" / f"{good}.info").write_text(
        json.dumps(UploadInfo(good, 5, created_at=1.0).to_json()))
    store = await opened(tmp_path, pool)
    assert await store.upload_ids() == [good]
    assert (await store.get(good)).offset == 2
    try:
        await store.get(ID)
    except errors.NotFound:
        pass
    else:
        raise AssertionError("a torn record must not be visible")
    # Not deleted: moved aside for the operator, said once, and counted.
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == [
        f"{ID}.bin", f"{ID}.info"]
    assert [r.levelname for r in caplog.records if ID in r.getMessage()] == ["ERROR"]
    assert store.unreadable == 1
    await store.close()
    store = await opened(tmp_path, pool)
    assert store.unreadable == 1, "still set aside after a restart"
    await store.close()


async def test_orphaned_bytes_are_swept_when_old(tmp_path: Path, pool: IoPool) -> None:
    store = await opened(tmp_path, pool)
    orphan = tmp_path / "uploads" / f"{ID}.bin"
    orphan.write_bytes(b"no record")
    assert await store.remove_orphans(time.time() - 3600) == 0  # could be a create
    assert await store.remove_orphans(time.time() + 1) == 1
    assert not orphan.exists()
    await store.close()


async def test_a_finished_upload_costs_one_trip_to_a_thread_after_its_bytes(
        tmp_path: Path, pool: IoPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record that says the sink holds the bytes takes the spool's copy with it, and
    the HEAD that follows is answered from memory: one trip to a thread, not three."""
    store = await opened(tmp_path, pool)
    info = UploadInfo(ID, 4, created_at=time.time())
    await store.create(info)

    async def body() -> AsyncIterator[bytes]:
        yield b"data"

    await store.append(ID, 0, body(), max_bytes=None, checksum=None)
    trips: list[object] = []
    real_run = pool.run

    async def counted(fn: object, *args: object) -> object:
        trips.append(fn)
        return await real_run(fn, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(pool, "run", counted)
    await store.save_info(info.replace(data_removed=True))
    assert not (tmp_path / "uploads" / f"{ID}.bin").exists()  # gone with the record
    await store.discard_data(ID)
    state = await store.get(ID)
    assert (state.offset, state.info.data_removed) == (4, True)
    assert len(trips) == 1
    await store.close()
    reopened = await opened(tmp_path, pool)  # and a read from disk agrees
    trips.clear()
    again = await reopened.get(ID)
    assert (again.offset, again.info.data_removed) == (state.offset, True)
    await reopened.discard_data(ID)
    assert len(trips) == 1  # the read; the discard after it had nothing left to do
    await reopened.close()
