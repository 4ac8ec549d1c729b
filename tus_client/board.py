"""The progress board: one line per file on stderr, redrawn in place on a terminal.

``board_lines`` is pure (the clock and the terminal size are passed in); ``ProgressBoard``
only measures the terminal and writes the frame.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import TextIO

from tus_client.transfer import Transfer

# Five frames a second reads as smooth; more only costs terminal output (over ssh, too).
REDRAW_EVERY_S = 0.2


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable, keeps the return type


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA --:--"
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"ETA {hours}:{minutes:02d}:{secs:02d}" if hours else f"ETA {minutes}:{secs:02d}"


def progress_line(t: Transfer, now: float, width: int) -> str:
    """One file's line: name, bar, percent, bytes, speed, ETA (or what it is doing)."""
    fraction = t.sent / t.size if t.size else (1.0 if t.finished else 0.0)
    fraction = min(max(fraction, 0.0), 1.0)
    name = t.path.name if len(t.path.name) <= 24 else t.path.name[:23] + "…"
    bar_width = 20
    filled = int(fraction * bar_width)
    bar = "#" * filled + "-" * (bar_width - filled)
    head = f"{name:<24} [{bar}] {fraction * 100:5.1f}% " \
           f"{format_bytes(t.sent)} / {format_bytes(t.size)}"
    if t.error is not None:
        tail = f"failed: {t.error}"
    elif t.finished:
        tail = "done"
    elif t.state == "sending":
        speed = t.meter.speed(now)
        speed_text = "--" if speed is None else format_bytes(speed)
        tail = f"{speed_text}/s {format_eta(t.meter.eta(t.size - t.sent, now))}"
    else:
        tail = t.state
    line = f"{head}  {tail}"
    return line if len(line) <= width else line[:max(width - 1, 0)] + "…"


def board_lines(transfers: Sequence[Transfer], now: float, columns: int,
                rows: int) -> list[str]:
    """The frame: one line per file while they fit on the screen; otherwise the files under
    way and a summary line, since a cursor cannot move back above the top of the screen."""
    width = max(columns - 1, 20)
    if len(transfers) < rows:
        return [progress_line(t, now, width) for t in transfers]
    active = [t for t in transfers if not t.finished and t.state != "waiting"][:max(rows - 2, 1)]
    done = sum(1 for t in transfers if t.finished and t.error is None)
    failed = sum(1 for t in transfers if t.error is not None)
    summary = f"{done} of {len(transfers)} files uploaded" + (f", {failed} failed"
                                                              if failed else "")
    return [*(progress_line(t, now, width) for t in active), summary[:width]]


class ProgressBoard:
    """Redraws the frame in place on a terminal, at most every ``REDRAW_EVERY_S``."""

    def __init__(self, transfers: Sequence[Transfer], stream: TextIO) -> None:
        self.transfers = transfers
        self.stream = stream
        self._drawn = 0

    def draw(self) -> None:
        try:
            size = os.get_terminal_size(self.stream.fileno())
            columns, rows = size.columns, size.lines
        except (OSError, ValueError):
            columns = rows = 0
        if not columns or not rows:  # a terminal that does not know its size says 0x0
            columns, rows = 100, 24
        lines = board_lines(self.transfers, time.monotonic(), columns, rows)
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}F")  # back to the first line of the last frame
        out.extend("\x1b[2K" + line + "\n" for line in lines)
        out.append("\x1b[J")  # a shorter frame than the last leaves no stale lines below
        self._drawn = len(lines)
        self.stream.write("".join(out))
        self.stream.flush()

    async def run(self) -> None:
        while True:
            self.draw()
            await asyncio.sleep(REDRAW_EVERY_S)
