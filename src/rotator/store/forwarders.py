"""Store access for SIEM forwarders (table ``audit_forwarders``). Callers pass the transaction.

A forwarder row is worked by one process at a time: :func:`claim` takes its lease only where
the lease ran out or the caller holds it already, and every later write (:func:`renew`,
:func:`advance`, :func:`record_error`) is conditioned on ``claimed_by``, so a process that
stalled past its lease can neither move the cursor nor overwrite its successor's state.
:func:`advance` is conditioned on the old cursor too: the cursor only ever moves forward from
the value the batch was read after.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, or_, select, update

from rotator.audit.chain import AuditEntry
from rotator.audit.log import row_to_entry
from rotator.store.schema import audit_forwarders, audit_head, audit_log, tenants

KINDS = ("webhook", "syslog")


@dataclass(frozen=True, slots=True)
class ForwarderRow:
    id: int
    name: str
    tenant_id: int | None
    tenant: str | None  # None: every tenant's entries
    kind: str
    target: str
    options: dict[str, Any]
    cursor: int
    enabled: bool
    claimed_by: str | None
    lease_until: datetime | None
    last_error: str | None
    last_attempt_at: datetime | None
    delivered: int
    created_at: datetime
    updated_at: datetime


def _query() -> Any:
    return select(audit_forwarders, tenants.c.name.label("tenant")).outerjoin(
        tenants, tenants.c.id == audit_forwarders.c.tenant_id
    )


def _row(r: Any) -> ForwarderRow:
    return ForwarderRow(
        id=r.id,
        name=r.name,
        tenant_id=r.tenant_id,
        tenant=r.tenant,
        kind=r.kind,
        target=r.target,
        options=dict(r.options),
        cursor=int(r.cursor),
        enabled=bool(r.enabled),
        claimed_by=r.claimed_by,
        lease_until=r.lease_until,
        last_error=r.last_error,
        last_attempt_at=r.last_attempt_at,
        delivered=int(r.delivered),
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


def insert_forwarder(
    conn: Connection,
    *,
    name: str,
    scope_key: str,
    tenant_id: int | None,
    kind: str,
    target: str,
    options: dict[str, Any],
    cursor: int,
    now: datetime,
) -> int:
    """Store an enabled forwarder starting after ``cursor``; returns its id. ``scope_key`` is
    the name's namespace: the tenant's name, or ``"*"`` for an every-tenant forwarder
    (``tenant_id`` None). The caller checks the name is free there (:func:`get`) in the same
    transaction."""
    result = conn.execute(
        insert(audit_forwarders).values(
            name=name,
            scope_key=scope_key,
            tenant_id=tenant_id,
            kind=kind,
            target=target,
            options=options,
            cursor=cursor,
            enabled=True,
            delivered=0,
            created_at=now,
            updated_at=now,
        )
    )
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def get(conn: Connection, name: str, scope_key: str) -> ForwarderRow | None:
    """Forwarder ``name`` of namespace ``scope_key`` (a tenant's name, or ``"*"``)."""
    r = conn.execute(
        _query().where(audit_forwarders.c.name == name, audit_forwarders.c.scope_key == scope_key)
    ).first()
    return None if r is None else _row(r)


def named(conn: Connection, name: str) -> list[ForwarderRow]:
    """Every forwarder called ``name``, whatever its namespace (the owner's lookup)."""
    q = _query().where(audit_forwarders.c.name == name).order_by(audit_forwarders.c.scope_key)
    return [_row(r) for r in conn.execute(q)]


def get_by_id(conn: Connection, forwarder_id: int) -> ForwarderRow | None:
    r = conn.execute(_query().where(audit_forwarders.c.id == forwarder_id)).first()
    return None if r is None else _row(r)


def list_forwarders(conn: Connection, tenant_id: int | None = None) -> list[ForwarderRow]:
    """Every forwarder (``tenant_id`` None), or only those of one tenant, by name."""
    q = _query()
    if tenant_id is not None:
        q = q.where(audit_forwarders.c.tenant_id == tenant_id)
    return [_row(r) for r in conn.execute(q.order_by(audit_forwarders.c.name))]


def delete_forwarder(conn: Connection, forwarder_id: int) -> None:
    conn.execute(delete(audit_forwarders).where(audit_forwarders.c.id == forwarder_id))


def claim(
    conn: Connection, forwarder_id: int, owner: str, now: datetime, until: datetime
) -> ForwarderRow | None:
    """Take (or extend) the lease on an enabled forwarder for ``owner`` until ``until``, if
    nobody else holds a live one; returns the row as claimed, or None."""
    done = conn.execute(
        update(audit_forwarders)
        .where(
            audit_forwarders.c.id == forwarder_id,
            audit_forwarders.c.enabled.is_(True),
            or_(
                audit_forwarders.c.claimed_by == owner,
                audit_forwarders.c.lease_until.is_(None),
                audit_forwarders.c.lease_until < now,
            ),
        )
        .values(claimed_by=owner, lease_until=until)
    )
    if done.rowcount != 1:
        return None
    return get_by_id(conn, forwarder_id)


def renew(conn: Connection, forwarder_id: int, owner: str, until: datetime) -> bool:
    """Extend ``owner``'s lease; False when it no longer holds it (taken over, or removed)."""
    done = conn.execute(
        update(audit_forwarders)
        .where(audit_forwarders.c.id == forwarder_id, audit_forwarders.c.claimed_by == owner)
        .values(lease_until=until)
    )
    return done.rowcount == 1


def release(conn: Connection, forwarder_id: int, owner: str) -> None:
    """Give the lease up (a clean stop), so another process need not wait for it to expire."""
    conn.execute(
        update(audit_forwarders)
        .where(audit_forwarders.c.id == forwarder_id, audit_forwarders.c.claimed_by == owner)
        .values(claimed_by=None, lease_until=None)
    )


def advance(
    conn: Connection,
    forwarder_id: int,
    owner: str,
    old: int,
    new: int,
    delivered: int,
    now: datetime,
) -> bool:
    """Move the cursor from ``old`` to ``new`` (``delivered`` more entries acknowledged) and
    clear the last error, only while ``owner`` holds the lease and the cursor is still
    ``old``; False otherwise (nothing written)."""
    done = conn.execute(
        update(audit_forwarders)
        .where(
            audit_forwarders.c.id == forwarder_id,
            audit_forwarders.c.claimed_by == owner,
            audit_forwarders.c.cursor == old,
        )
        .values(
            cursor=new,
            delivered=audit_forwarders.c.delivered + delivered,
            last_error=None,
            last_attempt_at=now,
            updated_at=now,
        )
    )
    return done.rowcount == 1


def record_error(
    conn: Connection, forwarder_id: int, owner: str, error: str, now: datetime
) -> None:
    """Record a failed attempt (``error`` names the target's answer, never a secret)."""
    conn.execute(
        update(audit_forwarders)
        .where(audit_forwarders.c.id == forwarder_id, audit_forwarders.c.claimed_by == owner)
        .values(last_error=error[:2000], last_attempt_at=now, updated_at=now)
    )


def head_seq(conn: Connection) -> int:
    """The seq of the newest audit entry (0 for none)."""
    seq = conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1)).scalar()
    return int(seq or 0)


def pending(
    conn: Connection, cursor: int, tenant: str | None, limit: int
) -> tuple[list[AuditEntry], int]:
    """The next at most ``limit`` entries after ``cursor`` (only ``tenant``'s, unless None), in
    seq order, and the head seq they were read under. Entries become visible in seq order
    (every append holds the head row's lock until it commits), so reading past ``cursor``
    never skips one that commits later; with fewer than ``limit`` found, every entry up to the
    returned head was seen."""
    head = head_seq(conn)
    q = select(audit_log).where(audit_log.c.seq > cursor, audit_log.c.seq <= head)
    if tenant is not None:
        q = q.where(audit_log.c.tenant == tenant)
    rows = conn.execute(q.order_by(audit_log.c.seq).limit(limit)).all()
    found = [row_to_entry(r) for r in rows]
    return found, head
