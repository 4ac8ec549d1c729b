"""The retry toolkit: capped exponential backoff with jitter, and the Retry-After parser, over
ordinary and hostile values (huge, negative, non-ASCII, malformed, dates long past)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.headers import format_http_date
from protocol.retry import MAX_RETRY_AFTER_S, backoff, backoff_ceiling, parse_retry_after

# Wed, 21 Oct 2015 07:28:00 GMT
NOW = 1_445_412_480.0

# --- Retry-After -------------------------------------------------------------------------------

PARSED: list[tuple[str | None, float | None]] = [
    # delta-seconds (RFC 9110 §10.2.3: 1*DIGIT), with optional whitespace around it
    ("120", 120.0),
    ("0", 0.0),
    (" 7\t", 7.0),
    ("007", 7.0),
    ("0" * 1000 + "5", 5.0),
    # more than any sane wait: held to the bound, not refused (the server did ask to wait)
    ("86401", MAX_RETRY_AFTER_S),
    ("99999999999999999999", MAX_RETRY_AFTER_S),
    ("9" * 400, MAX_RETRY_AFTER_S),  # float() of this is inf
    ("1" + "0" * 5000, MAX_RETRY_AFTER_S),  # int() refuses more than 4300 digits
    # HTTP dates, relative to NOW: IMF-fixdate and the two obsolete forms recipients must accept
    ("Wed, 21 Oct 2015 07:30:00 GMT", 120.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),
    ("Wed Oct 21 07:29:00 2015", 60.0),
    ("Wed, 21 Oct 2015 07:29:00 -0000", 60.0),  # "-0000": UTC, whatever the local zone
    ("Wed, 21 Oct 2015 09:29:00 +0200", 60.0),
    # dates in the past: no wait, not a negative one
    ("Wed, 21 Oct 2015 07:27:59 GMT", 0.0),
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ("Mon, 01 Jan 0001 00:00:00 GMT", 0.0),
    # far future: held to the bound
    ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER_S),
    # absent, empty, garbage
    (None, None),
    ("", None),
    ("   ", None),
    ("soon", None),
    ("-5", None),
    ("-0", None),
    ("+5", None),
    ("1.5", None),
    ("1e3", None),
    ("0x10", None),
    ("5 5", None),
    ("5s", None),
    ("nan", None),
    ("inf", None),
    ("Infinity", None),
    ("120\x00", None),
    ("\x00", None),
    ("120, 60", None),
    ("x" * 100_000, None),
    # non-ASCII digits: str.isdigit() says yes to all of these, float() to some
    ("²", None),
    ("\uff15", None),  # fullwidth five
    ("٣", None),
    ("\u00a05", None),
    # dates that do not exist, or are not ASCII
    ("Wed, 21 Oct 2015 25:61:61 GMT", None),
    ("Wed, 32 Oct 2015 07:28:00 GMT", None),
    ("Wed, 21 Oct 99999 07:28:00 GMT", None),
    ("Wed, 21 Oct 2015 07:28:00 +9999", None),
    ("Wed, 21 Oct 2015 07:30:00 \uff27\uff2d\uff34", None),
    ("\uff11 Oct 2015 07:30:00 GMT", None),
    ("Wed, 21 Oct 2015 07:30:00 GMT" + " " * 100 + "x", None),
]


@pytest.mark.parametrize(("value", "seconds"), PARSED)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(("value", "limit", "seconds"), [
    ("3600", 600.0, 600.0),
    ("599", 600.0, 599.0),
    ("Wed, 21 Oct 2015 08:28:00 GMT", 60.0, 60.0),
    ("0", 0.0, 0.0),
])
def test_retry_after_is_held_to_the_given_limit(value: str, limit: float,
                                                seconds: float) -> None:
    assert parse_retry_after(value, NOW, limit=limit) == seconds


@pytest.mark.parametrize("limit", [-1.0, math.nan, math.inf])
def test_retry_after_limit_must_be_a_real_bound(limit: float) -> None:
    with pytest.raises(ValueError):
        parse_retry_after("5", NOW, limit=limit)


@given(st.text(max_size=60))
def test_any_text_gives_a_bounded_wait_or_none(value: str) -> None:
    seconds = parse_retry_after(value, NOW)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER_S


@given(st.integers(0, 10**40))
def test_delta_seconds_are_read_exactly_up_to_the_bound(n: int) -> None:
    assert parse_retry_after(str(n), NOW) == min(float(n), MAX_RETRY_AFTER_S)


@given(st.integers(-10**6, 10**6))
def test_dates_count_from_now(delta: int) -> None:
    seconds = parse_retry_after(format_http_date(NOW + delta), NOW)
    assert seconds == min(max(float(delta), 0.0), MAX_RETRY_AFTER_S)


# --- backoff -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("attempt", "base", "cap", "ceiling"), [
    (1, 0.5, 30.0, 0.5),
    (2, 0.5, 30.0, 1.0),
    (6, 0.5, 30.0, 16.0),
    (7, 0.5, 30.0, 30.0),
    (1, 0.0, 30.0, 0.0),
    (3, 1.0, 0.0, 0.0),
    (1025, 0.5, 30.0, 30.0),  # 2.0 ** 1024 would raise OverflowError
    (10**18, 0.5, 30.0, 30.0),
    (2000, 1e300, 1e308, 1e308),  # base · 2^60 overflows to inf; the cap still holds
    (2000, 5e-324, 30.0, 5e-324 * 2.0**60),  # doubling stops after 60 steps
    (3, math.inf, 30.0, 30.0),  # straight to the cap
    (3, 0.5, math.inf, 2.0),  # no cap: doubling stops after 60 steps all the same
    (100, 0.5, math.inf, 0.5 * 2.0**60),
])
def test_ceiling_doubles_up_to_the_cap(attempt: int, base: float, cap: float,
                                       ceiling: float) -> None:
    assert backoff_ceiling(attempt, base, cap) == ceiling


def test_doublings_can_stop_sooner() -> None:
    assert backoff_ceiling(50, 1.0, 1e18, max_doublings=30) == 2.0**30
    assert backoff_ceiling(50, 1.0, 1e18) == 2.0**49


@pytest.mark.parametrize(("attempt", "base", "cap"), [
    (0, 0.5, 30.0), (-1, 0.5, 30.0),
    (1, -0.5, 30.0), (1, 0.5, -1.0),
    (1, math.nan, 30.0), (1, 0.5, math.nan), (1, math.inf, math.inf),
    (61, 1e300, math.inf),  # base · 2^60 is past the float range, and nothing caps it
])
def test_impossible_backoffs_are_refused(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        backoff_ceiling(attempt, base, cap)
    with pytest.raises(ValueError):
        backoff(attempt, base, cap, 0.5)


@pytest.mark.parametrize(("draw", "low", "wait"), [
    (0.0, 0.0, 0.0),  # full jitter reaches down to no wait ...
    (0.5, 0.0, 2.0),
    (1.0, 0.0, 4.0),  # ... and up to the ceiling
    (0.0, 0.5, 2.0),  # with low=0.5 it stays in the upper half
    (0.999999, 0.5, 4.0 * (0.5 + 0.999999 / 2)),
    (0.3, 1.0, 4.0),  # low=1: no jitter at all
])
def test_jitter_spreads_below_the_ceiling(draw: float, low: float, wait: float) -> None:
    assert backoff(3, 1.0, 30.0, draw, low=low) == wait


def test_a_random_source_is_drawn_once() -> None:
    assert backoff(3, 0.5, 30.0, random.Random(7)) == 2.0 * random.Random(7).random()
    assert backoff(2, 1.0, 6.0, random.Random(1)) == random.Random(1).uniform(0.0, 2.0)


@pytest.mark.parametrize("draw", [-0.1, 1.000001, math.nan, math.inf])
def test_draws_outside_the_unit_interval_are_refused(draw: float) -> None:
    with pytest.raises(ValueError):
        backoff(1, 0.5, 30.0, draw)


@pytest.mark.parametrize("low", [-0.1, 1.5, math.nan])
def test_low_must_be_a_fraction(low: float) -> None:
    with pytest.raises(ValueError):
        backoff(1, 0.5, 30.0, 0.5, low=low)


@pytest.mark.parametrize(("retry_after", "cap", "wait"), [
    (None, math.inf, 0.15),
    (7.0, math.inf, 7.0),  # a floor, and it may exceed the backoff cap ...
    (0.1, math.inf, 0.15),  # ... but a floor below the draw changes nothing
    (0.0, math.inf, 0.15),
    (3600.0, 60.0, 60.0),  # a Retry-After is believed only so far
    (1e300, 600.0, 600.0),
])
def test_retry_after_is_a_floor_within_its_cap(retry_after: float | None, cap: float,
                                               wait: float) -> None:
    assert backoff(1, 0.5, 30.0, 0.3, retry_after=retry_after,
                   retry_after_cap=cap) == pytest.approx(wait)


@pytest.mark.parametrize("retry_after", [-1.0, math.nan, math.inf])
def test_retry_after_must_be_a_real_wait(retry_after: float) -> None:
    with pytest.raises(ValueError):
        backoff(1, 0.5, 30.0, 0.3, retry_after=retry_after)


@given(attempt=st.integers(1, 10**9), base=st.floats(0, 100), cap=st.floats(0, 1e6),
       draw=st.floats(0, 1), low=st.floats(0, 1),
       retry_after=st.one_of(st.none(), st.floats(0, 1e9)), ra_cap=st.floats(0, 1e6))
def test_backoff_stays_within_its_bounds(attempt: int, base: float, cap: float, draw: float,
                                         low: float, retry_after: float | None,
                                         ra_cap: float) -> None:
    ceiling = backoff_ceiling(attempt, base, cap)
    assert 0.0 <= ceiling <= cap
    assert ceiling <= base * 2.0 ** min(attempt - 1, 60)
    wait = backoff(attempt, base, cap, draw, low=low, retry_after=retry_after,
                   retry_after_cap=ra_cap)
    floor = 0.0 if retry_after is None else min(retry_after, ra_cap)
    assert floor <= wait <= max(ceiling, floor)
    assert wait >= low * ceiling * (1 - 1e-9) - 1e-300
