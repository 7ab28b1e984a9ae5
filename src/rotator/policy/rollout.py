"""Staggered rollouts, the pure part: parsing the options, planning the start times and the
halt rule. No I/O and no clock: ``now`` is an argument.

A rollout's items start evenly spread over the stagger window, and never more than the rate
cap in any 60 seconds: item ``i`` starts at ``start + i * spacing`` where ``spacing`` is the
larger of ``window / n`` and ``60 s / rate``. Spacing of at least ``60 s / rate`` puts at most
``rate`` starts in any interval of 60 seconds (any, not only minutes counted from the start).
When the cap does not let ``n`` items start within the window, the rate wins and the plan runs
past the window (:func:`plan_starts` callers report the planned end).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from rotator.domain.policy import parse_duration
from rotator.errors import InvalidInput
from rotator.policy.rate import MAX_PER_MINUTE

MAX_RATE_PER_MINUTE = MAX_PER_MINUTE
MAX_ITEMS = 1_000_000
DEFAULT_HALT_PCT = 20
DEFAULT_HALT_WINDOW = 10
MAX_HALT_WINDOW = 10_000
_HALT = re.compile(r"^\s*(\d{1,3})\s*%\s*(?:/\s*(\d{1,6})\s*)?$")


@dataclass(frozen=True, slots=True)
class HaltRule:
    """Halt when more than ``pct`` percent of the last ``window`` finished rotations failed
    (counted against the full window: with 20%/10, the third failure among the last ten
    halts, also when fewer than ten have finished)."""

    pct: int = DEFAULT_HALT_PCT
    window: int = DEFAULT_HALT_WINDOW

    def trips(self, recent_failed: Sequence[bool]) -> bool:
        """Whether the outcomes of the last finished items (newest first, ``True`` = failed)
        pass the threshold. Only the first ``window`` entries count."""
        failures = sum(1 for f in recent_failed[: self.window] if f)
        return failures * 100 > self.pct * self.window

    def claims_tolerated(self, recent_failed: Sequence[bool], running: int = 0) -> int:
        """How many more items may start now so that, should every one of them fail, the
        rollout halts after no more failures than the rule lets through plus the one that trips
        it: ``floor(pct * window / 100) + 1``, less the failures already among the last
        ``window`` and the items still ``running`` (any of which may fail too). At least 1,
        so a rollout always moves on; with several processes claiming at once each may take
        that one."""
        failures = sum(1 for f in recent_failed[: self.window] if f)
        return max(1, self.pct * self.window // 100 + 1 - failures - running)

    def describe(self) -> str:
        return f"{self.pct}%/{self.window}"


def parse_halt(text: str) -> HaltRule:
    """``20%`` or ``20%/10`` (percent of the last N finished rotations); InvalidInput naming
    ``--halt-at`` when malformed or out of range (1-100 %, N 1-10000)."""
    m = _HALT.match(text)
    if m is None:
        raise InvalidInput(f"malformed --halt-at {text[:40]!r}: expected e.g. 20% or 20%/10")
    pct = int(m.group(1))
    window = int(m.group(2)) if m.group(2) else DEFAULT_HALT_WINDOW
    if not 0 <= pct <= 100:
        raise InvalidInput(f"--halt-at percentage must be 0-100, not {pct}")
    if not 1 <= window <= MAX_HALT_WINDOW:
        raise InvalidInput(f"--halt-at window must be 1-{MAX_HALT_WINDOW} rotations, not {window}")
    return HaltRule(pct, window)


def parse_stagger(text: str) -> timedelta:
    """``--stagger`` as a duration above 0 (PolicyError/InvalidInput naming it otherwise)."""
    d = parse_duration(text, "--stagger")
    if d <= timedelta(0):
        raise InvalidInput(f"--stagger must be above 0, not {text.strip()!r}")
    return d


def spacing_ms(n: int, window: timedelta, per_minute: float) -> int:
    """Milliseconds between two consecutive starts (see the module docstring)."""
    if n <= 0:
        return 0
    window_ms = int(window.total_seconds() * 1000)
    return max(window_ms // n, math.ceil(60_000 / per_minute))


def plan_starts(n: int, start: datetime, window: timedelta, per_minute: float) -> list[datetime]:
    """The planned start of each of ``n`` items, in order: the first at ``start``, evenly
    spaced, all before ``start + window`` when the rate allows it, and never more than
    ``per_minute`` in any 60 seconds."""
    step = spacing_ms(n, window, per_minute)
    return [start + timedelta(milliseconds=i * step) for i in range(n)]


def fits(n: int, window: timedelta, per_minute: float) -> bool:
    """Whether ``n`` starts fit in ``window`` under the rate cap."""
    return n <= 1 or (n - 1) * spacing_ms(n, window, per_minute) < window.total_seconds() * 1000


def rate_lookback(per_minute: float) -> timedelta:
    """How far back starts count against the rate cap: 60 seconds, or longer below one a
    minute (30/h: 120 s), so that one start per look-back is never more than the rate."""
    return timedelta(seconds=max(60.0, 60.0 / per_minute))


def starts_allowed(per_minute: float, started_in_lookback: int) -> int:
    """How many more items may start now, given how many started within
    :func:`rate_lookback`: after downtime the items whose planned time passed are not all
    started at once. ``floor(per_minute)`` per 60 s, or one per look-back below 1/m."""
    return max(0, max(1, math.floor(per_minute)) - started_in_lookback)


def claims_allowed(
    per_minute: float,
    started_in_lookback: int,
    rule: HaltRule,
    recent_failed: Sequence[bool],
    running: int,
) -> int:
    """How many due items one pass may claim: the rate cap's allowance
    (:func:`starts_allowed`), at most what the halt rule still tolerates
    (:meth:`HaltRule.claims_tolerated`), so a failing target halts the rollout after at most
    the threshold's worth of failures however overdue it is."""
    allowed = starts_allowed(per_minute, started_in_lookback)
    return min(allowed, rule.claims_tolerated(recent_failed, running)) if allowed else 0
