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

The same sample measures the data directory's filesystem (``statvfs``, again off the loop).
Below ``--min-free-disk`` a creation and a new PATCH get 507 with Retry-After before the
disk is actually full; a body already streaming goes on, and if the disk does fill under it
the spool keeps what was written (``gateway.state.spool``). The figure is at most half a
second old, which is fine for a floor meant to leave room, and costs requests nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
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


@dataclass(frozen=True, slots=True)
class DiskSpace:
    """The data directory's filesystem at the last sample."""

    free: int  # bytes an unprivileged writer may still use (statvfs f_bavail, as df shows)
    total: int
    floor: int  # --min-free-disk in bytes for this filesystem

    @property
    def low(self) -> bool:
        return self.free < self.floor

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free / self.total if self.total else 0.0


def read_disk(path: Path, floor: Callable[[int], int]) -> DiskSpace:
    """Free space of ``path``'s filesystem (blocking: a system call on the disk)."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    return DiskSpace(st.f_bavail * st.f_frsize, total, floor(total))


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
                 critical_percent: float, max_active: int, active: Callable[[], int],
                 disk_path: Path | None = None,
                 disk_floor: Callable[[int], int] = lambda total: 0) -> None:
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
        self.disk_path = disk_path
        self.disk_floor = disk_floor
        self.disk: DiskSpace | None = None
        self.disk_error: str | None = None
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
        self.rss, self.cpu_percent, disk = await self.pool.run(self._read)
        if isinstance(disk, DiskSpace):
            self.disk, self.disk_error = disk, None
        elif disk is not None:
            # Unknown is not low: the writes themselves still answer 507 on a full disk.
            self.disk, self.disk_error = None, disk

    def _read(self) -> tuple[int, float, DiskSpace | str | None]:
        if self._process is None:
            self._process = psutil.Process()
        with self._process.oneshot():
            rss, cpu = self._process.memory_info().rss, self._process.cpu_percent(None)
        disk: DiskSpace | str | None = None
        if self.disk_path is not None:
            try:
                disk = read_disk(self.disk_path, self.disk_floor)
            except OSError as exc:
                disk = f"cannot measure the data directory's free space: {exc.strerror}"
        return rss, cpu, disk

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
        new request of ``kind`` must wait; ``errors.InsufficientStorage`` (507) when free
        disk space is below the floor."""
        disk = self.disk
        if disk is not None and disk.low:
            raise errors.InsufficientStorage(
                "free disk space is below the server's minimum; new uploads and PATCH "
                "requests must wait", data={
                    "reason": "disk_low", "free_bytes": disk.free,
                    "min_free_bytes": disk.floor})
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

    def describe_disk(self) -> dict[str, object]:
        """The data directory's free space against the floor, for the health endpoint."""
        disk = self.disk
        if disk is None:
            return {"status": "degraded" if self.disk_error else "healthy",
                    "error": self.disk_error}
        return {"status": "degraded" if disk.low else "healthy", "free_bytes": disk.free,
                "total_bytes": disk.total, "free_percent": round(disk.free_percent, 2),
                "min_free_bytes": disk.floor}
