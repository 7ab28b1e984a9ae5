"""Pacing of scheduled rotations: a rate limit, and catch-up after downtime. Pure: no I/O, no
clock (``now`` is passed in).

Normally a token bucket: up to ``rate.count`` rotations start at once, refilled at the rate
(``100/m``: 100 at once, then 100 a minute). When more credentials are overdue than that (the
service was down for several intervals), catch-up: the backlog found is spread evenly over the
catch-up ``window``, one start every ``window / backlog``, never faster than the rate (then it
takes ``backlog / rate``), until nothing is overdue any more. Each worker paces itself: with
several workers on one PostgreSQL the rates add up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from rotator.errors import InvalidInput
from rotator.policy.rate import Rate, parse_rate

__all__ = ["DEFAULT_RATE", "DEFAULT_WINDOW", "Pacer", "Rate", "parse_rate"]

DEFAULT_WINDOW = timedelta(hours=1)
DEFAULT_RATE = Rate(600, 60.0)


@dataclass
class _CatchUp:
    start: datetime
    spacing_s: float
    emitted: int = 0


class Pacer:
    """How many scheduled rotations may start now. One per worker; not thread-safe."""

    def __init__(self, rate: Rate = DEFAULT_RATE, window: timedelta = DEFAULT_WINDOW) -> None:
        if window.total_seconds() < 0:
            raise InvalidInput("--catch-up-window must not be negative")
        self.rate = rate
        self.window = window
        self.burst = float(rate.count)
        self._tokens = self.burst
        self._last: datetime | None = None
        self._catch_up: _CatchUp | None = None

    @property
    def catching_up(self) -> bool:
        return self._catch_up is not None

    def _refill(self, now: datetime) -> None:
        if self._last is not None:
            if now < self._last and self._catch_up is not None:
                # The wall clock stepped back: move the catch-up's schedule with it, or no
                # slot would come until the clock is back where it was (a day, after -1 day).
                self._catch_up.start -= self._last - now
            dt = max(0.0, (now - self._last).total_seconds())
            self._tokens = min(self.burst, self._tokens + dt * self.rate.per_second)
        self._last = now

    def allowance(self, now: datetime, overdue: int) -> int:
        """How many of the ``overdue`` credentials may start at ``now`` (call
        :meth:`started` with how many did)."""
        self._refill(now)
        if overdue <= 0:
            self._catch_up = None
            return 0
        cu = self._catch_up
        if cu is None and overdue > self.burst:
            spacing = max(self.window.total_seconds() / overdue, 1.0 / self.rate.per_second)
            cu = self._catch_up = _CatchUp(now, spacing)
        if cu is not None:
            elapsed = (now - cu.start).total_seconds()
            slots = math.floor(elapsed / cu.spacing_s + 1e-9) + 1 - cu.emitted
            # Slots missed while the process was paused or the wall clock stepped forward
            # are made up at most at the rate (the bucket), never all at once.
            return max(0, min(slots, overdue, math.floor(self._tokens + 1e-9)))
        return min(overdue, math.floor(self._tokens + 1e-9))

    def started(self, n: int, now: datetime) -> None:
        """Record that ``n`` rotations started at ``now``."""
        self._refill(now)
        self._tokens = max(0.0, self._tokens - n)
        if self._catch_up is not None:
            self._catch_up.emitted += n

    def not_started(self, n: int) -> None:
        """Give back ``n`` of the starts recorded by :meth:`started` that did not start after
        all (a guard refused them: another worker owns them)."""
        self._tokens = min(self.burst, self._tokens + n)
        if self._catch_up is not None:
            self._catch_up.emitted = max(0, self._catch_up.emitted - n)

    def next_start(self, now: datetime) -> datetime | None:
        """When the next rotation may start, if not now (None: whenever work is due)."""
        self._refill(now)
        cu = self._catch_up
        refilled = (
            None
            if self._tokens + 1e-9 >= 1.0
            else now + timedelta(seconds=(1.0 - self._tokens) / self.rate.per_second)
        )
        if cu is not None:
            slot = cu.start + timedelta(seconds=cu.emitted * cu.spacing_s)
            return slot if refilled is None else max(slot, refilled)
        return refilled
