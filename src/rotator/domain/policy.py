"""Policy value objects and their parsing. Pure: no I/O, no clock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
DEFAULT_GRACE = timedelta(minutes=5)
ZERO = timedelta(0)

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_BLACKOUT = re.compile(
    r"\s*([A-Za-z]{3})[a-z]*\s+(\d{1,2}):(\d{2})\s*-\s*([A-Za-z]{3})[a-z]*\s+(\d{1,2}):(\d{2})\s*"
)
MINUTES_PER_WEEK = 7 * 24 * 60


@dataclass(frozen=True, slots=True)
class Blackout:
    """A weekly span with no rotation, in minutes of the week (Monday 00:00 is 0), local to the
    policy's zone. ``start > end`` wraps over the week's end (``Fri 18:00-Mon 06:00``)."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> Blackout:
        """``"Fri 18:00-Mon 06:00"`` (day names in English, 24-hour times); PolicyError
        naming --blackout otherwise."""
        m = _BLACKOUT.fullmatch(text)
        bad = PolicyError(
            f"malformed --blackout {text[:60]!r}: expected e.g. 'Fri 18:00-Mon 06:00'"
        )
        if m is None:
            raise bad
        points = []
        for day, hh, mm in (m.group(1, 2, 3), m.group(4, 5, 6)):
            d = day.capitalize()
            if d not in _DAYS or int(hh) > 23 or int(mm) > 59:
                raise bad
            points.append(_DAYS.index(d) * 1440 + int(hh) * 60 + int(mm))
        if points[0] == points[1]:
            raise PolicyError(f"--blackout {text[:60]!r} is empty: start and end are equal")
        return cls(points[0], points[1])

    @staticmethod
    def label(minute: int) -> str:
        day, rest = divmod(minute, 1440)
        return f"{_DAYS[day]} {rest // 60:02d}:{rest % 60:02d}"

    def __str__(self) -> str:
        return f"{self.label(self.start)}-{self.label(self.end)}"

    def contains(self, minute: float) -> bool:
        """Whether a local minute of the week (fractions allowed) is inside."""
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def zone(name: str | None) -> ZoneInfo:
    """The zone named ``name`` (UTC when None); PolicyError naming --tz if unknown."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise PolicyError(f"unknown --tz {str(name)[:60]!r}: expected e.g. Europe/Berlin") from None


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

    # Exactly five fields: croniter also takes `@daily`-style macros and a sixth (seconds)
    # field, which the schedule (the hour field's DST rule) does not read.
    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise PolicyError(f"malformed --cron {cron!r}: expected five fields like '0 3 * * 0'")
    try:
        croniter(cron, _CRON_PROBE_START).get_next(datetime)
    except CroniterBadDateError:
        raise PolicyError(f"--cron {cron!r} never fires") from None


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """When a credential rotates and how long the old value stays valid.

    ``every`` and ``cron`` exclude each other. ``window`` only goes with ``cron``: the rotation
    may start any time within ``window`` after the cron time; some window must not be wholly
    blacked out. ``grace`` is how long PREVIOUS
    stays valid on the target. ``max_uses`` rotates after that many recorded uses.
    ``on_risk`` holds the risk rules as their canonical text (``high=rotate,critical=emergency``;
    see rotator.policy.risk; None: the default rules) and ``risk_cooldown`` the cooldown after
    a risk rotation (None: rotator.policy.risk.DEFAULT_COOLDOWN, 1h).
    ``jitter`` moves a scheduled time by a stable offset in [0, jitter) per credential (with
    ``every``: a phase in [0, min(jitter, every)), the period staying ``every``);
    ``blackout`` holds weekly spans (canonical ``Blackout`` text) with no rotation, read in
    zone ``tz`` (UTC when None; cron times are read there too); ``max_age`` bounds how old
    CURRENT may get whatever the schedule says. See ``rotator.policy.schedule``.

    Every field's JSON key (``to_json``) is its name: policy defaults merge field by field
    over these names (``rotator.policy.defaults``), so a new field is inherited with no code.
    """

    every: timedelta | None = None
    cron: str | None = None
    window: timedelta | None = None
    grace: timedelta = DEFAULT_GRACE
    max_uses: int | None = None
    jitter: timedelta | None = None
    blackout: tuple[str, ...] = ()
    tz: str | None = None
    max_age: timedelta | None = None
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
        if self.grace % timedelta(seconds=1):
            # The engine and the store keep a grace in whole seconds: 500ms would become 0,
            # revoking PREVIOUS at once under an operator who asked for a grace.
            raise PolicyError("--grace must be whole seconds (e.g. 1s, 90s)")
        if self.max_uses is not None and not 1 <= self.max_uses <= 2**62:
            raise PolicyError("--max-uses must be between 1 and 2**62")
        if self.jitter is not None and self.jitter <= timedelta(0):
            raise PolicyError("--jitter must be longer than zero")
        if self.max_age is not None and self.max_age <= timedelta(0):
            raise PolicyError("--max-age must be longer than zero")
        for b in self.blackout:
            Blackout.parse(b)
        if self.tz is not None:
            zone(self.tz)
        if self.window is not None and self.blackout:
            # Imported here: rotator.policy imports this module (a cycle at import time).
            from rotator.policy.schedule import check_window_open

            check_window_open(self)
        if self.on_risk is not None:
            # Imported here: rotator.policy imports this module (a cycle at import time).
            from rotator.policy.risk import format_risk_rules, parse_risk_rules

            object.__setattr__(self, "on_risk", format_risk_rules(parse_risk_rules(self.on_risk)))
        if self.risk_cooldown is not None and self.risk_cooldown < timedelta(0):
            raise PolicyError("--risk-cooldown cannot be negative")

    @property
    def blackouts(self) -> tuple[Blackout, ...]:
        return tuple(Blackout.parse(b) for b in self.blackout)

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
            "jitter": None if self.jitter is None else self.jitter.total_seconds(),
            "blackout": list(self.blackout),
            "tz": self.tz,
            "max_age": None if self.max_age is None else self.max_age.total_seconds(),
            "on_risk": self.on_risk,
            "risk_cooldown": (
                None if self.risk_cooldown is None else self.risk_cooldown.total_seconds()
            ),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RotationPolicy:
        """The policy of ``to_json`` output; a missing key takes the field's default (so
        partial policies and rows stored before a field existed load)."""

        def td(v: float | None) -> timedelta | None:
            return None if v is None else timedelta(seconds=v)

        return cls(
            every=td(data.get("every")),
            cron=data.get("cron"),
            window=td(data.get("window")),
            # Whole seconds, as the engine always applied it: a row stored before sub-second
            # graces were refused still loads.
            grace=(
                DEFAULT_GRACE
                if data.get("grace") is None
                else timedelta(seconds=int(data["grace"]))
            ),
            max_uses=data.get("max_uses"),
            jitter=td(data.get("jitter")),
            blackout=tuple(data.get("blackout") or ()),
            tz=data.get("tz"),
            max_age=td(data.get("max_age")),
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
        if self.jitter is not None:
            parts.append(f"jitter {format_duration(self.jitter)}")
        if self.max_age is not None:
            parts.append(f"max age {format_duration(self.max_age)}")
        if self.max_uses is not None:
            parts.append(f"after {self.max_uses} uses")
        if not parts:
            parts.append("on demand")
        parts.extend(f"blackout {b}" for b in self.blackout)
        if self.tz is not None:
            parts.append(f"tz {self.tz}")
        parts.append(f"grace {format_duration(self.grace)}")
        if self.on_risk is not None:
            parts.append(f"on risk {self.on_risk}")
        if self.risk_cooldown is not None:
            parts.append(f"risk cooldown {format_duration(self.risk_cooldown)}")
        return ", ".join(parts)
