"""Store access for the REST API's rotation jobs (table ``rotation_jobs``). Callers pass the
transaction; a job's insert and its ``rotation.requested`` audit entry commit together.

A job is written by the process running it (its ``owner``): the insert, a lease renewal now
and then, the end. Any process may settle a job whose lease ran out (:func:`interrupt_stale`):
that update is conditioned on the row still being ``running`` with the lease it read, so a
late renewal and a settling never both win.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from rotator.store.schema import rotation_jobs

JOB_STATES = ("running", "done", "interrupted")


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    tenant_id: int
    requested_by: str
    selector: dict[str, Any]
    credentials: list[str]
    emergency: bool
    status: str
    total: int
    result: dict[str, Any] | None
    error: str | None
    owner: str
    lease_until: datetime | None
    created_at: datetime
    finished_at: datetime | None


def _row(r: Any) -> JobRow:
    return JobRow(
        id=r.id,
        tenant_id=r.tenant_id,
        requested_by=r.requested_by,
        selector=dict(r.selector),
        credentials=list(r.credentials),
        emergency=bool(r.emergency),
        status=r.status,
        total=r.total,
        result=None if r.result is None else dict(r.result),
        error=r.error,
        owner=r.owner,
        lease_until=r.lease_until,
        created_at=r.created_at,
        finished_at=r.finished_at,
    )


def insert_job(
    conn: Connection,
    *,
    job_id: str,
    tenant_id: int,
    requested_by: str,
    selector: dict[str, Any],
    credentials: list[str],
    emergency: bool,
    owner: str,
    lease_until: datetime,
    now: datetime,
) -> None:
    """Store a new job, running, owned by ``owner`` until ``lease_until``."""
    conn.execute(
        insert(rotation_jobs).values(
            id=job_id,
            tenant_id=tenant_id,
            requested_by=requested_by,
            selector=selector,
            credentials=credentials,
            emergency=emergency,
            status="running",
            total=len(credentials),
            owner=owner,
            lease_until=lease_until,
            created_at=now,
        )
    )


def get_job(conn: Connection, job_id: str) -> JobRow | None:
    r = conn.execute(select(rotation_jobs).where(rotation_jobs.c.id == job_id)).first()
    return None if r is None else _row(r)


def list_jobs(
    conn: Connection, tenant_id: int, *, after: str | None = None, limit: int = 100
) -> list[JobRow]:
    """A tenant's jobs in id order (the order they were accepted), the first ``limit`` after
    id ``after`` (None: from the first)."""
    q = select(rotation_jobs).where(rotation_jobs.c.tenant_id == tenant_id)
    if after is not None:
        q = q.where(rotation_jobs.c.id > after)
    return [_row(r) for r in conn.execute(q.order_by(rotation_jobs.c.id).limit(limit))]


def renew(conn: Connection, job_id: str, owner: str, lease_until: datetime) -> bool:
    """Extend the lease of a job ``owner`` runs; False when it is no longer running (it was
    settled as interrupted meanwhile)."""
    n = conn.execute(
        update(rotation_jobs)
        .where(
            rotation_jobs.c.id == job_id,
            rotation_jobs.c.owner == owner,
            rotation_jobs.c.status == "running",
        )
        .values(lease_until=lease_until)
    ).rowcount
    return bool(n)


def finish(
    conn: Connection,
    job_id: str,
    *,
    status: str,
    now: datetime,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    total: int | None = None,
) -> None:
    """Record a job's end (``done`` with its result, or ``interrupted`` with ``error``). The
    owner's own end wins over a settling by another process: the result is what happened."""
    values: dict[str, Any] = {
        "status": status,
        "result": result,
        "error": error,
        "finished_at": now,
        "lease_until": None,
    }
    if total is not None:
        values["total"] = total
    conn.execute(update(rotation_jobs).where(rotation_jobs.c.id == job_id).values(**values))


def interrupt_stale(conn: Connection, tenant_id: int, now: datetime, reason: str) -> int:
    """Settle every running job of a tenant whose owner's lease ended before ``now`` as
    ``interrupted``; the number settled."""
    return conn.execute(
        update(rotation_jobs)
        .where(
            rotation_jobs.c.tenant_id == tenant_id,
            rotation_jobs.c.status == "running",
            rotation_jobs.c.lease_until < now,
        )
        .values(status="interrupted", error=reason, finished_at=now, lease_until=None)
    ).rowcount


def any_stale(conn: Connection, tenant_id: int, now: datetime) -> bool:
    """Whether a running job of the tenant has a lease that ended before ``now``."""
    return (
        conn.execute(
            select(rotation_jobs.c.id)
            .where(
                rotation_jobs.c.tenant_id == tenant_id,
                rotation_jobs.c.status == "running",
                rotation_jobs.c.lease_until < now,
            )
            .limit(1)
        ).first()
        is not None
    )
