"""The fake Notion server's clock, rate limiter, fault plan and request log.

- :class:`FakeClock` is real monotonic time plus an offset tests move forward; upload
  expiry (rules 18-20) and the rate limiter (rule 27) both read it, so one
  ``clock.advance(3600)`` expires uploads and refills every token bucket.
- :class:`RateLimiter` is a per-token token bucket (rule 27: "an average of three requests
  per second", "some bursts beyond the average rate are allowed", docs/notion-contract.md §9).
- :class:`FaultPlan` decides, per request, whether to inject a fault (rule 28, rule 15):
  scripted one-shot faults first, then seeded random ones.
- :class:`RequestRecord` is one line of the log tests read; :func:`peak_burst` checks a log
  against a rate.

Nothing here does I/O.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

# Endpoint names, used in the request log, in counters and to aim faults.
CREATE = "file_uploads.create"
SEND = "file_uploads.send"
COMPLETE = "file_uploads.complete"
RETRIEVE = "file_uploads.retrieve"
LIST = "file_uploads.list"
USERS_ME = "users.me"
PAGE_CREATE = "pages.create"
PAGE_RETRIEVE = "pages.retrieve"
DB_QUERY = "databases.query"
DB_RETRIEVE = "databases.retrieve"
DB_CREATE = "databases.create"
DS_RETRIEVE = "data_sources.retrieve"
DS_QUERY = "data_sources.query"
UNKNOWN = "unknown"  # a path or method the API does not have
ENDPOINTS = frozenset({CREATE, SEND, COMPLETE, RETRIEVE, LIST, USERS_ME, PAGE_CREATE,
                       PAGE_RETRIEVE, DB_QUERY, DB_RETRIEVE, DB_CREATE, DS_RETRIEVE, DS_QUERY})


class FakeClock:
    """Monotonic time plus a test-controlled offset, and the wall time that goes with it."""

    def __init__(self, start: datetime | None = None) -> None:
        self._mono0 = time.monotonic()
        self._wall0 = start or datetime.now(UTC)
        self._offset = 0.0
        self._frozen_at: float | None = None

    def monotonic(self) -> float:
        real = time.monotonic() if self._frozen_at is None else self._frozen_at
        return real + self._offset

    def freeze(self) -> None:
        """Stop real time from counting (only ``advance`` moves the clock): makes rate
        limit tests independent of how fast the machine is."""
        if self._frozen_at is None:
            self._frozen_at = time.monotonic()

    def unfreeze(self) -> None:
        """Let real time count again from where the frozen clock stands."""
        if self._frozen_at is not None:
            self._offset -= time.monotonic() - self._frozen_at
            self._frozen_at = None

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=self.monotonic() - self._mono0)

    def advance(self, seconds: float) -> None:
        """Move time forward (never back: the monotonic contract and the log rely on it)."""
        if seconds < 0:
            raise ValueError("the fake clock only moves forward")
        self._offset += seconds


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per bearer token: ``rate`` requests/s on average, ``burst`` at once.

    Only admitted requests take a token; a 429 costs nothing, so a client that waits out
    ``Retry-After`` is always admitted (the docs promise that, §9). ``rate <= 0`` turns the
    limiter off.
    """

    def __init__(self, rate: float = 3.0, burst: int = 5) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str, now: float) -> float | None:
        """Admit (None) or answer how many seconds until a token is free."""
        if self.rate <= 0:
            return None
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst),
                            bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate


def retry_after_seconds(wait_s: float) -> int:
    """Retry-After is whole seconds (§9); rounding up keeps "wait that long" true."""
    return max(1, math.ceil(wait_s))


FaultKind = Literal["status", "html", "reset", "slow"]


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure (rule 28).

    - ``status``: answer ``status`` with Notion's envelope (409 conflict_error, 429, 500, 502,
      503, 504, 529 service_overload with Retry-After).
    - ``html``: answer ``status`` with an HTML page, as a proxy in front of Notion would.
    - ``reset``: abort the TCP connection with RST, no answer at all.
    - ``slow``: wait ``delay_s`` and then answer normally.

    ``delay_s`` also delays the other kinds. With ``after=True`` the request is carried out
    first and the failure replaces its success: the ambiguous outcome (a 503 on a page that
    was created, a reset after a part was stored). A request that fails on its own merits
    keeps its real error.
    """

    kind: FaultKind = "status"
    status: int = 503
    delay_s: float = 0.0
    after: bool = False
    retry_after_s: int = 1
    # The 429's ``additional_data.rate_limit_reason`` (§9): this connection's limit, the
    # workspace's (``public_api_space_request_rate_limit``), an endpoint's.
    reason: str = "public_api_request_rate_limit"

    def label(self) -> str:
        if self.kind in ("status", "html"):
            return f"{self.kind}:{self.status}{':after' if self.after else ''}"
        return f"{self.kind}{':after' if self.after else ''}"


@dataclass(slots=True)
class _Scripted:
    fault: Fault
    endpoint: str | None
    remaining: int


@dataclass(slots=True)
class _Chance:
    fault: Fault
    probability: float
    endpoints: frozenset[str] | None


def _check_endpoint(endpoint: str | None) -> None:
    if endpoint is not None and endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; one of {sorted(ENDPOINTS)}")


class FaultPlan:
    """Which requests fail, and how. Scripted faults win over random ones.

    Random draws come from one ``random.Random(seed)``, so a failing test replays exactly.
    """

    def __init__(self, seed: int = 0) -> None:
        self._random = random.Random(seed)
        self._scripted: list[_Scripted] = []
        self._chances: list[_Chance] = []
        self.injected: list[tuple[str, str]] = []  # (endpoint, fault label), in order

    # --- general API ----------------------------------------------------------------------
    def script(self, fault: Fault, *, endpoint: str | None = None, times: int = 1) -> None:
        """The next ``times`` requests to ``endpoint`` (any endpoint if None) get ``fault``."""
        _check_endpoint(endpoint)
        if times < 1:
            raise ValueError("times must be at least 1")
        self._scripted.append(_Scripted(fault, endpoint, times))

    def chance(self, fault: Fault, probability: float, *,
               endpoints: Iterable[str] | None = None) -> None:
        """Each request to ``endpoints`` (all if None) gets ``fault`` with ``probability``."""
        chosen = None if endpoints is None else frozenset(endpoints)
        for endpoint in chosen or ():
            _check_endpoint(endpoint)
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        self._chances.append(_Chance(fault, probability, chosen))

    def clear(self) -> None:
        self._scripted.clear()
        self._chances.clear()

    def pending(self) -> int:
        """Scripted faults not used yet (a test can assert its script was consumed)."""
        return sum(s.remaining for s in self._scripted)

    def take(self, endpoint: str) -> Fault | None:
        """The fault for this request, if any (the server calls this once per request)."""
        for scripted in self._scripted:
            if scripted.endpoint in (None, endpoint):
                scripted.remaining -= 1
                if scripted.remaining == 0:
                    self._scripted.remove(scripted)
                self.injected.append((endpoint, scripted.fault.label()))
                return scripted.fault
        for chance in self._chances:
            if chance.endpoints is not None and endpoint not in chance.endpoints:
                continue
            # Draw even at probability 0/1 so adding a rule never shifts later draws.
            if self._random.random() < chance.probability:
                self.injected.append((endpoint, chance.fault.label()))
                return chance.fault
        return None

    # --- shortcuts for the cases the sink's tests need ------------------------------------
    def fail_next(self, endpoint: str | None, status: int = 503, *, times: int = 1,
                  after: bool = False, retry_after_s: int = 1) -> None:
        self.script(Fault("status", status, after=after, retry_after_s=retry_after_s),
                    endpoint=endpoint, times=times)

    def conflict_next_sends(self, times: int = 1) -> None:
        """Rule 15: "sending file contents failed" while Notion's file storage is down."""
        self.fail_next(SEND, 409, times=times)

    def commit_then_503_next_page(self) -> None:
        """Rule 28: the page is created, the answer is a 503 naming it (§9)."""
        self.fail_next(PAGE_CREATE, 503, after=True)

    def slow_next(self, endpoint: str | None, seconds: float, *, times: int = 1,
                  after: bool = False) -> None:
        self.script(Fault("slow", delay_s=seconds, after=after), endpoint=endpoint,
                    times=times)

    def reset_next(self, endpoint: str | None, *, times: int = 1,
                   after: bool = False) -> None:
        self.script(Fault("reset", after=after), endpoint=endpoint, times=times)

    def html_next(self, endpoint: str | None, status: int = 502, *, times: int = 1) -> None:
        self.script(Fault("html", status), endpoint=endpoint, times=times)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the fake saw it. ``status`` 0 means the connection was reset."""

    time: float  # the fake clock's monotonic time at admission
    token: str | None
    method: str
    path: str
    endpoint: str
    status: int
    fault: str | None = None
    admitted: bool = field(default=True)  # False: refused before the rate limiter took a token


def peak_burst(records: Iterable[RequestRecord], rate: float) -> float:
    """The largest ``count - rate * span`` over any run of admitted requests.

    A token bucket with capacity B admits at most ``B + rate * (t_j - t_i)`` requests in
    any closed interval [t_i, t_j], so ``peak_burst(log, rate) <= B`` is exactly "no window
    exceeded its budget". Computed in one pass: with ``a_k = k - rate * t_k``, the value of
    run i..j is ``a_j - a_i + 1``.
    """
    best = 0.0
    lowest = math.inf
    admitted = sorted((r for r in records if r.admitted), key=lambda r: r.time)
    for k, record in enumerate(admitted):
        a = k - rate * record.time
        lowest = min(lowest, a)
        best = max(best, a - lowest + 1)
    return best
