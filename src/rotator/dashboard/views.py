"""Pure helpers of the dashboard's pages: status colours, durations, the history chart.

No I/O and no clock: ``now`` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from rotator.domain.model import Credential, Stage
from rotator.service.dashboard import HourCount, LastOutcome

# A credential whose next rotation falls within this is "due soon".
DUE_SOON = timedelta(hours=24)


def status_of(cred: Credential, last: LastOutcome | None, now: datetime) -> str:
    """``failed`` (its newest finished rotation failed or rolled back), ``overdue`` (its next
    rotation is past), ``due`` (within :data:`DUE_SOON`) or ``ok``. Failed wins: a failing
    credential is overdue too, and the failure is what an operator must look at."""
    if last is not None and not last.ok:
        return "failed"
    nxt = cred.next_rotation_at
    if nxt is not None and nxt <= now:
        return "overdue"
    if nxt is not None and nxt <= now + DUE_SOON:
        return "due"
    return "ok"


STATUS_LABELS = {"ok": "ok", "due": "due soon", "overdue": "overdue", "failed": "failed"}


def human(delta: timedelta) -> str:
    """A duration as its two largest units (``3d 4h``, ``5m 2s``); negative ones too."""
    s = int(delta.total_seconds())
    sign = "-" if s < 0 else ""
    s = abs(s)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or (unit == "s" and not parts):
            parts.append(f"{s // size}{unit}")
            s %= size
        if len(parts) == 2:
            break
    return sign + " ".join(parts)


def age(cred: Credential, now: datetime) -> str | None:
    """How long the CURRENT value has been CURRENT (None: no value yet)."""
    cur = cred.version_in(Stage.CURRENT)
    return None if cur is None else human(now - cur.staged_at)


def relative(at: datetime | None, now: datetime) -> str | None:
    """``in 3d 4h`` / ``5m 2s ago`` (None for None)."""
    if at is None:
        return None
    return f"in {human(at - now)}" if at >= now else f"{human(now - at)} ago"


def iso(at: datetime | None) -> str:
    return "" if at is None else at.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    ok_y: float
    ok_h: float
    bad_y: float
    bad_h: float
    label: str  # the hour, for the tooltip and the axis
    tick: bool  # whether the axis shows its label
    count_ok: int
    count_bad: int


@dataclass(frozen=True, slots=True)
class Chart:
    """A stacked bar chart laid out in SVG user units (successes below, failures on top)."""

    width: int
    height: int
    top: int
    base: int  # the y of the baseline
    max_count: int
    bars: list[Bar]
    gridlines: list[tuple[float, int]]  # (y, count)
    total_ok: int
    total_bad: int


def chart(hours: list[HourCount], width: int = 960, height: int = 260) -> Chart:
    """The layout of the history chart of ``hours`` (oldest first)."""
    left, right, top, bottom = 40, 10, 10, 30
    base = height - bottom
    plot_h = base - top
    peak = max([h.succeeded + h.failed for h in hours] + [1])
    # A round top of scale divisible by the 4 grid steps: 4, 8, 20, 40, 80, 200, ...
    scale = min(m * 10**k for k in range(12) for m in (4, 8, 20) if m * 10**k >= peak)
    slot = (width - left - right) / max(len(hours), 1)
    bars = []
    every = max(1, len(hours) // 12)
    for i, h in enumerate(hours):
        ok_h = plot_h * h.succeeded / scale
        bad_h = plot_h * h.failed / scale
        bars.append(
            Bar(
                x=round(left + i * slot + slot * 0.1, 1),
                width=round(slot * 0.8, 1),
                ok_y=round(base - ok_h, 1),
                ok_h=round(ok_h, 1),
                bad_y=round(base - ok_h - bad_h, 1),
                bad_h=round(bad_h, 1),
                label=h.start.strftime("%d %H:00"),
                tick=i % every == 0,
                count_ok=h.succeeded,
                count_bad=h.failed,
            )
        )
    grid = [(round(base - plot_h * k / 4, 1), scale * k // 4) for k in range(5)]
    return Chart(
        width=width,
        height=height,
        top=top,
        base=base,
        max_count=scale,
        bars=bars,
        gridlines=grid,
        total_ok=sum(h.succeeded for h in hours),
        total_bad=sum(h.failed for h in hours),
    )
