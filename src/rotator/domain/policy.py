"""Policy value objects and their parsing. Pure: no I/O, no clock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rotator.errors import PolicyError

if TYPE_CHECKING:
    from rotator.policy.risk import RiskAction, Severity

_DURATION = re.compile(r"(\d+)\s*(ms|s|m|h|d|w)")
_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
# Longer than any sane policy and far enough from datetime.max that `now + it` cannot overflow.
MAX_DURATION = timedelta(days=36500)
# A fixed start to check that a cron expression fires at all (policy code takes no clock).
_CRON_PROBE_START = datetime(2000, 1, 1, tzinfo=UTC)


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """Parse ``30d``, ``2h30m``, ``90s``, ``500ms``; raise PolicyError naming ``what`` otherwise."""
    s = text.strip().lower()
    pos = 0
    total = timedelta()
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        try:
            total += int(m.group(1)) * _UNITS[m.group(2)]
        except (OverflowError, ValueError):  # beyond timedelta, or past int()'s digit limit
            total = MAX_DURATION + _UNITS["d"]
        pos = m.end()
    if not s or pos != len(s):
        raise PolicyError(f"malformed {what} {text!r}: expected e.g. 30d, 12h, 2h30m, 90s")
    if total > MAX_DURATION:
        raise PolicyError(f"{what} {text[:40]!r} is too long: at most 36500d")
    return total


def format_duration(d: timedelta) -> str:
    """Inverse of parse_duration for whole seconds (``0s`` for zero)."""
    secs = int(d.total_seconds())
    if secs == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            parts.append(f"{secs // size}{unit}")
            secs %= size
    return "".join(parts)


def _check_cron(cron: str) -> None:
    """PolicyError unless ``cron`` is a valid expression that fires at all."""
    # Imported here: croniter costs a CLI call that reads no cron policy (credential get)
    # a noticeable part of its start-up.
    from croniter import CroniterBadDateError, croniter

    if not croniter.is_valid(cron):
        raise PolicyError(f"malformed --cron {cron!r}: expected five fields like '0 3 * * 0'")
    try:
        croniter(cron, _CRON_PROBE_START).get_next(datetime)
    except CroniterBadDateError:
        raise PolicyError(f"--cron {cron!r} never fires") from None


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """When a credential rotates and how long the old value stays valid.

    ``every`` and ``cron`` exclude each other. ``window`` only goes with ``cron``: the rotation
    may start any time within ``window`` after the cron time. ``grace`` is how long PREVIOUS
    stays valid on the target. ``max_uses`` rotates after that many recorded uses.
    ``on_risk`` holds the risk rules as their canonical text (``high=rotate,critical=emergency``;
    see rotator.policy.risk; None: the default rules) and ``risk_cooldown`` the cooldown after
    a risk rotation (None: rotator.policy.risk.DEFAULT_COOLDOWN, 1h).
    """

    every: timedelta | None = None
    cron: str | None = None
    window: timedelta | None = None
    grace: timedelta = timedelta(minutes=5)
    max_uses: int | None = None
    on_risk: str | None = None
    risk_cooldown: timedelta | None = None

    def __post_init__(self) -> None:
        if self.every is not None and self.cron is not None:
            raise PolicyError("--every and --cron exclude each other")
        if self.every is not None and self.every <= timedelta(0):
            raise PolicyError("--every must be longer than zero")
        if self.window is not None and self.cron is None:
            raise PolicyError("--window needs --cron")
        if self.window is not None and self.window <= timedelta(0):
            raise PolicyError("--window must be longer than zero")
        if self.cron is not None:
            _check_cron(self.cron)
        if self.grace < timedelta(0):
            raise PolicyError("--grace cannot be negative")
        if self.max_uses is not None and not 1 <= self.max_uses <= 2**62:
            raise PolicyError("--max-uses must be between 1 and 2**62")
        if self.on_risk is not None:
            # Imported here: rotator.policy imports this module (a cycle at import time).
            from rotator.policy.risk import format_risk_rules, parse_risk_rules

            object.__setattr__(self, "on_risk", format_risk_rules(parse_risk_rules(self.on_risk)))
        if self.risk_cooldown is not None and self.risk_cooldown < timedelta(0):
            raise PolicyError("--risk-cooldown cannot be negative")

    @property
    def risk_rules(self) -> dict[Severity, RiskAction] | None:
        """The parsed ``on_risk`` rules ({Severity: RiskAction}), or None for the defaults."""
        if self.on_risk is None:
            return None
        from rotator.policy.risk import parse_risk_rules

        return parse_risk_rules(self.on_risk)

    def to_json(self) -> dict[str, Any]:
        return {
            "every": None if self.every is None else self.every.total_seconds(),
            "cron": self.cron,
            "window": None if self.window is None else self.window.total_seconds(),
            "grace": self.grace.total_seconds(),
            "max_uses": self.max_uses,
            "on_risk": self.on_risk,
            "risk_cooldown": (
                None if self.risk_cooldown is None else self.risk_cooldown.total_seconds()
            ),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RotationPolicy:
        def td(v: float | None) -> timedelta | None:
            return None if v is None else timedelta(seconds=v)

        return cls(
            every=td(data.get("every")),
            cron=data.get("cron"),
            window=td(data.get("window")),
            grace=td(data.get("grace")) or timedelta(0),
            max_uses=data.get("max_uses"),
            on_risk=data.get("on_risk"),
            risk_cooldown=td(data.get("risk_cooldown")),
        )

    def describe(self) -> str:
        parts = []
        if self.every is not None:
            parts.append(f"every {format_duration(self.every)}")
        if self.cron is not None:
            parts.append(f"cron '{self.cron}'")
            if self.window is not None:
                parts.append(f"window {format_duration(self.window)}")
        if self.max_uses is not None:
            parts.append(f"after {self.max_uses} uses")
        if not parts:
            parts.append("on demand")
        parts.append(f"grace {format_duration(self.grace)}")
        if self.on_risk is not None:
            parts.append(f"on risk {self.on_risk}")
        if self.risk_cooldown is not None:
            parts.append(f"risk cooldown {format_duration(self.risk_cooldown)}")
        return ", ".join(parts)
