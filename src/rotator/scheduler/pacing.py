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
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from rotator.errors import InvalidInput

DEFAULT_WINDOW = timedelta(hours=1)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"\s*(\d{1,9})\s*/\s*(\d{0,6})\s*([smh])\s*")


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` rotations per ``per_s`` seconds."""

    count: int
    per_s: float

    @property
    def per_second(self) -> float:
        return self.count / self.per_s

    def __str__(self) -> str:
        for unit, s in sorted(_UNITS.items(), key=lambda u: -u[1]):
            if self.per_s % s == 0:
                n = int(self.per_s // s)
                return f"{self.count}/{'' if n == 1 else n}{unit}"
        return f"{self.count}/{self.per_s:g}s"


DEFAULT_RATE = Rate(600, 60.0)


def parse_rate(text: str) -> Rate:
    """``N/s``, ``N/m``, ``N/h`` (or ``N/30s``...): at least 1 per period. InvalidInput (one
    line) otherwise."""
    m = _RATE.fullmatch(text)
    if m is None or int(m.group(1)) < 1 or m.group(2) == "0":
        raise InvalidInput(
            f"--max-rate must look like 100/m (a count of at least 1 per s, m or h), not {text!r}"
        )
    n = int(m.group(2) or "1")
    return Rate(int(m.group(1)), n * _UNITS[m.group(3)])


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
            return max(0, min(slots, overdue))
        return min(overdue, math.floor(self._tokens + 1e-9))

    def started(self, n: int, now: datetime) -> None:
        """Record that ``n`` rotations started at ``now``."""
        self._refill(now)
        self._tokens = max(0.0, self._tokens - n)
        if self._catch_up is not None:
            self._catch_up.emitted += n

    def next_start(self, now: datetime) -> datetime | None:
        """When the next rotation may start, if not now (None: whenever work is due)."""
        cu = self._catch_up
        if cu is not None:
            return cu.start + timedelta(seconds=cu.emitted * cu.spacing_s)
        self._refill(now)
        if self._tokens >= 1.0:
            return None
        return now + timedelta(seconds=(1.0 - self._tokens) / self.rate.per_second)
