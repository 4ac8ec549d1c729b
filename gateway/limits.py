"""Limits kept in memory per upload: empty PATCHes sent in a loop.

``EmptyPatches`` remembers, per upload, when a PATCH that carried and changed nothing was
last taken, so that a client stuck in a loop of them (a page that slices past the end of its
file, say) gets 429 instead of a lock, a store read and a log line each time. It is kept per
instance and in memory only: it holds the last interval at most, and never more than
``max_entries`` uploads (the oldest are forgotten first).
"""

from __future__ import annotations

import math
from collections import OrderedDict

# Uploads whose last empty PATCH is remembered at once: a loop is noticed on this many
# uploads together, in about 200 bytes each.
EMPTY_PATCH_ENTRIES = 4096


class EmptyPatches:
    """When each upload last got a PATCH that did nothing (see the module docstring)."""

    def __init__(self, interval_s: float, max_entries: int = EMPTY_PATCH_ENTRIES) -> None:
        self.interval_s = interval_s
        self.max_entries = max_entries
        # Oldest first: every hit moves its upload to the end.
        self._last: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def retry_after(self, upload_id: str, now: float) -> int | None:
        """Whole seconds until the next empty PATCH of this upload is taken, or None if it
        would be taken now."""
        last = self._last.get(upload_id)
        if last is None or now - last >= self.interval_s:
            return None
        return max(1, math.ceil(last + self.interval_s - now))

    def hit(self, upload_id: str, now: float) -> None:
        """Note an empty PATCH of this upload that was taken now."""
        last = self._last
        last[upload_id] = now
        last.move_to_end(upload_id)
        while last:
            oldest_id, oldest = next(iter(last.items()))
            if len(last) <= self.max_entries and now - oldest < self.interval_s:
                break
            del last[oldest_id]

    def forget(self, upload_id: str) -> None:
        """The upload got a PATCH that did something: its next empty one is taken."""
        self._last.pop(upload_id, None)
