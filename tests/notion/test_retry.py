"""The error table and the retry policy: every documented Notion error, and delays that keep
the policy's promises for any attempt, error and elapsed time."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notion_sink.retry import (
    BLOCKED_REASON,
    NOTION_ERROR_CODES,
    Permanent,
    RateLimited,
    Retryable,
    RetryPolicy,
    SinkError,
    classify,
    is_testing,
    set_testing,
)

Row = tuple[int, str | None, type[SinkError]]

# docs/notion-contract.md §8, row by row: (status, code, kind).
DOCUMENTED: list[Row] = [
    (400, "invalid_json", Permanent),
    (400, "invalid_request_url", Permanent),
    (400, "invalid_request", Permanent),
    (400, "invalid_grant", Permanent),
    (400, "validation_error", Permanent),
    (400, "missing_version", Permanent),
    (400, "invalid_beta", Permanent),
    (401, "unauthorized", Permanent),
    (403, "restricted_resource", Permanent),
    (404, "object_not_found", Permanent),
    (409, "conflict_error", Retryable),
    (409, "row_limit_exceeded", Permanent),
    (429, "rate_limited", RateLimited),
    (500, "internal_server_error", Retryable),
    (502, "bad_gateway", Retryable),
    (503, "service_unavailable", Retryable),
    (503, "database_connection_unavailable", Retryable),
    (504, "gateway_timeout", Retryable),
    (529, "service_overload", RateLimited),
]

# Answers with no Notion code (an HTML page from a proxy) or a code we do not know.
UNDOCUMENTED: list[Row] = [
    (400, None, Permanent),
    (405, None, Permanent),
    (408, None, Retryable),
    (409, None, Retryable),
    (413, "payload_too_large", Permanent),
    (429, None, RateLimited),
    (500, "something_new", Retryable),
    (501, None, Retryable),
    (520, None, Retryable),
    (529, None, RateLimited),
    # The status wins over a code that belongs to another status.
    (502, "validation_error", Retryable),
    (400, "rate_limited", Permanent),
]


@pytest.mark.parametrize("status,code,kind", DOCUMENTED + UNDOCUMENTED)
def test_classify(status: int, code: str | None, kind: type[SinkError]) -> None:
    error = classify(status, code, 7.0, None)
    assert type(error) is kind
    assert error.retryable == issubclass(kind, Retryable)
    assert (error.status, error.code, error.retry_after) == (status, code, 7.0)


def test_every_documented_code_is_in_the_table() -> None:
    assert {code for _, code, _ in DOCUMENTED} == NOTION_ERROR_CODES


@pytest.mark.parametrize("status", [429, 529])
def test_a_blocked_integration_is_permanent(status: int) -> None:
    error = classify(status, "rate_limited", None, BLOCKED_REASON)
    assert type(error) is Permanent
    assert error.reason == BLOCKED_REASON
    other = classify(status, "rate_limited", 3.0, "public_api_space_request_rate_limit")
    assert type(other) is RateLimited


@pytest.mark.parametrize("status", [200, 302, 399, 600, 0])
def test_classify_only_takes_error_statuses(status: int) -> None:
    with pytest.raises(ValueError):
        classify(status, None, None, None)


@pytest.mark.parametrize("raw,kept", [(3.0, 3.0), (0.0, 0.0), (-2.0, 0.0), (None, None),
                                      (float("nan"), None), (float("inf"), None)])
def test_retry_after_is_normalised(raw: float | None, kept: float | None) -> None:
    assert Retryable("x", retry_after=raw).retry_after == kept


def test_errors_read_well() -> None:
    assert str(Retryable("TimeoutError: read")) == "TimeoutError: read"
    assert str(classify(503, "service_unavailable", None, None)) == "service_unavailable"
    assert str(classify(502, None, None, None)) == "502"
    assert str(Retryable()) == "Retryable"


# --- the policy --------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def real_delays() -> Iterator[None]:
    previous = set_testing(False)
    yield
    set_testing(previous)


policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 12),
    base_delay=st.floats(0, 5),
    max_delay=st.floats(0, 60),
    deadline=st.floats(0.1, 600),
)
retry_afters = st.one_of(st.none(), st.floats(0, 120))
retryable_errors = st.builds(
    lambda status, after: classify(status, None, after, None),
    st.sampled_from([408, 409, 429, 500, 502, 503, 504, 529]), retry_afters)
permanent_errors = st.builds(
    lambda status, after: classify(status, None, after, None),
    st.sampled_from([400, 401, 403, 404, 413]), retry_afters)
seeds = st.integers(0, 2**32)


@settings(max_examples=200)
@given(policies, st.integers(1, 2000), retryable_errors, st.floats(0, 700), seeds)
def test_delays_keep_every_promise(policy: RetryPolicy, attempt: int, error: SinkError,
                                   elapsed: float, seed: int) -> None:
    delay = policy.next_delay(attempt, error, elapsed, random.Random(seed))
    floor = error.retry_after or 0.0
    if delay is None:
        # Giving up has a reason: out of attempts, or no permitted wait fits the deadline.
        assert attempt >= policy.max_attempts or elapsed + floor > policy.deadline \
            or elapsed >= policy.deadline
        return
    assert attempt < policy.max_attempts
    assert delay >= 0
    assert delay >= floor  # never sooner than Retry-After
    assert elapsed + delay <= policy.deadline + 1e-9
    # The cap binds the backoff; only a Retry-After may say more.
    assert delay <= max(policy.max_delay, floor)
    assert delay <= max(policy.base_delay * 2.0 ** min(attempt - 1, 60), floor)


@settings(max_examples=200)
@given(policies, st.integers(1, 20), retryable_errors, st.floats(0, 700), seeds)
def test_giving_up_is_exact(policy: RetryPolicy, attempt: int, error: SinkError,
                            elapsed: float, seed: int) -> None:
    delay = policy.next_delay(attempt, error, elapsed, random.Random(seed))
    floor = error.retry_after or 0.0
    expect_give_up = (attempt >= policy.max_attempts or elapsed >= policy.deadline
                      or elapsed + floor > policy.deadline)
    assert (delay is None) == expect_give_up


@settings(max_examples=200)
@given(policies, st.integers(1, 20), permanent_errors, st.floats(0, 700), seeds)
def test_permanent_errors_are_never_retried(policy: RetryPolicy, attempt: int,
                                            error: SinkError, elapsed: float,
                                            seed: int) -> None:
    assert policy.next_delay(attempt, error, elapsed, random.Random(seed)) is None


def test_full_jitter_spreads_over_the_whole_range() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=1.0, max_delay=6.0, deadline=1000)
    rng = random.Random(1)
    error = Retryable("x")
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 6.0), (9, 6.0)]:
        draws = [policy.next_delay(attempt, error, 0.0, rng) for _ in range(400)]
        values = [d for d in draws if d is not None]
        assert len(values) == 400
        assert max(values) <= ceiling
        # Full jitter: the draws reach near both ends, not clustered at the ceiling.
        assert min(values) < 0.1 * ceiling
        assert max(values) > 0.9 * ceiling


def test_retry_after_is_a_floor_and_may_exceed_the_cap() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=2.0, deadline=100)
    rng = random.Random(2)
    assert policy.next_delay(1, RateLimited(retry_after=17.0), 0.0, rng) == 17.0
    # A short Retry-After still lets backoff add spread on later attempts.
    delays = [policy.next_delay(4, RateLimited(retry_after=0.5), 0.0, rng) for _ in range(200)]
    assert all(d is not None and 0.5 <= d <= 2.0 for d in delays)
    assert len(set(delays)) > 1
    # If Retry-After alone ends past the deadline, give up now instead of sleeping first.
    assert policy.next_delay(1, RateLimited(retry_after=30.0), 80.0, rng) is None
    assert policy.next_delay(1, RateLimited(retry_after=20.0), 80.0, rng) == 20.0


def test_backoff_is_clipped_to_the_time_left() -> None:
    policy = RetryPolicy(max_attempts=50, base_delay=10.0, max_delay=10.0, deadline=30)
    rng = random.Random(3)
    delays = [policy.next_delay(5, Retryable(), 29.5, rng) for _ in range(100)]
    assert all(d is not None and d <= 0.5 for d in delays)
    assert policy.next_delay(5, Retryable(), 30.0, rng) is None


def test_attempts_run_out() -> None:
    policy = RetryPolicy(max_attempts=3)
    rng = random.Random(4)
    assert policy.next_delay(1, Retryable(), 0.0, rng) is not None
    assert policy.next_delay(2, Retryable(), 0.0, rng) is not None
    assert policy.next_delay(3, Retryable(), 0.0, rng) is None
    assert RetryPolicy(max_attempts=1).next_delay(1, Retryable(), 0.0, rng) is None
    with pytest.raises(ValueError):
        policy.next_delay(0, Retryable(), 0.0, rng)


def test_testing_switch_zeroes_delays_but_not_decisions() -> None:
    policy = RetryPolicy(max_attempts=3, deadline=10)
    rng = random.Random(5)
    assert set_testing(True) is False
    assert is_testing()
    assert policy.next_delay(1, RateLimited(retry_after=5.0), 0.0, rng) == 0.0
    assert policy.next_delay(3, Retryable(), 0.0, rng) is None
    assert policy.next_delay(1, RateLimited(retry_after=50.0), 0.0, rng) is None
    assert policy.next_delay(1, Permanent(), 0.0, rng) is None
    assert set_testing(False) is True
    assert not is_testing()


@pytest.mark.parametrize("fields", [
    {"max_attempts": 0}, {"base_delay": -1.0}, {"max_delay": -1.0}, {"deadline": 0.0},
])
def test_impossible_policies_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**fields)  # type: ignore[arg-type]
