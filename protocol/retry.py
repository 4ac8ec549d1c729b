"""When to try again: capped exponential backoff with jitter, and the Retry-After header.

Theory of operation
-------------------
Every retry loop in the project (the Notion drain, the operator hooks, the command-line
client) asks the same two questions, and this module answers each once, sans-I/O: no clock
reads (``now`` is passed in), no sleeping, and no randomness of its own (a draw in [0, 1] or a
``random.Random`` is passed in), so every answer is a pure function of its arguments.

1. *How long to back off after the ``attempt``-th failure in a row?* The ceiling doubles per
   failure from ``base`` up to ``cap``: ``min(cap, base · 2^(attempt-1))``. The wait is drawn
   below it, ``ceiling · (low + (1 - low) · draw)``: ``low = 0`` is "full jitter" (uniform in
   ``[0, ceiling]``), so callers that failed together do not come back together;
   ``low = 0.5`` keeps the wait in the upper half; ``low = 1`` (or ``backoff_ceiling``)
   is no jitter at all. A ``Retry-After`` is a floor: the server said sooner is pointless,
   so the wait is at least that, but only up to ``retry_after_cap``, past which the caller
   would rather report than sleep. Whether to retry at all (attempt budgets, deadlines,
   which errors) is the caller's policy, not this module's.

2. *What does this Retry-After say?* RFC 9110 §10.2.3: ``Retry-After = HTTP-date /
   delay-seconds`` with ``delay-seconds = 1*DIGIT``. Anything else is refused (``None``),
   and so is anything outside ASCII: ``str.isdigit`` and ``float`` accept digits from other
   scripts (a fullwidth five, U+FF15, is 5.0 to ``float``; ``"²"`` is a digit to ``isdigit``
   and an error to ``float``), none of which a server means. A date is counted from ``now``;
   one in the past is no wait. Every answer is held to ``limit``: a header of twenty nines
   or a date in the year 9999 still asks to wait, just not longer than a caller can act on.

Invariants: ``0 <= backoff(...)``; without a Retry-After it never exceeds the ceiling, which
never exceeds ``cap``; ``parse_retry_after`` returns ``None`` or a float in ``[0, limit]`` and
raises for no header value, however hostile.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
from datetime import UTC

MAX_DOUBLINGS = 60
"""The ceiling stops doubling after this many failures: ``2.0 ** 1024`` raises
``OverflowError``, and ``base · 2^60`` is past any real cap for any base a caller uses."""

MAX_RETRY_AFTER_S = 86400.0
"""The default bound of a parsed Retry-After: a day. A server that means longer is better
reported than slept on; callers hold it lower still (the client caps it at 600 s)."""

# delay-seconds = 1*DIGIT (ASCII only: re's [0-9] is exactly 0x30-0x39). Leading zeros are
# allowed by the grammar and dropped before counting digits.
_DELAY_SECONDS = re.compile(r"[0-9]+")
# More significant digits than this is more than any limit a float can be compared with
# exactly; int() also refuses strings longer than 4300 digits.
_MAX_DIGITS = 18
# The longest HTTP-date form (RFC 850's, with a long weekday name) is 41 characters; a
# longer value is not a date, and the parser need not look at it.
_MAX_DATE_CHARS = 64
# RFC 9110 §5.6.3: OWS = *( SP / HTAB ).
_OWS = " \t"


def backoff_ceiling(attempt: int, base: float, cap: float, *,
                    max_doublings: int = MAX_DOUBLINGS) -> float:
    """``min(cap, base · 2^(attempt-1))``: the longest wait after failure ``attempt`` (1-based).

    Doubling stops after ``max_doublings`` failures, so any attempt number is safe. Either of
    ``base`` and ``cap`` may be infinite (no cap; the cap at once), not both: the ceiling
    must be a number of seconds.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if not (base >= 0 and cap >= 0):  # also refuses NaN
        raise ValueError("base and cap must not be negative")
    # A product past the float range is inf, not an error; the cap then binds.
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, max_doublings))
    if math.isinf(ceiling):
        raise ValueError("the backoff has no finite ceiling")
    return ceiling


def backoff(attempt: int, base: float, cap: float, draw: float | random.Random, *,
            low: float = 0.0, retry_after: float | None = None,
            retry_after_cap: float = math.inf, max_doublings: int = MAX_DOUBLINGS) -> float:
    """Seconds to wait after failure ``attempt`` (1-based) in a row.

    ``draw`` is a number in [0, 1] or a ``random.Random`` to take one from (one call to
    ``random()``). The wait is ``ceiling · (low + (1 - low) · draw)``, at least
    ``min(retry_after, retry_after_cap)`` when a Retry-After was given.
    """
    ceiling = backoff_ceiling(attempt, base, cap, max_doublings=max_doublings)
    if not 0.0 <= low <= 1.0:
        raise ValueError("low must be a fraction of the ceiling, in [0, 1]")
    if retry_after is not None and not (math.isfinite(retry_after) and retry_after >= 0):
        raise ValueError("retry_after must be finite and not negative")
    value = draw.random() if isinstance(draw, random.Random) else draw
    if not 0.0 <= value <= 1.0:
        raise ValueError("draw must be in [0, 1]")
    wait = ceiling * (low + (1.0 - low) * value)
    if retry_after is not None:
        wait = max(wait, min(retry_after, retry_after_cap))
    return wait


def parse_retry_after(value: str | None, now: float, *,
                      limit: float = MAX_RETRY_AFTER_S) -> float | None:
    """A Retry-After header value as seconds from ``now`` (in ``[0, limit]``), or ``None``
    when there is none or it is not delay-seconds or an HTTP-date."""
    if not (math.isfinite(limit) and limit >= 0):
        raise ValueError("limit must be finite and not negative")
    if value is None or not value.isascii():
        return None
    value = value.strip(_OWS)
    if _DELAY_SECONDS.fullmatch(value):
        digits = value.lstrip("0")
        if len(digits) > _MAX_DIGITS:
            return limit
        return min(float(int(digits or "0")), limit)
    if not value or len(value) > _MAX_DATE_CHARS:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # "-0000" and the asctime form carry no zone; HTTP dates are always GMT
        # (RFC 9110 §5.6.7), so read them as UTC whatever this machine's zone is.
        when = when.replace(tzinfo=UTC)
    try:
        seconds = when.timestamp() - now
    except (OverflowError, ValueError):
        return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), limit)
