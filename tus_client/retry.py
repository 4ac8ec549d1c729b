"""When the uploader tries again, and the failures it tells apart.

A failure is either final for one file (``UploadError``), worth another try of the same
request (``RetryableError``, which carries the server's ``Retry-After``), or a stored upload
URL the server no longer knows (``UnknownUpload``: create a new upload instead).
``RetryPolicy`` turns the count of failures in a row into a wait, or into giving up; the
wait itself, and the reading of ``Retry-After``, are the project's one backoff and one parser
in ``protocol.retry``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from protocol.retry import backoff, parse_retry_after

# Failures in a row; progress renews the budget (see the package docstring).
DEFAULT_RETRIES = 5


class UploadError(Exception):
    """One file could not be uploaded; the message says why, for a human."""


class RetryableError(Exception):
    """A failure the same request may get past later: the connection, 5xx, 409, 423, 429."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnknownUpload(Exception):
    """The server does not know a stored upload URL any more (or it is another file's)."""


# Statuses worth another try. tus servers answer 423 while another request holds the upload
# (our gateway, tusd's locker) and 409 when the offset moved; 460 is tus's checksum mismatch,
# i.e. bytes damaged on the way, which a resend fixes.
RETRY_STATUSES = frozenset({408, 423, 429})
PATCH_RETRY_STATUSES = RETRY_STATUSES | {409, 460}


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date (RFC 9110);
    ``None`` when absent or malformed."""
    return parse_retry_after(headers.get("Retry-After"), now)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again. Pure: the random draw is passed in."""

    retries: int = DEFAULT_RETRIES
    """Failures in a row before giving up; 0 never retries."""
    base_s: float = 0.5
    """First backoff ceiling; doubles with each failure in a row."""
    cap_s: float = 30.0
    """Largest backoff ceiling: beyond it a client only loses time it could be sending in."""
    max_retry_after_s: float = 600.0
    """A longer Retry-After is taken as this: an hour-long wait is better reported than slept."""

    def delay(self, failures: int, retry_after_s: float | None, draw: float) -> float | None:
        """Seconds to wait after the ``failures``-th failure in a row, or None to give up.

        Full jitter (uniform below the ceiling) so parallel uploads that failed together do
        not come back together; a Retry-After is a floor, since the server said sooner is
        pointless.
        """
        if failures > self.retries:
            return None
        return backoff(failures, self.base_s, self.cap_s, draw, retry_after=retry_after_s,
                       retry_after_cap=self.max_retry_after_s)

