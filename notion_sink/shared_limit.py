"""The Notion request budget shared by every gateway instance, kept in Redis.

Theory of operation
-------------------
Notion's budget (about three requests a second, with some bursts) belongs to the
*integration*, not to a process. Several gateway instances draining with one token would each
run an in-process ``RateLimiter`` at the full rate and together spend a multiple of it, and
Notion would answer the excess with 429s: wasted requests that also push the next ones back.
So the bucket lives in Redis (``redis_keys.RATE``, key ``<p>:rate:<name>``) and every instance
takes its tokens from the same one.

The script is ``ratelimit.TokenBucket`` moved into Redis: it stores the time the bucket runs
dry ("due", the generic cell rate algorithm) and grants when due is at most
``slack = (burst - 1) / rate`` ahead of now. Both take these constants from
``ratelimit.Budget`` and a 429's pause from ``ratelimit.pause_s``, so only the Lua repeats
the Python. The script reads now from the Redis server (``redis.call('TIME')``), never from
the caller, so instances whose clocks disagree still see one timeline; the one script run is
atomic, so two instances cannot both take the last token. The contract is the bucket's: over
any ``T`` seconds at most ``burst + rate·T`` grants, across all instances. Times are whole
microseconds and the interval is rounded *up*, so rounding can only make the limiter slower
than asked, never faster. A refusal answers the wait in milliseconds (rounded up), so the
caller sleeps once and asks again.

``penalize`` is a 429 heard by one instance, and pauses them all: the script records "blocked
until now + retry_after" and, as ``TokenBucket.penalize`` does, moves due so that nothing is
granted before then and at most one token is waiting after (one request goes first, the rest
follow at ``rate``). ``penalize`` is synchronous (the ``Limiter`` shape), so it blocks *this*
process at once on the loop's clock and writes the pause to Redis in a background task that
the limiter keeps a reference to. If that write fails it is logged, not raised: this process
still pauses, the others meet the 429 themselves.

The key expires when the bucket would be full again (due has passed): an absent key and a
full bucket behave alike, so an idle limiter leaves nothing behind and needs no sweeper.

Within a process, waiters queue on an ``asyncio.Lock`` as in ``RateLimiter``: served in the
order they called, and only the head of the queue talks to Redis (one round trip per grant or
per sleep, not one per waiter). Across processes there is no order: whichever asks first after
a token is due gets it. That is fair enough for a budget and needs no queue in Redis.

A Redis failure while acquiring is ``protocol.errors.StateUnavailable`` (via
``RedisBackend.script``, the same mapping as the store): this limiter does not fall back to a
local guess of the shared budget, since a guess per instance is exactly the overspend it
exists to prevent.

Every instance sharing a ``name`` must use the same ``rate`` and ``burst``: the script takes
them from each caller, so a mismatch gives each caller its own idea of the same due time.
"""

from __future__ import annotations

import asyncio
import logging
import math

from gateway.sink_api import SharedScripts
from notion_sink.ratelimit import Budget, pause_s
from protocol import errors

log = logging.getLogger(__name__)

MAX_PAUSE_S = 3600.0
"""The longest pause one 429 can impose. Notion asks for seconds; anything near this is a
garbled header, and letting it park every instance (and keep the key) for longer would turn
one bad response into an outage that outlives the breaker's and the retry policy's limits.
(``TokenBucket`` has no cap: in one process a bad header stalls only that process.)"""

# How long ``close`` lets pending penalty writes finish: a shutdown should still tell the
# other instances about a 429, but not hang on a Redis that is gone.
_CLOSE_TIMEOUT_S = 1.0


class RedisRateLimiter:
    """A ``Limiter`` whose token bucket every instance using the same Redis and name shares."""

    def __init__(self, backend: SharedScripts, *, rate: float, burst: int,
                 name: str = "notion") -> None:
        budget = Budget(rate, burst)
        self.backend = backend
        self.rate = rate
        self.burst = burst
        self.name = name
        # Whole microseconds, the script's unit, rounded so as never to grant faster than rate.
        self._interval_us, self._slack_us = budget.ticks(1_000_000)
        self._queue = asyncio.Lock()
        # The end of the latest pause this process heard of, on the loop's clock.
        self._blocked_until = -math.inf
        # Penalty writes in flight; the reference keeps them from being garbage collected.
        self._writes: set[asyncio.Task[None]] = set()

    @property
    def key(self) -> str:
        return self.backend.keys.rate(self.name)

    async def acquire(self) -> None:
        """Return once a token was taken from the shared bucket, in this process's call order.

        Raises ``StateUnavailable`` when Redis cannot be reached.
        """
        loop = asyncio.get_running_loop()
        async with self._queue:
            while True:
                # A 429 this process heard counts before Redis has it (or if it never does).
                local = self._blocked_until - loop.time()
                if local > 0:
                    await asyncio.sleep(local)
                    continue
                wait_ms = await self._run(pause_us=0)
                if wait_ms <= 0:
                    return
                # Ask again after the sleep rather than trusting it: a penalty written by
                # any instance meanwhile is then honoured.
                await asyncio.sleep(wait_ms / 1000)

    def penalize(self, retry_after: float) -> None:
        """A 429/529 said to wait ``retry_after`` seconds: every sender of every instance waits.

        Must be called on the event loop (it starts the write to Redis there).
        """
        pause = pause_s(retry_after, MAX_PAUSE_S)
        if not pause:
            return
        loop = asyncio.get_running_loop()
        self._blocked_until = max(self._blocked_until, loop.time() + pause)
        task = loop.create_task(self._publish(pause), name=f"rate-limit-pause-{self.name}")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def flush(self) -> None:
        """Wait until every penalty so far has been written to Redis (or failed and logged)."""
        while pending := {task for task in self._writes if not task.done()}:
            await asyncio.wait(pending)

    async def close(self) -> None:
        """Give pending penalty writes a moment to reach the other instances, then drop them."""
        if not self._writes:
            return
        _, pending = await asyncio.wait(set(self._writes), timeout=_CLOSE_TIMEOUT_S)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _run(self, *, pause_us: int) -> int:
        # RedisBackend.script maps an unreachable Redis to StateUnavailable.
        result = await self.backend.script(
            "rate", [self.key], [self._interval_us, self._slack_us, pause_us])
        return int(result)

    async def _publish(self, seconds: float) -> None:
        try:
            await self._run(pause_us=math.ceil(seconds * 1_000_000))
        except errors.StateUnavailable:
            # Already logged by the mapping; this process pauses regardless.
            log.warning("could not share a %.3gs Notion rate-limit pause: Redis is unavailable",
                        seconds)
        except Exception:
            # Nobody awaits this task, so an error raised here would only surface as "never
            # retrieved" at garbage collection: log it where it happens instead.
            log.exception("could not share a %.3gs Notion rate-limit pause", seconds)
