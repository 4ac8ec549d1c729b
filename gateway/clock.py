"""The one clock the gateway reads when time decides something.

Expiry and the finished-upload TTL (``Uploads.live``, ``sweep``), the empty-PATCH throttle,
the live speed meters, the expiry sweeper's turns and the times stamped on records (creation,
last byte, finish, hook notices) all read the ``Clock`` that ``create_app(config, clock=...)``
was given: ``SYSTEM_CLOCK`` in production, a ``ManualClock`` in tests, which then move time
forward instead of sleeping through it.

Two readings, as the standard library has them: ``now()`` is wall time (seconds since the
epoch: what is stored and compared with stored times), ``monotonic()`` never goes back (for
intervals measured within this process). ``sleep()`` waits on the same clock.

Not everything goes through it: the state stores stamp some times themselves (a data file's
modification time, Redis's lock deadlines), the Notion sink keeps its own clocks (its retry
deadlines and breaker), and latency measurements use ``time.perf_counter``, which decides
nothing.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall time, in seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until ``monotonic()`` has moved on by ``seconds``."""
        ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


class ManualClock:
    """A clock that moves only when told to (``advance``); sleepers wake when it passes
    their deadline.

    Its wall time starts at the real one by default: the stores stamp some times themselves
    (see the module docstring), and those must read as "just now" on this clock too.
    """

    def __init__(self, wall: float | None = None, monotonic: float = 0.0) -> None:
        self._wall = time.time() if wall is None else wall
        self._monotonic = monotonic
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)  # a sleep of nothing still lets others run, as asyncio's
            return
        sleeper = (self._monotonic + seconds, asyncio.get_running_loop().create_future())
        self._sleepers.append(sleeper)
        try:
            await sleeper[1]
        finally:
            with suppress(ValueError):
                self._sleepers.remove(sleeper)

    def advance(self, seconds: float) -> None:
        """Move both readings on by ``seconds`` and wake the sleepers now due (they run at
        the loop's next turn, as after any wake-up)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._wall += seconds
        self._monotonic += seconds
        for deadline, future in list(self._sleepers):
            if deadline <= self._monotonic and not future.done():
                future.set_result(None)
