"""The dashboard's pure helpers: status colours, durations and the history chart's layout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rotator import errors
from rotator.api import problems
from rotator.dashboard import routes, views
from rotator.domain.model import Credential, Stage, Version
from rotator.domain.policy import RotationPolicy
from rotator.service.dashboard import HourCount, LastOutcome

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _cred(next_at: datetime | None) -> Credential:
    v = Version(1, 1, Stage.CURRENT, NOW - timedelta(days=3), NOW - timedelta(days=3, hours=2))
    return Credential(
        id=1,
        tenant="default",
        name="prod/db",
        connector="local",
        config={},
        tags={},
        policy=RotationPolicy(),
        created_at=NOW - timedelta(days=9),
        updated_at=NOW,
        next_rotation_at=next_at,
        versions=(v,),
    )


@pytest.mark.parametrize(
    ("next_at", "last", "status"),
    [
        (NOW + timedelta(days=2), None, "ok"),
        (None, None, "ok"),
        (NOW + timedelta(hours=23), None, "due"),
        (NOW, None, "overdue"),
        (NOW - timedelta(minutes=1), LastOutcome(True, "finished", NOW, None), "overdue"),
        (NOW + timedelta(days=2), LastOutcome(False, "rolled_back", NOW, "refused"), "failed"),
        (NOW - timedelta(days=1), LastOutcome(False, "failed", NOW, None), "failed"),
    ],
)
def test_status_colour_is_failed_then_overdue_then_due_within_a_day_else_ok(
    next_at: datetime | None, last: LastOutcome | None, status: str
) -> None:
    assert views.status_of(_cred(next_at), last, NOW) == status


def test_age_is_time_since_the_current_version_was_staged_in_two_units() -> None:
    assert views.age(_cred(None), NOW) == "3d 2h"
    assert views.human(timedelta(seconds=59)) == "59s"
    assert views.human(timedelta(minutes=5, seconds=2)) == "5m 2s"
    assert views.relative(NOW + timedelta(hours=1), NOW) == "in 1h"
    assert views.relative(NOW - timedelta(days=1, minutes=3), NOW) == "1d 3m ago"


def test_history_chart_stacks_failures_on_successes_under_a_round_scale() -> None:
    hours = [
        HourCount(NOW - timedelta(hours=2), 0, 0),
        HourCount(NOW - timedelta(hours=1), 5, 0),
        HourCount(NOW, 3, 3),
    ]
    c = views.chart(hours, width=400, height=200)
    assert c.max_count == 8  # peak 6 -> 8 (grid of 4 steps: 0, 2, 4, 6, 8)
    assert [n for _, n in c.gridlines] == [0, 2, 4, 6, 8]
    assert (c.total_ok, c.total_bad) == (8, 3)
    empty, five, mixed = c.bars
    assert empty.ok_h == 0
    assert empty.bad_h == 0
    assert five.ok_y + five.ok_h == c.base
    assert mixed.ok_h == mixed.bad_h  # 3 and 3
    assert mixed.bad_y + mixed.bad_h == pytest.approx(mixed.ok_y)
    assert five.ok_h > mixed.ok_h


def _all_errors(cls: type[errors.RotatorError]) -> list[type[errors.RotatorError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _all_errors(sub)
    return out


def test_every_service_error_gets_the_same_status_on_a_page_as_from_the_api() -> None:
    def status(table: tuple[tuple[type[errors.RotatorError], int], ...], exc: Exception) -> int:
        return next((s for cls, s in table if isinstance(exc, cls)), 500)

    for cls in _all_errors(errors.RotatorError):
        exc = cls.__new__(cls)
        assert status(routes._STATUS, exc) == status(problems._STATUS, exc), cls.__name__
