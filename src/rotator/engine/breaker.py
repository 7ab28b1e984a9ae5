"""A circuit breaker per target, so one dead target does not stall a batch.

After ``threshold`` consecutive failures the breaker opens: calls fail at once with
CircuitOpen for ``reset_after`` seconds; then one call is let through (half-open). Its success
closes the breaker, its failure opens it again. ``now`` comes from an injected clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rotator.errors import ConnectorError


class CircuitOpen(ConnectorError):
    """The target's circuit breaker is open: failing fast."""


@dataclass
class CircuitBreaker:
    target: str
    threshold: int = 10
    reset_after: float = 30.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    _trial_in_flight: bool = field(default=False, repr=False)

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.reset_after:
            return "half-open"
        return "open"

    def before_call(self) -> None:
        """Raise CircuitOpen when the call must not go to the target now."""
        state = self.state
        if state == "open" or (state == "half-open" and self._trial_in_flight):
            raise CircuitOpen(
                f"circuit breaker for target {self.target} is open after "
                f"{self.failures} consecutive failures"
            )
        if state == "half-open":
            self._trial_in_flight = True

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self.failures += 1
        if self._trial_in_flight or self.failures >= self.threshold:
            self.opened_at = self.clock()
        self._trial_in_flight = False
