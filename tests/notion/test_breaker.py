"""The circuit breaker: worked examples, then random interleavings of admissions, results and
time checked against the rules (one probe at a time, success closes, open refuses)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from notion_sink.breaker import BreakerPolicy, BreakerState, CircuitBreaker, Permit
from notion_sink.retry import Permanent, RateLimited, Retryable, classify

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def opened(threshold: int = 3, open_for: float = 10.0, at: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=threshold, open_for=open_for))
    for _ in range(threshold):
        breaker.record_failure(at, Retryable("503"))
    assert breaker.state is OPEN
    return breaker


def test_consecutive_health_failures_open_it() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=3, open_for=10))
    breaker.record_failure(0, Retryable())
    breaker.record_failure(1, RateLimited(retry_after=1))
    breaker.record_success(2)  # the run is broken
    breaker.record_failure(3, Retryable())
    breaker.record_failure(4, Retryable())
    assert breaker.state is CLOSED and breaker.failures == 2
    breaker.record_failure(5, Retryable())
    assert breaker.state is OPEN
    assert breaker.opened_at == 5
    assert breaker.retry_at == 15


def test_client_errors_say_nothing_about_health() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=2, open_for=10))
    for _ in range(10):
        breaker.record_failure(0, classify(400, "validation_error", None, None))
        breaker.record_failure(0, classify(404, "object_not_found", None, None))
        breaker.record_failure(0, ValueError("a bug of ours, not Notion's"))
    assert breaker.state is CLOSED and breaker.failures == 0
    # A Permanent answer between health failures proves Notion answered: the run restarts.
    breaker.record_failure(0, Retryable())
    breaker.record_failure(0, Permanent())
    breaker.record_failure(0, Retryable())
    assert breaker.state is CLOSED


def test_open_refuses_until_open_for_then_admits_one_probe() -> None:
    breaker = opened(open_for=10.0, at=100.0)
    assert not breaker.allow(100.0)
    assert not breaker.allow(109.999)
    assert breaker.state is OPEN
    assert breaker.allow(110.0)  # the probe
    assert breaker.state is HALF_OPEN
    assert breaker.probe_outstanding
    assert not breaker.allow(110.0)
    assert not breaker.allow(500.0)  # however long the probe takes


def test_probe_success_closes() -> None:
    breaker = opened(at=0.0)
    assert breaker.allow(10.0)
    breaker.record_success(11.0)
    assert breaker.state is CLOSED
    assert breaker.opened_at is None and breaker.failures == 0
    assert all(breaker.allow(11.0) for _ in range(5))


def test_probe_failure_reopens_for_a_fresh_open_for() -> None:
    breaker = opened(open_for=10.0, at=0.0)
    assert breaker.allow(10.0)
    breaker.record_failure(12.0, Retryable())
    assert breaker.state is OPEN
    assert breaker.opened_at == 12.0
    assert not breaker.allow(21.0)
    assert breaker.allow(22.0)


def test_an_abandoned_probe_frees_the_slot() -> None:
    breaker = opened(at=0.0)
    first = breaker.admit(10.0)
    assert first is not None and first.probe
    assert breaker.admit(10.0) is None
    breaker.record_abandoned(11.0, first)
    assert breaker.state is HALF_OPEN
    second = breaker.admit(11.0)
    assert second is not None and second.probe
    # Abandoning a non-probe, or the old probe again, changes nothing.
    breaker.record_abandoned(11.0, Permit(breaker.epoch, probe=False))
    assert breaker.admit(11.0) is None


def test_stale_results_do_not_move_it() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, open_for=10))
    slow = breaker.admit(0.0)  # a long send, admitted while closed
    assert slow is not None and not slow.probe
    breaker.record_failure(1.0, Retryable())
    assert breaker.state is OPEN
    breaker.record_success(2.0, slow)  # old news: only a probe closes it
    assert breaker.state is OPEN
    probe = breaker.admit(11.0)
    assert probe is not None
    breaker.record_success(12.0, slow)  # must not pass for the probe's answer
    breaker.record_failure(12.0, Retryable(), slow)
    breaker.record_abandoned(12.0, slow)
    assert breaker.state is HALF_OPEN and breaker.admit(12.0) is None
    breaker.record_success(13.0, probe)
    assert breaker.state is CLOSED


def test_results_while_open_are_ignored_without_permits() -> None:
    breaker = opened(open_for=10.0, at=0.0)
    breaker.record_success(5.0)
    breaker.record_failure(9.0, Retryable())
    assert breaker.state is OPEN and breaker.opened_at == 0.0  # not pushed back


@pytest.mark.parametrize("fields", [{"failure_threshold": 0}, {"open_for": -1.0}])
def test_impossible_policies_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**fields)  # type: ignore[arg-type]


# --- random interleavings ----------------------------------------------------------------------

class BreakerMachine(RuleBasedStateMachine):
    """Callers ask for permits, finish (success, health failure, client error, cancelled)
    in any order, and time moves on. Stale permits stay around and report late."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = BreakerPolicy()
        self.breaker = CircuitBreaker(self.policy)
        self.now = 0.0
        self.outstanding: list[Permit] = []
        self.run = 0  # the model's count of consecutive health failures while closed

    # Low thresholds get the breaker open within a few steps, so most runs spend their
    # steps in the interesting states.
    @initialize(threshold=st.integers(1, 3), open_for=st.sampled_from([0.0, 1.0, 5.0]))
    def setup(self, threshold: int, open_for: float) -> None:
        self.policy = BreakerPolicy(failure_threshold=threshold, open_for=open_for)
        self.breaker = CircuitBreaker(self.policy)

    # Index 0 is the oldest outstanding permit, the likeliest to be stale: weight it so late
    # answers from before a state change turn up often.
    indexes = st.one_of(st.just(0), st.integers(0, 100))

    def current(self) -> list[Permit]:
        return [p for p in self.outstanding if p.epoch == self.breaker.epoch]

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 5.0]) | st.floats(0, 8))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def admit(self) -> None:
        before = self.breaker.state
        opened_at = self.breaker.opened_at
        outstanding_probe = self.breaker.probe_outstanding
        permit = self.breaker.admit(self.now)
        if before is CLOSED:
            assert permit is not None and not permit.probe
        elif before is OPEN:
            assert opened_at is not None
            # Compared as the breaker documents it (retry_at = opened_at + open_for): the
            # same instant written as now - opened_at < open_for can round the other way.
            if self.now < opened_at + self.policy.open_for:
                assert permit is None and self.breaker.state is OPEN
            else:
                assert permit is not None and permit.probe
                assert self.breaker.state is HALF_OPEN
        else:
            assert (permit is None) == outstanding_probe
        if permit is not None:
            self.outstanding.append(permit)

    def finish(self, index: int) -> tuple[Permit, bool, BreakerState]:
        permit = self.outstanding.pop(index % len(self.outstanding))
        return permit, permit.epoch == self.breaker.epoch, self.breaker.state

    @precondition(lambda self: self.outstanding)
    @rule(index=indexes)
    def succeed(self, index: int) -> None:
        permit, fresh, before = self.finish(index)
        epoch = self.breaker.epoch
        self.breaker.record_success(self.now, permit)
        if not fresh:
            assert (self.breaker.state, self.breaker.epoch) == (before, epoch)
            return
        assert self.breaker.state is CLOSED  # closed after a success
        self.run = 0

    @precondition(lambda self: self.outstanding)
    @rule(index=indexes,
          error=st.sampled_from([Retryable(), RateLimited(retry_after=1.0)]))
    def fail(self, index: int, error: Retryable) -> None:
        permit, fresh, before = self.finish(index)
        epoch = self.breaker.epoch
        self.breaker.record_failure(self.now, error, permit)
        if not fresh:
            assert (self.breaker.state, self.breaker.epoch) == (before, epoch)
            return
        if before is HALF_OPEN:
            assert self.breaker.state is OPEN and self.breaker.opened_at == self.now
        else:
            self.run += 1
            expected = OPEN if self.run >= self.policy.failure_threshold else CLOSED
            assert self.breaker.state is expected
            if expected is OPEN:
                assert self.breaker.opened_at == self.now
        if self.breaker.state is OPEN:
            self.run = 0

    @precondition(lambda self: self.outstanding)
    @rule(index=indexes, status=st.sampled_from([400, 401, 403, 404]))
    def client_error(self, index: int, status: int) -> None:
        permit, fresh, before = self.finish(index)
        self.breaker.record_failure(self.now, classify(status, None, None, None), permit)
        if fresh:
            # Notion answered, so this is as good as a success for its health.
            assert self.breaker.state is CLOSED
            self.run = 0
        else:
            assert self.breaker.state is before

    @precondition(lambda self: self.outstanding)
    @rule(index=indexes)
    def cancel(self, index: int) -> None:
        permit, fresh, before = self.finish(index)
        self.breaker.record_abandoned(self.now, permit)
        assert self.breaker.state is before
        if fresh and permit.probe:
            assert not self.breaker.probe_outstanding

    def stale(self) -> list[Permit]:
        return [p for p in self.outstanding if p.epoch != self.breaker.epoch]

    # The rules above pick permits blindly; this one makes late answers from before a state
    # change common, since they are the ones that could free the probe slot or close early.
    @precondition(lambda self: self.stale())
    @rule(result=st.sampled_from(["success", "failure", "client_error", "cancel"]))
    def late_answer(self, result: str) -> None:
        permit = self.stale()[0]
        self.outstanding.remove(permit)
        before = (self.breaker.state, self.breaker.epoch, self.breaker.failures,
                  self.breaker.probe_outstanding)
        if result == "success":
            self.breaker.record_success(self.now, permit)
        elif result == "failure":
            self.breaker.record_failure(self.now, Retryable(), permit)
        elif result == "client_error":
            self.breaker.record_failure(self.now, Permanent(), permit)
        else:
            self.breaker.record_abandoned(self.now, permit)
        after = (self.breaker.state, self.breaker.epoch, self.breaker.failures,
                 self.breaker.probe_outstanding)
        assert after == before

    @invariant()
    def at_most_one_probe(self) -> None:
        probes = [p for p in self.current() if p.probe]
        assert len(probes) <= 1
        if self.breaker.state is HALF_OPEN:
            assert len(self.current()) == len(probes)
            assert self.breaker.probe_outstanding == bool(probes)
        else:
            assert not probes and not self.breaker.probe_outstanding

    @invariant()
    def status_fields_agree(self) -> None:
        state = self.breaker.state
        assert (self.breaker.opened_at is None) == (state is CLOSED)
        assert (self.breaker.retry_at is None) == (state is not OPEN)
        if state is OPEN:
            assert self.breaker.opened_at is not None
            assert self.breaker.opened_at <= self.now
        if state is CLOSED:
            assert self.breaker.failures == self.run < self.policy.failure_threshold


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40,
                                            deadline=None)
test_breaker_machine = BreakerMachine.TestCase
