"""One circuit breaker for the Notion dependency, as a pure state model.

Theory of operation
-------------------
When Notion is down, every parallel sender hammering it just burns rate budget and delays
recovery. The breaker stops the drain early and then tests the water with one request::

              failure_threshold consecutive health failures
    CLOSED ───────────────────────────────────────────────> OPEN
      ^                                                     │  ^
      │ probe succeeds                 open_for has passed; │  │ probe fails
      │                                   admit ONE probe   v  │ (open_for restarts)
      └──────────────────────────────────────────────── HALF_OPEN

- Only *health* failures count (``is_failure``; by default the ``Retryable`` sink errors:
  timeouts, connection errors, 409 storage outages, 5xx, 429/529, so a run of 429s opens
  it too). A ``Permanent`` error such as a 400 on one file proves that Notion answered, so
  it counts as a success: it says nothing bad about Notion's health.
- CLOSED admits everything. OPEN refuses everything until ``open_for`` seconds after it
  opened. The first caller after that becomes the one probe, and the breaker is HALF_OPEN;
  every other caller is refused until the probe's result is recorded. Success closes it;
  a health failure reopens it with a fresh ``open_for``. A probe that ends with no verdict
  (cancelled) is released with ``record_abandoned`` so the next caller may probe instead;
  otherwise the breaker would wait in HALF_OPEN forever.
- While OPEN the drain pauses, but the gateway keeps accepting and spooling (the sink never
  blocks the upload path): the breaker only gates sends.

Stale results. Sends are slow (a 20 MiB part) and parallel, so a send admitted while CLOSED
can finish after the breaker opened, or while the probe is out. Taken at face value such a
result could close the breaker without a probe, or free the probe slot and let a second probe
in. So ``admit`` hands out a ``Permit`` stamped with the breaker's *epoch*, which moves on
every state change, and a result recorded with a permit from an older epoch is ignored. The
plain ``allow`` / ``record_*`` calls without a permit still work and treat a result in
HALF_OPEN as the probe's; they suit a caller with one request in flight at a time.

The model reads no clock: every method takes ``now`` from a monotonic clock the caller owns
(the loop's ``time()``). It is not thread-safe and needs no lock under asyncio, since no
method awaits. Sharing it between processes means keeping this same state in Redis behind
one script; that is the store's job, not this module's.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from notion_sink.retry import SinkError


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When the breaker opens and for how long. Times are seconds."""

    failure_threshold: int = 5
    """Consecutive health failures that open the breaker. Five rides out a blip on a couple
    of parallel sends (each already retried by the retry policy) but stops a real outage
    within one round of the drain's senders."""

    open_for: float = 30.0
    """How long to refuse before probing. Long enough for a Notion 60 s rate window to be
    half over and for a 5xx incident to move; short against the hour a Notion upload lives."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.open_for < 0:
            raise ValueError("open_for must not be negative")


def counts_against_health(error: BaseException) -> bool:
    """The default failure predicate: retryable sink errors say Notion is unwell."""
    return isinstance(error, SinkError) and error.retryable


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to send one request: the epoch it was given in, and whether it is the probe."""

    epoch: int
    probe: bool


class CircuitBreaker:
    """The breaker's state; see the module docstring for the rules."""

    def __init__(self, policy: BreakerPolicy | None = None, *,
                 is_failure: Callable[[BaseException], bool] = counts_against_health) -> None:
        self.policy = policy or BreakerPolicy()
        self._is_failure = is_failure
        self._state = BreakerState.CLOSED
        self._opened_at: float | None = None
        self._failures = 0
        self._epoch = 0
        self._probe_out = False

    # --- for status reporting -------------------------------------------------------------
    @property
    def state(self) -> BreakerState:
        """The state as of the last call; OPEN turns HALF_OPEN only when someone asks."""
        return self._state

    @property
    def opened_at(self) -> float | None:
        """When the breaker last opened (the caller's clock), or ``None`` while closed."""
        return self._opened_at

    @property
    def retry_at(self) -> float | None:
        """When an OPEN breaker will admit a probe, or ``None`` in other states."""
        if self._state is not BreakerState.OPEN or self._opened_at is None:
            return None
        return self._opened_at + self.policy.open_for

    @property
    def failures(self) -> int:
        """Consecutive health failures counted since the breaker last closed or succeeded."""
        return self._failures

    @property
    def epoch(self) -> int:
        """Moves on every state change; a ``Permit`` from an older epoch is stale."""
        return self._epoch

    @property
    def probe_outstanding(self) -> bool:
        return self._probe_out

    # --- admission ------------------------------------------------------------------------
    def admit(self, now: float) -> Permit | None:
        """A permit to send now, or ``None`` if the caller must wait."""
        if self._state is BreakerState.CLOSED:
            return Permit(self._epoch, probe=False)
        if self._state is BreakerState.OPEN:
            retry_at = self.retry_at
            if retry_at is None or now < retry_at:
                return None
            self._enter(BreakerState.HALF_OPEN)
        if self._probe_out:
            return None
        self._probe_out = True
        return Permit(self._epoch, probe=True)

    def allow(self, now: float) -> bool:
        """``admit`` for callers that keep no permit."""
        return self.admit(now) is not None

    # --- results --------------------------------------------------------------------------
    def record_success(self, now: float, permit: Permit | None = None) -> None:
        """The request admitted by ``permit`` (or the caller's last one) got an answer."""
        if self._stale(permit):
            return
        if self._state is BreakerState.CLOSED:
            self._failures = 0
        elif self._state is BreakerState.HALF_OPEN:
            self._enter(BreakerState.CLOSED)
        # OPEN: only a permit-less call gets here, from a request admitted before the
        # breaker opened; old news, and only a probe may close the breaker.

    def record_failure(self, now: float, error: BaseException,
                       permit: Permit | None = None) -> None:
        """The request failed with ``error``; only health failures move the breaker."""
        if self._stale(permit):
            return
        if not self._is_failure(error):
            self.record_success(now, permit)
            return
        if self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.policy.failure_threshold:
                self._open(now)
        elif self._state is BreakerState.HALF_OPEN:
            self._failures += 1
            self._open(now)
        # OPEN: as in record_success; reopening here would let late failures from before
        # the outage keep pushing the probe back.

    def record_abandoned(self, now: float, permit: Permit | None = None) -> None:
        """The request ended without a verdict (cancelled): free the probe slot if it held it."""
        if self._stale(permit) or (permit is not None and not permit.probe):
            return
        if self._state is BreakerState.HALF_OPEN:
            self._probe_out = False

    # --- internals ------------------------------------------------------------------------
    def _stale(self, permit: Permit | None) -> bool:
        return permit is not None and permit.epoch != self._epoch

    def _open(self, now: float) -> None:
        self._enter(BreakerState.OPEN)
        self._opened_at = now

    def _enter(self, state: BreakerState) -> None:
        self._state = state
        self._epoch += 1
        self._probe_out = False
        if state is BreakerState.CLOSED:
            self._failures = 0
            self._opened_at = None
