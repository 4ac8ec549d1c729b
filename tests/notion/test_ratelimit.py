"""The shared rate limiter: the bucket's budget over any call pattern, penalties, and the
asyncio wrapper on a simulated clock (no wall-clock timing anywhere)."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notion_sink.ratelimit import DEFAULT_BURST, DEFAULT_RATE, Limiter, RateLimiter, TokenBucket


def grants_in_windows_fit(grants: list[float], rate: float, burst: int) -> None:
    """Every window [grants[i], grants[j]] holds at most burst + rate * length grants.

    Up to the clock's resolution: a wait within a few ulps of zero counts as none, so each
    grant may come that much early (a fraction of a microsecond even 8 years after boot).
    """
    slip = 8 * max((math.ulp(t) for t in grants), default=0.0)
    for i in range(len(grants)):
        for j in range(i, len(grants)):
            span = grants[j] - grants[i]
            count = j - i + 1
            assert count <= burst + rate * (span + count * slip) + 1e-6, (i, j, span)


@settings(max_examples=200)
@given(rate=st.floats(0.1, 20), burst=st.integers(1, 6),
       steps=st.lists(st.floats(0, 2), max_size=60),
       start=st.floats(-1e9, 1e9))
def test_grants_never_exceed_burst_plus_rate(rate: float, burst: int, steps: list[float],
                                             start: float) -> None:
    bucket = TokenBucket(rate, burst)
    now = start
    grants: list[float] = []
    for step in steps:
        now += step
        wait = bucket.take(now)
        assert wait >= 0
        if wait == 0:
            grants.append(now)
    grants_in_windows_fit(grants, rate, burst)


@settings(max_examples=200)
@given(rate=st.floats(0.1, 20), burst=st.integers(1, 6), n=st.integers(1, 40),
       start=st.floats(-1e9, 1e9),
       penalties=st.lists(st.tuples(st.integers(0, 39), st.floats(0, 30)), max_size=3))
def test_waiting_as_told_is_granted_at_the_full_rate(
        rate: float, burst: int, n: int, start: float,
        penalties: list[tuple[int, float]]) -> None:
    """A caller that sleeps exactly the wait it is told gets its token then, never spins,
    and the grants still fit the budget."""
    bucket = TokenBucket(rate, burst)
    now, asks = start, 0
    grants: list[float] = []
    pending = sorted(penalties)
    while len(grants) < n:
        # A 429 arrives after the at-th grant, once.
        while pending and pending[0][0] <= len(grants):
            bucket.penalize(now, pending.pop(0)[1])
        wait = bucket.take(now)
        asks += 1
        if wait == 0:
            grants.append(now)
        else:
            now += wait
        # Each grant costs at most one refused ask: a wait told is a wait enough, even far
        # from 0 where floats are coarse (the loop's clock counts from boot).
        assert asks <= 2 * n
    grants_in_windows_fit(grants, rate, burst)
    if not penalties and abs(start) < 1e7:
        # The first burst goes at once; after that one grant every 1/rate seconds.
        expected = max(0, n - burst) / rate
        assert math.isclose(grants[-1] - start, expected, rel_tol=1e-6, abs_tol=1e-6)


def test_take_reports_the_wait_and_takes_nothing() -> None:
    bucket = TokenBucket(rate=2.0, burst=2)
    assert bucket.take(10.0) == 0
    assert bucket.take(10.0) == 0
    assert bucket.take(10.0) == pytest.approx(0.5)
    assert bucket.take(10.25) == pytest.approx(0.25)  # the refused asks took nothing
    assert bucket.take(10.5) == 0
    # Idle time fills the bucket, but no further than the burst.
    assert [bucket.take(100.0) for _ in range(3)] == [0, 0, pytest.approx(0.5)]


def test_penalize_blocks_everyone_until_the_time_given() -> None:
    bucket = TokenBucket(rate=3.0, burst=3)
    bucket.penalize(0.0, 17.0)
    assert bucket.blocked_until == 17.0
    assert bucket.take(0.0) == 17.0
    assert bucket.take(16.5) == pytest.approx(0.5)
    # A shorter penalty never shortens a longer one.
    bucket.penalize(1.0, 2.0)
    assert bucket.take(16.9) == pytest.approx(0.1)
    # At the end one request goes, then the steady rate: no burst of pent-up tokens.
    assert bucket.take(17.0) == 0
    assert bucket.take(17.0) == pytest.approx(1 / 3)
    assert bucket.take(17.0 + 1 / 3) == 0


@pytest.mark.parametrize("retry_after", [0.0, -5.0, math.nan, math.inf])
def test_meaningless_penalties_are_ignored(retry_after: float) -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    bucket.penalize(0.0, retry_after)
    assert bucket.take(0.0) == 0


@pytest.mark.parametrize("rate,burst", [(0.0, 1), (-1.0, 1), (math.inf, 1), (math.nan, 1),
                                        (1.0, 0)])
def test_impossible_buckets_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


# --- the asyncio wrapper, on simulated time ----------------------------------------------------

class SimClock:
    """Time that passes only when someone sleeps on it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.start = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0  # the limiter never asks for an empty sleep
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would

    @property
    def elapsed(self) -> float:
        return self.now - self.start


def limiter_on(clock: SimClock, rate: float = DEFAULT_RATE,
               burst: int = DEFAULT_BURST) -> RateLimiter:
    return RateLimiter(rate, burst, clock=clock, sleep=clock.sleep)


async def test_n_requests_take_n_minus_burst_over_rate() -> None:
    clock = SimClock()
    limiter = limiter_on(clock)
    granted: list[float] = []

    async def send() -> None:
        await limiter.acquire()
        granted.append(clock())

    await asyncio.gather(*(send() for _ in range(30)))
    assert len(granted) == 30
    assert clock.elapsed == pytest.approx((30 - DEFAULT_BURST) / DEFAULT_RATE)
    assert granted[:DEFAULT_BURST] == [clock.start] * DEFAULT_BURST
    gaps = [b - a for a, b in zip(granted[DEFAULT_BURST - 1:], granted[DEFAULT_BURST:],
                                  strict=False)]
    assert gaps == pytest.approx([1 / DEFAULT_RATE] * len(gaps))


async def test_waiters_are_served_in_arrival_order() -> None:
    clock = SimClock()
    limiter = limiter_on(clock, rate=1.0, burst=1)
    order: list[int] = []

    async def send(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    first = [asyncio.create_task(send(i)) for i in range(5)]
    await asyncio.sleep(0)
    # Latecomers arrive while the head of the queue is asleep; none of them may overtake.
    late = [asyncio.create_task(send(i)) for i in range(5, 10)]
    await asyncio.gather(*first, *late)
    assert order == list(range(10))
    assert clock.elapsed == pytest.approx(9.0)


async def test_a_penalty_holds_every_waiter() -> None:
    clock = SimClock()
    limiter = limiter_on(clock, rate=3.0, burst=3)
    await limiter.acquire()
    limiter.penalize(20.0)  # a 429 with Retry-After: 20
    granted: list[float] = []

    async def send() -> None:
        await limiter.acquire()
        granted.append(clock.elapsed)

    await asyncio.gather(*(send() for _ in range(4)))
    assert granted[0] == pytest.approx(20.0)
    assert granted == pytest.approx([20.0, 20 + 1 / 3, 20 + 2 / 3, 21.0])


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    clock = SimClock()
    gate = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        await gate.wait()
        clock.now += seconds

    limiter = RateLimiter(1.0, 1, clock=clock, sleep=slow_sleep)
    await limiter.acquire()
    head = asyncio.create_task(limiter.acquire())
    behind = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    head.cancel()
    with pytest.raises(asyncio.CancelledError):
        await head
    gate.set()
    await behind  # the next in line gets through; the lock was not left held
    assert clock.elapsed == pytest.approx(1.0)


async def test_defaults_use_the_running_loop() -> None:
    limiter: Limiter = RateLimiter()  # built without a clock; the loop supplies one
    for _ in range(DEFAULT_BURST):
        await limiter.acquire()
    limiter.penalize(0.0)
