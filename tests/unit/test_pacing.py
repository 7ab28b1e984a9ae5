"""Pacing of scheduled rotations (rotator.scheduler.pacing), with the clock passed in."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from rotator.errors import InvalidInput
from rotator.scheduler.pacing import Pacer, Rate, parse_rate

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def drain(pacer: Pacer, overdue: int, until_s: float, step_s: float) -> list[float]:
    """Tick every ``step_s`` until ``until_s``; return the start time of each rotation."""
    starts: list[float] = []
    t = 0.0
    left = overdue
    while t <= until_s + 1e-9 and left:
        n = pacer.allowance(at(t), left)
        pacer.started(n, at(t))
        starts += [t] * n
        left -= n
        t = round(t + step_s, 6)
    return starts


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100/m", Rate(100, 60)),
        ("5/s", Rate(5, 1)),
        ("1000/h", Rate(1000, 3600)),
        (" 10 / 30s ", Rate(10, 30)),
    ],
)
def test_a_rate_is_a_count_per_second_minute_or_hour(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "text", ["", "100", "0/m", "10/d", "-1/s", "1/0s", "ten/m", "1e3/m", "20000/s"]
)
def test_a_malformed_rate_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(InvalidInput, match="--max-rate") as err:
        parse_rate(text)
    assert "\n" not in str(err.value)


def test_the_worker_and_rollouts_parse_max_rate_with_the_same_function() -> None:
    from rotator.policy import rate

    assert parse_rate is rate.parse_rate
    assert Rate is rate.Rate


def test_work_within_the_burst_starts_at_once() -> None:
    pacer = Pacer(Rate(100, 60), timedelta(hours=1))
    assert pacer.allowance(at(0), 40) == 40
    pacer.started(40, at(0))
    assert pacer.allowance(at(0), 60) == 60
    assert not pacer.catching_up


def test_the_rate_refills_the_burst_over_its_period() -> None:
    pacer = Pacer(Rate(10, 60), timedelta(0))
    pacer.started(pacer.allowance(at(0), 10), at(0))
    assert pacer.allowance(at(0), 5) == 0
    assert pacer.next_start(at(0)) == at(6)  # one every 6 s
    assert pacer.allowance(at(5.9), 5) == 0
    assert pacer.allowance(at(6), 5) == 1
    assert pacer.allowance(at(30), 5) == 5


def test_a_backlog_larger_than_the_burst_is_spread_evenly_over_the_window() -> None:
    pacer = Pacer(Rate(10, 1), timedelta(seconds=60))
    starts = drain(pacer, 120, until_s=120, step_s=0.05)
    assert pacer.catching_up
    assert len(starts) == 120
    # One every 60/120 = 0.5 s, from the first tick on: the window is used, not exceeded.
    assert starts == pytest.approx([i * 0.5 for i in range(120)], abs=0.051)
    assert starts[-1] < 60


def test_catch_up_never_goes_faster_than_the_rate() -> None:
    pacer = Pacer(Rate(100, 60), timedelta(minutes=1))  # 1000 in 1 min would be 16/s
    starts = drain(pacer, 1000, until_s=700, step_s=0.1)
    assert len(starts) == 1000
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.6 - 1e-6  # 100/m: one every 0.6 s
    assert starts[-1] == pytest.approx(999 * 0.6, abs=0.11)


def test_a_late_tick_starts_the_slots_it_missed_but_no_more() -> None:
    pacer = Pacer(Rate(5, 1), timedelta(seconds=10))
    assert pacer.allowance(at(0), 20) == 1  # 20 > burst 5: one every 0.5 s
    pacer.started(1, at(0))
    assert pacer.next_start(at(0)) == at(0.5)
    assert pacer.allowance(at(2.0), 19) == 4  # slots at 0.5, 1.0, 1.5, 2.0
    pacer.started(4, at(2.0))
    assert pacer.allowance(at(2.0), 15) == 0


def test_catch_up_ends_when_nothing_is_overdue() -> None:
    pacer = Pacer(Rate(5, 1), timedelta(seconds=10))
    pacer.started(pacer.allowance(at(0), 20), at(0))
    assert pacer.catching_up
    assert pacer.allowance(at(1), 0) == 0
    assert not pacer.catching_up
    assert pacer.next_start(at(100)) is None  # the burst has refilled
    assert pacer.allowance(at(100), 5) == 5


def test_a_clock_stepping_back_mid_catch_up_keeps_the_pace_instead_of_stalling() -> None:
    pacer = Pacer(Rate(5, 1), timedelta(seconds=10))  # 20 overdue: one every 0.5 s
    pacer.started(pacer.allowance(at(0), 20), at(0))
    pacer.started(pacer.allowance(at(1.0), 19), at(1.0))  # slots at 0.5 and 1.0
    day = 86400.0
    assert pacer.next_start(at(1.0 - day)) == at(1.5 - day)
    assert pacer.allowance(at(1.5 - day), 17) == 1  # not a day later
    pacer.started(1, at(1.5 - day))
    assert pacer.allowance(at(1.5 - day), 16) == 0  # nor faster than the pace


@pytest.mark.parametrize("gap_s", [3600.0, 86400.0])
def test_a_clock_stepping_forward_mid_catch_up_never_releases_more_than_the_rate(
    gap_s: float,
) -> None:
    pacer = Pacer(Rate(10, 60), timedelta(hours=1))  # 1000 overdue: one every 6 s (10/m)
    pacer.started(pacer.allowance(at(0), 1000), at(0))
    # The clock jumps (or the process was paused): the missed slots are not released at once.
    assert pacer.allowance(at(gap_s), 999) == 10  # the bucket's burst, no more
    pacer.started(10, at(gap_s))
    assert pacer.allowance(at(gap_s), 989) == 0
    assert pacer.next_start(at(gap_s)) == at(gap_s + 6)  # the next token
    starts = 0
    for tick in range(1, 601):  # then ten minutes, ticking every second: at most 10/m
        now = at(gap_s + tick)
        n = pacer.allowance(now, 989 - starts)
        pacer.started(n, now)
        starts += n
    assert starts == 100


def test_a_negative_window_is_refused() -> None:
    with pytest.raises(InvalidInput, match="must not be negative"):
        Pacer(Rate(1, 1), timedelta(seconds=-1))


def test_starts_a_guard_refused_are_given_back_to_the_rate() -> None:
    pacer = Pacer(Rate(10, 60))
    assert pacer.allowance(at(0), 10) == 10
    pacer.started(10, at(0))
    assert pacer.allowance(at(0), 10) == 0
    pacer.not_started(3)  # three of them were SKIPPED: another worker owns them
    assert pacer.allowance(at(0), 10) == 3
