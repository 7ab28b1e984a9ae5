"""Reads of the audit log by seq range, rotation and credential (export, evidence records)."""

from __future__ import annotations

from sqlalchemy import Connection, select

from rotator.audit.chain import AuditEntry
from rotator.audit.log import row_to_entry
from rotator.store.schema import audit_log


def entries_after(conn: Connection, since: int) -> list[AuditEntry]:
    """Every entry after seq ``since``, in seq order (all tenants)."""
    q = select(audit_log).where(audit_log.c.seq > since).order_by(audit_log.c.seq)
    return [row_to_entry(r) for r in conn.execute(q).all()]


def rotation_entries(conn: Connection, rotation_id: str, tenant: str) -> list[AuditEntry]:
    """The entries of one rotation (indexed by rotation id), in seq order."""
    q = (
        select(audit_log)
        .where(audit_log.c.rotation_id == rotation_id, audit_log.c.tenant == tenant)
        .order_by(audit_log.c.seq)
    )
    return [row_to_entry(r) for r in conn.execute(q).all()]


def credential_actions_after(
    conn: Connection, tenant: str, credential: str, action: str, after: int
) -> list[AuditEntry]:
    """Entries ``action`` on ``credential`` after seq ``after`` made outside any rotation
    (the engine's revokes), in seq order."""
    q = (
        select(audit_log)
        .where(
            audit_log.c.credential == credential,
            audit_log.c.tenant == tenant,
            audit_log.c.seq > after,
            audit_log.c.rotation_id.is_(None),
            audit_log.c.action == action,
        )
        .order_by(audit_log.c.seq)
    )
    return [row_to_entry(r) for r in conn.execute(q).all()]


def checkpoint_tenants(conn: Connection, seqs: list[int]) -> dict[int, str]:
    """The tenant of the ``audit.checkpoint`` entry of each checkpoint of entry ``seq`` (the
    entry right after it, appended in the same transaction), by checkpoint seq."""
    found: dict[int, str] = {}
    for i in range(0, len(seqs), 500):
        q = select(audit_log.c.seq, audit_log.c.tenant).where(
            audit_log.c.seq.in_([s + 1 for s in seqs[i : i + 500]]),
            audit_log.c.action == "audit.checkpoint",
        )
        found.update({r.seq - 1: r.tenant for r in conn.execute(q).all()})
    return found
