"""One file's upload as the progress board sees it: bytes sent, speed, state and outcome.

``SpeedMeter`` keeps a few samples ``(time, total bytes)`` from the last ``window_s`` seconds,
at most one per ``every_s``, so its memory is bounded however fast the bytes go. Speed is the
bytes gained across the window divided by the time from its first sample to *now*: a stalled
upload sees its speed fall towards zero instead of keeping its last good figure. Pure: the
clock is passed in. The gateway measures the uploads it receives the same way
(``gateway/progress.py``); the client keeps its own copy so that it never loads the server.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

# What the board shows is the last few seconds: a terminal user watches it change.
WINDOW_S = 5.0
SAMPLE_EVERY_S = 0.25


@dataclass
class SpeedMeter:
    window_s: float = WINDOW_S
    every_s: float = SAMPLE_EVERY_S
    received: int = 0  # bytes handed to the connection, over every request
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
            return 0.0  # nothing went out for a whole window
        elapsed = now - first_t
        if elapsed < self.every_s:
            return None
        return max(self.received - first_b, 0) / elapsed

    def eta(self, remaining: int | None, now: float) -> float | None:
        """Seconds until ``remaining`` bytes are sent at the current speed (None if unknown
        or stalled)."""
        speed = self.speed(now)
        if remaining is None or not speed:
            return None
        return remaining / speed


@dataclass
class Transfer:
    """What the progress board shows of one file, and its outcome."""

    path: Path
    size: int
    sent: int = 0
    """Bytes the server confirmed plus those handed to the connection since."""
    state: str = "waiting"
    url: str | None = None
    error: str | None = None
    finished: bool = False
    meter: SpeedMeter = field(default_factory=SpeedMeter)

    def feed(self, n: int) -> None:
        self.sent += n
        self.meter.feed(n, time.monotonic())
