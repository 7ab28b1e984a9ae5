"""The store going away after an emergency's rotations ended: their report still reaches the
caller (rotate, event report), with the sweep that could not run named in ``sweep_error``.
The store "goes away" for what comes after the rotations by renaming the revocations table
behind rotator's back (a real edit of the real store; every later read of it fails)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy
from tests.support.doubles import DoubleConfig, install, target_add

from rotator.domain.secret import Secret
from rotator.engine import Outcome, RotationResult
from rotator.service import BlockingService, EventInput, ValueInput
from rotator.service.rotation import Selection
from rotator.service.views import event_report_from_json


def add_double(svc: BlockingService, tmp_path: Path, name: str) -> None:
    install()
    settings = {"state": str(tmp_path / "target.json")}
    svc.add_credential(name, "double", settings=settings, value=ValueInput(value=Secret("v1")))
    target_add(DoubleConfig(**settings), name, "v1")  # type: ignore[arg-type]


@contextmanager
def revocations_gone(raw_db: sqlalchemy.Engine) -> Iterator[None]:
    try:
        yield
    finally:
        with raw_db.begin() as c:
            c.execute(sqlalchemy.text("ALTER TABLE revocations_gone RENAME TO revocations"))


def break_revocations(raw_db: sqlalchemy.Engine) -> None:
    with raw_db.begin() as c:
        c.execute(sqlalchemy.text("ALTER TABLE revocations RENAME TO revocations_gone"))


def test_emergency_rotate_reports_its_rotations_when_the_store_fails_before_the_still_valid_look_up(
    svc: BlockingService, raw_db: sqlalchemy.Engine, tmp_path: Path
) -> None:
    add_double(svc, tmp_path, "a")

    def progress(r: RotationResult) -> None:  # the rotation ended: now the store goes away
        break_revocations(raw_db)

    with revocations_gone(raw_db):
        result = svc.rotate(Selection(names=["a"]), emergency=True, progress=progress)
    assert [(r.name, r.outcome) for r in result.results] == [("a", Outcome.ROTATED)]
    assert result.still_valid is None, "not known: not reported as none"
    assert result.sweep_error is not None
    assert "revocations not processed" in result.sweep_error
    assert "old values still valid not looked up" in result.sweep_error
    assert result.to_json()["sweep_error"] == result.sweep_error


def test_repeated_emergency_event_reports_its_decisions_when_the_store_fails_before_the_revoke(
    svc: BlockingService, raw_db: sqlalchemy.Engine, tmp_path: Path
) -> None:
    add_double(svc, tmp_path, "a")
    first = svc.report_event(EventInput("leak", "critical", credential="a"))
    assert first.ok, first.to_json()

    break_revocations(raw_db)
    with revocations_gone(raw_db):
        again = svc.report_event(EventInput("leak", "critical", credential="a"))
    assert [(d.name, d.action.value) for d in again.decisions] == [("a", "notify")]
    assert again.sweep_error is not None
    assert "old values not revoked or looked up" in again.sweep_error
    assert not again.ok, "an old value may be valid: not ok"
    assert event_report_from_json(again.to_json()).to_json() == again.to_json()
    assert first.sweep_error is None  # when nothing failed, no member at all
    assert "sweep_error" not in first.to_json()
