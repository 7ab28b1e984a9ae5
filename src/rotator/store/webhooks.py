"""Store access for webhook notifications (tables ``webhooks``, ``webhook_dead_letters``,
``credential_overdue_marks``). Callers pass the transaction.

A webhook row is worked by one process at a time, as a SIEM forwarder is (see
:mod:`rotator.store.forwarders`): :func:`claim` takes its lease only where it ran out or the
caller holds it, and :func:`advance` moves the cursor only while the caller holds the lease and
the cursor is still the value the entries were read after.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, or_, select, update

from rotator.store.schema import (
    credential_overdue_marks,
    credentials,
    tenants,
    versions,
    webhook_dead_letters,
    webhooks,
)


@dataclass(frozen=True, slots=True)
class WebhookRow:
    id: int
    tenant_id: int | None
    tenant: str | None  # None: every tenant's events
    url: str
    events: list[str]
    format: str
    secret_credential: str
    secret_tenant: str
    cursor: int
    claimed_by: str | None
    lease_until: datetime | None
    last_error: str | None
    last_attempt_at: datetime | None
    delivered: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    id: int
    webhook_id: int
    tenant: str | None  # the webhook's scope
    seq: int
    event_type: str
    delivery_id: str
    event: dict[str, Any]
    error: str
    attempts: int
    created_at: datetime
    redelivered_at: datetime | None


def _query() -> Any:
    return select(webhooks, tenants.c.name.label("tenant")).outerjoin(
        tenants, tenants.c.id == webhooks.c.tenant_id
    )


def _row(r: Any) -> WebhookRow:
    return WebhookRow(
        id=int(r.id),
        tenant_id=r.tenant_id,
        tenant=r.tenant,
        url=r.url,
        events=list(r.events),
        format=r.format,
        secret_credential=r.secret_credential,
        secret_tenant=r.secret_tenant,
        cursor=int(r.cursor),
        claimed_by=r.claimed_by,
        lease_until=r.lease_until,
        last_error=r.last_error,
        last_attempt_at=r.last_attempt_at,
        delivered=int(r.delivered),
        created_at=r.created_at,
    )


def insert_webhook(
    conn: Connection,
    *,
    tenant_id: int | None,
    url: str,
    events: list[str],
    fmt: str,
    secret_credential: str,
    secret_tenant: str,
    cursor: int,
    now: datetime,
) -> int:
    """Store a webhook starting after ``cursor``; returns its id."""
    result = conn.execute(
        insert(webhooks).values(
            tenant_id=tenant_id,
            url=url,
            events=events,
            format=fmt,
            secret_credential=secret_credential,
            secret_tenant=secret_tenant,
            cursor=cursor,
            delivered=0,
            created_at=now,
            updated_at=now,
        )
    )
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def get(conn: Connection, webhook_id: int) -> WebhookRow | None:
    r = conn.execute(_query().where(webhooks.c.id == webhook_id)).first()
    return None if r is None else _row(r)


def list_webhooks(conn: Connection) -> list[WebhookRow]:
    """Every webhook, by id."""
    return [_row(r) for r in conn.execute(_query().order_by(webhooks.c.id))]


def delete_webhook(conn: Connection, webhook_id: int) -> None:
    dead = webhook_dead_letters.c.webhook_id == webhook_id
    conn.execute(delete(webhook_dead_letters).where(dead))
    conn.execute(delete(webhooks).where(webhooks.c.id == webhook_id))


def claim(
    conn: Connection, webhook_id: int, owner: str, now: datetime, until: datetime
) -> WebhookRow | None:
    """Take (or extend) the lease for ``owner`` if nobody else holds a live one; the row as
    claimed, or None."""
    done = conn.execute(
        update(webhooks)
        .where(
            webhooks.c.id == webhook_id,
            or_(
                webhooks.c.claimed_by == owner,
                webhooks.c.lease_until.is_(None),
                webhooks.c.lease_until < now,
            ),
        )
        .values(claimed_by=owner, lease_until=until)
    )
    if done.rowcount != 1:
        return None
    return get(conn, webhook_id)


def renew(conn: Connection, webhook_id: int, owner: str, until: datetime) -> bool:
    done = conn.execute(
        update(webhooks)
        .where(webhooks.c.id == webhook_id, webhooks.c.claimed_by == owner)
        .values(lease_until=until)
    )
    return done.rowcount == 1


def release(conn: Connection, webhook_id: int, owner: str) -> None:
    conn.execute(
        update(webhooks)
        .where(webhooks.c.id == webhook_id, webhooks.c.claimed_by == owner)
        .values(claimed_by=None, lease_until=None)
    )


def advance(
    conn: Connection,
    webhook_id: int,
    owner: str,
    old: int,
    new: int,
    delivered: int,
    now: datetime,
    error: str | None = None,
) -> bool:
    """Move the cursor from ``old`` to ``new`` (``delivered`` more events acknowledged), only
    while ``owner`` holds the lease and the cursor is still ``old``; False otherwise (nothing
    written). ``error``: the last error to keep; None keeps the one recorded unless an event
    was acknowledged (``delivered`` > 0), which clears it: a cursor-only advance (entries that
    are no event for this webhook) must not erase why events were dead-lettered."""
    values: dict[str, Any] = {
        "cursor": new,
        "delivered": webhooks.c.delivered + delivered,
        "updated_at": now,
    }
    if error is not None:
        values.update(last_error=error[:2000], last_attempt_at=now)
    elif delivered > 0:
        values.update(last_error=None, last_attempt_at=now)
    done = conn.execute(
        update(webhooks)
        .where(
            webhooks.c.id == webhook_id,
            webhooks.c.claimed_by == owner,
            webhooks.c.cursor == old,
        )
        .values(**values)
    )
    return done.rowcount == 1


def record_error(conn: Connection, webhook_id: int, owner: str, error: str, now: datetime) -> None:
    """Record a failed attempt (``error`` names the receiver's answer, never a secret)."""
    conn.execute(
        update(webhooks)
        .where(webhooks.c.id == webhook_id, webhooks.c.claimed_by == owner)
        .values(last_error=error[:2000], last_attempt_at=now, updated_at=now)
    )


def add_dead_letter(
    conn: Connection,
    *,
    webhook_id: int,
    seq: int,
    event_type: str,
    delivery_id: str,
    event: dict[str, Any],
    error: str,
    attempts: int,
    now: datetime,
) -> None:
    """Keep an event the webhook gave up on. Idempotent: the same (webhook, seq, type) again
    (a process that died before its cursor moved) keeps the first."""
    exists = conn.execute(
        select(webhook_dead_letters.c.id).where(
            webhook_dead_letters.c.webhook_id == webhook_id,
            webhook_dead_letters.c.seq == seq,
            webhook_dead_letters.c.event_type == event_type,
        )
    ).first()
    if exists is not None:
        return
    conn.execute(
        insert(webhook_dead_letters).values(
            webhook_id=webhook_id,
            seq=seq,
            event_type=event_type,
            delivery_id=delivery_id,
            event=event,
            error=error[:2000],
            attempts=attempts,
            created_at=now,
        )
    )


def _dead_query() -> Any:
    return (
        select(webhook_dead_letters, tenants.c.name.label("tenant"))
        .join(webhooks, webhooks.c.id == webhook_dead_letters.c.webhook_id)
        .outerjoin(tenants, tenants.c.id == webhooks.c.tenant_id)
    )


def _dead(r: Any) -> DeadLetterRow:
    return DeadLetterRow(
        id=int(r.id),
        webhook_id=int(r.webhook_id),
        tenant=r.tenant,
        seq=int(r.seq),
        event_type=r.event_type,
        delivery_id=r.delivery_id,
        event=dict(r.event),
        error=r.error,
        attempts=int(r.attempts),
        created_at=r.created_at,
        redelivered_at=r.redelivered_at,
    )


def dead_letters(conn: Connection, *, pending_only: bool = True) -> list[DeadLetterRow]:
    """Dead letters by id (``pending_only``: those not redelivered yet)."""
    q = _dead_query()
    if pending_only:
        q = q.where(webhook_dead_letters.c.redelivered_at.is_(None))
    return [_dead(r) for r in conn.execute(q.order_by(webhook_dead_letters.c.id))]


def get_dead_letter(conn: Connection, dead_id: int) -> DeadLetterRow | None:
    r = conn.execute(_dead_query().where(webhook_dead_letters.c.id == dead_id)).first()
    return None if r is None else _dead(r)


RETRY_CLAIM = "retry in progress until "


def claim_dead_letter(conn: Connection, dead_id: int, now: datetime, until: datetime) -> bool:
    """Claim a waiting dead letter for one ``webhook retry`` until ``until``, before it is
    sent: False when it is redelivered, gone, or claimed by another retry whose claim has not
    run out. The claim is written in ``error`` (``retry in progress until <iso>``, shown by
    ``webhook dead`` meanwhile; the retry's outcome replaces it) with an update conditioned
    on the text read, so of two retries at once exactly one claims it; one killed mid-send
    leaves a claim that lapses at ``until``."""
    row = conn.execute(
        select(webhook_dead_letters.c.error).where(
            webhook_dead_letters.c.id == dead_id,
            webhook_dead_letters.c.redelivered_at.is_(None),
        )
    ).first()
    if row is None:
        return False
    seen = str(row.error)
    if seen.startswith(RETRY_CLAIM):
        with contextlib.suppress(ValueError):
            if datetime.fromisoformat(seen[len(RETRY_CLAIM) :]) > now:
                return False
    done = conn.execute(
        update(webhook_dead_letters)
        .where(
            webhook_dead_letters.c.id == dead_id,
            webhook_dead_letters.c.redelivered_at.is_(None),
            webhook_dead_letters.c.error == seen,
        )
        .values(error=RETRY_CLAIM + until.isoformat())
    )
    return done.rowcount == 1


def mark_redelivered(conn: Connection, dead_id: int, now: datetime) -> bool:
    """Mark a dead letter redelivered, once: False when another retry got there first."""
    done = conn.execute(
        update(webhook_dead_letters)
        .where(
            webhook_dead_letters.c.id == dead_id,
            webhook_dead_letters.c.redelivered_at.is_(None),
        )
        .values(redelivered_at=now)
    )
    return done.rowcount == 1


def record_retry_error(conn: Connection, dead_id: int, error: str) -> None:
    conn.execute(
        update(webhook_dead_letters)
        .where(webhook_dead_letters.c.id == dead_id)
        .values(error=error[:2000], attempts=webhook_dead_letters.c.attempts + 1)
    )


# -- overdue credentials --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OverdueCandidate:
    credential_id: int
    tenant: str
    name: str
    next_rotation_at: datetime
    period: str  # when the CURRENT value's life began (ISO): one overdue entry per period


def overdue_candidates(conn: Connection, before: datetime) -> list[OverdueCandidate]:
    """Credentials due before ``before`` (due time minus the threshold) with no overdue mark
    for their current period yet. The period is ``last_rotated_at`` (else ``created_at``):
    it changes only when a rotation succeeds, so a credential whose rotations keep failing is
    reported once, not at every retry."""
    q = (
        select(
            credentials.c.id,
            credentials.c.name,
            credentials.c.next_rotation_at,
            credentials.c.last_rotated_at,
            credentials.c.created_at,
            tenants.c.name.label("tenant"),
        )
        .join(tenants, tenants.c.id == credentials.c.tenant_id)
        .where(
            credentials.c.next_rotation_at.is_not(None),
            credentials.c.next_rotation_at < before,
        )
        .order_by(credentials.c.id)
    )
    rows = conn.execute(q).all()
    # The marks of these credentials in one query (not one per credential: the runner asks
    # every poll, and a long-overdue credential stays in this list until it rotates).
    marks: set[tuple[int, str]] = set()
    ids = [r.id for r in rows]
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks.update(
            (int(m.credential_id), m.period)
            for m in conn.execute(
                select(
                    credential_overdue_marks.c.credential_id, credential_overdue_marks.c.period
                ).where(credential_overdue_marks.c.credential_id.in_(chunk))
            )
        )
    out: list[OverdueCandidate] = []
    for r in rows:
        period = (r.last_rotated_at or r.created_at).isoformat()
        if (int(r.id), period) not in marks:
            out.append(OverdueCandidate(r.id, r.tenant, r.name, r.next_rotation_at, period))
    return out


def mark_overdue(conn: Connection, credential_id: int, period: str, now: datetime) -> bool:
    """Record the overdue mark of one period; False when it exists already (another process
    marked it: the caller appends no entry). Runs in the caller's transaction, which appends
    the audit entry too, so the mark and the entry commit together or not at all."""
    # INSERT ... ON CONFLICT DO NOTHING on both dialects: a concurrent mark of the same key
    # makes this one insert nothing (no error that would abort the group-committed
    # transaction it shares with other writes).
    values = {"credential_id": credential_id, "period": period, "marked_at": now}
    stmt: Any
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(credential_overdue_marks).values(**values).on_conflict_do_nothing()
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(credential_overdue_marks).values(**values).on_conflict_do_nothing()
    # RETURNING, not rowcount: with ON CONFLICT, drivers disagree on what rowcount says.
    stmt = stmt.returning(credential_overdue_marks.c.credential_id)
    return conn.execute(stmt).first() is not None


def current_version(conn: Connection, credential_id: int) -> int | None:
    """The number of the credential's CURRENT version (None: none)."""
    n = conn.execute(
        select(versions.c.number)
        .where(versions.c.credential_id == credential_id, versions.c.stage == "CURRENT")
        .order_by(versions.c.number.desc())
        .limit(1)
    ).scalar()
    return None if n is None else int(n)
