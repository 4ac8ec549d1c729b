"""The lock contract (``gateway.state.base.Locker``): the in-process locker, and Redis locks
shared by the instances of one deployment (against a real redis-server).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.state.base import Locker
from gateway.state.memlock import MemoryLocker
from gateway.state.redis import RedisBackend, RedisLocker
from protocol import errors
from tests.redis_server import RedisServer

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
