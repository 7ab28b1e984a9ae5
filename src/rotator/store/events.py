"""Store access for risk events and the per-credential decisions they led to. Callers pass
the transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, exists, insert, or_, select, update

from rotator.domain.model import Stage
from rotator.store.schema import credentials, risk_decisions, risk_events, versions

# Decisions that start a rotation.
_ACTING = ("rotate", "emergency")
# Stages of a version that was put in place (CURRENT, then demoted): not PENDING or FAILED.
_PLACED = (Stage.CURRENT.value, Stage.PREVIOUS.value, Stage.RETIRED.value)


@dataclass(frozen=True, slots=True)
class DecisionRow:
    credential: str
    action: str
    reason: str
    duplicate_of: int | None
    outcome: str | None
    rotation_id: str | None
    version: int | None
    error: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    kind: str
    severity: str
    selector: dict[str, Any]
    detail: str | None
    reporter: str
    created_at: datetime
    decisions: list[DecisionRow] = field(default_factory=list)


def insert_event(
    conn: Connection,
    *,
    tenant_id: int,
    kind: str,
    severity: str,
    selector: dict[str, Any],
    detail: str | None,
    reporter: str,
    now: datetime,
) -> int:
    res = conn.execute(
        insert(risk_events).values(
            tenant_id=tenant_id,
            kind=kind,
            severity=severity,
            selector=selector,
            detail=detail,
            reporter=reporter,
            created_at=now,
        )
    )
    assert res.inserted_primary_key is not None
    return int(res.inserted_primary_key[0])


def insert_decision(
    conn: Connection,
    *,
    event_id: int,
    credential_id: int,
    credential: str,
    kind: str,
    action: str,
    reason: str,
    duplicate_of: int | None,
    now: datetime,
) -> int:
    res = conn.execute(
        insert(risk_decisions).values(
            event_id=event_id,
            credential_id=credential_id,
            credential=credential,
            kind=kind,
            action=action,
            reason=reason,
            duplicate_of=duplicate_of,
            created_at=now,
        )
    )
    assert res.inserted_primary_key is not None
    return int(res.inserted_primary_key[0])


def record_outcome(
    conn: Connection,
    decision_id: int,
    *,
    outcome: str,
    rotation_id: str | None,
    version: int | None,
    error: str | None,
) -> None:
    conn.execute(
        update(risk_decisions)
        .where(risk_decisions.c.id == decision_id)
        .values(outcome=outcome, rotation_id=rotation_id, version=version, error=error)
    )


def lock_credentials(conn: Connection, credential_ids: list[int]) -> None:
    """Lock these credentials' rows until the transaction ends (SELECT ... FOR UPDATE on
    PostgreSQL, in id order so two callers never deadlock; SQLite's write transaction
    serializes writers already): two reports of an event that read the earlier decisions and
    write theirs in such a transaction run one after the other, the second seeing the first."""
    if credential_ids:
        conn.execute(
            select(credentials.c.id)
            .where(credentials.c.id.in_(credential_ids))
            .order_by(credentials.c.id)
            .with_for_update()
        ).all()


def _replaced() -> ColumnElement[bool]:
    """The decision's rotation put its new value in place (its version became CURRENT), even
    if it is recorded ``failed`` because revoking the old value failed afterwards."""
    return exists().where(
        versions.c.credential_id == risk_decisions.c.credential_id,
        versions.c.number == risk_decisions.c.version,
        versions.c.stage.in_(_PLACED),
    )


def _achieved(running_since: datetime) -> ColumnElement[bool]:
    """A rotating decision that replaced the value, or one still running: no outcome yet and
    made at or after ``running_since`` (older ones without an outcome died with their process)."""
    return or_(
        risk_decisions.c.outcome == "rotated",
        and_(risk_decisions.c.outcome.is_(None), risk_decisions.c.created_at >= running_since),
        and_(risk_decisions.c.outcome == "failed", _replaced()),
    )


def prior_decisions(
    conn: Connection, credential_id: int, kind: str, since: datetime, running_since: datetime
) -> list[tuple[int, str, bool]]:
    """(event id, action, achieved) of this credential's decisions for ``kind`` made at or
    after ``since``, oldest first. ``achieved``: see :func:`_achieved` (a notify achieved
    what it asked for)."""
    rows = conn.execute(
        select(
            risk_decisions.c.event_id,
            risk_decisions.c.action,
            or_(risk_decisions.c.action == "notify", _achieved(running_since)).label("achieved"),
        )
        .where(
            risk_decisions.c.credential_id == credential_id,
            risk_decisions.c.kind == kind,
            risk_decisions.c.created_at >= since,
        )
        .order_by(risk_decisions.c.id)
    ).all()
    return [(r.event_id, r.action, bool(r.achieved)) for r in rows]


def last_risk_rotation(
    conn: Connection, credential_id: int, running_since: datetime
) -> datetime | None:
    """When the last decision to rotate this credential (rotate or emergency) that replaced
    its value, or is still running (see :func:`_achieved`), was made, or None."""
    value: datetime | None = conn.execute(
        select(risk_decisions.c.created_at)
        .where(
            risk_decisions.c.credential_id == credential_id,
            risk_decisions.c.action.in_(_ACTING),
            _achieved(running_since),
        )
        .order_by(risk_decisions.c.created_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    return value


def list_events(
    conn: Connection, tenant_id: int, limit: int, before: int | None = None
) -> list[EventRow]:
    """The newest ``limit`` events of a tenant (with an id below ``before`` if given), newest
    first, each with its decisions."""
    q = select(risk_events).where(risk_events.c.tenant_id == tenant_id)
    if before is not None:
        q = q.where(risk_events.c.id < before)
    rows = conn.execute(q.order_by(risk_events.c.id.desc()).limit(limit)).all()
    events = {
        r.id: EventRow(r.id, r.kind, r.severity, r.selector, r.detail, r.reporter, r.created_at)
        for r in rows
    }
    if events:
        for d in conn.execute(
            select(risk_decisions)
            .where(risk_decisions.c.event_id.in_(list(events)))
            .order_by(risk_decisions.c.credential)
        ).all():
            events[d.event_id].decisions.append(
                DecisionRow(
                    d.credential,
                    d.action,
                    d.reason,
                    d.duplicate_of,
                    d.outcome,
                    d.rotation_id,
                    d.version,
                    d.error,
                    d.created_at,
                )
            )
    return list(events.values())
