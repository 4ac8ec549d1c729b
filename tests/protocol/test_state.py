"""The lifecycle table: every (status, input) pair, and random walks through it."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.state import FINISHED, TRANSITIONS, IllegalTransition, Input, UploadStatus, advance

S, E = UploadStatus, Input


@pytest.mark.parametrize("status,event", list(itertools.product(S, E)))
def test_every_pair_is_in_the_table_or_an_error(status: UploadStatus, event: Input) -> None:
    if (status, event) in TRANSITIONS:
        assert advance(status, event) is TRANSITIONS[(status, event)]
    else:
        with pytest.raises(IllegalTransition):
            advance(status, event)


def test_rules_from_the_header_comment() -> None:
    # Bytes arrive only before completion.
    for status in S:
        allowed = (status, E.APPEND) in TRANSITIONS
        assert allowed == (status in (S.CREATED, S.RECEIVING))
    # Expiry only before completion; termination from every live status.
    for status in S:
        assert ((status, E.EXPIRE) in TRANSITIONS) == (status in (S.CREATED, S.RECEIVING))
        assert ((status, E.TERMINATE) in TRANSITIONS) == (status is not S.TERMINATED)
    # Delivery starts only from complete (or a retry after failure / restart).
    starts = {s for s in S if (s, E.SINK_START) in TRANSITIONS}
    assert starts == {S.COMPLETE, S.FAILED, S.DRAINING}
    # Nothing leaves terminated.
    assert not any(s is S.TERMINATED for s, _ in TRANSITIONS)


@given(st.lists(st.sampled_from(list(E)), max_size=30))
def test_random_walks_keep_the_invariants(events: list[Input]) -> None:
    status = S.CREATED
    completed = 0
    for event in events:
        try:
            nxt = advance(status, event)
        except IllegalTransition:
            continue
        if nxt is S.COMPLETE and status is not S.COMPLETE:
            completed += 1
        # Once finished, an upload never goes back to accepting bytes.
        if status in FINISHED:
            assert nxt in FINISHED or nxt is S.TERMINATED
        if status is S.TERMINATED:
            raise AssertionError("left terminated")
        status = nxt
    assert completed <= 1  # completion happens exactly once
