"""Rotation jobs: a rotation requested now and run in the background (the REST API's
``POST /v1/credentials/{name}/rotate`` and ``POST /v1/rotations``), reported by any process.

:func:`start_job` authorizes and resolves the selection exactly as
:func:`rotator.service.rotation.rotate` does, stores the job (table ``rotation_jobs``) with
its ``rotation.requested`` audit entry, and returns at once; the rotations then run on this
process's event loop, and the job's end (the ``rotate --json`` shape) is written to the store,
so :func:`get_job` answers the same on every process sharing the database.

A job whose process dies would stay ``running`` forever. So the running process holds a
lease on it (``lease_until``, renewed every third of the engine's lease), and any read of a
tenant's jobs first settles the running ones whose lease ended as ``interrupted``: no
scheduler needs to run for a dead job to be reported. The rotations such a job had under way
are the engine's business: its recovery (any worker's or ``serve``'s scheduler, or the next
rotation of those credentials) resumes or rolls them back from their intents.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import Connection

from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.errors import InvalidInput, NotFound, RotatorError
from rotator.service import rotation
from rotator.service.credentials import RotatorService
from rotator.service.rotation import Selection
from rotator.store import jobs as store

MAX_LIMIT = 1000
_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
OWNER_GONE = "the process running the job stopped before it ended (its lease ran out)"
STOPPED = "the process running the job was stopped before it ended"

# The jobs this process runs, per service: cancelled and settled by stop_jobs.
_RUNNING: weakref.WeakKeyDictionary[RotatorService, set[asyncio.Task[None]]] = (
    weakref.WeakKeyDictionary()
)


def _ts(d: datetime | None) -> str | None:
    return None if d is None else d.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as every interface shows it (never a value)."""

    id: str
    status: str
    requested_by: str
    selector: dict[str, Any]
    emergency: bool
    total: int
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "requested_by": self.requested_by,
            "selector": self.selector,
            "emergency": self.emergency,
            "created_at": _ts(self.created_at),
            "finished_at": _ts(self.finished_at),
            "total": self.total,
            "result": self.result,
            "error": self.error,
        }


def _view(row: store.JobRow) -> JobView:
    return JobView(
        id=row.id,
        status=row.status,
        requested_by=row.requested_by,
        selector=row.selector,
        emergency=row.emergency,
        total=row.total,
        result=row.result,
        error=row.error,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def new_job_id(now: datetime) -> str:
    """A random UUID laid out as UUIDv7 (48 bits of Unix milliseconds first), so ids sort in
    the order jobs were accepted (pages by id are chronological)."""
    ms = int(now.timestamp() * 1000) & ((1 << 48) - 1)
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)  # version 7
    raw[8] = 0x80 | (raw[8] & 0x3F)  # RFC 9562 variant
    return str(uuid.UUID(bytes=bytes(raw)))


def check_job_id(job_id: str) -> None:
    """InvalidInput unless ``job_id`` has the shape of a job id (never echoes it)."""
    if not _JOB_ID.fullmatch(job_id):
        raise InvalidInput("a rotation job id is a UUID (lowercase hex with dashes)")


def _lease(svc: RotatorService) -> timedelta:
    return timedelta(seconds=svc.engine.runtime.opts.lease_s)


async def start_job(
    svc: RotatorService,
    sel: Selection,
    *,
    emergency: bool = False,
    principal: Principal = LOCAL_PRINCIPAL,
) -> JobView:
    """Accept a rotation of ``sel`` and start it in the background on this process's event
    loop; returns the stored job (``running``) without waiting for it.

    Authorized and resolved as :func:`rotator.service.rotation.rotate` before anything is
    stored: a NAME the principal may not ROTATE is PermissionDenied (audited), an unknown one
    NotFound, a bad selection InvalidInput; no job exists then. The job and its
    ``rotation.requested`` audit entry (job id, selector, emergency, how many credentials;
    never a value) commit together. Named credentials rotate as interactive work, a tag or
    ``all`` selection as batch work (as ``rotate`` decides)."""
    creds = await rotation.select(svc, sel, principal)
    tenant = await svc.tenant(principal.tenant)
    now = svc.clock()
    job_id = new_job_id(now)
    owner = svc.engine.runtime.owner
    selector: dict[str, Any] = {
        "names": list(sel.names),
        "tags": dict(sel.tags or {}),
        "all": sel.all,
    }
    names = [c.name for c in creds]

    def write(conn: Connection) -> store.JobRow:
        store.insert_job(
            conn,
            job_id=job_id,
            tenant_id=tenant.id,
            requested_by=principal.name,
            selector=selector,
            credentials=names,
            emergency=emergency,
            owner=owner,
            lease_until=now + _lease(svc),
            now=now,
        )
        svc.kernel.audit(
            conn,
            principal,
            "rotation.requested",
            None,
            None,
            {
                "job": job_id,
                "selector": selector,
                "emergency": emergency,
                "credentials": len(names),
            },
        )
        row = store.get_job(conn, job_id)
        assert row is not None
        return row

    row = await svc._write(write)
    task = asyncio.create_task(
        _run(svc, job_id, sel, emergency, principal), name=f"rotation job {job_id}"
    )
    running = _RUNNING.setdefault(svc, set())
    running.add(task)
    task.add_done_callback(running.discard)
    return _view(row)


async def _run(
    svc: RotatorService, job_id: str, sel: Selection, emergency: bool, principal: Principal
) -> None:
    """Run one job to its end and record it; never raises (but a cancellation)."""
    owner = svc.engine.runtime.owner
    renewing = asyncio.create_task(_renew(svc, job_id, owner), name=f"lease of job {job_id}")
    status, result, error, total = "interrupted", None, None, None
    try:
        batch = await rotation.rotate(svc, sel, emergency=emergency, principal=principal)
        status, result, total = "done", batch.to_json(), len(batch.results)
    except asyncio.CancelledError:
        error = STOPPED
        raise
    except RotatorError as exc:
        # Service errors carry one safe line (never a value): the caller may read it.
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except Exception as exc:  # the job must end recorded, whatever went wrong
        error = f"internal error ({type(exc).__name__})"
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        now = svc.clock()
        # Recorded even while this task is being cancelled (the server stopping): shielded,
        # and a store that is gone by then leaves the lease to run out instead.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(
                svc._write(
                    lambda conn: store.finish(
                        conn,
                        job_id,
                        status=status,
                        now=now,
                        result=result,
                        error=error,
                        total=total,
                    )
                )
            )


async def _renew(svc: RotatorService, job_id: str, owner: str) -> None:
    lease = _lease(svc)
    while True:
        await asyncio.sleep(lease.total_seconds() / 3)
        until = svc.clock() + lease
        # A failed renewal is retried at the next tick; if they keep failing the lease runs
        # out and readers report the job interrupted, which is then the truth to tell.
        with contextlib.suppress(RotatorError):
            if not await svc._write(
                partial(store.renew, job_id=job_id, owner=owner, lease_until=until)
            ):
                return


async def stop_jobs(svc: RotatorService) -> None:
    """Cancel this process's running jobs and wait until each has recorded its end
    (``interrupted``: the server is stopping). Call before closing the service."""
    tasks = list(_RUNNING.get(svc, ()))
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def _settle(svc: RotatorService, tenant_id: int) -> None:
    now = svc.clock()
    if await svc._read(lambda conn: store.any_stale(conn, tenant_id, now)):
        await svc._write(lambda conn: store.interrupt_stale(conn, tenant_id, now, OWNER_GONE))


async def get_job(
    svc: RotatorService, job_id: str, principal: Principal = LOCAL_PRINCIPAL
) -> JobView:
    """One job of the principal's tenant, with its result once done. PermissionDenied
    (audited) when the principal's role may not ROTATION_READ at all. A job of another
    tenant, or one reaching a credential outside the principal's scope, is NotFound with the
    text of one that does not exist; the latter is audited as ``access.denied`` (naming the
    credential and the job). A running job whose owner's lease ended is reported (and
    stored) as ``interrupted``. InvalidInput for an id that is not a UUID."""
    check_job_id(job_id)
    await svc.authorize_some(principal, Action.ROTATION_READ)
    missing = NotFound(f"no rotation job {job_id!r}")
    tenant = await svc._existing_tenant(principal)
    row = None if tenant is None else await svc._read(lambda conn: store.get_job(conn, job_id))
    if row is None or tenant is None or not (principal.owner or row.tenant_id == tenant.id):
        raise missing
    outside = [n for n in row.credentials if not principal.may(Action.ROTATION_READ, n)]
    if outside:
        await svc.deny_as_missing(principal, Action.ROTATION_READ, outside[0], missing, job=job_id)
    if row.status == "running":
        await _settle(svc, row.tenant_id)
        row = await svc._read(lambda conn: store.get_job(conn, job_id))
        assert row is not None  # jobs are never deleted
    return _view(row)


async def list_jobs(
    svc: RotatorService,
    *,
    limit: int = 100,
    after: str | None = None,
    principal: Principal = LOCAL_PRINCIPAL,
) -> list[JobView]:
    """The tenant's jobs in the order they were accepted, the first ``limit`` (1..1000) after
    job id ``after`` (None: from the first); a page shorter than ``limit`` is the last.
    Settles dead owners' jobs first, as :func:`get_job`. Needs ROTATION_READ tenant-wide."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    if after is not None:
        check_job_id(after)
    await svc.authorize(principal, Action.ROTATION_READ)
    tenant = await svc._existing_tenant(principal)
    if tenant is None:
        return []
    await _settle(svc, tenant.id)
    rows = await svc._read(lambda conn: store.list_jobs(conn, tenant.id, after=after, limit=limit))
    return [_view(r) for r in rows]


__all__ = ["JobView", "get_job", "list_jobs", "new_job_id", "start_job", "stop_jobs"]
