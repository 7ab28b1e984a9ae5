"""A circuit breaker per target, so one dead target does not stall a batch.

The breaker opens when at least ``threshold`` of the last ``window`` calls failed: then calls
fail at once with CircuitOpen for ``reset_after`` seconds; after that one call is let through
(half-open). Its success closes the breaker, its failure opens it again; a trial that ends
without a verdict on the target (a permanent error, a cancellation) must be ended with
``release_trial()``, which lets the next call through as the new trial. A rate over a window,
not a run of consecutive failures, so a flaky target (30% transient errors) never trips it
while a dead one does within ``threshold`` calls. ``clock`` is injected for tests.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rotator.errors import ConnectorError


class CircuitOpen(ConnectorError):
    """The target's circuit breaker is open: failing fast."""


@dataclass
class CircuitBreaker:
    target: str
    threshold: int = 18
    window: int = 20
    reset_after: float = 30.0
    clock: Callable[[], float] = time.monotonic
    opened_at: float | None = None
    _recent: deque[bool] = field(default_factory=deque, repr=False)
    _trial_in_flight: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.window = max(self.window, self.threshold)
        self._recent = deque(maxlen=self.window)

    @property
    def failures(self) -> int:
        """Failures among the last ``window`` calls."""
        return sum(1 for ok in self._recent if not ok)

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.reset_after:
            return "half-open"
        return "open"

    def before_call(self) -> bool:
        """Raise CircuitOpen when the call must not go to the target now.

        Returns True when this call is the half-open trial: the caller must end it with
        ``record_success``, ``record_failure`` or ``release_trial`` (on every other exit,
        cancellation included), or the breaker would stay open for good.
        """
        state = self.state
        if state == "open" or (state == "half-open" and self._trial_in_flight):
            raise CircuitOpen(
                f"circuit breaker for target {self.target} is open: {self.failures} of the last "
                f"{len(self._recent)} calls failed"
            )
        if state == "half-open":
            self._trial_in_flight = True
            return True
        return False

    def release_trial(self) -> None:
        """End the half-open trial without a verdict: the breaker stays half-open and lets
        the next call through as the new trial. Harmless when no trial is under way."""
        self._trial_in_flight = False

    def record_success(self) -> None:
        self._recent.append(True)
        if self._trial_in_flight or self.opened_at is not None:
            self._recent.clear()
        self.opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._recent.append(False)
        if self._trial_in_flight or self.failures >= self.threshold:
            self.opened_at = self.clock()
        self._trial_in_flight = False
