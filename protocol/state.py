"""The upload lifecycle as one transition table.

Theory of operation
-------------------
An upload is in exactly one status. ``created`` has no bytes yet, ``receiving`` has some,
``complete`` has all of them (offset == length) and waits for the sink, ``draining`` is being
delivered, ``drained`` was delivered, ``failed`` could not be delivered (and may be retried),
``rejected`` had all its bytes but they are not what the upload claimed to be (the allowed
types' content check, gateway/screening.py): it is never delivered and its bytes are removed;
``terminated`` was deleted or expired and only a tombstone remains.

Rules the table encodes:
- bytes arrive only while the length is unknown or not reached (created, receiving);
- reaching the length moves to ``complete`` exactly once, and delivery starts only from there;
- an empty append is a no-op everywhere bytes could be appended, and on a complete upload
  (a retried final PATCH must succeed, TUS-PATCH-10);
- termination is possible from every live status; expiry only before completion, because a
  complete upload belongs to the sink, not to the client;
- nothing leaves ``terminated``.
Any (status, input) pair missing from the table is a protocol error.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class UploadStatus(enum.StrEnum):
    CREATED = "created"
    RECEIVING = "receiving"
    COMPLETE = "complete"
    DRAINING = "draining"
    DRAINED = "drained"
    FAILED = "failed"
    REJECTED = "rejected"
    TERMINATED = "terminated"


class Input(enum.StrEnum):
    APPEND = "append"  # a non-empty body was stored
    APPEND_EMPTY = "append_empty"  # a request that stores nothing (empty PATCH, length only)
    REACH_END = "reach_end"  # the offset reached the declared length
    SINK_START = "sink_start"
    SINK_DONE = "sink_done"
    SINK_FAIL = "sink_fail"
    REJECT = "reject"  # the content check found the bytes are not what was claimed
    TERMINATE = "terminate"
    EXPIRE = "expire"


class IllegalTransition(Exception):
    def __init__(self, status: UploadStatus, event: Input) -> None:
        super().__init__(f"{event} is not allowed while the upload is {status}")
        self.status = status
        self.event = event


S, E = UploadStatus, Input
TRANSITIONS: Mapping[tuple[UploadStatus, Input], UploadStatus] = MappingProxyType({
    (S.CREATED, E.APPEND): S.RECEIVING,
    (S.CREATED, E.APPEND_EMPTY): S.CREATED,
    (S.CREATED, E.REACH_END): S.COMPLETE,  # Upload-Length: 0, or a final concatenation
    (S.CREATED, E.TERMINATE): S.TERMINATED,
    (S.CREATED, E.EXPIRE): S.TERMINATED,
    (S.RECEIVING, E.APPEND): S.RECEIVING,
    (S.RECEIVING, E.APPEND_EMPTY): S.RECEIVING,
    (S.RECEIVING, E.REACH_END): S.COMPLETE,
    (S.RECEIVING, E.TERMINATE): S.TERMINATED,
    (S.RECEIVING, E.EXPIRE): S.TERMINATED,
    (S.COMPLETE, E.APPEND_EMPTY): S.COMPLETE,
    (S.COMPLETE, E.SINK_START): S.DRAINING,
    (S.COMPLETE, E.REJECT): S.REJECTED,
    (S.COMPLETE, E.TERMINATE): S.TERMINATED,
    (S.DRAINING, E.APPEND_EMPTY): S.DRAINING,
    (S.DRAINING, E.SINK_DONE): S.DRAINED,
    (S.DRAINING, E.SINK_FAIL): S.FAILED,
    (S.DRAINING, E.SINK_START): S.DRAINING,  # a restart resumes an interrupted delivery
    (S.DRAINING, E.TERMINATE): S.TERMINATED,
    (S.DRAINED, E.APPEND_EMPTY): S.DRAINED,
    (S.DRAINED, E.TERMINATE): S.TERMINATED,
    (S.FAILED, E.APPEND_EMPTY): S.FAILED,
    (S.FAILED, E.SINK_START): S.DRAINING,
    (S.FAILED, E.TERMINATE): S.TERMINATED,
    (S.REJECTED, E.APPEND_EMPTY): S.REJECTED,
    (S.REJECTED, E.TERMINATE): S.TERMINATED,
})
del S, E

RECEIVING = frozenset({UploadStatus.CREATED, UploadStatus.RECEIVING})
FINISHED = frozenset({UploadStatus.COMPLETE, UploadStatus.DRAINING, UploadStatus.DRAINED,
                      UploadStatus.FAILED, UploadStatus.REJECTED})


def advance(status: UploadStatus, event: Input) -> UploadStatus:
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(status, event) from None


def stored(status: UploadStatus, grew: bool, length: int | None, offset: int) -> UploadStatus:
    """The status after bytes (``grew``) or nothing were stored: an append, and the end of
    the upload if that brought the offset to the length. An upload that was complete already
    takes only the empty append (a retried final request)."""
    status = advance(status, Input.APPEND if grew else Input.APPEND_EMPTY)
    if status in RECEIVING and length is not None and offset >= length:
        status = advance(status, Input.REACH_END)
    return status
