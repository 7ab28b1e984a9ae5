"""Store access for risk events and the per-credential decisions they led to. Callers pass
the transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from rotator.store.schema import risk_decisions, risk_events

# Decisions whose rotation succeeded: they start a cooldown.
_ACTING = ("rotate", "emergency")


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


def prior_decisions(
    conn: Connection, credential_id: int, kind: str, since: datetime
) -> list[tuple[int, str, str | None]]:
    """(event id, action, outcome) of this credential's decisions for ``kind`` made at or
    after ``since``, oldest first."""
    rows = conn.execute(
        select(risk_decisions.c.event_id, risk_decisions.c.action, risk_decisions.c.outcome)
        .where(
            risk_decisions.c.credential_id == credential_id,
            risk_decisions.c.kind == kind,
            risk_decisions.c.created_at >= since,
        )
        .order_by(risk_decisions.c.id)
    ).all()
    return [(r.event_id, r.action, r.outcome) for r in rows]


def last_risk_rotation(conn: Connection, credential_id: int) -> datetime | None:
    """When the last decision to rotate this credential (rotate or emergency) whose rotation
    succeeded was made, or None."""
    value: datetime | None = conn.execute(
        select(risk_decisions.c.created_at)
        .where(
            risk_decisions.c.credential_id == credential_id,
            risk_decisions.c.action.in_(_ACTING),
            risk_decisions.c.outcome == "rotated",
        )
        .order_by(risk_decisions.c.created_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    return value


def list_events(conn: Connection, tenant_id: int, limit: int) -> list[EventRow]:
    """The newest ``limit`` events of a tenant, newest first, each with its decisions."""
    rows = conn.execute(
        select(risk_events)
        .where(risk_events.c.tenant_id == tenant_id)
        .order_by(risk_events.c.id.desc())
        .limit(limit)
    ).all()
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
