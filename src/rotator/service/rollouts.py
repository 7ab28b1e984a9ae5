"""Staggered rollout use cases: create a durable rollout from a selection, list, status,
resume, abort, and run one in the foreground until it is done or halted.

All of a rollout's state is in the store (tables ``rollouts`` and ``rollout_items``), so a
rollout outlives the process that created it: a worker (``rotator.scheduler.rollouts.advance``
in its loop) or ``rotator rollout resume`` carries it on after a restart.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.errors import InvalidInput, NotFound
from rotator.policy.rollout import MAX_ITEMS, HaltRule, fits, plan_starts
from rotator.scheduler import rollouts as sched
from rotator.service.credentials import RotatorService
from rotator.service.rotation import Selection, owner_sweep, select
from rotator.store import rollouts as store

DEFAULT_HALT = HaltRule()
MIN_WAIT_S = 0.25  # a foreground run polls no faster than this while items wait for the cap


@dataclass(frozen=True, slots=True)
class RolloutView:
    """What ``rollout status`` shows: counts per state, the next planned start, the failure
    window and the halt reason."""

    id: str
    status: str
    selector: dict[str, Any]
    stagger_s: int
    max_per_minute: float
    halt: HaltRule
    halt_reason: str | None
    counts: dict[str, int]
    next_planned_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    recent_failed: list[bool] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return self.status == "done" and self.counts["failed"] == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "selector": self.selector,
            "stagger_s": self.stagger_s,
            "max_per_minute": self.max_per_minute,
            "total": self.total,
            "counts": self.counts,
            "next_planned_at": _iso(self.next_planned_at),
            "failure_window": {
                "failed": sum(self.recent_failed),
                "finished": len(self.recent_failed),
                "window": self.halt.window,
                "halt_above_pct": self.halt.pct,
            },
            "halt_reason": self.halt_reason,
            "created_at": _iso(self.created_at),
            "finished_at": _iso(self.finished_at),
        }


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _view(conn: Connection, ro: store.RolloutRow) -> RolloutView:
    return RolloutView(
        id=ro.id,
        status=ro.status,
        selector=ro.selector,
        stagger_s=ro.stagger_s,
        max_per_minute=ro.max_per_minute,
        halt=HaltRule(ro.halt_pct, ro.halt_window),
        halt_reason=ro.halt_reason,
        counts=store.counts(conn, ro.id),
        next_planned_at=store.next_planned(conn, ro.id),
        created_at=ro.created_at,
        finished_at=ro.finished_at,
        recent_failed=store.recent_outcomes(conn, ro),
    )


def _get(conn: Connection, rollout_id: str, tenant: str) -> store.RolloutRow:
    ro = store.get_rollout(conn, rollout_id)
    if ro is None or ro.tenant != tenant:
        raise NotFound(f"no rollout {rollout_id[:64]!r}")
    return ro


async def create(
    svc: RotatorService,
    sel: Selection,
    *,
    stagger: timedelta,
    max_per_minute: float,
    halt: HaltRule = DEFAULT_HALT,
    principal: Principal = LOCAL_PRINCIPAL,
) -> RolloutView:
    """Resolve ``sel`` once into items, plan their starts from now over ``stagger`` under the
    rate cap (``rotator.policy.rollout.plan_starts``), and store the rollout, running, with its
    ``rollout.created`` audit entry, in one transaction. Nothing is rotated here.

    Raises InvalidInput (bad selection, or it matches no credential), NotFound (a named
    credential does not exist); nothing is stored then. Needs ROTATE on every credential
    named; a selector takes only those the principal may rotate (see service.rotation.select)."""
    creds = await select(svc, sel, principal, action=Action.ROTATE)
    if not creds:
        raise InvalidInput("the selection matches no credential: nothing to roll out")
    if len(creds) > MAX_ITEMS:
        raise InvalidInput(f"a rollout holds at most {MAX_ITEMS} credentials, not {len(creds)}")
    tenant = await svc.tenant(principal.tenant)
    now = svc.clock()
    starts = plan_starts(len(creds), now, stagger, max_per_minute)
    rollout_id = str(uuid.uuid4())
    selector: dict[str, Any] = {
        "names": list(sel.names),
        "tags": dict(sel.tags or {}),
        "all": sel.all,
    }

    def write(conn: Connection) -> RolloutView:
        store.insert_rollout(
            conn,
            rollout_id=rollout_id,
            tenant_id=tenant.id,
            selector=selector,
            stagger_s=int(stagger.total_seconds()),
            max_per_minute=max_per_minute,
            halt_pct=halt.pct,
            halt_window=halt.window,
            created_by=principal.name,
            now=now,
            items=[(c.name, at) for c, at in zip(creds, starts, strict=True)],
        )
        svc.kernel.audit(
            conn,
            principal,
            "rollout.created",
            None,
            None,
            {
                "rollout": rollout_id,
                "selector": selector,
                "credentials": len(creds),
                "stagger_s": int(stagger.total_seconds()),
                "max_per_minute": max_per_minute,
                "halt": halt.describe(),
                "planned_end": starts[-1].isoformat(),
                "fits_window": fits(len(creds), stagger, max_per_minute),
            },
        )
        return _view(conn, _get(conn, rollout_id, principal.tenant))

    return await svc.engine.writer.run(write)


async def list_rollouts(
    svc: RotatorService, principal: Principal = LOCAL_PRINCIPAL
) -> list[RolloutView]:
    """The tenant's rollouts, oldest first. Needs ROTATION_READ tenant-wide."""
    await svc.authorize(principal, Action.ROTATION_READ)
    # Reading creates no tenant.
    tenant = await svc._existing_tenant(principal)
    if tenant is None:
        return []

    def read(conn: Connection) -> list[RolloutView]:
        return [_view(conn, ro) for ro in store.list_rollouts(conn, tenant.id)]

    return await svc.engine.runtime.read(read)


async def status(
    svc: RotatorService, rollout_id: str, principal: Principal = LOCAL_PRINCIPAL
) -> RolloutView:
    """One rollout's state; NotFound if the tenant has no such rollout. Needs ROTATION_READ
    tenant-wide."""
    await svc.authorize(principal, Action.ROTATION_READ)
    return await _status(svc, rollout_id, principal)


async def _status(svc: RotatorService, rollout_id: str, principal: Principal) -> RolloutView:
    return await svc.engine.runtime.read(
        lambda conn: _view(conn, _get(conn, rollout_id, principal.tenant))
    )


async def resume(
    svc: RotatorService, rollout_id: str, principal: Principal = LOCAL_PRINCIPAL
) -> RolloutView:
    """Clear a halt (audited ``rollout.resumed``): the rollout runs again and its failure
    window starts afresh. A running rollout is left as it is. InvalidInput for a rollout that
    is done or aborted; NotFound for an unknown one. Needs ROTATE tenant-wide."""
    await svc.authorize(principal, Action.ROTATE)
    now = svc.clock()

    def write(conn: Connection) -> RolloutView:
        ro = store.get_rollout(conn, rollout_id, for_update=True)
        if ro is None or ro.tenant != principal.tenant:
            raise NotFound(f"no rollout {rollout_id[:64]!r}")
        if ro.status in ("done", "aborted"):
            raise InvalidInput(f"rollout {rollout_id} is {ro.status}: nothing to resume")
        if ro.status == "halted":
            store.set_status(conn, ro.id, "running", now, window_floor=ro.finished_count)
            svc.kernel.audit(
                conn,
                principal,
                "rollout.resumed",
                None,
                None,
                {"rollout": ro.id, "halt_reason": ro.halt_reason},
            )
            ro = _get(conn, rollout_id, principal.tenant)
            if sched.finish_if_done(conn, svc.kernel, ro, now):
                ro = _get(conn, rollout_id, principal.tenant)
        return _view(conn, ro)

    return await svc.engine.writer.run(write)


async def abort(
    svc: RotatorService, rollout_id: str, principal: Principal = LOCAL_PRINCIPAL
) -> RolloutView:
    """Stop a rollout for good (audited ``rollout.aborted``): its pending items become
    ``skipped``; items under way finish and are recorded. InvalidInput for a rollout that is
    done or aborted; NotFound for an unknown one. Needs ROTATE tenant-wide."""
    await svc.authorize(principal, Action.ROTATE)
    now = svc.clock()

    def write(conn: Connection) -> RolloutView:
        ro = store.get_rollout(conn, rollout_id, for_update=True)
        if ro is None or ro.tenant != principal.tenant:
            raise NotFound(f"no rollout {rollout_id[:64]!r}")
        if ro.status in ("done", "aborted"):
            raise InvalidInput(f"rollout {rollout_id} is {ro.status} already")
        skipped = store.skip_pending(conn, ro.id, now)
        store.set_status(conn, ro.id, "aborted", now, reason=ro.halt_reason)
        svc.kernel.audit(
            conn,
            principal,
            "rollout.aborted",
            None,
            None,
            {"rollout": ro.id, "skipped": skipped, "was": ro.status},
        )
        return _view(conn, _get(conn, rollout_id, principal.tenant))

    return await svc.engine.writer.run(write)


async def run(
    svc: RotatorService,
    rollout_id: str,
    *,
    poll_s: float = 1.0,
    on_tick: Callable[[RolloutView], None] | None = None,
    principal: Principal = LOCAL_PRINCIPAL,
) -> RolloutView:
    """Carry a rollout on in this process until it is no longer running (done, halted or
    aborted) and return its final state. Each tick resumes dead rotations, starts the items
    whose time has come (``rotator.scheduler.rollouts.advance``) and sleeps until the next
    planned start (at most ``poll_s``). Interrupted, the rollout stays as it is in the store:
    ``resume`` (or a worker) carries it on. Needs ROTATE tenant-wide. The store's owner
    sweeps the whole store each tick; anyone else only its tenant's credentials (see
    :func:`rotator.service.rotation.owner_sweep`)."""
    await svc.authorize(principal, Action.ROTATE)
    engine = svc.engine
    view = await _status(svc, rollout_id, principal)
    sweep = owner_sweep(principal, [c.id for c in await svc.find_credentials(principal)])
    while view.status == "running":
        await engine.recover(sweep)
        await engine.process_revocations(sweep)
        await sched.advance(engine, svc.clock(), rollout_id=rollout_id)
        view = await _status(svc, rollout_id, principal)
        if on_tick is not None:
            on_tick(view)
        if view.status != "running":
            break
        wait = poll_s
        if view.next_planned_at is not None:
            wait = min(poll_s, (view.next_planned_at - svc.clock()).total_seconds())
        await asyncio.sleep(max(MIN_WAIT_S, wait))
    return view


__all__ = ["RolloutView", "abort", "create", "list_rollouts", "resume", "run", "status"]
