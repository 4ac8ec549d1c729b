"""Part arithmetic: the plan's invariants for any length and window, and when parts are ready."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notion_sink.windows import (
    MAX_LENGTH,
    MAX_PART,
    MAX_PARTS,
    MIN_PART,
    SINGLE_PART_MAX,
    EmptyFile,
    PartPlan,
    TooLarge,
    part_range,
    plan_parts,
    ready_parts,
)

MiB = 1024 * 1024

windows = st.integers(MIN_PART, MAX_PART)
# Lengths near the edges matter most: around 20 MiB (single vs multi), around 1000 windows
# (where the part size starts to grow) and at the 1000 x 20 MiB ceiling.
lengths = st.one_of(
    st.integers(1, MAX_LENGTH),
    st.integers(SINGLE_PART_MAX - 2, SINGLE_PART_MAX + 2),
    st.integers(1000 * MIN_PART - 2000, 1000 * MIN_PART + 2000),
    st.integers(MAX_LENGTH - 2000, MAX_LENGTH),
)


@settings(max_examples=200)
@given(lengths, windows)
def test_parts_tile_the_upload(length: int, window: int) -> None:
    plan = plan_parts(length, window)
    ranges = [part_range(plan, n) for n in range(1, plan.number_of_parts + 1)]
    assert ranges[0][0] == 0
    assert ranges[-1][1] == length
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end == start  # no gap, no overlap
    assert all(start < end for start, end in ranges)  # no empty part


@settings(max_examples=200)
@given(lengths, windows)
def test_part_sizes_and_count_fit_notion(length: int, window: int) -> None:
    plan = plan_parts(length, window)
    assert 1 <= plan.number_of_parts <= MAX_PARTS
    assert (plan.mode == "single_part") == (length <= SINGLE_PART_MAX)
    sizes = [end - start for start, end in
             (part_range(plan, n) for n in range(1, plan.number_of_parts + 1))]
    if plan.mode == "single_part":
        assert sizes == [length]
        return
    assert all(MIN_PART <= size <= MAX_PART for size in sizes[:-1])
    assert 1 <= sizes[-1] <= plan.part_size
    # The operator's window is kept unless 1000 parts of it would not hold the file.
    assert plan.part_size == max(window, -(-length // MAX_PARTS))


def test_examples() -> None:
    assert plan_parts(1, 5 * MiB) == PartPlan("single_part", 1, 1, 1)
    assert plan_parts(20 * MiB, 5 * MiB) == PartPlan("single_part", 20 * MiB, 1, 20 * MiB)
    assert plan_parts(20 * MiB + 1, 5 * MiB) == PartPlan("multi_part", 5 * MiB, 5, 20 * MiB + 1)
    assert plan_parts(20 * MiB + 1, 20 * MiB) == PartPlan("multi_part", 20 * MiB, 2,
                                                          20 * MiB + 1)
    # 5 GiB at 5 MiB would be 1024 parts: the part size grows to ceil(L / 1000).
    five_gib = 5 * 1024 * MiB
    plan = plan_parts(five_gib, 5 * MiB)
    assert plan.part_size == 5_368_710
    assert plan.number_of_parts == 1000
    assert plan_parts(MAX_LENGTH, 5 * MiB) == PartPlan("multi_part", MAX_PART, 1000, MAX_LENGTH)


@pytest.mark.parametrize("window", [0, MIN_PART - 1, MAX_PART + 1])
def test_window_outside_5_to_20_mib_is_refused(window: int) -> None:
    with pytest.raises(ValueError, match="window"):
        plan_parts(30 * MiB, window)


def test_empty_negative_and_oversized_lengths_are_refused() -> None:
    with pytest.raises(EmptyFile):
        plan_parts(0, MIN_PART)
    with pytest.raises(ValueError, match="negative"):
        plan_parts(-1, MIN_PART)
    with pytest.raises(TooLarge):
        plan_parts(MAX_LENGTH + 1, MAX_PART)


@pytest.mark.parametrize("fields", [
    ("single_part", 10, 1, 11),                   # not the whole length
    ("single_part", 21 * MiB, 1, 21 * MiB),       # too big for one send
    ("multi_part", MIN_PART - 1, 9, 40 * MiB),    # part too small
    ("multi_part", MAX_PART + 1, 2, 40 * MiB),    # part too big
    ("multi_part", 5 * MiB, 9, 40 * MiB),         # count does not match: 8 parts hold it
    ("multi_part", 5 * MiB, 8, 40 * MiB + 1),     # ... and 8 leave a byte over
    ("multi_part", 20 * MiB, 1001, 1001 * 20 * MiB),
    ("other", 5 * MiB, 1, 5 * MiB),
    ("single_part", 0, 1, 0),
])
def test_rebuilt_plans_are_checked(fields: tuple[str, int, int, int]) -> None:
    with pytest.raises(ValueError):
        PartPlan(*fields)  # type: ignore[arg-type]


def test_part_numbers_are_one_based_and_bounded() -> None:
    plan = plan_parts(12 * MiB + 3, MIN_PART)
    assert part_range(plan, 1) == (0, 12 * MiB + 3)
    for n in (0, 2):
        with pytest.raises(ValueError):
            part_range(plan, n)
    plan = plan_parts(21 * MiB, MIN_PART)
    assert part_range(plan, 5) == (20 * MiB, 21 * MiB)
    with pytest.raises(ValueError):
        part_range(plan, 6)


def test_ready_parts_examples() -> None:
    plan = plan_parts(21 * MiB, MIN_PART)  # 4 x 5 MiB + 1 MiB
    assert ready_parts(plan, 0, frozenset()) == []
    assert ready_parts(plan, 5 * MiB - 1, frozenset()) == []
    assert ready_parts(plan, 5 * MiB, frozenset()) == [1]
    assert ready_parts(plan, 20 * MiB, frozenset({2})) == [1, 3, 4]
    # The short tail waits for the end, even when 20 MiB are in.
    assert ready_parts(plan, 21 * MiB - 1, frozenset()) == [1, 2, 3, 4]
    assert ready_parts(plan, 21 * MiB, frozenset({1, 2, 3})) == [4, 5]
    single = plan_parts(3 * MiB, MIN_PART)
    assert ready_parts(single, 3 * MiB - 1, frozenset()) == []
    assert ready_parts(single, 3 * MiB, frozenset()) == [1]
    assert ready_parts(single, 3 * MiB, frozenset({1})) == []
    for offset in (-1, 21 * MiB + 1):
        with pytest.raises(ValueError):
            ready_parts(plan, offset, frozenset())


@st.composite
def plans_with_offsets(draw: st.DrawFn) -> tuple[PartPlan, int, int, frozenset[int]]:
    plan = plan_parts(draw(lengths), draw(windows))
    a = draw(st.integers(0, plan.length))
    b = draw(st.integers(0, plan.length))
    done = frozenset(draw(st.sets(st.integers(1, plan.number_of_parts), max_size=20)))
    return plan, min(a, b), max(a, b), done


@settings(max_examples=200)
@given(plans_with_offsets())
def test_ready_parts_stay_below_the_offset_and_grow_with_it(
        case: tuple[PartPlan, int, int, frozenset[int]]) -> None:
    plan, low, high, done = case
    at_low = ready_parts(plan, low, done)
    at_high = ready_parts(plan, high, done)
    for offset, ready in ((low, at_low), (high, at_high)):
        assert ready == sorted(set(ready))
        assert not set(ready) & done
        for n in ready:
            assert part_range(plan, n)[1] <= offset  # every byte is committed
        if plan.number_of_parts in ready:
            assert offset == plan.length  # the last part only once the upload is whole
        # ...and nothing that could go is held back.
        waiting = {n for n in range(1, plan.number_of_parts + 1)
                   if n not in done and part_range(plan, n)[1] <= offset
                   and (n < plan.number_of_parts or offset == plan.length)}
        assert set(ready) == waiting
    assert set(at_low) <= set(at_high)  # monotone in the offset
