"""One file's upload as the progress board sees it: bytes sent, speed, state and outcome.

Speed comes from ``protocol.speed.SpeedMeter`` over the last ``WINDOW_S`` seconds, the
meter the gateway measures the uploads it receives with (``protocol`` is the sans-I/O core
both share; the client never loads the server).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from protocol.speed import SpeedMeter

WINDOW_S = 5.0


def board_meter() -> SpeedMeter:
    """What the board shows is the last few seconds: a terminal user watches it change."""
    return SpeedMeter(window_s=WINDOW_S)


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
    meter: SpeedMeter = field(default_factory=board_meter)

    def feed(self, n: int) -> None:
        self.sent += n
        self.meter.feed(n, time.monotonic())
