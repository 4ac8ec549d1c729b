"""The Redis store's writer fence: a holder past its lock's deadline touches no byte.

In-process, against a real redis-server, with a 1 s lock TTL. A pause of the whole process
(SIGSTOP, a long garbage collection) is played by blocking the event loop with
``time.sleep``: the lock's extender cannot run meanwhile, exactly as in a stopped process.
The end-to-end version with two real gateway processes and SIGSTOP is in
``tests/cluster/test_paused_writer.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.state.redis import RedisBackend, RedisLocker, RedisStore
from protocol import errors
from protocol.model import UploadInfo
from tests.redis_server import RedisServer

KiB = 1024
TTL_S = 1.0


@pytest.fixture
async def store(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    pool = IoPool(2)
    backend = RedisBackend(redis_server.url, prefix=f"f{uuid.uuid4().hex[:12]}",
                           lock_ttl_s=TTL_S)
    await backend.open()
    store = RedisStore(backend, tmp_path / "data", pool, fsync=FsyncPolicy.ACK,
                       write_buffer_bytes=64 * KiB, commit_interval_bytes=64 * KiB,
                       sync_interval_bytes=64 * KiB, tombstone_ttl_s=3600)
    await store.open()
    yield store
    await store.close()
    await backend.close()
    await asyncio.get_running_loop().run_in_executor(None, pool.close)


def sync_client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


async def new_upload(store: RedisStore, length: int) -> str:
    info = UploadInfo(uuid.uuid4().hex, length, created_at=time.time())
    await store.create(info)
    return info.upload_id


@pytest.mark.allow_blocking  # the body blocks the event loop on purpose: a paused process
async def test_a_writer_paused_past_its_lock_writes_nothing_over_its_successor(
        store: RedisStore, redis_server: RedisServer) -> None:
    """A writes 64 KiB and buffers 32 KiB more; the whole process stops; its lock expires
    and B takes over, writes and commits 128 KiB; A wakes up and receives more body. A
    must neither write its buffer over B's bytes nor truncate them."""
    backend = store.backend
    upload_id = await new_upload(store, 512 * KiB)
    path = store.data_path(upload_id)
    successor = b"S" * (128 * KiB)
    r = sync_client(redis_server)
    lock = RedisLocker(backend).new_lock(upload_id)
    await lock.acquire(1.0, lambda: None)

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * (64 * KiB)  # a full buffer: written at once (not yet committed)
        yield b"b" * (32 * KiB)  # stays in the buffer
        # The process stops here until its lock has expired in Redis.
        deadline = time.monotonic() + 5
        while r.exists(backend.keys.lock(upload_id)):
            assert time.monotonic() < deadline, "the lock never expired"
            time.sleep(0.01)
        # B, on another instance: takes the lock, cuts the uncommitted bytes, writes its own
        # and commits them (what the Redis store does, done by hand while A is stopped).
        assert r.set(backend.keys.lock(upload_id), b"successor", nx=True, px=10_000)
        with path.open("r+b") as f:
            f.truncate(0)
            f.write(successor)
        r.hset(backend.keys.upload(upload_id), "offset", len(successor))
        # A resumes: its client sends more, which fills the buffer and starts a write.
        yield b"c" * (64 * KiB)
        yield b"d" * (64 * KiB)

    try:
        with pytest.raises(errors.UploadInterrupted):
            await store.append(upload_id, 0, body(), max_bytes=512 * KiB, checksum=None)
    finally:
        await lock.release()
    assert path.read_bytes() == successor, "the paused writer touched its successor's bytes"
    assert int(r.hget(backend.keys.upload(upload_id), "offset") or 0) == len(successor)
    assert r.get(backend.keys.lock(upload_id)) == b"successor"  # A's release left it alone
    r.close()


@pytest.mark.allow_blocking  # the loop is blocked on purpose: a paused process
async def test_an_extend_sent_after_the_deadline_gives_the_lock_up(
        store: RedisStore, redis_server: RedisServer) -> None:
    """Even when Redis would still say yes: the holder cannot know that nobody held the lock
    in between, so it stops (its request is asked to let go) instead of extending."""
    backend = store.backend
    upload_id = await new_upload(store, 100)
    r = sync_client(redis_server)
    asked = asyncio.Event()
    lock = RedisLocker(backend).new_lock(upload_id)
    await lock.acquire(1.0, asked.set)
    try:
        # The key lives on in Redis (as if its clock ran slow); our own deadline passes.
        assert r.pexpire(backend.keys.lock(upload_id), 10_000)
        time.sleep(TTL_S)
        await asyncio.wait_for(asked.wait(), 1.0)

        async def one_chunk() -> AsyncIterator[bytes]:
            yield b"x" * 10

        with pytest.raises(errors.UploadInterrupted):
            await store.append(upload_id, 0, one_chunk(), max_bytes=100, checksum=None)
        assert store.data_path(upload_id).stat().st_size == 0
    finally:
        await lock.release()
    r.close()


async def test_a_long_append_keeps_its_lock_past_many_ttls(store: RedisStore) -> None:
    """The deadline moves with every extension: a body that streams for longer than the TTL
    is written and committed in full."""
    upload_id = await new_upload(store, 1024 * KiB)
    lock = RedisLocker(store.backend).new_lock(upload_id)
    await lock.acquire(1.0, lambda: None)

    async def slow_body() -> AsyncIterator[bytes]:
        for n in range(32):
            yield bytes([n]) * (32 * KiB)
            await asyncio.sleep(TTL_S * 1.6 / 32)

    try:
        assert await store.append(upload_id, 0, slow_body(), max_bytes=1024 * KiB,
                                  checksum=None) == 1024 * KiB
    finally:
        await lock.release()
    data = await asyncio.to_thread(store.data_path(upload_id).read_bytes)
    assert data == b"".join(bytes([n]) * (32 * KiB) for n in range(32))
