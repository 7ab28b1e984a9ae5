"""Store access for rotations (intents), per-credential locks and the revocation queue.

All functions take the caller's transaction. Terminal steps: finished, rolled_back, failed.

Ownership is fenced: a rotation row carries its owner's token (``fence``), new on every claim
and takeover. Step updates and lease renewals match the row by id AND token; a step update that
matches no row raises LostOwnership, which rolls back the caller's transaction, so a stalled
former owner can never write a rotation's state (nor, in the same transaction, move stages or
release the lock).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Executable, bindparam, delete, insert, or_, select, update

from rotator.domain.model import Stage
from rotator.errors import ConcurrentModification, LostOwnership
from rotator.store.schema import credential_locks, credentials, revocations, rotations, versions

ACTIVE_STEPS = ("claimed", "created", "set", "tested")
TERMINAL_STEPS = ("finished", "rolled_back", "failed")

# Statements on the rotation hot path are built once: building Core constructs per call costs
# more CPU than SQLite spends executing them.
_LOCK_HOLDER = select(credential_locks.c.rotation_id).where(
    credential_locks.c.credential_id == bindparam("b_cid")
)
_INSERT_LOCK = insert(credential_locks)


@functools.cache
def _insert_lock_if_free(dialect: str) -> Executable:
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


_RELEASE_LOCK = delete(credential_locks).where(
    credential_locks.c.credential_id == bindparam("b_cid"),
    credential_locks.c.rotation_id == bindparam("b_rid"),
)
_INSERT_ROTATION = insert(rotations)
_UPDATE_ROTATION = update(rotations).where(
    rotations.c.id == bindparam("b_id"), rotations.c.fence == bindparam("b_fence")
)
_MARK_VERSION = update(versions).where(
    versions.c.credential_id == bindparam("b_cid"), versions.c.number == bindparam("b_no")
)
_MARK_VERSION_FROM = _MARK_VERSION.where(versions.c.stage.in_(bindparam("b_from", expanding=True)))
_INSERT_REVOCATION = insert(revocations)


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
    return conn.execute(_LOCK_HOLDER, {"b_cid": credential_id}).scalar_one_or_none()


def try_lock(conn: Connection, credential_id: int, rotation_id: str, now: datetime) -> str | None:
    """Take the credential's lock for ``rotation_id``; return the holder's id if already held.

    Callers run this inside a savepoint: on PostgreSQL a concurrent insert blocks until the
    other transaction ends, then fails on the primary key, which the caller treats as held.
    """
    params = {"credential_id": credential_id, "rotation_id": rotation_id, "acquired_at": now}
    for _ in range(3):
        if conn.execute(_insert_lock_if_free(conn.dialect.name), params).first() is not None:
            return None
        holder = lock_holder(conn, credential_id)
        if holder is not None:
            return holder
    raise ConcurrentModification("the credential's lock keeps changing hands")


def release_lock(conn: Connection, credential_id: int, rotation_id: str) -> None:
    conn.execute(_RELEASE_LOCK, {"b_cid": credential_id, "b_rid": rotation_id})


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
    conn.execute(
        _INSERT_ROTATION,
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
    r = conn.execute(select(rotations).where(rotations.c.id == rotation_id)).first()
    return None if r is None else _row(r)


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
    is gone): the caller's transaction must then roll back, with whatever else it wrote.
    """
    values: dict[str, object] = {
        "b_id": rotation_id,
        "b_fence": fence,
        "step": step,
        "updated_at": now,
    }
    if version is not None:
        values["version"] = version
    if error is not None:
        values["error"] = error
    if attempts is not None:
        values["attempts"] = attempts
    if lease_expires_at is not None:
        values["lease_expires_at"] = lease_expires_at
    if step in TERMINAL_STEPS:
        values["finished_at"] = now
        values["lease_expires_at"] = None
    if conn.execute(_UPDATE_ROTATION, values).rowcount != 1:
        raise LostOwnership(rotation_id)


def renew_leases(conn: Connection, fences: Mapping[str, str], until: datetime) -> set[str]:
    """Extend to ``until`` the lease of every active rotation still held under its token
    (``fences``: rotation id -> token). Returns the ids held no longer (taken over, or gone);
    a rotation its owner already ended is still held, not lost. Never raises LostOwnership:
    one lost rotation must not stop the others' renewal."""
    if not fences:
        return set()
    ids, tokens = list(fences), list(fences.values())
    conn.execute(
        update(rotations)
        .where(
            rotations.c.id.in_(ids),
            rotations.c.fence.in_(tokens),
            rotations.c.step.in_(ACTIVE_STEPS),
        )
        .values(lease_expires_at=until)
    )
    held = conn.execute(
        select(rotations.c.id, rotations.c.fence).where(rotations.c.id.in_(ids))
    ).all()
    return set(ids) - {rid for rid, fence in held if fence == fences[rid]}


def stale_rotations(
    conn: Connection, now: datetime, dead_owners: list[str] | None = None
) -> list[RotationRow]:
    """Active rotations whose lease ran out (or whose owner is known dead), oldest first."""
    cond = rotations.c.lease_expires_at < now
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
) -> bool:
    """Claim the stale rotation ``row`` (as read) for ``owner`` under the new token ``fence``.

    Matches only while the row still has the owner and token that were read, is active, and
    its lease has run out at ``now`` (unless ``owner_dead``: its process is known to be gone),
    so an owner that renewed its lease in between keeps it. False if the claim did not match.
    """
    cond = [
        rotations.c.id == row.id,
        rotations.c.owner == row.owner,
        rotations.c.fence == row.fence,
        rotations.c.step.in_(ACTIVE_STEPS),
    ]
    if not owner_dead:
        cond.append(rotations.c.lease_expires_at < now)
    res = conn.execute(
        update(rotations)
        .where(*cond)
        .values(owner=owner, fence=fence, lease_expires_at=lease_expires_at, updated_at=now)
    )
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
        return conn.execute(_MARK_VERSION, params).rowcount == 1
    params["b_from"] = [s.value for s in only_from]
    return conn.execute(_MARK_VERSION_FROM, params).rowcount == 1


def pending_version(conn: Connection, credential_id: int) -> int | None:
    return conn.execute(
        select(versions.c.number)
        .where(versions.c.credential_id == credential_id, versions.c.stage == Stage.PENDING.value)
        .order_by(versions.c.number.desc())
        .limit(1)
    ).scalar_one_or_none()


def enqueue_revocation(
    conn: Connection, credential_id: int, version: int, due_at: datetime
) -> None:
    """Queue ``version`` for revocation at ``due_at``. Called once per demoted version (in the
    transaction that demotes it), so the unique key never collides."""
    conn.execute(
        _INSERT_REVOCATION,
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
    q = (
        select(revocations, credentials.c.tenant_id, credentials.c.name)
        .join(credentials, credentials.c.id == revocations.c.credential_id)
        .where(revocations.c.due_at <= now)
    )
    if credential_ids is not None:
        q = q.where(revocations.c.credential_id.in_(credential_ids))
    rows = conn.execute(q.order_by(revocations.c.due_at).limit(limit)).all()
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
    conn.execute(
        update(versions)
        .where(versions.c.credential_id == credential_id, versions.c.stage == Stage.PREVIOUS.value)
        .values(expires_at=now)
    )
    conn.execute(
        update(revocations)
        .where(revocations.c.credential_id == credential_id, revocations.c.due_at > now)
        .values(due_at=now)
    )


def last_revocation_due(conn: Connection, credential_id: int) -> datetime | None:
    """When the last queued revocation of a credential falls due, or None."""
    value: datetime | None = conn.execute(
        select(revocations.c.due_at)
        .where(revocations.c.credential_id == credential_id)
        .order_by(revocations.c.due_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    return value


def next_revocation_due(conn: Connection) -> datetime | None:
    return conn.execute(
        select(revocations.c.due_at).order_by(revocations.c.due_at).limit(1)
    ).scalar_one_or_none()


def finish_revocation(conn: Connection, revocation_id: int) -> None:
    conn.execute(delete(revocations).where(revocations.c.id == revocation_id))


def retry_revocation(conn: Connection, revocation_id: int, error: str, due_at: datetime) -> None:
    conn.execute(
        update(revocations)
        .where(revocations.c.id == revocation_id)
        .values(attempts=revocations.c.attempts + 1, last_error=error, due_at=due_at)
    )


def grace_delta(grace_s: int) -> timedelta:
    return timedelta(seconds=grace_s)
