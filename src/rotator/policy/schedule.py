"""Next rotation time from a policy. Pure."""

from __future__ import annotations

from datetime import datetime

from rotator.domain.policy import RotationPolicy


def next_rotation_at(policy: RotationPolicy, last_rotated_at: datetime) -> datetime | None:
    """When a credential last rotated at ``last_rotated_at`` is next due, or None (on demand).

    For ``cron`` the answer is the first cron time after ``last_rotated_at``; the window only
    bounds how late the rotation may start, so it does not move the due time.
    Usage-based rotation (``max_uses``) is not time-based and does not set a due time.
    """
    if policy.every is not None:
        return last_rotated_at + policy.every
    if policy.cron is not None:
        from croniter import croniter  # only cron policies pay for it

        it = croniter(policy.cron, last_rotated_at)
        nxt: datetime = it.get_next(datetime)
        return nxt
    return None


def earliest(*times: datetime | None) -> datetime | None:
    """The earliest of the given times, ignoring None; None when all are None."""
    known = [t for t in times if t is not None]
    return min(known) if known else None
