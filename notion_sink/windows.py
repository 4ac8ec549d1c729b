"""Part arithmetic for the Notion File Upload API: which bytes make which part, and when.

Theory of operation
-------------------
A tus upload of length ``L`` reaches Notion in numbered parts. Notion's rules
(docs/notion-contract.md §4):

- a ``single_part`` upload carries at most 20 MiB in one send;
- a ``multi_part`` upload declares ``number_of_parts`` at creation (1 to 1,000), and "each
  file must be ≥ 5 and ≤ 20 (binary) megabytes", except the highest-numbered part, "which can
  be less than 5 MB".

So the plan is fixed by ``(L, window)`` alone, before a single part is sent:

- ``L ≤ 20 MiB``: one ``single_part`` send of the whole file, once it is complete;
- otherwise ``multi_part`` with ``part_size = max(window, ceil(L / 1000))``: the window is what
  the operator asked for, and growing it to ``ceil(L / 1000)`` is the least change that keeps
  the count within 1,000. Parts are ``[(n-1)·size, min(n·size, L))`` for ``n = 1..N`` with
  ``N = ceil(L / size)``.

Invariants (the property tests check each one):

1. the parts tile ``[0, L)``: no gap, no overlap, in order;
2. every part but the last is exactly ``part_size`` bytes, and ``5 MiB ≤ part_size ≤ 20 MiB``;
   the last part holds between 1 and ``part_size`` bytes;
3. ``N ≤ 1000``;
4. ``single_part`` if and only if ``L ≤ 20 MiB``;
5. a part is *ready* only when its every byte is below the committed offset, so the short
   tail (the last part) waits for the whole upload. ``ready_parts`` only grows as the offset
   grows.

Because the part boundaries depend on the window, a drain that resumes after a restart must
use the plan it started with (persist ``part_size`` and ``number_of_parts`` with the
checkpoint; ``PartPlan`` re-checks them when rebuilt), not one recomputed from a window
setting that may have changed since: Notion fixed ``number_of_parts`` when the upload was
created.

An upload with a deferred length has no plan yet: the caller starts draining once the length
is known. Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MiB = 1024 * 1024

MIN_PART = 5 * MiB
"""Smallest non-final multi-part part Notion accepts (≥ 5 MiB, docs/notion-contract.md §4)."""

MAX_PART = 20 * MiB
"""Largest part Notion accepts (≤ 20 MiB, docs/notion-contract.md §4)."""

SINGLE_PART_MAX = 20 * MiB
"""Largest file sent in one ``single_part`` send; above it Notion requires parts."""

MAX_PARTS = 1000
"""Most parts in one upload. The newest OpenAPI says 10,000 for ``number_of_parts`` but still
1,000 for ``part_number``; 1,000 is the bound every source agrees on
(docs/notion-contract.md §11)."""

DEFAULT_WINDOW = MIN_PART
"""The default: the smallest window keeps the least data waiting in the spool."""

MAX_LENGTH = MAX_PARTS * MAX_PART
"""Longest upload that fits 1,000 parts of 20 MiB (about 19.5 GiB)."""

Mode = Literal["single_part", "multi_part"]


class EmptyFile(ValueError):
    """A 0-byte upload cannot go to Notion.

    Whether Notion accepts an empty file is undocumented (docs/notion-contract.md §11), and an empty
    ``single_part`` send is indistinguishable from a missing ``file`` field. Rather than
    guess, the sink refuses: the caller records the file without an attachment or fails it.
    """


class TooLarge(ValueError):
    """The upload would need more than 1,000 parts even at 20 MiB each."""


@dataclass(frozen=True, slots=True)
class PartPlan:
    """How an upload of ``length`` bytes is cut into Notion parts.

    For ``single_part``, ``part_size == length`` and ``number_of_parts == 1``. The
    constructor re-checks the numbers, so a plan rebuilt from a checkpoint is as sound as
    one from ``plan_parts``.
    """

    mode: Mode
    part_size: int
    number_of_parts: int
    length: int

    def __post_init__(self) -> None:
        if self.length <= 0:
            raise ValueError(f"length must be positive, not {self.length}")
        if self.mode == "single_part":
            if self.length > SINGLE_PART_MAX:
                raise ValueError(f"single_part carries at most {SINGLE_PART_MAX} bytes")
            if (self.part_size, self.number_of_parts) != (self.length, 1):
                raise ValueError("a single_part plan is one part of the whole length")
            return
        if self.mode != "multi_part":
            raise ValueError(f"unknown mode {self.mode!r}")
        if not MIN_PART <= self.part_size <= MAX_PART:
            raise ValueError(f"part size {self.part_size} is outside {MIN_PART}..{MAX_PART}")
        if not 1 <= self.number_of_parts <= MAX_PARTS:
            raise ValueError(f"{self.number_of_parts} parts is outside 1..{MAX_PARTS}")
        # The count must be exactly what the size implies: Notion checks number_of_parts
        # against the last part_number, so a plan that leaves an empty or missing tail fails.
        if -(-self.length // self.part_size) != self.number_of_parts:
            raise ValueError("number_of_parts does not match length / part_size")


def plan_parts(length: int, window: int = DEFAULT_WINDOW) -> PartPlan:
    """The part plan for an upload of ``length`` bytes drained in windows of ``window``.

    Raises ``ValueError`` for a window outside 5 to 20 MiB or a negative length,
    ``EmptyFile`` for 0 bytes and ``TooLarge`` beyond 1,000 parts of 20 MiB.
    """
    if not MIN_PART <= window <= MAX_PART:
        raise ValueError(f"window {window} is outside {MIN_PART}..{MAX_PART} bytes")
    if length < 0:
        raise ValueError(f"length must not be negative, not {length}")
    if length == 0:
        raise EmptyFile("a 0-byte file cannot be sent to Notion")
    if length <= SINGLE_PART_MAX:
        return PartPlan("single_part", length, 1, length)
    size = max(window, -(-length // MAX_PARTS))
    if size > MAX_PART:
        raise TooLarge(f"{length} bytes need more than {MAX_PARTS} parts of {MAX_PART} bytes")
    return PartPlan("multi_part", size, -(-length // size), length)


def part_range(plan: PartPlan, n: int) -> tuple[int, int]:
    """The byte range ``[start, end)`` of 1-based part ``n``."""
    if not 1 <= n <= plan.number_of_parts:
        raise ValueError(f"part {n} is outside 1..{plan.number_of_parts}")
    start = (n - 1) * plan.part_size
    return start, min(start + plan.part_size, plan.length)


def ready_parts(plan: PartPlan, committed_offset: int, done: frozenset[int]) -> list[int]:
    """Part numbers, ascending, whose bytes are all committed and that are not in ``done``.

    Every part but the last ends on a multiple of ``part_size``, so the parts wholly below
    the offset are the first ``offset // part_size``; the last part ends at ``length``, so it
    becomes ready only when the offset reaches the end (for ``single_part`` the one part is
    the last part, so it waits for completion too).
    """
    if not 0 <= committed_offset <= plan.length:
        raise ValueError(f"offset {committed_offset} is outside 0..{plan.length}")
    if committed_offset == plan.length:
        covered = plan.number_of_parts
    else:
        # Strictly below the length the count never reaches the last part: its end is L.
        covered = committed_offset // plan.part_size
    return [n for n in range(1, covered + 1) if n not in done]
