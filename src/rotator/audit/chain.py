"""The audit hash chain: canonical encoding and verification. Pure; no I/O.

Each entry's hash is SHA-256 over the canonical JSON of its fields plus the previous entry's
hash, so changing, deleting, inserting or reordering any entry breaks every hash after it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit entry. ``details`` holds metadata only; never a value or a value-derived string."""

    seq: int
    ts: str
    tenant: str
    actor: str
    action: str
    credential: str | None
    rotation_id: str | None
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "tenant": self.tenant,
            "actor": self.actor,
            "action": self.action,
            "credential": self.credential,
            "rotation_id": self.rotation_id,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, ASCII only. Stable across processes and DBs."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def entry_hash(e: AuditEntry) -> str:
    """SHA-256 (hex) of the entry's fields and the previous hash."""
    body = {
        "seq": e.seq,
        "ts": e.ts,
        "tenant": e.tenant,
        "actor": e.actor,
        "action": e.action,
        "credential": e.credential,
        "rotation_id": e.rotation_id,
        "details": e.details,
        "prev_hash": e.prev_hash,
    }
    return hashlib.sha256(canonical(body).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    reason: str | None = None


def verify(entries: Iterable[AuditEntry], head: tuple[int, str] | None) -> VerifyResult:
    """Check that entries (in seq order) form an unbroken chain ending at ``head``.

    Names the first entry that does not verify: a changed entry fails its own hash, a deleted
    one leaves a gap in seq, an inserted or reordered one breaks seq order or the prev link.
    """
    prev_hash = GENESIS
    expected_seq = 1
    n = 0
    for e in entries:
        n += 1
        if e.seq != expected_seq:
            bad = min(e.seq, expected_seq)
            return VerifyResult(False, n, bad, f"expected entry {expected_seq}, found {e.seq}")
        if e.prev_hash != prev_hash:
            return VerifyResult(False, n, e.seq, "does not link to the entry before it")
        if entry_hash(e) != e.hash:
            return VerifyResult(False, n, e.seq, "its content does not match its hash")
        prev_hash = e.hash
        expected_seq += 1
    last_seq = expected_seq - 1
    if head is not None and (head[0] != last_seq or head[1] != prev_hash):
        if head[0] > last_seq:
            return VerifyResult(
                False, n, last_seq + 1, f"entries {last_seq + 1}..{head[0]} are missing"
            )
        return VerifyResult(False, n, head[0], "the chain head does not match the last entry")
    return VerifyResult(True, n)
