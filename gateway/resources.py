"""What the process uses, and whether it can take more: the memory budget and admission.

Theory of operation
-------------------
A small box (512 MB of RAM, a fraction of a CPU, 25 users at once) must not be tipped over
by one more upload. ``ResourceMonitor`` samples the process's resident memory and CPU in a
worker thread twice a second (psutil reads ``/proc``, which must not happen on the event
loop) and sorts the memory into a load level against the budget:

    LOW_LOAD < 50% ≤ MEDIUM_LOAD < high ≤ HIGH_LOAD < critical ≤ CRITICAL

``admission`` is the pure rule on top. Above the high threshold a *new upload* (a creation)
is refused with 503 and Retry-After; above the critical one a *new PATCH* too. A request
whose body already streams is never cut off (its bytes are acknowledged as usual), so an
upload in flight finishes its request and its client simply waits before the next one. The
same answer comes from ``--max-concurrent-uploads``: at most that many request bodies at
once. Nothing here ever answers 500 or drops an acknowledged byte: it only says "later".

The default budget is half of what the process may use: the cgroup's ``memory.max`` when a
container sets one, otherwise the machine's RAM, and never below 128 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from gateway.aio import IoPool, stop_tasks
from protocol import errors

log = logging.getLogger(__name__)

MiB = 1024 * 1024
SAMPLE_S = 0.5
MIN_AUTO_BUDGET = 128 * MiB
CGROUP_MAX = Path("/sys/fs/cgroup/memory.max")
# How long a refused client should wait: memory frees as uploads finish, slots much sooner.
RETRY_AFTER_MEMORY_S = 30
RETRY_AFTER_SLOTS_S = 5


class LoadLevel(enum.StrEnum):
    LOW = "LOW_LOAD"
    MEDIUM = "MEDIUM_LOAD"
    HIGH = "HIGH_LOAD"
    CRITICAL = "CRITICAL"


@dataclass(frozen=True, slots=True)
class Thresholds:
    budget: int  # bytes
    high_percent: float
    critical_percent: float

    def level(self, rss: int) -> LoadLevel:
        percent = 100.0 * rss / self.budget
        if percent >= self.critical_percent:
            return LoadLevel.CRITICAL
        if percent >= self.high_percent:
            return LoadLevel.HIGH
        if percent >= min(50.0, self.high_percent):
            return LoadLevel.MEDIUM
        return LoadLevel.LOW


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # memory_high, memory_critical, too_many_uploads
    message: str
    retry_after_s: int


def admission(kind: str, level: LoadLevel, active: int, max_active: int) -> Refusal | None:
    """Whether a new creation (``kind="create"``) or a new PATCH (``"append"``) may start."""
    if max_active and active >= max_active:
        return Refusal("too_many_uploads",
                       f"{active} uploads are receiving data, the limit is {max_active}",
                       RETRY_AFTER_SLOTS_S)
    if level is LoadLevel.CRITICAL:
        return Refusal("memory_critical", "memory use is critical; new requests must wait",
                       RETRY_AFTER_MEMORY_S)
    if level is LoadLevel.HIGH and kind == "create":
        return Refusal("memory_high", "memory use is high; new uploads must wait",
                       RETRY_AFTER_MEMORY_S)
    return None


def auto_budget() -> int:
    """Half of the memory this process may use (blocking: reads the cgroup file)."""
    limit = psutil.virtual_memory().total
    with contextlib.suppress(OSError, ValueError):
        raw = CGROUP_MAX.read_text().strip()
        if raw != "max":
            limit = min(limit, int(raw))
    return max(limit // 2, MIN_AUTO_BUDGET)


class ResourceMonitor:
    def __init__(self, pool: IoPool, *, budget: int, high_percent: float,
                 critical_percent: float, max_active: int, active: Callable[[], int]) -> None:
        self.pool = pool
        self.configured_budget = budget
        self.high_percent = high_percent
        self.critical_percent = critical_percent
        self.max_active = max_active
        self.active = active
        self.thresholds = Thresholds(max(budget, 1), high_percent, critical_percent)
        self.rss = 0
        self.cpu_percent = 0.0
        self._process: psutil.Process | None = None  # made off the loop: it reads /proc
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        budget = self.configured_budget or await self.pool.run(auto_budget)
        self.set_budget(budget)
        await self.sample()
        self._task = asyncio.create_task(self._loop(), name="resource-monitor")

    def set_budget(self, budget: int) -> None:
        self.thresholds = Thresholds(budget, self.high_percent, self.critical_percent)

    async def close(self) -> None:
        await stop_tasks([self._task])

    async def sample(self) -> None:
        self.rss, self.cpu_percent = await self.pool.run(self._read)

    def _read(self) -> tuple[int, float]:
        if self._process is None:
            self._process = psutil.Process()
        with self._process.oneshot():
            return self._process.memory_info().rss, self._process.cpu_percent(None)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            try:
                await self.sample()
            except Exception:
                log.exception("could not read the process's resource use")

    @property
    def level(self) -> LoadLevel:
        return self.thresholds.level(self.rss)

    def check(self, kind: str) -> None:
        """Raise ``errors.Overloaded`` (503, Retry-After, a JSON body that says why) if a
        new request of ``kind`` must wait."""
        refusal = admission(kind, self.level, self.active(), self.max_active)
        if refusal is None:
            return
        raise errors.Overloaded(refusal.message, headers={
            "Retry-After": str(refusal.retry_after_s)}, data={
            "reason": refusal.reason, "retry_after": refusal.retry_after_s,
            "memory_mib": round(self.rss / MiB, 1),
            "memory_budget_mib": round(self.thresholds.budget / MiB, 1),
            "resource_state": str(self.level), "active_uploads": self.active(),
            "max_concurrent_uploads": self.max_active or None})

    def describe(self) -> dict[str, object]:
        level = self.level
        status = {LoadLevel.CRITICAL: "unhealthy", LoadLevel.HIGH: "degraded"}.get(level,
                                                                                 "healthy")
        return {"status": status, "memory_mib": round(self.rss / MiB, 1),
                "memory_budget_mib": round(self.thresholds.budget / MiB, 1),
                "memory_percent": round(100.0 * self.rss / self.thresholds.budget, 1),
                "cpu_percent": round(self.cpu_percent, 1), "active_uploads": self.active(),
                "max_concurrent_uploads": self.max_active or None,
                "resource_state": str(level)}
