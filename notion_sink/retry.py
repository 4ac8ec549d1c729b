"""What went wrong talking to Notion, and whether and when to try again.

Theory of operation
-------------------
Errors come in one small hierarchy, so nothing above the client needs to know about HTTP::

    SinkError                  status, code, retry_after, reason; ``retryable`` says the kind
    ├── Retryable              timeouts, connection errors, 408, 409, 5xx: try again later
    │   └── RateLimited        429 rate_limited, 529 service_overload: also slow everyone down
    └── Permanent              400s (validation_error, ...), 401, 403, 404, a blocked
                               integration: the same request will fail the same way

``classify`` is the one mapping from an HTTP error answer to that hierarchy (``_TABLE``).
The transport layer raises ``Retryable`` itself for timeouts and dropped connections.

Why the sink retries POSTs that Notion's own SDKs do not: Notion advises retrying
500/502/503/504 "only for idempotent requests ... unless you have your own idempotency guard"
(docs/notion-contract.md §9). A part send is idempotent for our purposes: Notion counts a
part by its ``part_number``, and resending a number replaces the same bytes (the docs'
advice to retry 409 implies resends are tolerated; docs/notion-contract.md §11). Page
creation has its guard in the records module, which looks a record up by its unique key
before creating it again. So ``classify`` states what the *dependency* said; whether a
retry is safe for a given request is the caller's contract, and every caller in this
package has made it safe.

``RetryPolicy`` is a frozen value; ``next_delay`` is a pure function of the attempt number,
the error, the time spent so far and a random source. Only the drain loop sleeps. The policy:

1. a ``Permanent`` error is never retried;
2. at most ``max_attempts`` attempts in all, and no sleep that would end past ``deadline``
   seconds after the first attempt started;
3. a ``Retry-After`` is a floor: Notion says waiting that long clears the limit, and waiting
   less wastes a request on another 429. If the floor alone passes the deadline, give up now
   rather than sleep and then give up;
4. otherwise "full jitter": uniform in ``[0, min(max_delay, base_delay · 2^(attempt-1))]``,
   so parallel senders that failed together do not come back together. The draw is also
   clipped to the time left before the deadline, so a late retry is shorter, not skipped.
   Rules 3 and 4 are ``protocol.retry.backoff``, the project's one backoff.

``set_testing(True)`` makes every delay 0 (the decision to give up is unchanged), in the
manner of stamina's ``set_testing``, so integration tests exercise retries without waiting.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from protocol.retry import backoff

# --- errors ------------------------------------------------------------------------------------


class SinkError(Exception):
    """Something went wrong between the sink and Notion.

    ``status`` and ``code`` are Notion's HTTP status and error ``code`` when there was an
    answer (``None`` for timeouts and connection errors, or a body that was not Notion's
    JSON). ``retry_after`` is the ``Retry-After`` in seconds; ``reason`` is the 429 body's
    ``additional_data.rate_limit_reason``.
    """

    retryable: bool = False

    def __init__(self, message: str = "", *, status: int | None = None,
                 code: str | None = None, retry_after: float | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message or code or (str(status) if status else type(self).__name__))
        self.status = status
        self.code = code
        # A header of "-3", "nan" or "inf" is noise, not an instruction: a negative wait is
        # no wait, and an unbounded one is no Retry-After at all.
        if retry_after is not None and not math.isfinite(retry_after):
            retry_after = None
        self.retry_after = None if retry_after is None else max(0.0, retry_after)
        self.reason = reason


class Retryable(SinkError):
    """Notion, or the way to it, is unwell for now; the same request may succeed later."""

    retryable = True


class RateLimited(Retryable):
    """429 or 529: retry after ``retry_after``, and make every sender wait that long."""


class Permanent(SinkError):
    """The request itself is wrong, or we may not make it; retrying will not help."""

    retryable = False


BLOCKED_REASON = "public_api_request_blocked"
"""429 reason for which Notion says "do not retry; contact support" (docs/notion-contract.md §9)."""

# --- the one table -----------------------------------------------------------------------------
# (status, code) -> kind. A ``None`` code is the fallback for that status when the code is
# missing or unknown (a proxy's HTML page has none). A status with no row at all falls back
# by class: 5xx Retryable, 4xx Permanent. The codes and their advice are docs/notion-contract.md §8.
_TABLE: Mapping[tuple[int, str | None], type[SinkError]] = MappingProxyType({
    (400, "invalid_json"): Permanent,
    (400, "invalid_request_url"): Permanent,
    (400, "invalid_request"): Permanent,
    (400, "invalid_grant"): Permanent,
    # Also every file-upload size, type and state violation, including a send to an expired
    # upload: the drain recognises that case itself and starts a new upload.
    (400, "validation_error"): Permanent,
    (400, "missing_version"): Permanent,
    (400, "invalid_beta"): Permanent,
    (401, "unauthorized"): Permanent,
    (403, "restricted_resource"): Permanent,
    (404, "object_not_found"): Permanent,
    # Not in the status list, but proxies send it; the request never reached Notion.
    (408, None): Retryable,
    # "Conflict occurred while saving. Please try again." and file storage being down during
    # a send: the docs say to retry later.
    (409, "conflict_error"): Retryable,
    (409, None): Retryable,
    # Undocumented (newest OpenAPI only); the name says a workspace limit, which waiting
    # does not lift.
    (409, "row_limit_exceeded"): Permanent,
    (429, "rate_limited"): RateLimited,
    (429, None): RateLimited,
    (500, "internal_server_error"): Retryable,
    (502, "bad_gateway"): Retryable,
    (503, "service_unavailable"): Retryable,
    (503, "database_connection_unavailable"): Retryable,
    (504, "gateway_timeout"): Retryable,
    # "529 service_overload is handled like a 429" and carries Retry-After.
    (529, "service_overload"): RateLimited,
    (529, None): RateLimited,
})

NOTION_ERROR_CODES: frozenset[str] = frozenset(
    code for _, code in _TABLE if code is not None)
"""Every Notion error ``code`` the table knows."""


def classify(status: int, code: str | None, retry_after: float | None,
             reason: str | None) -> SinkError:
    """The error for an HTTP error answer: its kind by status and Notion ``code``.

    The status decides where the code is unknown or contradicts it (the status is what a
    proxy in the way can set; the code only Notion can). A 429 with reason
    ``public_api_request_blocked`` is permanent.
    """
    if not 400 <= status <= 599:
        raise ValueError(f"status {status} is not an error status")
    kind = _TABLE.get((status, code)) or _TABLE.get((status, None))
    if kind is None:
        kind = Retryable if status >= 500 else Permanent
    if kind is RateLimited and reason == BLOCKED_REASON:
        kind = Permanent
    return kind(status=status, code=code, retry_after=retry_after, reason=reason)


# --- the policy --------------------------------------------------------------------------------

_testing = False


def set_testing(on: bool) -> bool:
    """Make every retry delay 0 (``True``) or real again; returns the previous setting.

    For tests of code that retries; the policy still decides when to give up.
    """
    global _testing
    previous, _testing = _testing, on
    return previous


def is_testing() -> bool:
    """Whether ``set_testing(True)`` is in force."""
    return _testing


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try a failed Notion request again. All times are seconds."""

    max_attempts: int = 8
    """Attempts in all, the first included. Eight covers a run of short 5xx blips without
    letting one bad part hold a sender for long; the breaker takes over from there."""

    base_delay: float = 0.5
    """Ceiling of the first backoff draw; it doubles per attempt. Notion's rate window is a
    second long on average (3 requests/s), so half a second is a useful first pause."""

    max_delay: float = 30.0
    """Per-attempt cap on the backoff draw (not on a Retry-After, which may say more)."""

    deadline: float = 300.0
    """No retry starts later than this after the first attempt. Notion uploads expire an
    hour after creation; five minutes leaves room to recover from a 60 s rate window twice
    over without eating much of that hour."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if self.deadline <= 0:
            raise ValueError("deadline must be positive")

    def next_delay(self, attempt: int, error: SinkError, elapsed: float,
                   rng: random.Random) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up.

        ``attempt`` is the 1-based number of the attempt that just failed with ``error``;
        ``elapsed`` is the time since the first attempt started.
        """
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        if not error.retryable or attempt >= self.max_attempts:
            return None
        remaining = self.deadline - max(0.0, elapsed)
        if remaining <= 0:
            return None
        if (error.retry_after or 0.0) > remaining:
            return None
        # The cap includes the time left, so a late retry is shorter, not skipped.
        delay = backoff(attempt, self.base_delay, min(self.max_delay, remaining), rng,
                        retry_after=error.retry_after)
        return 0.0 if _testing else delay
