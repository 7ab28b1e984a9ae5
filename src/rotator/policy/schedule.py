"""Next rotation time from a policy, and the rule that set it. Pure: ``now`` is an argument.

The one entry point is :func:`next_rotation`; it returns ``(time, rule_text)`` where the
rule text says which policy field decided and where that field came from (``every 30d from
tag env=prod``, ``cron '0 3 * * 0' + jitter 10m``, ``max age 90d``, ``3 uses reached``,
``...; blackout until Mon 06:00``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from rotator.domain.policy import Blackout, RotationPolicy, format_duration, zone
from rotator.errors import PolicyError

# How far the search for a cron window not wholly blacked out goes: a year covers every
# weekday of every day-of-month and month field (blackouts repeat weekly).
_SEARCH = timedelta(weeks=53)
# A fixed start for checks that take no clock.
_PROBE = datetime(2000, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def jitter_offset(seed: str, jitter: timedelta) -> timedelta:
    """A stable pseudo-random offset in [0, jitter) for ``seed`` (a credential's name): the
    same on every run and every machine, and spread evenly over many credentials."""
    span = jitter // _US
    if span <= 0:
        return timedelta(0)
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % span * _US


def cron_after(policy: RotationPolicy, after: datetime) -> datetime:
    """The first cron time strictly after ``after``, read in the policy's zone, in UTC.

    croniter runs with a zone-aware start, so wall-clock times stay put across DST changes
    (``0 3 * * *`` is 03:00 local in summer and winter). A time inside the spring gap fires
    at the first instant after the jump. A wall time that occurs twice in autumn fires once:
    the repeat is skipped unless the hour field is a wildcard (an hourly job runs every hour).
    """
    assert policy.cron is not None
    from croniter import croniter  # only cron policies pay for it

    tz = zone(policy.tz)
    it = croniter(policy.cron, after.astimezone(tz))
    hourly = "*" in policy.cron.split()[1]
    for _ in range(4):
        nxt: datetime = it.get_next(datetime)
        local = nxt.astimezone(tz)
        if hourly or not _is_repeat(local, tz):
            return nxt.astimezone(UTC)
    return nxt.astimezone(UTC)


def _is_repeat(local: datetime, tz: ZoneInfo) -> bool:
    """Whether ``local`` (from ``astimezone``, which sets ``fold``) is the second occurrence
    of a wall time that the autumn change makes occur twice."""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def blackout_end(policy: RotationPolicy, t: datetime) -> tuple[datetime, str] | None:
    """If ``t`` falls in one of the policy's blackouts: the instant it ends (following
    blackouts that touch) and the label of that end; else None."""
    spans = policy.blackouts
    if not spans:
        return None
    tz = zone(policy.tz)
    moved: tuple[datetime, str] | None = None
    for _ in range(len(spans) + 1):
        local = t.astimezone(tz)
        minute = (
            local.weekday() * 1440 + local.hour * 60 + local.minute + local.second / 60
        ) + local.microsecond / 60e6
        hit = next((b for b in spans if b.contains(minute)), None)
        if hit is None:
            return moved
        t = _local_next(local, hit.end, tz)
        moved = (t, Blackout.label(hit.end))
    return moved


def _local_next(local: datetime, minute_of_week: int, tz: ZoneInfo) -> datetime:
    """The first instant after ``local`` whose wall clock is ``minute_of_week``, in UTC."""
    day, rest = divmod(minute_of_week, 1440)
    wall = local.replace(tzinfo=None)
    date = wall.date() + timedelta(days=(day - wall.weekday()) % 7)
    candidate = datetime.combine(date, time(rest // 60, rest % 60))
    if candidate <= wall:
        candidate += timedelta(days=7)
    return candidate.replace(tzinfo=tz).astimezone(UTC)


def _from(sources: Mapping[str, str], field: str) -> str:
    src = sources.get(field, "")
    return f" from {src}" if src and src not in ("default", "credential") else ""


def usage_due(
    policy: RotationPolicy, use_count: int, now: datetime, sources: Mapping[str, str] = {}
) -> tuple[datetime, str] | None:
    """When ``use_count`` reached the policy's max uses: (now, or the end of a blackout now
    is in; the rule). None otherwise."""
    if policy.max_uses is None or use_count < policy.max_uses:
        return None
    return _outside_blackout(
        policy, now, f"{policy.max_uses} uses reached{_from(sources, 'max_uses')}"
    )


def _outside_blackout(policy: RotationPolicy, t: datetime, rule: str) -> tuple[datetime, str]:
    moved = blackout_end(policy, t)
    if moved is None:
        return t, rule
    return moved[0], f"{rule}; blackout until {moved[1]}"


def _scheduled(
    policy: RotationPolicy, last: datetime, now: datetime, seed: str
) -> tuple[datetime, str, str] | None:
    """(time, rule, deciding field) of the interval or cron schedule, jitter and blackouts
    applied; None when the policy has neither."""
    if policy.every is not None:
        t = last + policy.every
        rule, field = f"every {format_duration(policy.every)}", "every"
        if policy.jitter is not None:
            # Due times sit on a fixed grid, _PROBE + n * every + offset: the next grid point
            # after ``last``, at most ``every`` later. A rotation at its due time (grid point
            # n) is next due at grid point n + 1, so the period stays ``every`` on average
            # (adding the offset to ``last + every`` would add it to every period); any other
            # rotation (manual, moved by a blackout) is next due at the grid point after it.
            offset = jitter_offset(seed, min(policy.jitter, policy.every))
            t -= (last - _PROBE - offset) % policy.every
            rule += f" + jitter {format_duration(policy.jitter)}"
        t, rule = _outside_blackout(policy, t, rule)
        return t, rule, field
    if policy.cron is None:
        return None
    rule = f"cron '{policy.cron}'"
    if policy.window is not None:
        rule += f" window {format_duration(policy.window)}"
    offset = timedelta(0)
    if policy.jitter is not None:
        # Within the window: a jittered start never leaves the window it belongs to.
        span = policy.jitter if policy.window is None else min(policy.jitter, policy.window)
        offset = jitter_offset(seed, span)
        rule += f" + jitter {format_duration(policy.jitter)}"
    fire = cron_after(policy, last)
    if policy.window is not None and fire + policy.window <= now:
        # That occurrence's window has passed (downtime, a policy change): the next window
        # that has not ended yet.
        fire = cron_after(policy, now - policy.window)
    if policy.window is None:
        t, r = _outside_blackout(policy, fire + offset, rule)
        return t, r, "cron"
    t, r = _in_window(policy, fire, offset, rule)
    return t, r, "cron"


def _in_window(
    policy: RotationPolicy, fire: datetime, offset: timedelta, rule: str
) -> tuple[datetime, str]:
    """The first cron occurrence from ``fire`` on whose window is not wholly blacked out: its
    jittered start (``fire + offset``, moved to the end of a blackout it is in) when that is
    still inside the window, else its first instant outside a blackout. PolicyError when no
    occurrence within _SEARCH (a year) after ``fire`` has one."""
    assert policy.window is not None
    give_up = fire + _SEARCH
    while fire <= give_up:
        for start in (fire + offset, fire):
            t, r = _outside_blackout(policy, start, rule)
            if t < fire + policy.window:
                return t, r
        # [fire, t) is all blackout: skip every occurrence whose window ends before t.
        fire = cron_after(policy, max(fire, t - policy.window))
    raise PolicyError("every --window of --cron falls in a --blackout")


def check_window_open(policy: RotationPolicy) -> None:
    """PolicyError unless some cron occurrence of ``policy`` (which has a window) has a window
    not wholly inside its blackouts, so :func:`next_rotation` can always answer. Costs one
    cron step for a policy whose windows are open; up to a year of occurrences otherwise."""
    assert policy.window is not None
    _check_window_open(policy.cron, policy.window, policy.blackout, policy.tz)


# Cached: every reschedule builds the effective policy again (a rotation's finish included).
@functools.lru_cache(maxsize=256)
def _check_window_open(
    cron: str | None, window: timedelta, blackout: tuple[str, ...], tz: str | None
) -> None:
    policy = RotationPolicy(cron=cron, tz=tz)  # built without a window: no check again
    object.__setattr__(policy, "window", window)
    object.__setattr__(policy, "blackout", blackout)
    _in_window(policy, cron_after(policy, _PROBE), timedelta(0), "")


def next_rotation(
    policy: RotationPolicy,
    *,
    now: datetime,
    last_rotated_at: datetime,
    use_count: int = 0,
    seed: str = "",
    sources: Mapping[str, str] = {},
) -> tuple[datetime | None, str]:
    """When a credential is next due, and the rule that says so. None: on demand only.

    - max uses reached: due now;
    - else the schedule (``every`` from ``last_rotated_at``, or the next cron time after it
      in the policy's zone), moved by the jitter offset for ``seed``; with a window, a cron
      occurrence whose window has ended by ``now`` gives way to the next one. ``every`` with
      jitter: the first time after ``last_rotated_at`` on a grid ``every`` apart whose phase
      is the offset (in [0, min(jitter, every))), so the period stays ``every``;
    - ``max_age``: never later than ``last_rotated_at + max_age``;
    - any due time inside a blackout moves to the blackout's end (with a window: to the next
      cron occurrence whose window is not blacked out; PolicyError if none is within a
      year, which ``RotationPolicy`` refuses to be built with).

    ``sources`` maps field names to where the effective value came from (see
    ``rotator.policy.defaults``): the rule text names it (``every 30d from tag env=prod``).
    """
    by_use = usage_due(policy, use_count, now, sources)
    if by_use is not None:
        return by_use
    sched = _scheduled(policy, last_rotated_at, now, seed)
    if policy.max_age is not None:
        aged = _outside_blackout(
            policy,
            last_rotated_at + policy.max_age,
            f"max age {format_duration(policy.max_age)}{_from(sources, 'max_age')}",
        )
        if sched is None or aged[0] < sched[0]:
            return aged
    if sched is None:
        return None, "on demand"
    t, rule, field = sched
    if ";" in rule:
        head, tail = rule.split(";", 1)
        return t, f"{head}{_from(sources, field)};{tail}"
    return t, rule + _from(sources, field)


def next_rotation_at(policy: RotationPolicy, last_rotated_at: datetime) -> datetime | None:
    """The due time alone, for a credential last rotated at ``last_rotated_at`` (``now`` taken
    to be that time; no jitter seed). Prefer :func:`next_rotation`."""
    return next_rotation(policy, now=last_rotated_at, last_rotated_at=last_rotated_at)[0]


def earliest(*times: datetime | None) -> datetime | None:
    """The earliest of the given times, ignoring None; None when all are None."""
    known = [t for t in times if t is not None]
    return min(known) if known else None
