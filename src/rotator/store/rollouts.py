"""Store access for staggered rollouts (tables ``rollouts`` and ``rollout_items``). Callers pass
the transaction; a use case's writes and its audit entry commit together.

Claiming is the one concurrency-sensitive part: :func:`claim_due` locks the rollout's row and
its due items (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the write transaction is
``BEGIN IMMEDIATE`` and serializes every writer) and moves them from ``pending`` to ``running``
only where they are still pending, so an item is claimed by one process once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from rotator.store.schema import rollout_items, rollouts, rotations, tenants

ITEM_STATES = ("pending", "running", "rotated", "failed", "skipped")
ROLLOUT_STATES = ("running", "halted", "done", "aborted")


@dataclass(frozen=True, slots=True)
class RolloutRow:
    id: str
    tenant_id: int
    tenant: str
    selector: dict[str, Any]
    status: str
    stagger_s: int
    max_per_minute: float
    halt_pct: int
    halt_window: int
    halt_reason: str | None
    finished_count: int
    window_floor: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    id: int
    rollout_id: str
    tenant: str
    credential: str
    created_by: str = ""  # who started the rollout: its rotations' requester


def _rollout_query() -> Any:
    return select(rollouts, tenants.c.name.label("tenant")).join(
        tenants, tenants.c.id == rollouts.c.tenant_id
    )


def _row(r: Any) -> RolloutRow:
    return RolloutRow(
        id=r.id,
        tenant_id=r.tenant_id,
        tenant=r.tenant,
        selector=dict(r.selector),
        status=r.status,
        stagger_s=r.stagger_s,
        max_per_minute=float(r.max_per_minute),
        halt_pct=r.halt_pct,
        halt_window=r.halt_window,
        halt_reason=r.halt_reason,
        finished_count=r.finished_count,
        window_floor=r.window_floor,
        created_by=r.created_by,
        created_at=r.created_at,
        updated_at=r.updated_at,
        finished_at=r.finished_at,
    )


def insert_rollout(
    conn: Connection,
    *,
    rollout_id: str,
    tenant_id: int,
    selector: dict[str, Any],
    stagger_s: int,
    max_per_minute: float,
    halt_pct: int,
    halt_window: int,
    created_by: str,
    now: datetime,
    items: Sequence[tuple[str, datetime]],
) -> None:
    """Store a rollout and its items (credential name, planned start), all pending."""
    conn.execute(
        insert(rollouts).values(
            id=rollout_id,
            tenant_id=tenant_id,
            selector=selector,
            status="running",
            stagger_s=stagger_s,
            max_per_minute=max_per_minute,
            halt_pct=halt_pct,
            halt_window=halt_window,
            finished_count=0,
            window_floor=0,
            created_by=created_by,
            created_at=now,
            updated_at=now,
        )
    )
    if items:
        conn.execute(
            insert(rollout_items),
            [
                {
                    "rollout_id": rollout_id,
                    "position": i,
                    "credential": name,
                    "planned_at": at,
                    "status": "pending",
                }
                for i, (name, at) in enumerate(items)
            ],
        )


def get_rollout(
    conn: Connection, rollout_id: str, *, for_update: bool = False
) -> RolloutRow | None:
    q = _rollout_query().where(rollouts.c.id == rollout_id)
    if for_update:
        q = q.with_for_update(of=rollouts)
    r = conn.execute(q).first()
    return None if r is None else _row(r)


def list_rollouts(conn: Connection, tenant_id: int) -> list[RolloutRow]:
    q = _rollout_query().where(rollouts.c.tenant_id == tenant_id)
    return [_row(r) for r in conn.execute(q.order_by(rollouts.c.created_at, rollouts.c.id))]


def counts(conn: Connection, rollout_id: str) -> dict[str, int]:
    """Items per state; every state is present (0 when none)."""
    rows = conn.execute(
        select(rollout_items.c.status, func.count())
        .where(rollout_items.c.rollout_id == rollout_id)
        .group_by(rollout_items.c.status)
    ).all()
    found = {str(status): int(n) for status, n in rows}
    return {s: int(found.get(s, 0)) for s in ITEM_STATES}


def next_planned(conn: Connection, rollout_id: str) -> datetime | None:
    """The planned start of the next pending item."""
    return conn.execute(
        select(func.min(rollout_items.c.planned_at)).where(
            rollout_items.c.rollout_id == rollout_id, rollout_items.c.status == "pending"
        )
    ).scalar_one_or_none()


def next_planned_any(conn: Connection) -> datetime | None:
    """The planned start of the next pending item of any running rollout (a loop's wake-up)."""
    return conn.execute(
        select(func.min(rollout_items.c.planned_at))
        .join(rollouts, rollouts.c.id == rollout_items.c.rollout_id)
        .where(rollout_items.c.status == "pending", rollouts.c.status == "running")
    ).scalar_one_or_none()


def recent_outcomes(conn: Connection, row: RolloutRow) -> list[bool]:
    """Failed (True) or rotated (False) for the last ``halt_window`` items finished since the
    last resume, newest first."""
    q = (
        select(rollout_items.c.status)
        .where(
            rollout_items.c.rollout_id == row.id,
            rollout_items.c.finish_no > row.window_floor,
        )
        .order_by(rollout_items.c.finish_no.desc())
        .limit(row.halt_window)
    )
    return [s == "failed" for s in conn.execute(q).scalars()]


def items(conn: Connection, rollout_id: str) -> list[dict[str, Any]]:
    q = (
        select(
            rollout_items.c.position,
            rollout_items.c.credential,
            rollout_items.c.planned_at,
            rollout_items.c.status,
            rollout_items.c.started_at,
            rollout_items.c.finished_at,
            rollout_items.c.rotation_id,
            rollout_items.c.error,
        )
        .where(rollout_items.c.rollout_id == rollout_id)
        .order_by(rollout_items.c.position)
    )
    return [dict(r._mapping) for r in conn.execute(q)]


def due_rollouts(conn: Connection, now: datetime, rollout_id: str | None = None) -> list[str]:
    """Running rollouts with a pending item whose planned start has come."""
    q = (
        select(rollout_items.c.rollout_id)
        .join(rollouts, rollouts.c.id == rollout_items.c.rollout_id)
        .where(
            rollouts.c.status == "running",
            rollout_items.c.status == "pending",
            rollout_items.c.planned_at <= now,
        )
        .distinct()
    )
    if rollout_id is not None:
        q = q.where(rollouts.c.id == rollout_id)
    return list(conn.execute(q).scalars())


def claim_due(
    conn: Connection,
    rollout_id: str,
    *,
    now: datetime,
    owner: str,
    lease_until: datetime,
    lookback: Callable[[float], timedelta],
    cap: Callable[[RolloutRow, int, list[bool], int], int],
) -> list[ClaimedItem]:
    """Move due pending items of a running rollout to ``running``, claimed by ``owner`` until
    ``lease_until``; returns them (planned order). How many: ``cap(rollout, items started
    within lookback(max_per_minute) before now, recent outcomes (see recent_outcomes), items
    running)``, all counted under the rollout's row lock. Rows another transaction holds are
    skipped, never waited for."""
    ro = conn.execute(
        _rollout_query()
        .where(rollouts.c.id == rollout_id, rollouts.c.status == "running")
        .with_for_update(of=rollouts, skip_locked=True)
    ).first()
    if ro is None:  # not running, or another process is claiming for it right now
        return []
    row = _row(ro)
    allowed = cap(
        row,
        started_since(conn, rollout_id, now - lookback(row.max_per_minute)),
        recent_outcomes(conn, row),
        running_count(conn, rollout_id),
    )
    if allowed <= 0:
        return []
    picked = conn.execute(
        select(rollout_items.c.id, rollout_items.c.credential)
        .where(
            rollout_items.c.rollout_id == rollout_id,
            rollout_items.c.status == "pending",
            rollout_items.c.planned_at <= now,
        )
        .order_by(rollout_items.c.planned_at, rollout_items.c.position)
        .limit(allowed)
        .with_for_update(skip_locked=True)
    ).all()
    out = []
    for item_id, credential in picked:
        res = conn.execute(
            update(rollout_items)
            .where(rollout_items.c.id == item_id, rollout_items.c.status == "pending")
            .values(
                status="running", claimed_by=owner, lease_expires_at=lease_until, started_at=now
            )
        )
        if res.rowcount == 1:
            out.append(ClaimedItem(item_id, rollout_id, ro.tenant, credential, ro.created_by))
    return out


def started_since(conn: Connection, rollout_id: str, since: datetime) -> int:
    """Items of the rollout started after ``since`` (the rate cap's look-back)."""
    return int(
        conn.execute(
            select(func.count()).where(
                rollout_items.c.rollout_id == rollout_id,
                rollout_items.c.started_at > since,
            )
        ).scalar_one()
    )


def running_count(conn: Connection, rollout_id: str) -> int:
    """Items of the rollout claimed and not finished."""
    return int(
        conn.execute(
            select(func.count()).where(
                rollout_items.c.rollout_id == rollout_id, rollout_items.c.status == "running"
            )
        ).scalar_one()
    )


def renew(conn: Connection, item_ids: Sequence[int], owner: str, until: datetime) -> set[int]:
    """Extend ``owner``'s claims on ``item_ids`` to ``until``; returns the ids it still holds
    (an item settled by another process after this one stalled past its lease is not)."""
    if not item_ids:
        return set()
    conn.execute(
        update(rollout_items)
        .where(
            rollout_items.c.id.in_(list(item_ids)),
            rollout_items.c.status == "running",
            rollout_items.c.claimed_by == owner,
        )
        .values(lease_expires_at=until)
    )
    return set(
        conn.execute(
            select(rollout_items.c.id).where(
                rollout_items.c.id.in_(list(item_ids)),
                rollout_items.c.status == "running",
                rollout_items.c.claimed_by == owner,
            )
        ).scalars()
    )


def check_held(conn: Connection, now: datetime, *, item_id: int, owner: str) -> str | None:
    """A rotation's guard (see ``engine.RotationRequest.guard``): None while ``owner`` still
    holds the running item, else why not. The item's row is locked first on PostgreSQL, so
    settling it (which updates that row) waits for the intent's commit and then sees the
    rotation; on SQLite the write transaction excludes it."""
    del now  # the item row, not the clock, says who holds it
    q = select(rollout_items.c.status, rollout_items.c.claimed_by).where(
        rollout_items.c.id == item_id
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    row = conn.execute(q).first()
    if row is not None and row.status == "running" and row.claimed_by == owner:
        return None
    return "the rollout item was taken over or settled"


def finish_item(
    conn: Connection,
    item_id: int,
    *,
    ok: bool,
    rotation_id: str | None,
    error: str | None,
    now: datetime,
) -> RolloutRow | None:
    """Record a running item's outcome and number it in its rollout's finish order. Returns the
    rollout (after the update), or None when the item was not running (recorded already, or
    reset): recording is idempotent."""
    rid = conn.execute(
        select(rollout_items.c.rollout_id).where(rollout_items.c.id == item_id)
    ).scalar_one_or_none()
    if rid is None:
        return None
    # The rollout row first (the lock order of claim_due): the finish counter is per rollout.
    ro = get_rollout(conn, rid, for_update=True)
    assert ro is not None
    res = conn.execute(
        update(rollout_items)
        .where(rollout_items.c.id == item_id, rollout_items.c.status == "running")
        .values(
            status="rotated" if ok else "failed",
            finished_at=now,
            finish_no=ro.finished_count + 1,
            rotation_id=rotation_id,
            error=error,
            claimed_by=None,
            lease_expires_at=None,
        )
    )
    if res.rowcount != 1:
        return None
    conn.execute(
        update(rollouts)
        .where(rollouts.c.id == rid)
        .values(finished_count=ro.finished_count + 1, updated_at=now)
    )
    return get_rollout(conn, rid)


def set_status(
    conn: Connection,
    rollout_id: str,
    status: str,
    now: datetime,
    *,
    reason: str | None = None,
    window_floor: int | None = None,
) -> None:
    values: dict[str, Any] = {"status": status, "updated_at": now, "halt_reason": reason}
    if status in ("done", "aborted"):
        values["finished_at"] = now
    if window_floor is not None:
        values["window_floor"] = window_floor
    conn.execute(update(rollouts).where(rollouts.c.id == rollout_id).values(**values))


def skip_pending(conn: Connection, rollout_id: str, now: datetime) -> int:
    res = conn.execute(
        update(rollout_items)
        .where(rollout_items.c.rollout_id == rollout_id, rollout_items.c.status == "pending")
        .values(status="skipped", finished_at=now)
    )
    return int(res.rowcount)


def running_items(conn: Connection, rollout_id: str | None = None) -> list[Any]:
    """Running items (id, rollout_id, credential, claimed_by, lease_expires_at), with the step
    and id of the newest rotation their rollout started for the credential (None: it never
    wrote an intent)."""

    def newest(col: Any) -> Any:
        return (
            select(col)
            .where(
                rotations.c.batch_id == rollout_items.c.rollout_id,
                rotations.c.credential == rollout_items.c.credential,
            )
            .order_by(rotations.c.created_at.desc())
            .limit(1)
            .scalar_subquery()
        )

    q = select(
        rollout_items.c.id,
        rollout_items.c.rollout_id,
        rollout_items.c.credential,
        rollout_items.c.claimed_by,
        rollout_items.c.lease_expires_at,
        newest(rotations.c.step).label("step"),
        newest(rotations.c.id).label("rotation_id"),
    ).where(rollout_items.c.status == "running")
    if rollout_id is not None:
        q = q.where(rollout_items.c.rollout_id == rollout_id)
    return list(conn.execute(q))


def release(conn: Connection, item_id: int, claimed_by: str | None) -> bool:
    """Put a running item whose claimer died before its rotation began back to pending, if
    ``claimed_by`` still holds it."""
    res = conn.execute(
        update(rollout_items)
        .where(
            rollout_items.c.id == item_id,
            rollout_items.c.status == "running",
            rollout_items.c.claimed_by == claimed_by,
        )
        .values(status="pending", claimed_by=None, lease_expires_at=None, started_at=None)
    )
    return res.rowcount == 1


def open_items(conn: Connection, rollout_id: str) -> int:
    """Items pending or running."""
    return int(
        conn.execute(
            select(func.count()).where(
                rollout_items.c.rollout_id == rollout_id,
                rollout_items.c.status.in_(("pending", "running")),
            )
        ).scalar_one()
    )
