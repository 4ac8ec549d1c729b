"""The request budget every Notion sender in this process shares.

Theory of operation
-------------------
Notion allows "an average of three requests per second per integration, with some bursts"
and answers a request over the budget with 429 and ``Retry-After`` seconds
(docs/notion-contract.md §9).
A 429 is a wasted request that also pushes the next one back, so the drain spends its budget
*before* Notion has to refuse: every request first takes a token here.

``TokenBucket`` is the pure model. It holds at most ``burst`` tokens and gains ``rate`` per
second; ``take(now)`` spends one or says how long until one is there. Over any stretch of
``T`` seconds it grants at most ``burst + rate·T`` requests, which is the whole contract
(a property test checks it over arbitrary call sequences). It stores the time the bucket runs
dry rather than a count of tokens; the two are equivalent (see the class).

A 429 means our idea of the budget was wrong: another process, a per-workspace limit or an
endpoint limit spent it. ``penalize(now, retry_after)`` therefore stops *everyone* until
``now + retry_after`` and, since the wait is Notion's measure and not ours, the bucket gains
nothing during it and leaves it holding at most one token: exactly one request goes first
when the pause ends, and the rest follow at ``rate``, much as a half-open breaker probes.

``RateLimiter`` is the asyncio face: ``await acquire()`` returns when a token was taken.
Waiters queue on an ``asyncio.Lock``, which wakes waiters in arrival order and does not let a
newcomer take it while others wait, so a late caller never overtakes an early one and no
sender starves. Only the head of the queue sleeps, and it asks the bucket again after every
sleep, so a penalty that arrives mid-sleep is honoured. The clock and the sleep are
injectable so tests run on simulated time.

Default: rate 3/s, burst 3. Notion's 2026 docs describe the budget as 180 requests per
60-second window, spendable in one burst; holding the burst to three keeps us near the
average the older docs promise and leaves headroom for other clients of the integration.
When several gateway instances share the integration, a Redis-backed limiter with the same
``Limiter`` shape replaces this one.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

DEFAULT_RATE = 3.0
"""Requests per second: Notion's documented average per integration."""

DEFAULT_BURST = 3
"""Tokens the bucket can hold: one second's worth at the default rate."""

# A wait this short is rounding, not a wait (see TokenBucket.take).
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Budget:
    """``rate`` tokens a second, at most ``burst`` held: the two numbers of a token bucket and
    the two constants of its arithmetic, for ``TokenBucket`` here and for the Redis script
    behind ``shared_limit.RedisRateLimiter``, which is the same arithmetic on Redis's clock.

    The bucket is kept as a due time (see ``TokenBucket``): each grant moves it on by
    ``interval`` (``1 / rate``), and a grant is allowed while it runs at most ``slack``
    (``(burst - 1) · interval``) ahead of now.
    """

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError("rate must be a positive number of tokens per second")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")

    @property
    def interval(self) -> float:
        """Seconds between grants at the steady rate."""
        return 1.0 / self.rate

    @property
    def slack(self) -> float:
        """How far ahead of now the due time may run and still grant."""
        return (self.burst - 1) * self.interval

    def ticks(self, per_second: int) -> tuple[int, int]:
        """``(interval, slack)`` in whole ticks of ``1 / per_second`` s. The interval is
        rounded *up*, so rounding can only make the bucket slower than ``rate``, never
        faster; at least one tick, so it always moves."""
        interval = max(1, math.ceil(per_second / self.rate))
        return interval, (self.burst - 1) * interval


def pause_s(retry_after: float, most: float = math.inf) -> float:
    """The pause a 429's Retry-After imposes on a bucket: 0 for none (a value that is not a
    finite positive number is noise, not an instruction), else at most ``most`` seconds."""
    if not math.isfinite(retry_after) or retry_after <= 0:
        return 0.0
    return min(retry_after, most)


class TokenBucket:
    """A token bucket on the caller's clock: no I/O, no clock reads.

    Kept as a due time rather than a token count (the "generic cell rate algorithm"): a full
    bucket of ``burst`` tokens gaining ``rate`` a second grants exactly when ``_due`` (the
    time the bucket would be empty again at the steady rate) is at most ``(burst - 1) / rate``
    ahead of ``now``. Then a wait is the difference of two stored times, and a caller that
    sleeps exactly that long lands on the grant instead of a rounding error short of it. A
    float token count refilled by ``elapsed * rate`` misses by a few ulps at large clock
    values (the loop's clock counts from boot), asking for ever tinier sleeps.
    """

    def __init__(self, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST) -> None:
        budget = Budget(rate, burst)
        self.rate = rate
        self.burst = burst
        self._interval = budget.interval
        self._slack = budget.slack  # how far ahead _due may run
        self._due = -math.inf
        self._blocked_until = -math.inf

    @property
    def blocked_until(self) -> float:
        """The end of the latest penalty (``-inf`` if there never was one)."""
        return self._blocked_until

    def take(self, now: float) -> float:
        """Take a token and return 0, or return the seconds until one is due (taking none)."""
        due = max(self._due, now)  # an idle bucket is full, not fuller
        wait = due - self._slack - now
        # A wait within rounding of zero is zero: the clock could not even represent a
        # sleep that short (math.ulp(now)), and asking for it would spin.
        if wait > max(_EPSILON, 4 * math.ulp(now)):
            return wait
        self._due = due + self._interval
        return 0.0

    def penalize(self, now: float, retry_after: float) -> None:
        """Grant nothing until ``now + retry_after``; then at most one token is waiting."""
        pause = pause_s(retry_after)
        if not pause:
            return
        until = now + pause
        self._blocked_until = max(self._blocked_until, until)
        # Due at until + slack: the first grant comes at ``until`` and the next a full
        # interval later, as if the bucket had been drained to one token and not refilled.
        self._due = max(self._due, until + self._slack)


class Limiter(Protocol):
    """What a sender needs from a rate limiter, in-process or shared through Redis."""

    async def acquire(self) -> None: ...

    def penalize(self, retry_after: float) -> None: ...

    async def close(self) -> None:
        """Finish what is pending (a shared limiter's writes); nothing to do in-process."""


class RateLimiter:
    """A ``TokenBucket`` that asyncio tasks wait on, first come first served."""

    def __init__(self, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST, *,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.bucket = TokenBucket(rate, burst)
        # The loop is looked up per call, not here, so the limiter can be built before the
        # loop runs (in the app factory) and works on whichever loop then uses it.
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._sleep = sleep or asyncio.sleep
        self._queue = asyncio.Lock()

    async def acquire(self) -> None:
        """Return once a token was taken; callers are served in the order they called."""
        async with self._queue:
            while (wait := self.bucket.take(self._clock())) > 0:
                await self._sleep(wait)

    def penalize(self, retry_after: float) -> None:
        """A 429/529 said to wait ``retry_after`` seconds: every sender waits."""
        self.bucket.penalize(self._clock(), retry_after)

    async def close(self) -> None:
        return None  # nothing is pending in-process
