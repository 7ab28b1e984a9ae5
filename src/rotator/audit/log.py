"""The audit log in the store: append inside the caller's transaction, list, verify.

Appends made while a transaction carries an :class:`AuditBatch` (the engine's group-commit
writer installs one) are chained and written together when the batch is flushed, just before
the commit: one head read, one multi-row insert and one head update for the whole batch.
Either way an entry commits or rolls back with the operation it records.

Every append MACs its entries under the audit key the head row names (see
:mod:`rotator.audit.chain`) and first checks the head's own MAC: a head rewritten behind
rotator's back (a cut tail) makes every later write fail instead of being chained over. Only
the ``store.init`` entry may start a log without a head. Rows are never updated or deleted
(on PostgreSQL a trigger refuses it), except once by the keyed upgrade (:func:`reseal`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from rotator.audit.chain import (
    GENESIS,
    INIT_ACTION,
    AuditEntry,
    AuditKeys,
    Head,
    VerifyResult,
    entry_hash,
    entry_mac,
    head_message,
    next_key_id,
    verify,
    verify_unkeyed,
)
from rotator.crypto.integrity import AuditKey
from rotator.errors import AuditChainBroken
from rotator.store.prepared import Prepared
from rotator.store.schema import audit_head, audit_log

BATCH_KEY = "rotator.audit_batch"
_HEAD = select(audit_head.c.seq, audit_head.c.hash, audit_head.c.key_id, audit_head.c.mac).where(
    audit_head.c.id == 1
)
# The append's statements run for every rotation and read: compiled once per dialect and sent
# at driver level (store/prepared.py).
_HEAD_LOCKED = Prepared(_HEAD.with_for_update())
_INSERT = Prepared(insert(audit_log), keys=tuple(c.key for c in audit_log.c))
_INSERT_HEAD = Prepared(insert(audit_head), keys=("id", "seq", "hash", "key_id", "mac"))
_UPDATE_HEAD = Prepared(
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(
        seq=bindparam("head_seq"),
        hash=bindparam("head_hash"),
        key_id=bindparam("head_key"),
        mac=bindparam("head_mac"),
    )
)


# json.dumps(details, sort_keys=True), the stored form, without a new encoder per entry.
_DETAILS = json.JSONEncoder(sort_keys=True)


def format_ts(now: datetime) -> str:
    if now.tzinfo is UTC and now.year >= 1000:
        # The same string as below (every append formats one), without the conversion.
        return now.isoformat(timespec="microseconds")[:-6] + "Z"
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# The last head this process verified or wrote, with the key object its MAC is under. A head
# row equal to it field for field verifies (the check is a deterministic function of those
# fields and the key), so the check's HMAC is skipped; any other row is checked in full.
_known_head: tuple[AuditKey, tuple[Any, ...]] | None = None


def _head_verifies(key: AuditKey, row: Any) -> bool:
    global _known_head
    fields = (row.seq, row.hash, row.key_id, row.mac)
    known = _known_head
    if known is not None and known[0] is key and known[1] == fields:
        return True
    if row.mac is None or not key.verify(head_message(row.seq, row.hash, row.key_id), row.mac):
        return False
    _known_head = (key, fields)
    return True


@dataclass
class AuditBatch:
    """Entries appended in one transaction, not yet chained. ``keys`` comes with the
    appends."""

    pending: list[dict[str, Any]] = field(default_factory=list)
    keys: AuditKeys | None = None

    def flush(self, conn: Connection) -> int:
        """Chain, MAC and write the collected entries; returns how many were written.

        Raises AuditChainBroken when the head is missing (except for the store's init entry)
        or its MAC does not verify, AuditKeyUnavailable when the head's key is not held.
        """
        if not self.pending:
            return 0
        assert self.keys is not None, "audit entries appended without keys"
        row = _HEAD_LOCKED.first(conn)
        if row is None:
            if self.pending[0]["action"] != INIT_ACTION:
                raise AuditChainBroken(0, "the audit head is missing (the log was emptied?)")
            seq, prev, key = 0, GENESIS, self.keys.initial
        else:
            if row.key_id is None:
                raise AuditChainBroken(row.seq, "the audit head names no audit key")
            key = self.keys.get(row.key_id)
            if not _head_verifies(key, row):
                raise AuditChainBroken(
                    row.seq, "the audit head's MAC does not verify: run `rotator audit verify`"
                )
            seq, prev = row.seq, row.hash
        rows = []
        for fields in self.pending:
            seq += 1
            entry = AuditEntry(seq=seq, prev_hash=prev, key_id=key.id, **fields)
            prev = entry_mac(key, entry)
            rows.append(
                {
                    **fields,
                    "seq": seq,
                    "prev_hash": entry.prev_hash,
                    "hash": prev,
                    "key_id": key.id,
                    "details": _DETAILS.encode(fields["details"]),
                }
            )
            key = self.keys.get(next_key_id(fields, key.id))
        _INSERT.many(conn, rows)
        _store_head(conn, row is None, seq, prev, key)
        n = len(self.pending)
        self.pending.clear()
        return n


def _store_head(conn: Connection, first: bool, seq: int, digest: str, key: AuditKey) -> None:
    global _known_head
    values = {
        "head_seq": seq,
        "head_hash": digest,
        "head_key": key.id,
        "head_mac": key.mac(head_message(seq, digest, key.id)),
    }
    # Its MAC was just made under ``key``, so it verifies (also if this transaction rolls
    # back and the stored head stays the older one, which then does not match and is checked).
    _known_head = (key, (seq, digest, key.id, values["head_mac"]))
    if first:
        _INSERT_HEAD.execute(
            conn,
            {"id": 1, "seq": seq, "hash": digest, "key_id": key.id, "mac": values["head_mac"]},
        )
    else:
        _UPDATE_HEAD.execute(conn, values)


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
    keys: AuditKeys,
) -> None:
    """Append one entry in the caller's transaction, so it commits with what it records.

    Without a batch the head row is locked first (SELECT ... FOR UPDATE on PostgreSQL;
    SQLite's write transaction is exclusive already), which serializes appends across
    processes. ``details`` must hold metadata only, never a value. ``keys`` are the audit
    keys of the calling process (the service's).
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
        batch.keys = keys
        batch.pending.append(fields)
        return
    AuditBatch([fields], keys).flush(conn)


def row_to_entry(r: Any) -> AuditEntry:
    """The entry of an ``audit_log`` row."""
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
        key_id=r.key_id,
    )


def entries(
    conn: Connection,
    *,
    tenant: str | None = None,
    credential: str | None = None,
    limit: int | None = None,
    after: int | None = None,
) -> list[AuditEntry]:
    """Entries in seq order, optionally for one tenant / credential, the newest ``limit``;
    with ``after``, the first ``limit`` entries whose seq is above it (a page)."""
    q = select(audit_log)
    if after is not None:
        q = q.where(audit_log.c.seq > after)
        if tenant is not None:
            q = q.where(audit_log.c.tenant == tenant)
        if credential is not None:
            q = q.where(audit_log.c.credential == credential)
        q = q.order_by(audit_log.c.seq)
        if limit is not None:
            q = q.limit(limit)
        return [row_to_entry(r) for r in conn.execute(q).all()]
    if tenant is not None:
        q = q.where(audit_log.c.tenant == tenant)
    if credential is not None:
        q = q.where(audit_log.c.credential == credential)
    if limit is not None:
        sub = q.order_by(audit_log.c.seq.desc()).limit(limit).subquery()
        rows = conn.execute(select(sub).order_by(sub.c.seq)).all()
    else:
        rows = conn.execute(q.order_by(audit_log.c.seq)).all()
    return [row_to_entry(r) for r in rows]


def _iter_all(conn: Connection, batch: int = 5000) -> Iterator[AuditEntry]:
    last = 0
    while True:
        rows = conn.execute(
            select(audit_log).where(audit_log.c.seq > last).order_by(audit_log.c.seq).limit(batch)
        ).all()
        if not rows:
            return
        for r in rows:
            yield row_to_entry(r)
        last = rows[-1].seq


def read_head(conn: Connection) -> Head | None:
    r = conn.execute(_HEAD).first()
    return None if r is None else Head(r.seq, r.hash, r.key_id, r.mac)


def verify_log(
    conn: Connection, keys: AuditKeys, expect_head: tuple[int, str] | None = None
) -> VerifyResult:
    """Verify the whole keyed chain against the head row (and an externally kept head).
    Streams; memory does not grow with the log."""
    return verify(_iter_all(conn), read_head(conn), keys, expect_head)


def tenant_head(conn: Connection, tenant: str) -> tuple[int, str] | None:
    """(seq, MAC hex) of ``tenant``'s newest entry (None: it has none)."""
    r = conn.execute(
        select(audit_log.c.seq, audit_log.c.hash)
        .where(audit_log.c.tenant == tenant)
        .order_by(audit_log.c.seq.desc())
        .limit(1)
    ).first()
    return None if r is None else (int(r.seq), str(r.hash))


def verify_for_tenant(
    conn: Connection, keys: AuditKeys, tenant: str, expect_head: tuple[int, str] | None = None
) -> VerifyResult:
    """Verify the whole chain (it is one chain for every tenant) and report it as ``tenant``
    may see it: ``entries`` is the tenant's own count; ``first_bad_seq`` and ``reason`` only
    when the first bad entry is the tenant's (else None and a reason that names no other
    entry); ``head`` is the tenant's newest entry. ``expect_head`` must be an entry of the
    tenant (what :func:`tenant_head` gave): when no entry of the tenant is at that seq
    (never one, or removed), the result is not ok, saying so, whatever else is stored there
    (so no seq of another tenant can be probed)."""
    own = expect_head is not None and (
        conn.execute(select(audit_log.c.tenant).where(audit_log.c.seq == expect_head[0])).scalar()
        == tenant
    )
    full = verify(_iter_all(conn), read_head(conn), keys, expect_head if own else None)
    count = int(
        conn.execute(
            select(func.count()).select_from(audit_log).where(audit_log.c.tenant == tenant)
        ).scalar()
        or 0
    )
    head = tenant_head(conn, tenant)
    if not full.ok:
        bad_is_own = full.first_bad_seq is not None and (
            conn.execute(
                select(audit_log.c.tenant).where(audit_log.c.seq == full.first_bad_seq)
            ).scalar()
            == tenant
        )
        if bad_is_own:
            return VerifyResult(False, count, full.first_bad_seq, full.reason)
        return VerifyResult(
            False,
            count,
            None,
            "the chain is broken at an entry of another tenant (or a missing one)",
        )
    if expect_head is not None and not own:
        return VerifyResult(
            False, count, None, "no entry of this tenant is at the expected head's seq"
        )
    return VerifyResult(True, count, head=head)


def reseal(conn: Connection, key: AuditKey) -> int:
    """Re-seal a chain written before the keyed chain: verify its unkeyed hashes, then MAC
    every entry under ``key`` and store a keyed head. Returns the number of entries.

    Raises AuditChainBroken when the unkeyed chain does not verify (nothing is changed then):
    re-sealing it would make the tampering unprovable.
    """
    r = conn.execute(_HEAD).first()
    result = verify_unkeyed(_iter_all(conn), None if r is None else (r.seq, r.hash))
    if not result.ok:
        raise AuditChainBroken(
            result.first_bad_seq or 0,
            f"{result.reason}; the existing audit log does not verify, so it is not re-sealed",
        )
    prev = GENESIS
    seq = 0
    for e in list(_iter_all(conn)):
        sealed = AuditEntry(**{**e.to_json(), "prev_hash": prev, "hash": "", "key_id": key.id})
        mac = entry_mac(key, sealed)
        conn.execute(
            update(audit_log)
            .where(audit_log.c.seq == e.seq)
            .values(prev_hash=prev, hash=mac, key_id=key.id)
        )
        prev, seq = mac, e.seq
    _store_head(conn, r is None, seq, prev, key)
    return result.entries


__all__ = [
    "AuditBatch",
    "AuditKeys",
    "append",
    "entries",
    "entry_hash",
    "tenant_head",
    "verify_for_tenant",
    "verify_log",
]
