"""The audit log in the store: append inside the caller's transaction, list, verify."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from rotator.audit.chain import GENESIS, AuditEntry, VerifyResult, entry_hash, verify
from rotator.store.schema import audit_head, audit_log


def format_ts(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def append(
    conn: Connection,
    *,
    now: datetime,
    tenant: str,
    actor: str,
    action: str,
    credential: str | None = None,
    rotation_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction, so it commits with the operation it records.

    The head row is locked first (SELECT ... FOR UPDATE on PostgreSQL; SQLite's write
    transaction is exclusive already), which serializes appends across processes.
    """
    head = conn.execute(
        select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
    ).first()
    seq, prev = (head.seq, head.hash) if head is not None else (0, GENESIS)
    entry = AuditEntry(
        seq=seq + 1,
        ts=format_ts(now),
        tenant=tenant,
        actor=actor,
        action=action,
        credential=credential,
        rotation_id=rotation_id,
        details=dict(details or {}),
        prev_hash=prev,
    )
    digest = entry_hash(entry)
    conn.execute(
        insert(audit_log).values(
            seq=entry.seq,
            ts=entry.ts,
            tenant=tenant,
            actor=actor,
            action=action,
            credential=credential,
            rotation_id=rotation_id,
            details=json.dumps(entry.details, sort_keys=True),
            prev_hash=prev,
            hash=digest,
        )
    )
    if head is None:
        conn.execute(insert(audit_head).values(id=1, seq=entry.seq, hash=digest))
    else:
        conn.execute(
            update(audit_head).where(audit_head.c.id == 1).values(seq=entry.seq, hash=digest)
        )
    return AuditEntry(**{**_fields(entry), "hash": digest})


def _fields(e: AuditEntry) -> dict[str, Any]:
    return {f: getattr(e, f) for f in AuditEntry.__slots__}


def _row_to_entry(r: Any) -> AuditEntry:
    return AuditEntry(
        seq=r.seq,
        ts=r.ts,
        tenant=r.tenant,
        actor=r.actor,
        action=r.action,
        credential=r.credential,
        rotation_id=r.rotation_id,
        details=json.loads(r.details),
        prev_hash=r.prev_hash,
        hash=r.hash,
    )


def entries(
    conn: Connection,
    *,
    tenant: str | None = None,
    credential: str | None = None,
    limit: int | None = None,
) -> list[AuditEntry]:
    """Entries in seq order, optionally for one tenant / credential, the newest ``limit``."""
    q = select(audit_log)
    if tenant is not None:
        q = q.where(audit_log.c.tenant == tenant)
    if credential is not None:
        q = q.where(audit_log.c.credential == credential)
    if limit is not None:
        sub = q.order_by(audit_log.c.seq.desc()).limit(limit).subquery()
        rows = conn.execute(select(sub).order_by(sub.c.seq)).all()
    else:
        rows = conn.execute(q.order_by(audit_log.c.seq)).all()
    return [_row_to_entry(r) for r in rows]


def _iter_all(conn: Connection, batch: int = 5000) -> Iterator[AuditEntry]:
    # Read in physical insertion order of seq ranges, so a reorder of rows shows as a seq jump.
    last = 0
    while True:
        rows = conn.execute(
            select(audit_log).where(audit_log.c.seq > last).order_by(audit_log.c.seq).limit(batch)
        ).all()
        if not rows:
            return
        for r in rows:
            yield _row_to_entry(r)
        last = rows[-1].seq


def verify_log(conn: Connection) -> VerifyResult:
    """Verify the whole chain against the head row. Streams; memory does not grow with the log."""
    head = conn.execute(
        select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
    ).first()
    return verify(_iter_all(conn), None if head is None else (head.seq, head.hash))
