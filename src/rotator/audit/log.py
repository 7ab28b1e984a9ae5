"""The audit log in the store: append inside the caller's transaction, list, verify.

Appends made while a transaction carries an :class:`AuditBatch` (the engine's group-commit
writer installs one) are chained and written together when the batch is flushed, just before
the commit: one head read, one multi-row insert and one head update for the whole batch.
Either way an entry commits or rolls back with the operation it records.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from rotator.audit.chain import GENESIS, AuditEntry, VerifyResult, entry_hash, verify
from rotator.store.schema import audit_head, audit_log

BATCH_KEY = "rotator.audit_batch"
_HEAD = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
_HEAD_LOCKED = _HEAD.with_for_update()
_INSERT = insert(audit_log)
_INSERT_HEAD = insert(audit_head)
_UPDATE_HEAD = (
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(seq=bindparam("head_seq"), hash=bindparam("head_hash"))
)


def format_ts(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class AuditBatch:
    """Entries appended in one transaction, not yet chained. ``mark``/``reset`` let the writer
    drop the entries of an operation that failed."""

    pending: list[dict[str, Any]] = field(default_factory=list)

    def mark(self) -> int:
        return len(self.pending)

    def reset(self, mark: int) -> None:
        del self.pending[mark:]

    def flush(self, conn: Connection) -> int:
        """Chain and write the collected entries; returns how many were written."""
        if not self.pending:
            return 0
        head = conn.execute(_HEAD_LOCKED).first()
        seq, prev = (head.seq, head.hash) if head is not None else (0, GENESIS)
        rows = []
        for fields in self.pending:
            seq += 1
            entry = AuditEntry(seq=seq, prev_hash=prev, **fields)
            prev = entry_hash(entry)
            rows.append(
                {
                    **fields,
                    "seq": seq,
                    "prev_hash": entry.prev_hash,
                    "hash": prev,
                    "details": json.dumps(fields["details"], sort_keys=True),
                }
            )
        conn.execute(_INSERT, rows)
        _store_head(conn, head is None, seq, prev)
        n = len(self.pending)
        self.pending.clear()
        return n


def _store_head(conn: Connection, first: bool, seq: int, digest: str) -> None:
    if first:
        conn.execute(_INSERT_HEAD, {"id": 1, "seq": seq, "hash": digest})
    else:
        conn.execute(_UPDATE_HEAD, {"head_seq": seq, "head_hash": digest})


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
) -> None:
    """Append one entry in the caller's transaction, so it commits with what it records.

    Without a batch the head row is locked first (SELECT ... FOR UPDATE on PostgreSQL;
    SQLite's write transaction is exclusive already), which serializes appends across
    processes. ``details`` must hold metadata only, never a value.
    """
    fields = {
        "ts": format_ts(now),
        "tenant": tenant,
        "actor": actor,
        "action": action,
        "credential": credential,
        "rotation_id": rotation_id,
        "details": dict(details or {}),
    }
    batch: AuditBatch | None = conn.info.get(BATCH_KEY)
    if batch is not None:
        batch.pending.append(fields)
        return
    AuditBatch([fields]).flush(conn)


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
    head = conn.execute(_HEAD).first()
    return verify(_iter_all(conn), None if head is None else (head.seq, head.hash))
