"""The rate limiter shared through Redis, against the real redis-server of the test session.

Two "instances" are two ``RedisBackend`` objects (two connection pools, as two gateway
processes would have) under one key prefix. The server's clock decides every grant, so each
grant is timed by the round trip that carried it: it happened after the request went out and
before the answer came back. Bounds checked on those brackets hold however noisy the machine
is, which keeps every timing assertion a lower bound (or a budget) and none a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.state.redis import RedisBackend
from notion_sink.ratelimit import Limiter
from notion_sink.shared_limit import RedisRateLimiter
from protocol import errors
from tests.redis_server import RedisServer

# The server's clock (TIME) and the loop's monotonic clock may run at slightly different
# rates (NTP slewing is at most 500 ppm): a couple of milliseconds over these runs.
CLOCK_SLOP_S = 0.002


@dataclass(frozen=True)
class Grant:
    """A token granted by the server somewhere between ``sent`` and ``received`` (loop time)."""

    sent: float
    received: float


class RecordingBackend(RedisBackend):
    """A real backend that notes the round trip of every rate-limit call that took a token."""

    def __init__(self, url: str, *, prefix: str) -> None:
        super().__init__(url, prefix=prefix)
        self.grants: list[Grant] = []

    async def script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        result = await super().script(name, keys, args)
        if name == "rate" and args[2] == 0 and result == 0:
            self.grants.append(Grant(sent, loop.time()))
        return result


Instance = Callable[..., Awaitable[RecordingBackend]]


@pytest.fixture
async def instance(redis_server: RedisServer) -> AsyncIterator[Instance]:
    """Opens gateway instances' Redis backends: one deployment (key prefix) per test."""
    prefix = f"r{uuid.uuid4().hex[:12]}"
    opened: list[RecordingBackend] = []

    async def factory(url: str | None = None) -> RecordingBackend:
        backend = RecordingBackend(url or redis_server.url, prefix=prefix)
        await backend.open()
        opened.append(backend)
        return backend

    yield factory
    for backend in opened:
        await backend.close()


def assert_within_budget(grants: Sequence[Grant], rate: float, burst: int) -> None:
    """No stretch of time holds more than ``burst + rate * length`` grants.

    A grant certainly inside [a, b] is one whose whole round trip is; checking every window
    from some request's sending to some answer's arrival covers every grant pattern.
    """
    for start in grants:
        for end in grants:
            span = end.received - start.sent
            if span < 0:
                continue
            inside = sum(1 for g in grants if g.sent >= start.sent and g.received <= end.received)
            assert inside <= burst + rate * (span + CLOCK_SLOP_S), (start, end, inside)


def test_it_is_a_limiter() -> None:
    # The annotation is the test (mypy checks it): sink.py can take either limiter.
    limiter: Limiter = RedisRateLimiter(RedisBackend("redis://unused"), rate=3, burst=3)
    assert limiter.penalize is not None


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("nan"), 1),
                                             (float("inf"), 1), (3.0, 0)])
def test_impossible_settings_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RedisRateLimiter(RedisBackend("redis://unused"), rate=rate, burst=burst)


async def test_two_instances_share_one_budget(instance: Instance) -> None:
    rate, burst, each = 20.0, 2, 20
    backends = [await instance(), await instance()]
    limiters = [RedisRateLimiter(b, rate=rate, burst=burst, name="shared") for b in backends]
    loop = asyncio.get_running_loop()
    served: list[list[int]] = [[], []]

    async def take(which: int, i: int) -> None:
        await limiters[which].acquire()
        served[which].append(i)

    started = loop.time()
    async with asyncio.TaskGroup() as tasks:
        for i in range(each):
            for which in (0, 1):
                tasks.create_task(take(which, i))

    grants = sorted(backends[0].grants + backends[1].grants, key=lambda g: g.received)
    assert len(grants) == 2 * each
    assert all(b.grants for b in backends), "both instances drew from the bucket"
    # The budget holds for the two together, which two private buckets would each spend.
    assert_within_budget(grants, rate, burst)
    # A lower bound only: the first burst at once, then one grant every 1/rate seconds.
    assert grants[-1].received - started >= (2 * each - burst) / rate - CLOCK_SLOP_S
    # Within an instance, callers are served in the order they called.
    assert served == [list(range(each)), list(range(each))]


async def test_a_pause_on_one_instance_holds_back_every_instance(instance: Instance) -> None:
    rate, burst, pause = 10.0, 3, 0.4
    heard, other = await instance(), await instance()
    a = RedisRateLimiter(heard, rate=rate, burst=burst)
    b = RedisRateLimiter(other, rate=rate, burst=burst)
    loop = asyncio.get_running_loop()

    # A full bucket (nothing taken yet), then a 429 reaches instance a.
    paused_at = loop.time()
    a.penalize(pause)
    await a.flush()

    async def take_three() -> None:
        for _ in range(3):
            await b.acquire()

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(take_three())
        tasks.create_task(a.acquire())

    grants = sorted(heard.grants + other.grants, key=lambda g: g.received)
    assert len(grants) == 4
    # Nobody, on either instance, was granted anything before the pause ended...
    assert all(g.received >= paused_at + pause - CLOCK_SLOP_S for g in grants), grants
    assert other.grants, "b only heard of the pause through Redis"
    assert_within_budget(grants, rate, burst)
    # ... and then at most one token was waiting, though the bucket holds three: the rest
    # followed at the rate. (Counted from the pause's end only: a later lull would refill the
    # bucket as usual.)
    ended = paused_at + pause
    for n, grant in enumerate(grants, start=1):
        assert n <= 1 + rate * (grant.received - ended + CLOCK_SLOP_S), (n, grant)
    assert grants[-1].received - paused_at >= pause + 3 / rate - CLOCK_SLOP_S


async def test_a_pause_is_honoured_locally_before_redis_has_it(instance: Instance) -> None:
    backend = await instance()
    limiter = RedisRateLimiter(backend, rate=100, burst=5)
    loop = asyncio.get_running_loop()
    paused_at = loop.time()
    limiter.penalize(0.3)
    # No flush: the write to Redis may not have left yet.
    await limiter.acquire()
    assert loop.time() - paused_at >= 0.3
    await limiter.close()


@pytest.mark.parametrize("retry_after", [0.0, -1.0, float("nan"), float("inf")])
async def test_a_meaningless_retry_after_pauses_nobody(instance: Instance,
                                                       retry_after: float) -> None:
    backend = await instance()
    limiter = RedisRateLimiter(backend, rate=10, burst=1)
    limiter.penalize(retry_after)
    await limiter.flush()
    assert not await backend.client.exists(limiter.key)


async def test_an_idle_limiter_leaves_no_key_behind(instance: Instance) -> None:
    rate, burst = 20.0, 2
    backend = await instance()
    limiter = RedisRateLimiter(backend, rate=rate, burst=burst, name="idle")
    for _ in range(3):
        await limiter.acquire()
    # After a grant the bucket is full again within slack + one interval, and so is the TTL.
    ttl_ms = await backend.client.pttl(limiter.key)
    assert 0 < ttl_ms <= (burst / rate) * 1000 + 1
    await asyncio.sleep(ttl_ms / 1000 + 0.05)
    assert [k async for k in backend.client.scan_iter(match=f"{backend.keys.prefix}:*")] == []

    # A pause keeps the key for as long as it lasts (it must not be forgotten early).
    loop = asyncio.get_running_loop()
    pause = 0.3
    paused_at = loop.time()
    limiter.penalize(pause)
    await limiter.flush()
    ttl_ms = await backend.client.pttl(limiter.key)
    elapsed = loop.time() - paused_at
    slack = (burst - 1) / rate
    assert (pause + slack - elapsed) * 1000 - 1 <= ttl_ms <= (pause + slack) * 1000 + 1
    await asyncio.sleep(ttl_ms / 1000 + 0.05)
    assert not await backend.client.exists(limiter.key)


async def test_a_redis_clock_stepped_back_does_not_stall_the_limiter(
        instance: Instance) -> None:
    rate = 20.0
    backend = await instance()
    limiter = RedisRateLimiter(backend, rate=rate, burst=1, name="stepped")
    # As the script would leave it after a grant at T, seen after the clock stepped back from
    # T by 10 s: without correction the next token would seem 10 s away.
    seconds, micros = await backend.client.time()
    now_us = seconds * 1_000_000 + micros
    step_us, interval_us = 10_000_000, int(1_000_000 / rate)
    await backend.client.hset(limiter.key, mapping={
        "due": now_us + step_us + interval_us, "blocked": 0, "at": now_us + step_us})
    await backend.client.pexpire(limiter.key, 60_000)
    wait_ms = await backend.script("rate", [limiter.key], [interval_us, 0, 0])
    # One interval, plus however long passed since TIME was read: far from the 10 s step.
    assert 0 <= wait_ms <= 1000


async def test_unreachable_redis_is_state_unavailable(
        instance: Instance, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        backend = await instance(server.url)
        limiter = RedisRateLimiter(backend, rate=10, burst=1)
        await limiter.acquire()
    finally:
        server.kill()

    with pytest.raises(errors.StateUnavailable):
        await limiter.acquire()

    # A pause that cannot be shared is logged, never raised, and still holds this process.
    loop = asyncio.get_running_loop()
    paused_at = loop.time()
    with caplog.at_level(logging.WARNING, logger="notion_sink.shared_limit"):
        limiter.penalize(0.2)
        await limiter.flush()
    assert any("could not share" in r.getMessage() for r in caplog.records)
    with pytest.raises(errors.StateUnavailable):
        await limiter.acquire()
    assert loop.time() - paused_at >= 0.2
    await limiter.close()
