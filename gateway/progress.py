"""Live progress of uploads on this instance: bytes as they arrive, speed and ETA.

One ``protocol.speed.SpeedMeter`` per upload receiving bytes here, over the bodies of all
its requests; ``Meters`` reads the time from the gateway's clock (``gateway.clock``).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.clock import Clock
from protocol.speed import SpeedMeter

__all__ = ["Meters", "SpeedMeter"]

# A meter nobody fed for this long belongs to an upload that went away.
IDLE_S = 120.0
# Idle meters are looked for at most this often: a look reads every meter, and doing it for
# each new upload made a burst of small uploads cost time growing with their number.
PRUNE_EVERY_S = 5.0


class Meters:
    """One meter per upload receiving bytes here; idle ones are dropped."""

    def __init__(self, clock: Clock) -> None:
        self._meters: dict[str, SpeedMeter] = {}
        self._clock = clock
        self._pruned_at = clock.monotonic()

    def feeder(self, upload_id: str) -> Callable[[int], None]:
        meter = self._meters.get(upload_id)
        if meter is None:
            self._prune()
            meter = self._meters[upload_id] = SpeedMeter()
        read = self._clock.monotonic

        def feed(n: int) -> None:
            meter.feed(n, read())
        return feed

    def get(self, upload_id: str) -> SpeedMeter | None:
        return self._meters.get(upload_id)

    def now(self) -> float:
        return self._clock.monotonic()

    def forget(self, upload_id: str) -> None:
        self._meters.pop(upload_id, None)

    def _prune(self) -> None:
        now = self._clock.monotonic()
        if now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        for upload_id in [k for k, m in self._meters.items() if now - m.last_fed > IDLE_S]:
            del self._meters[upload_id]
