"""Live progress meters: one per upload receiving bytes here, dropped when idle, and looked
through for idle ones only now and then (a burst of small uploads must not cost time that
grows with their number)."""

from __future__ import annotations

from gateway.clock import ManualClock
from gateway.progress import IDLE_S, PRUNE_EVERY_S, Meters

A, B, C, D = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)


def test_idle_meters_go_at_the_next_look_and_looks_are_rare() -> None:
    clock = ManualClock()
    meters = Meters(clock)
    meters.feeder(A)(10)
    clock.advance(IDLE_S - 2)
    meters.feeder(B)(10)  # a look: A is not idle yet
    assert meters.get(A) is not None
    clock.advance(3)  # A is idle now, but the last look was under PRUNE_EVERY_S ago
    assert PRUNE_EVERY_S > 3
    meters.feeder(C)(10)
    assert meters.get(A) is not None
    clock.advance(PRUNE_EVERY_S)
    meters.feeder(D)(10)  # the next look drops A, and only A
    assert meters.get(A) is None
    assert all(meters.get(x) is not None for x in (B, C, D))


def test_a_finished_upload_forgets_its_meter() -> None:
    meters = Meters(ManualClock())
    meters.feeder(A)(5)
    meters.forget(A)
    assert meters.get(A) is None
