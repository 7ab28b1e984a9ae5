"""Scheduler claims: a worker takes due credentials before it creates any value for them.

Claiming a credential moves its ``next_rotation_at`` to the claim's ``lease_until`` (no other
worker finds it due) and records the claimer in ``credential_claims``. Every later change is
conditioned on ``next_rotation_at`` still being ``lease_until``: a rotation that finished has
set the credential's next time, and a heartbeat or release must not move it back. Each claim
is named by its ``claimed_at``: a rotation's guard and the heartbeat act only while the claim
row is still that claim, not a later claim of the same credential (by the same worker or
another). A worker that dies stops extending its claims; at ``lease_until`` the credential
is due again and another worker takes it (a rotation the dead worker had begun is resumed by
the engine's recovery, from its rotation row).

On PostgreSQL the claim is ``SELECT ... FOR UPDATE SKIP LOCKED``, so workers claiming at the
same moment take different rows without waiting for each other; on SQLite one writer at a time
holds the database, and a second worker is refused anyway. Every function that makes work
available or moves its time sends ``NOTIFY rotator_work`` in the caller's transaction
(PostgreSQL delivers it at commit; nothing on SQLite): idle workers ``LISTEN`` on it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)

from rotator.store.schema import credential_claims, credential_locks, credentials, tenants

WORK_CHANNEL = "rotator_work"
_TICK = timedelta(microseconds=1)  # the stores' timestamp resolution
_NOTIFY = text(f"NOTIFY {WORK_CHANNEL}")


def notify_work(conn: Connection) -> None:
    """Tell listening workers that due work may have appeared or moved (PostgreSQL: at commit,
    once per transaction however often it is called; SQLite: nothing)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY)


@dataclass(frozen=True, slots=True)
class Claim:
    """One credential claimed for a scheduled rotation."""

    credential_id: int
    tenant: str
    name: str
    due_at: datetime  # its next_rotation_at before the claim
    in_flight: bool  # a rotation of it holds the credential's lock (join it, never start one)
    claimed_at: datetime  # names this claim: a later claim of the credential has another


def claim_due(
    conn: Connection, *, worker: str, now: datetime, lease_until: datetime, limit: int
) -> list[Claim]:
    """Claim up to ``limit`` credentials due at ``now``, soonest first (indexed on
    ``next_rotation_at``; never a scan of every credential), under a lease to
    ``lease_until``. Run in a write transaction: the claim is the commit. Removes the rows
    of claims whose lease ended before ``now``.

    Each claim's ``claimed_at`` (``now``, or just after a live claim row of the credential it
    replaces) differs from every earlier claim of the same credential: guards and heartbeats
    compare it (see :func:`check_held`), so a request made under an earlier claim by the same
    worker never runs under this one."""
    q = (
        select(credentials.c.id, credentials.c.next_rotation_at)
        .where(credentials.c.next_rotation_at <= now)
        .order_by(credentials.c.next_rotation_at)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    # Claims whose lease ran out are over (their worker died or lost them): their rows go.
    # The table holds only claims of rotations under way, so this touches few rows.
    conn.execute(delete(credential_claims).where(credential_claims.c.lease_until < now))
    rows = conn.execute(q).all()
    if not rows:
        return []
    due = {int(r.id): r.next_rotation_at for r in rows}
    ids = sorted(due)
    conn.execute(
        update(credentials).where(credentials.c.id.in_(ids)).values(next_rotation_at=lease_until)
    )
    # A live claim row of a credential taken again (an operator moved its time): the new
    # claim's claimed_at must differ from it even when the clock has not moved (or went back).
    since = {i: now for i in ids}
    for r in conn.execute(
        select(credential_claims.c.credential_id, credential_claims.c.claimed_at).where(
            credential_claims.c.credential_id.in_(ids)
        )
    ):
        if r.claimed_at >= now:
            since[int(r.credential_id)] = r.claimed_at + _TICK
    conn.execute(delete(credential_claims).where(credential_claims.c.credential_id.in_(ids)))
    conn.execute(
        insert(credential_claims),
        [
            {
                "credential_id": i,
                "worker": worker,
                "claimed_at": since[i],
                "lease_until": lease_until,
            }
            for i in ids
        ],
    )
    info = conn.execute(
        select(
            credentials.c.id,
            credentials.c.name,
            tenants.c.name.label("tenant"),
            credential_locks.c.rotation_id,
        )
        .join(tenants, tenants.c.id == credentials.c.tenant_id)
        .outerjoin(credential_locks, credential_locks.c.credential_id == credentials.c.id)
        .where(credentials.c.id.in_(ids))
    ).all()
    out = [
        Claim(
            int(r.id),
            r.tenant,
            r.name,
            due[int(r.id)],
            r.rotation_id is not None,
            since[int(r.id)],
        )
        for r in info
    ]
    out.sort(key=lambda c: (c.due_at, c.credential_id))
    return out


def _by_lease(held: Mapping[int, datetime]) -> dict[datetime, list[int]]:
    groups: dict[datetime, list[int]] = defaultdict(list)
    for cid, until in held.items():
        groups[until].append(cid)
    return groups


def _move_if_still(conn: Connection, held: Mapping[int, datetime], to: datetime) -> set[int]:
    """Move next_rotation_at to ``to`` for each credential whose next_rotation_at is still its
    lease in ``held``; return those moved. On PostgreSQL the rows are locked in id order first
    (and re-checked after any wait), so two transactions never lock them in opposite orders."""
    moved: set[int] = set()
    for until, ids in _by_lease(held).items():
        ids.sort()
        still: ColumnElement[bool] = and_(
            credentials.c.id.in_(ids), credentials.c.next_rotation_at == until
        )
        if conn.dialect.name == "postgresql":
            locked = [
                int(x)
                for x in conn.execute(
                    select(credentials.c.id)
                    .where(still)
                    .order_by(credentials.c.id)
                    .with_for_update()
                ).scalars()
            ]
            if not locked:
                continue
            still = credentials.c.id.in_(locked)
        moved.update(
            int(x)
            for x in conn.execute(
                update(credentials)
                .where(still)
                .values(next_rotation_at=to)
                .returning(credentials.c.id)
            ).scalars()
        )
    return moved


def extend(
    conn: Connection,
    *,
    worker: str,
    held: Mapping[int, datetime],
    claimed: Mapping[int, datetime],
    until: datetime,
) -> set[int]:
    """The heartbeat: extend ``worker``'s claims (credential id -> its lease_until in
    ``held``, -> its claimed_at in ``claimed``) to ``until``. Returns the ids still claimed:
    those whose claim row is still this claim (same worker and claimed_at; ``claim_due``
    removes rows whose lease ran out, another claim replaces it) and whose credential's time
    is still the lease. A claim whose credential's time was changed meanwhile (its rotation
    finished, an operator moved it) is over and its row removed."""
    if not held:
        return set()
    ids = sorted(held)
    if conn.dialect.name == "postgresql":
        # The credentials' rows first, in id order: the lock order of check_held, and
        # claim_due skips locked rows.
        conn.execute(
            select(credentials.c.id)
            .where(credentials.c.id.in_(ids))
            .order_by(credentials.c.id)
            .with_for_update()
        )
    mine: set[int] = set()
    for since, group in _by_lease({i: claimed[i] for i in ids if i in claimed}).items():
        mine.update(
            int(x)
            for x in conn.execute(
                update(credential_claims)
                .where(
                    credential_claims.c.credential_id.in_(sorted(group)),
                    credential_claims.c.worker == worker,
                    credential_claims.c.claimed_at == since,
                )
                .values(lease_until=until)
                .returning(credential_claims.c.credential_id)
            ).scalars()
        )
    kept = _move_if_still(conn, {i: held[i] for i in mine}, until)
    for since, group in _by_lease({i: claimed[i] for i in mine - kept}).items():
        conn.execute(
            delete(credential_claims).where(
                credential_claims.c.credential_id.in_(sorted(group)),
                credential_claims.c.worker == worker,
                credential_claims.c.claimed_at == since,
            )
        )
    return kept


def release(
    conn: Connection,
    *,
    worker: str,
    ids: list[int],
    held: Mapping[int, datetime] | None = None,
    until: datetime | None = None,
) -> None:
    """End ``worker``'s claims of ``ids``. With ``until`` (a rotation failed: try again
    later), each credential in ``held`` whose next_rotation_at is still its lease moves to
    ``until``; otherwise next_rotation_at is left as it is (a finished rotation has set it; a
    credential left unrotated is due again when its lease ends). Notifies listening workers."""
    if ids:
        conn.execute(
            delete(credential_claims).where(
                credential_claims.c.credential_id.in_(sorted(ids)),
                credential_claims.c.worker == worker,
            )
        )
    if until is not None and held:
        _move_if_still(conn, {i: held[i] for i in ids if i in held}, until)
    notify_work(conn)


def count_due(conn: Connection, now: datetime, cap: int) -> int:
    """How many credentials are due at ``now``, counting at most ``cap`` (an index range,
    bounded: never a count of every credential)."""
    # Only the indexed column: an index-only scan where the visibility map allows.
    inner = (
        select(credentials.c.next_rotation_at)
        .where(credentials.c.next_rotation_at <= now)
        .limit(cap)
    )
    return int(conn.execute(select(func.count()).select_from(inner.subquery())).scalar_one())


def claims_of(conn: Connection, worker: str | None = None) -> dict[int, str]:
    """Credential id -> claimer of every claim (or of ``worker``'s); for tests and tools."""
    q = select(credential_claims.c.credential_id, credential_claims.c.worker)
    if worker is not None:
        q = q.where(credential_claims.c.worker == bindparam("w", worker))
    return {int(r.credential_id): r.worker for r in conn.execute(q)}


def claimed_among(conn: Connection, ids: Sequence[int]) -> set[int]:
    """Which of ``ids`` a scheduler claim holds (a claim row exists; its lapse is not looked
    at: until another worker takes it, the claim's rotation may still start)."""
    out: set[int] = set()
    ordered = sorted(set(ids))
    for i in range(0, len(ordered), 500):
        out.update(
            int(x)
            for x in conn.execute(
                select(credential_claims.c.credential_id).where(
                    credential_claims.c.credential_id.in_(ordered[i : i + 500])
                )
            ).scalars()
        )
    return out


def check_held(
    conn: Connection, now: datetime, *, credential_id: int, worker: str, claimed_at: datetime
) -> str | None:
    """A rotation's guard (see ``engine.RotationRequest.guard``): None while ``worker`` still
    holds the claim of the credential made at ``claimed_at`` (the one the rotation was
    requested under, not a later claim of the same worker), else why not. On PostgreSQL the
    credential's row is locked first, so a concurrent ``claim_due`` (which skips locked rows)
    cannot take it between this check and the intent's commit; on SQLite the write
    transaction excludes it. A claim whose lease ran out but that nobody took yet is still
    held: whoever claims next finds the rotation in flight and joins it."""
    del now  # the claim row, not the clock, says who holds it
    if conn.dialect.name == "postgresql":
        conn.execute(
            select(credentials.c.id).where(credentials.c.id == credential_id).with_for_update()
        )
    row = conn.execute(
        select(credential_claims.c.worker, credential_claims.c.claimed_at).where(
            credential_claims.c.credential_id == credential_id
        )
    ).first()
    if row is None:
        return "its claim ended"
    if row.worker == worker and row.claimed_at == claimed_at:
        return None
    return "the scheduler's claim of it was taken over"
