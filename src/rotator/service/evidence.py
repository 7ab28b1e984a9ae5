"""``rotator report evidence ROTATION_ID``: the evidence record of one rotation.

Who/what/when (the trigger, the actor of its first audit entry, its times), the test result,
the versions, when the replaced value was revoked (or when it is due), the rotation's audit
entries (and its revoke's), and the proof: the keyed chain verifies over those entries up to a
signed checkpoint at or after the last of them, and that checkpoint's Ed25519 signature
verifies with its recorded public key. Without such a checkpoint the record says the entries
are not covered yet and how to make one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, select

from rotator.audit import checkpoints as audit_cp
from rotator.audit import reads as audit_reads
from rotator.audit.chain import AuditEntry, AuditKeys
from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.errors import AuditChainBroken, InvalidInput, NotFound
from rotator.service.credentials import RotatorService
from rotator.store import keys as store_keys
from rotator.store import rotations as store_rot
from rotator.store.schema import revocations

_ROTATION_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
HOW_TO_COVER = "run `rotator audit checkpoint` (a worker also makes one periodically)"


@dataclass(frozen=True, slots=True)
class Proof:
    """``ok``: the chain verifies over the entries and a signed checkpoint covers them."""

    chain_ok: bool
    checkpoint: audit_cp.Checkpoint | None
    signature_ok: bool
    message: str

    @property
    def ok(self) -> bool:
        return self.chain_ok and self.checkpoint is not None and self.signature_ok

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "chain_ok": self.chain_ok,
            "covered": self.checkpoint is not None,
            "signature_ok": self.signature_ok,
            "checkpoint": None if self.checkpoint is None else self.checkpoint.to_json(),
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class Evidence:
    rotation_id: str
    tenant: str
    credential: str
    trigger: str
    started_by: str | None
    started_at: datetime
    finished_at: datetime | None
    result: str  # the rotation's step: finished, rolled_back, failed, or one under way
    error: str | None
    test: str  # passed, failed, not reached
    version: int | None
    previous_version: int | None
    revoked_at: str | None
    revoke_due_at: datetime | None
    entries: list[AuditEntry] = field(default_factory=list)
    proof: Proof | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "rotation_id": self.rotation_id,
            "tenant": self.tenant,
            "credential": self.credential,
            "trigger": self.trigger,
            "started_by": self.started_by,
            "started_at": self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "result": self.result,
            "error": self.error,
            "test": self.test,
            "version": self.version,
            "previous_version": self.previous_version,
            "revoked_at": self.revoked_at,
            "revoke_due_at": None if self.revoke_due_at is None else self.revoke_due_at.isoformat(),
            "entries": [
                {"seq": e.seq, "action": e.action, "ts": e.ts, "hash": e.hash} for e in self.entries
            ],
            "proof": None if self.proof is None else self.proof.to_json(),
        }


def _test_result(row: store_rot.RotationRow, actions: set[str]) -> str:
    if "rotation.test" in actions or row.step == "finished":
        return "passed"
    if row.step in ("rolled_back", "failed") and "rotation.set" in actions:
        return "failed"
    return "not reached"


def _prove(conn: Connection, entries: list[AuditEntry], keys: AuditKeys) -> Proof:
    first, last = entries[0], entries[-1]
    cp = audit_cp.first_covering(conn, last.seq)
    end = cp.seq if cp is not None else last.seq
    wanted = {e.seq: e for e in entries}
    try:
        audit_cp.check_entry(first, keys)
        seen = audit_cp.check_range(
            audit_cp.entries_from(conn, first.seq + 1, end), first, keys, end
        )
        tail = first
        for e in seen:
            if e.seq in wanted and e != wanted[e.seq]:
                raise AuditChainBroken(e.seq, "it changed while the record was read")
            tail = e
    except AuditChainBroken as exc:
        return Proof(False, cp, False, f"the keyed chain does not verify: {exc}")
    if cp is None:
        return Proof(
            True,
            None,
            False,
            f"the keyed chain verifies over entries {first.seq}..{last.seq}; they are not "
            f"covered by a signed checkpoint yet: {HOW_TO_COVER}",
        )
    raw = audit_cp.trusted_keys(keys).get(cp.key_id)  # derived, never read from the store
    if tail.hash != cp.head_hash or raw is None or not cp.verifies(raw):
        return Proof(True, cp, False, f"checkpoint {cp.seq} does not verify with key {cp.key_id}")
    return Proof(
        True,
        cp,
        True,
        f"the keyed chain verifies over entries {first.seq}..{cp.seq} and checkpoint {cp.seq} "
        f"signed by key {cp.key_id} at {cp.created_at} verifies",
    )


async def evidence(
    svc: RotatorService, rotation_id: str, principal: Principal = LOCAL_PRINCIPAL
) -> Evidence:
    """The evidence record of rotation ``rotation_id`` (Action.REPORT_READ on its credential).
    A rotation of another tenant is NotFound, like one that does not exist."""
    if not _ROTATION_ID.fullmatch(rotation_id):
        raise InvalidInput("ROTATION_ID must be a rotation id (letters, digits and dashes)")
    missing = NotFound(f"no rotation {rotation_id!r}")

    def find(conn: Connection) -> tuple[store_rot.RotationRow, str] | None:
        row = store_rot.get_rotation(conn, rotation_id)
        if row is None:
            return None
        return row, store_keys.tenant_name(conn, row.tenant_id)

    found = await svc._read(find)
    if found is None or not (principal.owner or found[1] == principal.tenant):
        raise missing
    row, tenant = found
    await svc.authorize(principal, Action.REPORT_READ, row.credential)
    keys = svc.kernel.audit_keys

    def read(conn: Connection) -> Evidence:
        own = audit_reads.rotation_entries(conn, rotation_id, tenant)
        previous = next(
            (e.details.get("previous_version") for e in own if e.action == "rotation.complete"),
            None,
        )
        revoke: list[AuditEntry] = []
        due: datetime | None = None
        if isinstance(previous, int) and own:
            revoke = audit_reads.credential_actions_after(
                conn, tenant, row.credential, "rotation.revoke", own[-1].seq
            )
            revoke = [e for e in revoke if e.details.get("version") == previous][:1]
            due = conn.execute(
                select(revocations.c.due_at).where(
                    and_(
                        revocations.c.credential_id == row.credential_id,
                        revocations.c.version == previous,
                    )
                )
            ).scalar_one_or_none()
        entries = sorted(own + revoke, key=lambda e: e.seq)
        return Evidence(
            rotation_id=row.id,
            tenant=tenant,
            credential=row.credential,
            trigger=row.trigger,
            started_by=own[0].actor if own else None,
            started_at=row.created_at,
            finished_at=row.finished_at,
            result=row.step,
            error=row.error,
            test=_test_result(row, {e.action for e in own}),
            version=row.version,
            previous_version=previous if isinstance(previous, int) else None,
            revoked_at=revoke[0].ts if revoke else None,
            revoke_due_at=due,
            entries=entries,
            proof=_prove(conn, entries, keys) if entries else None,
        )

    return await svc._read(read)


__all__ = ["Evidence", "Proof", "evidence"]
