"""The engine's tuning knobs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rotator.errors import InvalidInput

# The longest lease a process grants (ROTATOR_LEASE_SECONDS is refused above it): a lease is
# renewed while its owner lives; a day is already absurd. Recovery's horizon derives from it.
MAX_LEASE_S = 86400.0


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Tuning knobs; the defaults suit a single node talking to a handful of targets.

    ``concurrency``: rotations under way at once (the global limit; emergencies and interactive
    requests are admitted ahead of queued batch work). ``interactive_reserve``: how many
    interactive requests may start above that limit, so a person's rotation does not wait for a
    batch rotation to end (default a quarter of ``concurrency``; batch work never goes past the
    limit). ``per_target``: connector calls under way at once per target. ``lease_s``: how long
    a rotation stays owned without a renewal (renewed every third of it). ``lease_margin_s``: no
    connector call starts, and a call under way is cut, when less than this is left of the lease
    (default a quarter of it). InvalidInput on a lease that is not a finite number of seconds
    above 0, or a margin not below the lease.
    """

    concurrency: int = 16
    per_target: int = 16
    lease_s: float = 30.0
    lease_margin_s: float | None = None
    step_timeout_s: float = 60.0
    retry_attempts: int = 6
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0
    breaker_threshold: int = 18
    breaker_window: int = 20
    breaker_reset_s: float = 30.0
    db_threads: int = 4
    join_timeout_s: float = 600.0
    interactive_reserve: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.lease_s, int | float) and math.isfinite(self.lease_s)):
            raise InvalidInput(f"the lease must be a finite number of seconds, not {self.lease_s}")
        if self.lease_s <= 0:
            raise InvalidInput(f"the lease must be above 0 seconds, not {self.lease_s:g}")
        m = self.lease_margin_s
        if m is not None and not (math.isfinite(m) and 0 <= m < self.lease_s):
            raise InvalidInput("the lease margin must be at least 0 and below the lease")

    @property
    def reserve(self) -> int:
        """Slots above ``concurrency`` for interactive requests."""
        if self.interactive_reserve is not None:
            return max(0, self.interactive_reserve)
        return self.concurrency // 4

    @property
    def margin_s(self) -> float:
        return self.lease_s / 4 if self.lease_margin_s is None else self.lease_margin_s
