"""Planning a staggered rollout (rotator.policy.rollout): pure, ``now`` passed in."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rotator.errors import InvalidInput
from rotator.policy.rate import parse_rate
from rotator.policy.rollout import (
    HaltRule,
    claims_allowed,
    fits,
    parse_halt,
    parse_stagger,
    plan_starts,
    rate_lookback,
    starts_allowed,
)

START = datetime(2026, 11, 28, 13, 0, 7, 123000, tzinfo=UTC)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 3000),
    window_s=st.integers(1, 3 * 86400),
    per_minute=st.one_of(st.integers(1, 5000).map(float), st.sampled_from([0.5, 1 / 60, 120.0])),
)
def test_no_60_seconds_hold_more_starts_than_the_rate_and_all_fit_the_window_when_they_can(
    n: int, window_s: int, per_minute: float
) -> None:
    window = timedelta(seconds=window_s)
    starts = plan_starts(n, START, window, per_minute)
    assert len(starts) == n
    assert starts[0] == START
    assert starts == sorted(starts)
    # Any 60 seconds, not only minutes counted from the start: slide a window from each start.
    cap = max(1, int(per_minute))
    j = 0
    for i, t in enumerate(starts):
        while starts[j] <= t - timedelta(seconds=60):
            j += 1
        assert i - j + 1 <= cap, (i, j, per_minute)
    # Minutes counted from the start as well (what an operator's graph shows).
    per_bucket = Counter(int((t - START).total_seconds() // 60) for t in starts)
    assert max(per_bucket.values()) <= cap
    if fits(n, window, per_minute):
        assert all(START <= t < START + window for t in starts)
    else:
        # The rate wins: the plan runs past the window only because the cap forces it.
        gap = (starts[1] - starts[0]).total_seconds()
        assert gap == pytest.approx(60 / per_minute, abs=0.001)


def test_starts_are_spread_evenly_over_the_window_when_the_rate_allows() -> None:
    starts = plan_starts(100, START, timedelta(hours=2), 50)
    gaps = {b - a for a, b in itertools.pairwise(starts)}
    assert gaps == {timedelta(seconds=72)}
    assert starts[-1] < START + timedelta(hours=2)
    assert starts[-1] > START + timedelta(hours=1, minutes=58)


def test_a_tight_rate_stretches_the_plan_past_the_window() -> None:
    starts = plan_starts(100, START, timedelta(minutes=1), 10)
    assert not fits(100, timedelta(minutes=1), 10)
    assert starts[-1] - starts[0] == timedelta(seconds=6 * 99)


@pytest.mark.parametrize(
    ("text", "per_minute"),
    [
        ("50/m", 50.0),
        ("2/s", 120.0),
        ("300/h", 5.0),
        (" 7 / m ", 7.0),
        ("30/h", 0.5),
        ("50/30s", 100.0),
        ("1/2h", 1 / 120),
    ],
)
def test_rate_parses_per_second_minute_and_hour(text: str, per_minute: float) -> None:
    assert parse_rate(text).per_minute == pytest.approx(per_minute)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/m", "--max-rate must be above 0"),
        ("50", "malformed --max-rate"),
        ("-5/m", "malformed --max-rate"),
        ("fast", "malformed --max-rate"),
        ("5/d", "malformed --max-rate"),
        ("999999999/s", "too high"),
        ("1000001/m", "too high"),
        ("1/0s", "malformed --max-rate"),
    ],
)
def test_bad_rate_is_invalid_input_naming_the_option(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_rate(text)


def test_halt_rule_parses_percent_and_window_with_defaults() -> None:
    assert parse_halt("20%/10") == HaltRule(20, 10)
    assert parse_halt("35%") == HaltRule(35, 10)
    for bad in ("20", "120%", "20%/0", "x%", "20%/ten"):
        with pytest.raises(InvalidInput, match="--halt-at"):
            parse_halt(bad)


def test_stagger_must_be_a_duration_above_zero() -> None:
    assert parse_stagger("2h") == timedelta(hours=2)
    for bad in ("0s", "soon", ""):
        with pytest.raises(InvalidInput, match="--stagger"):
            parse_stagger(bad)


def test_halt_trips_when_failures_pass_the_share_of_the_full_window() -> None:
    rule = HaltRule(20, 10)
    assert not rule.trips([True, True])  # 2 of 10 is 20%: not above
    assert rule.trips([True, True, True])  # the third failure halts, even before 10 finished
    assert not rule.trips([False] * 8 + [True, True] + [True] * 5)  # only the last 10 count
    assert HaltRule(0, 10).trips([True])
    assert not HaltRule(100, 10).trips([True] * 10)


def test_after_downtime_no_more_than_the_rate_starts_in_a_minute() -> None:
    assert rate_lookback(50) == timedelta(seconds=60)
    assert starts_allowed(50, 0) == 50
    assert starts_allowed(50, 48) == 2
    assert starts_allowed(50, 60) == 0
    assert starts_allowed(0.5, 0) == 1
    assert starts_allowed(0.5, 1) == 0


@pytest.mark.parametrize(("text", "lookback_s"), [("30/h", 120), ("1/h", 3600), ("1/m", 60)])
def test_below_one_a_minute_starts_are_counted_over_the_time_one_start_takes(
    text: str, lookback_s: int
) -> None:
    per_minute = parse_rate(text).per_minute
    assert rate_lookback(per_minute) == timedelta(seconds=lookback_s)
    # Greedy starts after a long downtime, one every 10 s of ticks for 10 hours: no window of
    # an hour holds more starts than the rate's hourly count.
    starts: list[int] = []
    for t in range(0, 36_000, 10):
        recent = sum(1 for u in starts if u > t - rate_lookback(per_minute).total_seconds())
        starts += [t] * starts_allowed(per_minute, recent)
    hourly = round(per_minute * 60)
    assert all(sum(1 for u in starts if t <= u < t + 3600) <= hourly for t in starts)


def test_a_pass_claims_no_more_than_the_failures_the_halt_rule_still_tolerates() -> None:
    rule = HaltRule(20, 10)  # the third failure among the last ten halts
    assert rule.claims_tolerated([]) == 3
    assert rule.claims_tolerated([True]) == 2
    assert rule.claims_tolerated([False] * 10 + [True] * 5) == 3  # only the last 10 count
    assert rule.claims_tolerated([True, True]) == 1
    assert rule.claims_tolerated([], running=2) == 1
    assert rule.claims_tolerated([True], running=5) == 1, "never stalls a rollout"
    assert HaltRule(0, 10).claims_tolerated([]) == 1
    assert HaltRule(50, 100).claims_tolerated([True] * 10) == 41
    # The rate and the halt rule together: the smaller wins, and no rate allowance means none.
    assert claims_allowed(1_000_000, 0, rule, [], 0) == 3
    assert claims_allowed(2, 0, rule, [], 0) == 2
    assert claims_allowed(60, 60, rule, [], 0) == 0


@settings(max_examples=300, deadline=None)
@given(
    pct=st.integers(0, 100),
    window=st.integers(1, 200),
    history=st.lists(st.booleans(), max_size=300),
)
def test_claims_that_all_fail_halt_the_rollout_at_the_threshold_and_never_past_it(
    pct: int, window: int, history: list[bool]
) -> None:
    rule = HaltRule(pct, window)
    if rule.trips(history):
        return  # halted already: nothing is claimed
    n = rule.claims_tolerated(history)
    after = [True] * n + history  # newest first
    threshold = pct * window // 100 + 1  # the failure that trips the rule
    assert sum(after[:window]) <= threshold, "never more failures than the threshold's worth"
    if len(after) <= window and pct < 100:  # none slid out of the window
        assert rule.trips(after), "the last of the claimed failures halts the rollout"
