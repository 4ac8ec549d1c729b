"""The clocks the gateway reads (``gateway.clock``): the manual one moves only when told,
and wakes its sleepers once their time has come, not before."""

from __future__ import annotations

import asyncio

import pytest

from gateway.clock import SYSTEM_CLOCK, ManualClock


def test_a_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(wall=1000.0, monotonic=5.0)
    assert (clock.now(), clock.monotonic()) == (1000.0, 5.0)
    clock.advance(2.5)
    assert (clock.now(), clock.monotonic()) == (1002.5, 7.5)
    with pytest.raises(ValueError):
        clock.advance(-1)
    assert clock.now() == 1002.5


async def test_a_manual_sleep_ends_when_the_clock_passes_its_deadline() -> None:
    clock = ManualClock()
    sleeper = asyncio.ensure_future(clock.sleep(10))
    short = asyncio.ensure_future(clock.sleep(1))
    await asyncio.sleep(0)
    clock.advance(9)
    await asyncio.sleep(0)
    assert short.done() and not sleeper.done()
    clock.advance(1)
    await asyncio.wait_for(sleeper, 1)


async def test_a_cancelled_manual_sleep_is_forgotten() -> None:
    clock = ManualClock()
    sleeper = asyncio.ensure_future(clock.sleep(5))
    await asyncio.sleep(0)
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    clock.advance(10)  # nothing left to wake
    await clock.sleep(0)


async def test_the_system_clock_reads_the_machine() -> None:
    before = SYSTEM_CLOCK.monotonic()
    await SYSTEM_CLOCK.sleep(0.01)
    # uvloop's timers (libuv's) count whole milliseconds and may fire up to one early.
    assert SYSTEM_CLOCK.monotonic() - before >= 0.009
    assert SYSTEM_CLOCK.now() > 1.7e9
