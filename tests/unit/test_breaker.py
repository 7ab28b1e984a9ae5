"""The per-target circuit breaker, driven by an injected clock (no sleeps)."""

from __future__ import annotations

import pytest

from rotator.engine.breaker import CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def opened(clock: Clock, *, threshold: int = 3, window: int = 5) -> CircuitBreaker:
    b = CircuitBreaker("t", threshold=threshold, window=window, reset_after=30.0, clock=clock)
    for _ in range(threshold):
        assert b.before_call() is False
        b.record_failure()
    assert b.state == "open"
    return b


def test_breaker_opens_when_threshold_of_window_failed_and_fails_fast_until_reset(
    clock: Clock,
) -> None:
    b = opened(clock)
    with pytest.raises(CircuitOpen, match="circuit breaker for target t is open"):
        b.before_call()
    clock.advance(29.9)
    with pytest.raises(CircuitOpen):
        b.before_call()
    clock.advance(0.1)
    assert b.state == "half-open"


def test_flaky_target_below_the_threshold_never_opens(clock: Clock) -> None:
    b = CircuitBreaker("t", threshold=3, window=5, reset_after=30.0, clock=clock)
    for i in range(50):
        b.before_call()
        if i % 3 == 0:
            b.record_failure()
        else:
            b.record_success()
    assert b.state == "closed"


def test_half_open_lets_one_trial_through_at_a_time(clock: Clock) -> None:
    b = opened(clock)
    clock.advance(30)
    assert b.before_call() is True
    with pytest.raises(CircuitOpen):
        b.before_call()


def test_successful_trial_closes_the_breaker(clock: Clock) -> None:
    b = opened(clock)
    clock.advance(30)
    assert b.before_call() is True
    b.record_success()
    assert b.state == "closed"
    assert b.before_call() is False
    assert b.before_call() is False


def test_failed_trial_opens_the_breaker_for_another_reset_period(clock: Clock) -> None:
    b = opened(clock)
    clock.advance(30)
    assert b.before_call() is True
    b.record_failure()
    assert b.state == "open"
    clock.advance(29)
    with pytest.raises(CircuitOpen):
        b.before_call()
    clock.advance(1)
    assert b.before_call() is True


def test_trial_ended_by_a_permanent_error_lets_the_next_call_through(clock: Clock) -> None:
    b = opened(clock)
    clock.advance(30)
    assert b.before_call() is True
    b.release_trial()  # what the engine does when the trial raised PermanentError
    assert b.state == "half-open"
    assert b.before_call() is True, "the next call must be the new trial"
    with pytest.raises(CircuitOpen):
        b.before_call()


def test_release_without_a_trial_changes_nothing(clock: Clock) -> None:
    b = opened(clock)
    b.release_trial()
    with pytest.raises(CircuitOpen):
        b.before_call()
    closed = CircuitBreaker("u", clock=clock)
    closed.release_trial()
    assert closed.state == "closed"
