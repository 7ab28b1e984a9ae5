"""``rotator report evidence ROTATION_ID``: the evidence record of one rotation.

Who/what/when (the trigger, who requested it, the actor of its first audit entry, its times),
the test result, the versions, when the replaced value was revoked (or when it is due), the
rotation's audit entries (and its revoke's), and the proof: the keyed chain verifies over those
entries up to a signed checkpoint at or after the last of them, and that checkpoint's Ed25519
signature verifies with its recorded public key. Without such a checkpoint the record says the
entries are not covered yet and how to make one.

The headline facts (trigger, requester, result, error, times, version) come from the
rotation's keyed audit entries (``rotation.create`` and the ending ``rotation.complete`` /
``rotation.rollback`` / ``rotation.failed``), never from the ``rotations`` row, which anyone
with the database can edit: where the row disagrees with them the proof fails, naming the
field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, select

from rotator.audit import checkpoints as audit_cp
from rotator.audit import reads as audit_reads
from rotator.audit.chain import AuditEntry, AuditKeys
from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.errors import AuditChainBroken, InvalidInput, NotFound, RotationError
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
    # False when the rotations row disagrees with the signed entries (the message names the
    # fields); the record then proves nothing, checkpoint or not.
    row_ok: bool = True

    @property
    def ok(self) -> bool:
        return self.chain_ok and self.row_ok and self.checkpoint is not None and self.signature_ok

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "chain_ok": self.chain_ok,
            "row_ok": self.row_ok,
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
    requested_by: str | None  # who asked for the rotation (a principal, or "scheduler")
    started_by: str | None  # the actor of its first entry: the engine
    started_at: datetime | None
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
            "requested_by": self.requested_by,
            "started_by": self.started_by,
            "started_at": None if self.started_at is None else self.started_at.isoformat(),
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


def _test_result(result: str, actions: set[str]) -> str:
    if "rotation.test" in actions or result == "finished":
        return "passed"
    if result in ("rolled_back", "failed") and "rotation.set" in actions:
        return "failed"
    return "not reached"


_TERMINAL = ("finished", "rolled_back", "failed")
_STEP_OF = {"rotation.create": "created", "rotation.set": "set", "rotation.test": "tested"}


@dataclass(frozen=True, slots=True)
class _Signed:
    """A rotation's facts as its keyed audit entries state them (None: not stated)."""

    trigger: str | None = None
    requested_by: str | None = None
    version: int | None = None
    started_at: datetime | None = None
    started_ts: str | None = None  # the create entry's own time (entries before started_at)
    result: str | None = None
    error: str | None = None
    finished_at: datetime | None = None
    finished_ts: str | None = None  # the ending entry's own time (before finished_at)


def _time(v: Any) -> datetime | None:
    """A time as an entry states it (an ISO detail, or the entry's own ``ts``); None when
    absent or unreadable."""
    if not isinstance(v, str):
        return None
    try:
        t = datetime.fromisoformat(v.removesuffix("Z"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _signed(own: list[AuditEntry]) -> _Signed:
    create = next((e for e in own if e.action == "rotation.create"), None)
    d: dict[str, Any] = dict(create.details) if create is not None else {}
    step: str | None = None
    end: AuditEntry | None = None
    for e in own:
        if e.action in _STEP_OF and end is None:
            step = _STEP_OF[e.action]
        # rotation.rollback is also the audit of the connector's rollback call; the entry that
        # ends the rotation is the one that records whether the target was touched.
        if e.action in ("rotation.complete", "rotation.failed") or (
            e.action == "rotation.rollback" and "target_touched" in e.details
        ):
            end = e
    result, error, finished = step, None, None
    if end is not None:
        result = {"rotation.complete": "finished", "rotation.rollback": "rolled_back"}.get(
            end.action, "failed"
        )
        err = end.details.get("error")
        error = err if isinstance(err, str) else None
        finished = _time(end.details.get("finished_at"))
    version = d.get("version")
    return _Signed(
        trigger=d.get("trigger") if isinstance(d.get("trigger"), str) else None,
        requested_by=d.get("requested_by") if isinstance(d.get("requested_by"), str) else None,
        version=version if isinstance(version, int) else None,
        started_at=_time(d.get("started_at")),
        started_ts=None if create is None else create.ts,
        result=result,
        error=error,
        finished_at=finished,
        finished_ts=None if end is None else end.ts,
    )


def _disagreements(row: store_rot.RotationRow, signed: _Signed) -> list[str]:
    """The fields where the rotations row says something else than the signed entries."""
    pairs: list[tuple[str, Any, Any]] = [("trigger", row.trigger, signed.trigger)]
    pairs.append(("version", row.version, signed.version))
    if signed.started_at is not None:
        pairs.append(("started_at", row.created_at, signed.started_at))
    if row.step in _TERMINAL or signed.result in _TERMINAL:
        # Under way on both sides, the two may be a step apart while it runs: not compared.
        pairs.append(("result", row.step, signed.result or "no result"))
        pairs.append(("error", row.error, signed.error))
        if signed.finished_at is not None or signed.result not in _TERMINAL:
            pairs.append(("finished_at", row.finished_at, signed.finished_at))
    return [
        f"{name}: the rotations row says {_say(r)}, the signed log says {_say(s)}"
        for name, r, s in pairs
        if r != s
    ]


def _say(v: Any) -> str:
    if v is None:
        return "nothing"
    return v.isoformat() if isinstance(v, datetime) else str(v)


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
    PermissionDenied (audited, naming no rotation) when the principal's role may not
    REPORT_READ at all, before anything is read. A rotation of another tenant, or of a
    credential outside the principal's scope, is NotFound with the text of one that does not
    exist; the latter is audited as ``access.denied`` (the credential and the rotation id,
    for the tenant's own auditors)."""
    if not _ROTATION_ID.fullmatch(rotation_id):
        raise InvalidInput("ROTATION_ID must be a rotation id (letters, digits and dashes)")
    await svc.authorize_some(principal, Action.REPORT_READ)
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
    if not principal.may(Action.REPORT_READ, row.credential):
        await svc.deny_as_missing(
            principal, Action.REPORT_READ, row.credential, missing, rotation=rotation_id
        )
    keys = svc.kernel.audit_keys

    def read(conn: Connection) -> Evidence | None:
        # Row, entries, row again: the step and its entry commit together, so when the row
        # did not move between the two reads the entries read in between agree with it.
        row = store_rot.get_rotation(conn, rotation_id)
        own = audit_reads.rotation_entries(conn, rotation_id, tenant)
        again = store_rot.get_rotation(conn, rotation_id)
        if row is None or again is None or again.step != row.step:
            return None
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
        signed = _signed(own)
        proof = _prove(conn, entries, keys) if entries else None
        if proof is None:
            proof = Proof(False, None, False, "the signed log holds no entry of this rotation")
        elif proof.chain_ok:
            differ = _disagreements(row, signed)
            if differ:
                proof = Proof(True, proof.checkpoint, proof.signature_ok, "; ".join(differ), False)
        started = signed.started_at or _time(signed.started_ts)
        return Evidence(
            rotation_id=row.id,
            tenant=tenant,
            credential=row.credential,
            trigger=signed.trigger or "-",
            requested_by=signed.requested_by,
            started_by=own[0].actor if own else None,
            started_at=started,
            finished_at=signed.finished_at or _time(signed.finished_ts),
            result=signed.result or "-",
            error=signed.error,
            test=_test_result(signed.result or "", {e.action for e in own}),
            version=signed.version,
            previous_version=previous if isinstance(previous, int) else None,
            revoked_at=revoke[0].ts if revoke else None,
            revoke_due_at=due,
            entries=entries,
            proof=proof,
        )

    for _ in range(5):
        ev = await svc._read(read)
        if ev is not None:
            return ev
    raise RotationError(f"rotation {rotation_id} kept moving while its record was read")


__all__ = ["Evidence", "Proof", "evidence"]
