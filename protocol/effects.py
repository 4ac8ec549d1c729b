"""What a request does to an upload: the ordered effects of a plan.

A decision function (``decisions.plan_*``, ``ietf.plan_*``) checks a request and returns,
among the facts it found, the effects that carry it out, in the order they must happen. The
gateway performs them one after the other (``gateway.uploads.Uploads.perform``) the same way
for tus and for the IETF draft, and moves the upload's status only through the lifecycle
table (``protocol.state``): what each effect did becomes an input of the table, and a
move the table does not allow is refused there.

Every check that can fail happens while planning, except the ones only the body can answer
(its bytes, its checksum) and the ones that need it stored (``EndUpload``): bad input is
refused before an effect runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.headers import Checksum


@dataclass(frozen=True, slots=True)
class DeclareLength:
    """Record the length of an upload created with a deferred one."""

    length: int


@dataclass(frozen=True, slots=True)
class Append:
    """Stream the request body into the upload at ``offset``: at most ``max_bytes`` (None:
    no limit), verified against ``checksum`` when there is one."""

    offset: int
    max_bytes: int | None
    checksum: Checksum | None = None


@dataclass(frozen=True, slots=True)
class EndUpload:
    """The request said its content ends the upload (the IETF draft's completeness flag): a
    length still unknown becomes the offset, and an offset short of a known length is
    refused (the bytes stay)."""


@dataclass(frozen=True, slots=True)
class Finish:
    """If every byte is in, finish the upload: record it, hand it to the sink, wake the
    finals waiting for it. Done once; a repeat finds the finish on record."""


@dataclass(frozen=True, slots=True)
class Terminate:
    """Remove the upload; a tombstone answers 410 afterwards."""

    reason: str


Effect = DeclareLength | Append | EndUpload | Finish | Terminate


def request_effects(*, declare: int | None = None, append: Append | None = None,
                    end: bool = False) -> tuple[Effect, ...]:
    """The effects of a request that writes to an upload, in the one order every protocol
    uses: a deferred length it declares, its body, the end it declares (the IETF draft),
    then the finish of an upload complete by then (once, whichever of these completed it)."""
    steps: list[Effect] = []
    if declare is not None:
        steps.append(DeclareLength(declare))
    if append is not None:
        steps.append(append)
    if end:
        steps.append(EndUpload())
    steps.append(Finish())
    return tuple(steps)
