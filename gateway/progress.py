"""Live progress of uploads on this instance: bytes as they arrive, speed and ETA.

A ``SpeedMeter`` keeps a few samples ``(time, total bytes)`` from the last ``window_s``
seconds of one upload's bodies, at most one per ``every_s``, so its memory is bounded
however fast the bytes come. Speed is the bytes gained across the window divided by the
time from its first sample to *now*: a client that stalls sees its speed fall towards zero
instead of keeping its last good figure. Pure: the time is passed in (``Meters`` reads it
from the gateway's clock, ``gateway.clock``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.clock import Clock

WINDOW_S = 10.0
SAMPLE_EVERY_S = 0.25
# A meter nobody fed for this long belongs to an upload that went away.
IDLE_S = 120.0


@dataclass
class SpeedMeter:
    window_s: float = WINDOW_S
    every_s: float = SAMPLE_EVERY_S
    received: int = 0  # body bytes seen on this instance, over every request
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    last_fed: float = 0.0

    def feed(self, n: int, now: float) -> None:
        self.received += n
        self.last_fed = now
        if not self.samples or now - self.samples[-1][0] >= self.every_s:
            self.samples.append((now, self.received))
        else:
            self.samples[-1] = (self.samples[-1][0], self.received)
        while len(self.samples) > 2 and now - self.samples[1][0] > self.window_s:
            self.samples.popleft()

    def speed(self, now: float) -> float | None:
        """Bytes per second over the window, or None with too little to go on."""
        if not self.samples:
            return None
        first_t, first_b = self.samples[0]
        if now - first_t > self.window_s + self.every_s and now - self.last_fed > self.window_s:
            return 0.0  # nothing arrived for a whole window
        elapsed = now - first_t
        if elapsed < self.every_s:
            return None
        return max(self.received - first_b, 0) / elapsed

    def eta(self, remaining: int | None, now: float) -> float | None:
        """Seconds until ``remaining`` bytes arrive at the current speed (None if unknown
        or stalled)."""
        speed = self.speed(now)
        if remaining is None or not speed:
            return None
        return remaining / speed


class Meters:
    """One meter per upload receiving bytes here; idle ones are dropped."""

    def __init__(self, clock: Clock) -> None:
        self._meters: dict[str, SpeedMeter] = {}
        self._clock = clock

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
        for upload_id in [k for k, m in self._meters.items() if now - m.last_fed > IDLE_S]:
            del self._meters[upload_id]
