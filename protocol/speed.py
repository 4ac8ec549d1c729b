"""A speed meter over the last few seconds of a byte stream, for progress displays.

A ``SpeedMeter`` keeps a few samples ``(time, total bytes)`` from the last ``window_s``
seconds, at most one per ``every_s``, so its memory is bounded however fast the bytes come.
Speed is the bytes gained across the window divided by the time from its first sample to
*now*: a stream that stalls sees its speed fall towards zero instead of keeping its last
good figure. Pure: the time is passed in. The gateway measures the bodies it receives with
it (``gateway/progress.py``), the command-line client the bodies it sends
(``tus_client/transfer.py``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 10.0
SAMPLE_EVERY_S = 0.25


@dataclass
class SpeedMeter:
    window_s: float = WINDOW_S
    every_s: float = SAMPLE_EVERY_S
    received: int = 0  # bytes fed so far
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
            return 0.0  # nothing came for a whole window
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
