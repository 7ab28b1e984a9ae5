"""Read-only queries over finished rotations, for the dashboard's views (service.dashboard).

All functions take the caller's transaction and write nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, func, select

from rotator.store.schema import rotations

FINISHED_STEPS = ("finished", "rolled_back", "failed")


@dataclass(frozen=True, slots=True)
class Finished:
    """One rotation that reached a terminal step."""

    credential_id: int
    step: str  # finished | rolled_back | failed
    finished_at: datetime
    error: str | None


def finished_since(conn: Connection, tenant_id: int, since: datetime) -> list[tuple[datetime, str]]:
    """(finished_at, step) of the tenant's rotations that finished at or after ``since``."""
    rows = conn.execute(
        select(rotations.c.finished_at, rotations.c.step).where(
            rotations.c.tenant_id == tenant_id,
            rotations.c.finished_at.is_not(None),
            rotations.c.finished_at >= since,
            rotations.c.step.in_(FINISHED_STEPS),
        )
    )
    return [(r.finished_at, r.step) for r in rows]


def last_finished(conn: Connection, credential_ids: Sequence[int]) -> dict[int, Finished]:
    """The newest finished rotation of each credential in ``credential_ids`` that has one."""
    if not credential_ids:
        return {}
    out: dict[int, Finished] = {}
    # Chunks keep the IN list within every driver's bind-parameter limit.
    for i in range(0, len(credential_ids), 500):
        chunk = list(credential_ids[i : i + 500])
        newest = (
            select(
                rotations.c.credential_id.label("cid"),
                func.max(rotations.c.finished_at).label("at"),
            )
            .where(
                rotations.c.credential_id.in_(chunk),
                rotations.c.step.in_(FINISHED_STEPS),
                rotations.c.finished_at.is_not(None),
            )
            .group_by(rotations.c.credential_id)
            .subquery()
        )
        rows = conn.execute(
            select(
                rotations.c.credential_id,
                rotations.c.step,
                rotations.c.finished_at,
                rotations.c.error,
            ).join(
                newest,
                and_(
                    rotations.c.credential_id == newest.c.cid,
                    rotations.c.finished_at == newest.c.at,
                ),
            )
        )
        for r in rows:
            out[r.credential_id] = Finished(r.credential_id, r.step, r.finished_at, r.error)
    return out
