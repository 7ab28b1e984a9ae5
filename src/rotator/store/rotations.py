"""Store access for rotations (intents), per-credential locks and the revocation queue.

All functions take the caller's transaction. Terminal steps: finished, rolled_back, failed.

Ownership is fenced: a rotation row carries its owner's token (``fence``), new on every claim
and takeover. Step updates and lease renewals match the row by id AND token; a step update that
matches no row raises LostOwnership, which rolls back the caller's transaction, so a stalled
former owner can never write a rotation's state (nor, in the same transaction, move stages or
release the lock). In a transaction that carries a :class:`StepBatch` (the engine's
group-commit writer installs one) step updates are sent together when it is flushed, before
the commit; LostOwnership then names the first rotation whose update matched no row.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Executable,
    Integer,
    Text,
    bindparam,
    case,
    delete,
    func,
    insert,
    null,
    or_,
    select,
    update,
)

from rotator.domain.model import Stage
from rotator.errors import ConcurrentModification, LostOwnership
from rotator.store.credentials import cached_stage_moves
from rotator.store.prepared import Prepared
from rotator.store.schema import credential_locks, credentials, revocations, rotations, versions

ACTIVE_STEPS = ("claimed", "created", "set", "tested")
TERMINAL_STEPS = ("finished", "rolled_back", "failed")

# Statements on the rotation hot path are built once: building Core constructs per call costs
# more CPU than SQLite spends executing them. Those run for every rotation are also compiled
# once per dialect and sent at driver level (store/prepared.py).
_LOCK_HOLDER = Prepared(
    select(credential_locks.c.rotation_id).where(
        credential_locks.c.credential_id == bindparam("b_cid")
    )
)
_LOCK_KEYS = ("credential_id", "rotation_id", "acquired_at")


@functools.cache
def _insert_lock_if_free(dialect: str) -> Prepared:
    return Prepared(_insert_lock_statement(dialect), keys=_LOCK_KEYS)


def _insert_lock_statement(dialect: str) -> Executable:
    # Built once, for the dialect in use only: importing the PostgreSQL dialect would cost
    # every SQLite CLI call a noticeable part of its start-up.
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return (
            pg_insert(credential_locks)
            .on_conflict_do_nothing()
            .returning(credential_locks.c.rotation_id)
        )
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return (
        sqlite_insert(credential_locks)
        .on_conflict_do_nothing()
        .returning(credential_locks.c.rotation_id)
    )


_RELEASE_LOCK = Prepared(
    delete(credential_locks).where(
        credential_locks.c.credential_id == bindparam("b_cid"),
        credential_locks.c.rotation_id == bindparam("b_rid"),
    )
)
_ROTATION_KEYS = (
    "id",
    "credential_id",
    "tenant_id",
    "credential",
    "batch_id",
    "trigger",
    "priority",
    "version",
    "step",
    "grace_s",
    "attempts",
    "error",
    "owner",
    "fence",
    "lease_expires_at",
    "created_at",
    "updated_at",
    "finished_at",
)
_INSERT_ROTATION = Prepared(insert(rotations), keys=_ROTATION_KEYS)
_ROTATION = select(rotations).where(rotations.c.id == bindparam("b_id"))
# Every step write has this one shape (a NULL parameter keeps the column as it is), so the step
# writes of a group commit go to the database as one executemany.
_TERMINAL = bindparam("b_terminal", type_=Boolean)
_NOW = bindparam("b_now", type_=rotations.c.updated_at.type)
_SET_STEP_CORE = (
    update(rotations)
    .where(rotations.c.id == bindparam("b_id"), rotations.c.fence == bindparam("b_fence"))
    .values(
        step=bindparam("b_step", type_=rotations.c.step.type),
        updated_at=_NOW,
        version=func.coalesce(bindparam("b_version", type_=Integer), rotations.c.version),
        error=func.coalesce(bindparam("b_error", type_=Text), rotations.c.error),
        attempts=func.coalesce(bindparam("b_attempts", type_=Integer), rotations.c.attempts),
        lease_expires_at=case(
            (_TERMINAL, null()),
            else_=func.coalesce(
                bindparam("b_lease", type_=rotations.c.lease_expires_at.type),
                rotations.c.lease_expires_at,
            ),
        ),
        finished_at=case((_TERMINAL, _NOW), else_=rotations.c.finished_at),
    )
)
_SET_STEP = Prepared(_SET_STEP_CORE)
_FENCES = select(rotations.c.id, rotations.c.fence).where(
    rotations.c.id.in_(bindparam("b_ids", expanding=True))
)
_RENEW = (
    update(rotations)
    .where(
        rotations.c.id.in_(bindparam("b_ids", expanding=True)),
        rotations.c.fence.in_(bindparam("b_fences", expanding=True)),
        rotations.c.step.in_(ACTIVE_STEPS),
    )
    .values(lease_expires_at=bindparam("b_until"))
)
_TAKE_OVER_COND = (
    rotations.c.id == bindparam("b_id"),
    # IS: a row from before fencing (migration 0005) has no token.
    rotations.c.owner.is_not_distinct_from(bindparam("b_owner")),
    rotations.c.fence.is_not_distinct_from(bindparam("b_fence")),
    rotations.c.step.in_(ACTIVE_STEPS),
)
_TAKE_OVER_VALUES: dict[str, Any] = {
    "owner": bindparam("b_new_owner"),
    "fence": bindparam("b_new_fence"),
    "lease_expires_at": bindparam("b_lease"),
    "updated_at": bindparam("b_now"),
}
_TAKE_OVER_DEAD = update(rotations).where(*_TAKE_OVER_COND).values(**_TAKE_OVER_VALUES)
_TAKE_OVER = _TAKE_OVER_DEAD.where(rotations.c.lease_expires_at < bindparam("b_now"))
# Also a lease ending after ``b_horizon`` (see stale_rotations): taken by a clock far ahead.
_TAKE_OVER_AHEAD = _TAKE_OVER_DEAD.where(
    or_(
        rotations.c.lease_expires_at < bindparam("b_now"),
        rotations.c.lease_expires_at > bindparam("b_horizon"),
    )
)
_MARK_VERSION_CORE = update(versions).where(
    versions.c.credential_id == bindparam("b_cid"), versions.c.number == bindparam("b_no")
)
_MARK_VERSION = Prepared(_MARK_VERSION_CORE, keys=("b_cid", "b_no", "stage", "staged_at"))
_MARK_VERSION_FROM = _MARK_VERSION_CORE.where(
    versions.c.stage.in_(bindparam("b_from", expanding=True))
)
_INSERT_REVOCATION = Prepared(
    insert(revocations), keys=("credential_id", "version", "due_at", "attempts", "last_error")
)
_DUE_REVOCATIONS = (
    select(revocations, credentials.c.tenant_id, credentials.c.name)
    .join(credentials, credentials.c.id == revocations.c.credential_id)
    .where(revocations.c.due_at <= bindparam("b_now"))
    .order_by(revocations.c.due_at)
    .limit(bindparam("b_limit"))
)
_DUE_REVOCATIONS_OF = _DUE_REVOCATIONS.where(
    revocations.c.credential_id.in_(bindparam("b_cids", expanding=True))
)
_EXPIRE_PREVIOUS = Prepared(
    update(versions)
    .where(
        versions.c.credential_id == bindparam("b_cid"),
        versions.c.stage == Stage.PREVIOUS.value,
    )
    .values(expires_at=bindparam("b_now"))
)
_REVOCATIONS_DUE_NOW = Prepared(
    update(revocations)
    .where(
        revocations.c.credential_id == bindparam("b_cid"),
        revocations.c.due_at > bindparam("b_now"),
    )
    .values(due_at=bindparam("b_now"))
)
_LAST_REVOCATION_DUE = (
    select(revocations.c.due_at)
    .where(revocations.c.credential_id == bindparam("b_cid"))
    .order_by(revocations.c.due_at.desc())
    .limit(1)
)
_NEXT_REVOCATION_DUE = select(revocations.c.due_at).order_by(revocations.c.due_at).limit(1)
_FINISH_REVOCATION = delete(revocations).where(revocations.c.id == bindparam("b_id"))
_RETRY_REVOCATION = (
    update(revocations)
    .where(revocations.c.id == bindparam("b_id"))
    .values(
        attempts=revocations.c.attempts + 1,
        last_error=bindparam("b_error"),
        due_at=bindparam("b_due"),
    )
)


@dataclass(frozen=True, slots=True)
class RotationRow:
    id: str
    credential_id: int
    tenant_id: int
    credential: str
    batch_id: str | None
    trigger: str
    priority: int
    version: int | None
    step: str
    grace_s: int
    attempts: int
    error: str | None
    owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    fence: str | None = None

    @property
    def terminal(self) -> bool:
        return self.step in TERMINAL_STEPS


def _row(r: object) -> RotationRow:
    return RotationRow(**{f: getattr(r, f) for f in RotationRow.__slots__})


def lock_holder(conn: Connection, credential_id: int) -> str | None:
    """The rotation id holding the credential's lock, or None."""
    row = _LOCK_HOLDER.first(conn, {"b_cid": credential_id})
    return None if row is None else str(row[0])


def try_lock(conn: Connection, credential_id: int, rotation_id: str, now: datetime) -> str | None:
    """Take the credential's lock for ``rotation_id``; return the holder's id if already held.

    No savepoint needed: the insert skips a held lock (ON CONFLICT DO NOTHING; on PostgreSQL
    it first waits for a concurrent insert of the same lock to commit or roll back), and a
    lock freed between the insert and the read of its holder is tried again (three times,
    then ConcurrentModification).
    """
    params = {"credential_id": credential_id, "rotation_id": rotation_id, "acquired_at": now}
    for _ in range(3):
        if _insert_lock_if_free(conn.dialect.name).first(conn, params) is not None:
            return None
        holder = lock_holder(conn, credential_id)
        if holder is not None:
            return holder
    raise ConcurrentModification("the credential's lock keeps changing hands")


def release_lock(conn: Connection, credential_id: int, rotation_id: str) -> None:
    _RELEASE_LOCK.execute(conn, {"b_cid": credential_id, "b_rid": rotation_id})


def insert_rotation(
    conn: Connection,
    *,
    id: str,
    credential_id: int,
    tenant_id: int,
    credential: str,
    batch_id: str | None,
    trigger: str,
    priority: int,
    grace_s: int,
    owner: str,
    fence: str,
    lease_expires_at: datetime,
    now: datetime,
    version: int | None = None,
) -> None:
    """Insert a rotation owned by ``owner`` under the token ``fence``; with ``version`` its
    intent is complete (step ``created``)."""
    _INSERT_ROTATION.execute(
        conn,
        {
            "id": id,
            "credential_id": credential_id,
            "tenant_id": tenant_id,
            "credential": credential,
            "batch_id": batch_id,
            "trigger": trigger,
            "priority": priority,
            "version": version,
            "step": "claimed" if version is None else "created",
            "grace_s": grace_s,
            "attempts": 0,
            "error": None,
            "owner": owner,
            "fence": fence,
            "lease_expires_at": lease_expires_at,
            "created_at": now,
            "updated_at": now,
            "finished_at": None,
        },
    )


def get_rotation(conn: Connection, rotation_id: str) -> RotationRow | None:
    r = conn.execute(_ROTATION, {"b_id": rotation_id}).first()
    return None if r is None else _row(r)


STEP_BATCH_KEY = "rotator.step_batch"


@dataclass
class StepBatch:
    """The step writes of one transaction, not yet sent; :func:`set_step` adds to it while
    ``conn.info[STEP_BATCH_KEY]`` holds it. Flush it before the commit."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def flush(self, conn: Connection) -> None:
        """Send the collected step writes (one executemany). Raises LostOwnership naming the
        first rotation, in the order written, whose write matched no row: the transaction
        must then roll back. Empty afterwards, whatever happened."""
        rows, self.rows = self.rows, []
        if not rows:
            return
        if len(rows) > 1 and conn.dialect.supports_sane_multi_rowcount:
            matched = _SET_STEP.many(conn, rows)
        else:
            matched = sum(_SET_STEP.execute(conn, r) for r in rows)
        if matched == len(rows):
            return
        # Only some matched: find which. A row this transaction updated is locked until it
        # ends and no token ever comes back, so what is read here is what the update found.
        ids = list(dict.fromkeys(r["b_id"] for r in rows))
        held: dict[str, str | None] = {}
        for i in range(0, len(ids), 500):
            held.update((r.id, r.fence) for r in conn.execute(_FENCES, {"b_ids": ids[i : i + 500]}))
        for r in rows:
            if held.get(r["b_id"]) != r["b_fence"]:
                raise LostOwnership(r["b_id"])
        raise ConcurrentModification(f"{len(rows) - matched} of {len(rows)} step writes were lost")


def set_step(
    conn: Connection,
    rotation_id: str,
    step: str,
    now: datetime,
    *,
    fence: str,
    version: int | None = None,
    error: str | None = None,
    attempts: int | None = None,
    lease_expires_at: datetime | None = None,
) -> None:
    """Record the rotation's step, if it is still owned under ``fence``.

    Raises LostOwnership when no row matched (another process took the rotation over, or it
    is gone): the caller's transaction must then roll back, with whatever else it wrote. With
    a :class:`StepBatch` in the transaction the write (and the LostOwnership) comes when the
    batch is flushed, before the commit.
    """
    params: dict[str, Any] = {
        "b_id": rotation_id,
        "b_fence": fence,
        "b_step": step,
        "b_now": now,
        "b_version": version,
        "b_error": error,
        "b_attempts": attempts,
        "b_lease": lease_expires_at,
        "b_terminal": step in TERMINAL_STEPS,
    }
    batch: StepBatch | None = conn.info.get(STEP_BATCH_KEY)
    if batch is not None:
        batch.rows.append(params)
    elif _SET_STEP.execute(conn, params) != 1:
        raise LostOwnership(rotation_id)


def renew_leases(conn: Connection, fences: Mapping[str, str], until: datetime) -> set[str]:
    """Extend to ``until`` the lease of every active rotation still held under its token
    (``fences``: rotation id -> token). Returns the ids held no longer (taken over, or gone);
    a rotation its owner already ended is still held, not lost. Never raises LostOwnership:
    one lost rotation must not stop the others' renewal."""
    if not fences:
        return set()
    ids, tokens = list(fences), list(fences.values())
    conn.execute(_RENEW, {"b_ids": ids, "b_fences": tokens, "b_until": until})
    held = conn.execute(_FENCES, {"b_ids": ids}).all()
    return set(ids) - {rid for rid, fence in held if fence == fences[rid]}


def stale_rotations(
    conn: Connection,
    now: datetime,
    dead_owners: list[str] | None = None,
    horizon: datetime | None = None,
) -> list[RotationRow]:
    """Active rotations whose lease ran out (or whose owner is known dead), oldest first.
    With ``horizon``, also those whose lease ends after it: no owner grants such a lease by a
    clock that agrees with ours, so its clock is (or was, before a step back) far ahead."""
    cond = rotations.c.lease_expires_at < now
    if horizon is not None:
        cond = or_(cond, rotations.c.lease_expires_at > horizon)
    if dead_owners:
        cond = or_(cond, rotations.c.owner.in_(dead_owners))
    rows = conn.execute(
        select(rotations)
        .where(rotations.c.step.in_(ACTIVE_STEPS), cond)
        .order_by(rotations.c.created_at)
    ).all()
    return [_row(r) for r in rows]


def active_owners(conn: Connection) -> list[str]:
    return [
        o
        for o in conn.execute(
            select(rotations.c.owner).distinct().where(rotations.c.step.in_(ACTIVE_STEPS))
        ).scalars()
        if o
    ]


def take_over(
    conn: Connection,
    row: RotationRow,
    owner: str,
    fence: str,
    lease_expires_at: datetime,
    now: datetime,
    *,
    owner_dead: bool = False,
    horizon: datetime | None = None,
) -> bool:
    """Claim the stale rotation ``row`` (as read) for ``owner`` under the new token ``fence``.

    Matches only while the row still has the owner and token that were read, is active, and
    its lease has run out at ``now`` or ends after ``horizon`` when given (unless
    ``owner_dead``: its process is known to be gone), so an owner that renewed its lease in
    between keeps it. False if the claim did not match.
    """
    params = {
        "b_id": row.id,
        "b_owner": row.owner,
        "b_fence": row.fence,
        "b_new_owner": owner,
        "b_new_fence": fence,
        "b_lease": lease_expires_at,
        "b_now": now,
    }
    stmt = _TAKE_OVER_DEAD if owner_dead else _TAKE_OVER
    if horizon is not None and not owner_dead:
        stmt = _TAKE_OVER_AHEAD
        params["b_horizon"] = horizon
    res = conn.execute(stmt, params)
    return res.rowcount == 1


def mark_version(
    conn: Connection,
    credential_id: int,
    number: int,
    stage: Stage,
    now: datetime,
    *,
    only_from: tuple[Stage, ...] | None = None,
) -> bool:
    """Set a version's stage (only if it is in ``only_from``); True if it changed."""
    params: dict[str, object] = {
        "b_cid": credential_id,
        "b_no": number,
        "stage": stage.value,
        "staged_at": now,
    }
    if only_from is None:
        moved = _MARK_VERSION.execute(conn, params) == 1
    else:
        params["b_from"] = [s.value for s in only_from]
        moved = conn.execute(_MARK_VERSION_FROM, params).rowcount == 1
    if moved:
        cached_stage_moves(conn, credential_id, {number: stage.value})
    return moved


def enqueue_revocation(
    conn: Connection, credential_id: int, version: int, due_at: datetime
) -> None:
    """Queue ``version`` for revocation at ``due_at``. Called once per demoted version (in the
    transaction that demotes it), so the unique key never collides."""
    _INSERT_REVOCATION.execute(
        conn,
        {
            "credential_id": credential_id,
            "version": version,
            "due_at": due_at,
            "attempts": 0,
            "last_error": None,
        },
    )


@dataclass(frozen=True, slots=True)
class RevocationRow:
    id: int
    credential_id: int
    tenant_id: int
    credential: str
    version: int
    due_at: datetime
    attempts: int


def due_revocations(
    conn: Connection, now: datetime, limit: int = 500, credential_ids: list[int] | None = None
) -> list[RevocationRow]:
    params: dict[str, Any] = {"b_now": now, "b_limit": limit}
    if credential_ids is None:
        rows = conn.execute(_DUE_REVOCATIONS, params).all()
    else:
        rows = conn.execute(_DUE_REVOCATIONS_OF, {**params, "b_cids": credential_ids}).all()
    return [
        RevocationRow(
            id=r.id,
            credential_id=r.credential_id,
            tenant_id=r.tenant_id,
            credential=r.name,
            version=r.version,
            due_at=r.due_at,
            attempts=r.attempts,
        )
        for r in rows
    ]


def revoke_all_now(conn: Connection, credential_id: int, now: datetime) -> None:
    """Emergency: every PREVIOUS version of the credential expires now and its queued
    revocation falls due now, not only the one just demoted."""
    params = {"b_cid": credential_id, "b_now": now}
    _EXPIRE_PREVIOUS.execute(conn, params)
    _REVOCATIONS_DUE_NOW.execute(conn, params)


def last_revocation_due(conn: Connection, credential_id: int) -> datetime | None:
    """When the last queued revocation of a credential falls due, or None."""
    value: datetime | None = conn.execute(
        _LAST_REVOCATION_DUE, {"b_cid": credential_id}
    ).scalar_one_or_none()
    return value


def next_revocation_due(conn: Connection) -> datetime | None:
    value: datetime | None = conn.execute(_NEXT_REVOCATION_DUE).scalar_one_or_none()
    return value


def finish_revocation(conn: Connection, revocation_id: int) -> None:
    conn.execute(_FINISH_REVOCATION, {"b_id": revocation_id})


def retry_revocation(conn: Connection, revocation_id: int, error: str, due_at: datetime) -> None:
    conn.execute(_RETRY_REVOCATION, {"b_id": revocation_id, "b_error": error, "b_due": due_at})


@dataclass(frozen=True, slots=True)
class PendingRevocation:
    """A PREVIOUS value still queued for revocation: still valid on its target."""

    credential: str
    version: int
    attempts: int
    last_error: str | None


def pending_revocations(conn: Connection, credential_ids: list[int]) -> list[PendingRevocation]:
    """Every queued (not yet done) revocation of these credentials, by name and version."""
    if not credential_ids:
        return []
    rows = conn.execute(
        select(
            credentials.c.name,
            revocations.c.version,
            revocations.c.attempts,
            revocations.c.last_error,
        )
        .join(credentials, credentials.c.id == revocations.c.credential_id)
        .where(revocations.c.credential_id.in_(credential_ids))
        .order_by(credentials.c.name, revocations.c.version)
    ).all()
    return [PendingRevocation(r.name, r.version, r.attempts, r.last_error) for r in rows]
