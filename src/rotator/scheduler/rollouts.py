"""Progress of staggered rollouts: start the items whose planned time has come, record their
outcomes, halt a rollout whose failure rate passes its threshold, finish it when every item is
done.

:func:`advance` is safe to call from several processes at once: items are claimed in a store
transaction (see ``rotator.store.rollouts.claim_due``) before anything is rotated, each claim
holds a lease renewed while its process runs the item, and an item whose process died is
settled from the rotation its claim started (the rotation carries the rollout's id as its
``batch_id``): finished or failed, it is recorded; never started, it is released to be claimed
again; under way, it waits for the engine's recovery. So an item is rotated at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Connection

from rotator.domain.principal import Principal
from rotator.engine import Engine, Outcome, RotationRequest, RotationResult, Trigger
from rotator.engine.ownership import owner_dead
from rotator.engine.runtime import Runtime
from rotator.engine.values import ENGINE_ACTOR
from rotator.errors import RotatorError
from rotator.kernel import Kernel
from rotator.policy.rollout import HaltRule, claims_allowed, rate_lookback
from rotator.store import rollouts as store

_ROTATED_STEPS = ("finished",)
_FAILED_STEPS = ("rolled_back", "failed")


async def advance(engine: Engine, now: datetime, *, rollout_id: str | None = None) -> int:
    """Start rollout items whose planned time is ``now`` or past (all running rollouts, or
    only ``rollout_id``) as normal-priority rotations (``Trigger.ROLLOUT``) through
    ``engine``; wait for them and record each outcome. Returns how many items this call
    started. Per rollout, at most its rate allows (``policy.rollout.starts_allowed``) and at
    most as many as its halt rule still tolerates failing (``HaltRule.claims_tolerated``), so
    a failing target halts it after the threshold's worth of failures however overdue it is;
    the other due items wait for the next call.

    First settles items whose claimer died (see the module docstring). Halts a rollout (status
    ``halted``, audited ``rollout.halted`` with the reason) when its halt rule trips; marks it
    ``done`` (audited) when no item is pending or running. Never raises for an item's failure.
    Cancelled (Ctrl-C), it expires its claims at once so the next call settles them."""
    rt = engine.runtime
    kernel = rt.kernel
    await rt.writer.run(partial(_settle, kernel=kernel, now=now, rollout_id=rollout_id))
    due = await rt.read(partial(store.due_rollouts, now=now, rollout_id=rollout_id))
    lease = timedelta(seconds=engine.opts.lease_s)
    claimed: list[store.ClaimedItem] = []
    for rid in due:
        claimed += await rt.writer.run(
            partial(
                store.claim_due,
                rollout_id=rid,
                now=now,
                owner=rt.owner,
                lease_until=now + lease,
                lookback=rate_lookback,
                cap=_claims_allowed,
            )
        )
    if not claimed:
        return 0
    by_rollout: dict[str, list[store.ClaimedItem]] = defaultdict(list)
    for item in claimed:
        by_rollout[item.rollout_id].append(item)
    ids = [i.id for i in claimed]
    heartbeat = asyncio.create_task(_heartbeat(engine, ids, now, lease))
    try:
        started = await asyncio.gather(
            *(_run(engine, rid, items, now, lease) for rid, items in by_rollout.items())
        )
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            expired = rt.now() - timedelta(milliseconds=1)
            await asyncio.shield(
                rt.writer.run(partial(store.renew, item_ids=ids, owner=rt.owner, until=expired))
            )
        raise
    finally:
        heartbeat.cancel()
    return sum(started)


def _claims_allowed(
    ro: store.RolloutRow, started: int, recent_failed: list[bool], running: int
) -> int:
    rule = HaltRule(ro.halt_pct, ro.halt_window)
    return claims_allowed(ro.max_per_minute, started, rule, recent_failed, running)


async def next_due(engine: Engine) -> datetime | None:
    """The planned start of the next pending item of any running rollout (for a loop's sleep)."""
    return await engine.runtime.read(store.next_planned_any)


def _until(rt: Runtime, now: datetime, lease: timedelta) -> datetime:
    # Leases count from the later of the caller's ``now`` and the engine's clock: a caller
    # may pass a time ahead of the clock, and a lease must not end before the claim's own.
    return max(now, rt.now()) + lease


async def _heartbeat(engine: Engine, ids: list[int], now: datetime, lease: timedelta) -> None:
    rt = engine.runtime
    while True:
        await asyncio.sleep(lease.total_seconds() / 3)
        # A missed beat (the store unavailable) is tried again at the next one; an item whose
        # lease ran out meanwhile may be settled by another process, and the rotation's guard
        # (store.check_held) then keeps this one from starting it.
        with contextlib.suppress(RotatorError):
            await rt.writer.run(
                partial(store.renew, item_ids=ids, owner=rt.owner, until=_until(rt, now, lease))
            )


async def _run(
    engine: Engine, rollout_id: str, items: list[store.ClaimedItem], now: datetime, lease: timedelta
) -> int:
    rt = engine.runtime
    # Confirm the claims right before the rotations start: a process that stalled past its
    # lease since claiming may have had its items settled and claimed by another.
    held = await rt.writer.run(
        partial(
            store.renew,
            item_ids=[i.id for i in items],
            owner=rt.owner,
            until=_until(rt, now, lease),
        )
    )
    items = [i for i in items if i.id in held]
    if not items:
        return 0
    reqs = [
        RotationRequest(
            i.credential,
            i.tenant,
            Trigger.ROLLOUT,
            guard=partial(store.check_held, item_id=i.id, owner=rt.owner),
            requested_by=i.created_by,
        )
        for i in items
    ]
    # Recorded one by one as they end, so a halt stops the next claims as early as it can.
    pending: list[asyncio.Task[None]] = []
    by_name = {i.credential: i for i in items}

    def on_result(res: RotationResult) -> None:
        item = by_name.get(res.name)
        if item is not None:
            pending.append(asyncio.ensure_future(_record_result(engine, item, res)))

    await engine.rotate(reqs, batch_id=rollout_id, progress=on_result)
    await asyncio.gather(*pending)
    return len(items)


async def _record_result(engine: Engine, item: store.ClaimedItem, res: RotationResult) -> None:
    rt = engine.runtime
    if res.outcome is Outcome.SKIPPED:
        return  # not started: the item is another process's now, and so is its outcome
    ok = res.outcome is Outcome.ROTATED
    await rt.writer.run(
        partial(
            record,
            kernel=rt.kernel,
            item_id=item.id,
            ok=ok,
            rotation_id=res.rotation_id,
            error=None if ok else (res.error or res.outcome.value),
            now=rt.now(),
        )
    )


def record(
    conn: Connection,
    *,
    kernel: Kernel,
    item_id: int,
    ok: bool,
    rotation_id: str | None,
    error: str | None,
    now: datetime,
) -> None:
    """Record a running item's outcome in ``conn``'s transaction; halt or finish its rollout
    when that follows. Idempotent: an item recorded already is left alone."""
    ro = store.finish_item(conn, item_id, ok=ok, rotation_id=rotation_id, error=error, now=now)
    if ro is None or ro.status != "running":
        return
    rule = HaltRule(ro.halt_pct, ro.halt_window)
    recent = store.recent_outcomes(conn, ro)
    if not ok and rule.trips(recent):
        failed = sum(recent)
        reason = (
            f"{failed} of the last {len(recent)} finished rotations failed "
            f"(halt at more than {rule.pct}% of {rule.window})"
        )
        store.set_status(conn, ro.id, "halted", now, reason=reason)
        _audit(kernel, conn, ro, "rollout.halted", reason=reason, last_error=error)
        return
    finish_if_done(conn, kernel, ro, now)


def finish_if_done(conn: Connection, kernel: Kernel, ro: store.RolloutRow, now: datetime) -> bool:
    """Mark a running rollout with no pending or running item ``done`` (audited)."""
    if ro.status != "running" or store.open_items(conn, ro.id):
        return False
    store.set_status(conn, ro.id, "done", now)
    _audit(kernel, conn, ro, "rollout.done", counts=store.counts(conn, ro.id))
    return True


def _audit(
    kernel: Kernel, conn: Connection, ro: store.RolloutRow, action: str, **details: object
) -> None:
    kernel.audit(
        conn, Principal(name=ENGINE_ACTOR, tenant=ro.tenant, owner=True), action, None, None,
        {"rollout": ro.id, **details},
    )  # fmt: skip


def _settle(conn: Connection, *, kernel: Kernel, now: datetime, rollout_id: str | None) -> None:
    """Settle the running items whose claimer is gone: its lease ran out, or it was a process
    on this machine that no longer exists (``owner_dead``: no need to wait out the lease)."""
    for row in store.running_items(conn, rollout_id):
        lease = row.lease_expires_at
        expired = lease is None or lease < now
        if not (expired or owner_dead(row.claimed_by)):
            continue
        if row.step in _ROTATED_STEPS:
            record(conn, kernel=kernel, item_id=row.id, ok=True, rotation_id=row.rotation_id,
                   error=None, now=now)  # fmt: skip
        elif row.step in _FAILED_STEPS:
            record(conn, kernel=kernel, item_id=row.id, ok=False, rotation_id=row.rotation_id,
                   error=f"rotation {row.step}", now=now)  # fmt: skip
        elif row.step is None:
            store.release(conn, row.id, row.claimed_by)
        # Otherwise the rotation is under way, or its owner died: the engine's recovery
        # resumes or rolls it back, and a later call records the outcome.
