"""Rotation use cases: select credentials, plan, rotate (through the service's engine),
recover, and the scheduler loop of ``rotator worker``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from rotator import scheduler
from rotator.domain import names as names_mod
from rotator.domain.model import Credential
from rotator.domain.policy import parse_duration
from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.engine import (
    BatchResult,
    EngineOptions,
    Outcome,
    RotationRequest,
    RotationResult,
    Trigger,
)
from rotator.engine.options import MAX_LEASE_S
from rotator.engine.types import StillValid
from rotator.errors import ConcurrentModification, InvalidInput, NotFound, StoreError
from rotator.service import forwarding, webhooks
from rotator.service.checkpoints import PeriodicCheckpoints
from rotator.service.credentials import RotatorService
from rotator.store import rotations as store_rot

MAX_CONCURRENCY = 1024


@dataclass(frozen=True, slots=True)
class Selection:
    """Which credentials to rotate: names, all tags, or all. At least one is required."""

    names: Sequence[str] = ()
    tags: Mapping[str, str] | None = None
    all: bool = False

    def check(self) -> None:
        if self.all and (self.names or self.tags):
            raise InvalidInput("--all excludes NAMEs and --tag")
        if not (self.all or self.names or self.tags):
            raise InvalidInput("name credentials to rotate, or use --tag or --all")
        for n in self.names:
            names_mod.check_credential_name(n)
        names_mod.check_tag_filter(self.tags or {})


def options_from_env(
    concurrency: int | None = None, per_target: int | None = None
) -> EngineOptions:
    """Engine options; ROTATOR_LEASE_SECONDS overrides the lease (tests shorten it)."""
    base = EngineOptions()
    kw: dict[str, Any] = {}
    if concurrency is not None:
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise InvalidInput(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
        kw["concurrency"] = concurrency
        kw["per_target"] = max(base.per_target, concurrency) if per_target is None else per_target
    if per_target is not None:
        if not 1 <= per_target <= MAX_CONCURRENCY:
            raise InvalidInput(f"--per-target must be between 1 and {MAX_CONCURRENCY}")
        kw["per_target"] = per_target
    lease = os.environ.get("ROTATOR_LEASE_SECONDS")
    if lease:
        kw["lease_s"] = parse_lease(lease)
    return dataclasses.replace(base, **kw)


def parse_lease(text: str) -> float:
    """``ROTATOR_LEASE_SECONDS`` as seconds: a finite number above 0 and at most a day.

    0, negative, NaN and infinite leases are refused (InvalidInput, one line): a lease that
    never runs out would keep a dead owner's rotation forever, one of 0 or less would let
    every process take over every rotation at once."""
    try:
        lease = float(text)
    except ValueError:
        raise InvalidInput("ROTATOR_LEASE_SECONDS must be a number of seconds") from None
    if not math.isfinite(lease) or not 0 < lease <= MAX_LEASE_S:
        raise InvalidInput(
            f"ROTATOR_LEASE_SECONDS must be a number of seconds above 0 and at most "
            f"{MAX_LEASE_S:g}, not {text.strip()!r}"
        )
    return lease


async def select(
    svc: RotatorService,
    sel: Selection,
    principal: Principal = LOCAL_PRINCIPAL,
    *,
    action: Action = Action.ROTATE,
) -> list[Credential]:
    """The credentials a selection names; NotFound naming the first unknown name.

    The one permission check of a use case acting on a selection: each NAME needs
    ``action`` (one denied: PermissionDenied before anything is looked up); ``--tag`` and
    ``--all`` select only the credentials the principal may do ``action`` on
    (PermissionDenied if its role may not do it at all)."""
    sel.check()
    if sel.names:
        for n in dict.fromkeys(sel.names):
            await svc.authorize(principal, action, n)
        return await _named(svc, sel, principal)
    return await svc.permitted_credentials(principal, action, tags=sel.tags)


async def _named(svc: RotatorService, sel: Selection, principal: Principal) -> list[Credential]:
    """The credentials ``sel.names`` (and ``sel.tags``) select, unchecked."""
    wanted = set(sel.names)
    found = {c.name: c for c in await svc.find_credentials(principal) if c.name in wanted}
    missing = [n for n in sel.names if n not in found]
    if missing:
        raise NotFound(f"no credential {missing[0]!r}")
    chosen = [found[n] for n in dict.fromkeys(sel.names)]
    if sel.tags:
        chosen = [c for c in chosen if all(c.tags.get(k) == v for k, v in sel.tags.items())]
    return chosen


async def plan(
    svc: RotatorService,
    sel: Selection,
    *,
    emergency: bool = False,
    principal: Principal = LOCAL_PRINCIPAL,
) -> list[dict[str, Any]]:
    """What a rotation would do, in order, without doing it (``--dry-run``); see
    :meth:`rotator.engine.Engine.plan` for the fields of each step. Needs ROTATE, checked as
    in :func:`select`."""
    return svc.engine.plan(await select(svc, sel, principal), emergency=emergency)


async def rotate(
    svc: RotatorService,
    sel: Selection,
    *,
    emergency: bool = False,
    progress: Callable[[RotationResult], None] | None = None,
    on_selected: Callable[[int], None] | None = None,
    principal: Principal = LOCAL_PRINCIPAL,
) -> BatchResult:
    """Rotate the selected credentials now. Emergency: highest priority, grace 0, old value
    revoked before this returns. First resumes rotations whose process died and revokes
    values whose grace ended: the owner's anywhere in the store, anyone else's only of the
    selected credentials (:func:`owner_sweep`). Never raises for a single credential's
    failure.

    Credentials named one by one (``rotator rotate NAME``) are interactive: the engine admits
    them ahead of queued batch work; a selection by tag or ``--all`` is batch work. Needs
    ROTATE, checked as in :func:`select` (a named credential denied: nothing runs)."""
    creds = await select(svc, sel, principal)
    if on_selected is not None:
        on_selected(len(creds))
    trigger = Trigger.EMERGENCY if emergency else Trigger.MANUAL
    interactive = bool(sel.names)
    reqs = [
        RotationRequest(
            c.name,
            principal.tenant,
            trigger,
            0 if emergency else None,
            interactive=interactive,
            requested_by=principal.name,
        )
        for c in creds
    ]
    ids = {c.name: c.id for c in creds}
    result = await run_rotations(
        svc, reqs, ids, sweep=owner_sweep(principal, list(ids.values())), progress=progress
    )
    if emergency:
        await report_still_valid(svc, result, [c.id for c in creds])
    return result


def owner_sweep(principal: Principal, credential_ids: list[int]) -> list[int] | None:
    """What a use case's recovery and revocation sweeps cover: the whole store (None) for
    the store's owner; for anyone else only ``credential_ids``, the credentials it acts on
    (a principal must not resume, roll back or revoke another tenant's or another scope's
    rotations; the worker and ``rotator recover`` sweep the rest)."""
    return None if principal.owner else credential_ids


async def run_rotations(
    svc: RotatorService,
    reqs: list[RotationRequest],
    ids: Mapping[str, int],
    *,
    sweep: list[int] | None = None,
    progress: Callable[[RotationResult], None] | None = None,
    after: Callable[[BatchResult], Awaitable[None]] | None = None,
) -> BatchResult:
    """Resume rotations whose process died, revoke what is due, rotate ``reqs`` (``ids``: each
    request's credential id by name), then revoke what is due again.

    ``sweep``: the credentials whose dead rotations are resumed and whose due revocations
    are processed (None: every one in the store; see :func:`owner_sweep`). ``after`` runs
    as soon as the rotations end, before the last sweep (a caller records outcomes there,
    so a slow revocation does not delay them). An emergency that
    joined a rotation already under way got that rotation's grace: its replaced values are
    revoked at once here too (see :func:`revoke_now`)."""
    engine = svc.engine
    await engine.recover(sweep)
    await engine.process_revocations(sweep)
    result = await engine.rotate(reqs, progress=progress)
    if after is not None:
        await after(result)
    emergencies = {r.name for r in reqs if r.trigger is Trigger.EMERGENCY}
    joined = [
        ids[r.name]
        for r in result.results
        if r.joined and r.outcome is Outcome.ROTATED and r.name in emergencies
    ]
    try:
        await revoke_now(svc, joined)
        await engine.process_revocations(sweep)
    except StoreError as exc:
        # The store went away after the rotations ended: their outcomes are known and must
        # reach the caller (a lost report would hide which ones failed). What was due for
        # revocation stays queued in the store for the next sweep.
        result.sweep_error = f"revocations not processed: {exc}"
    return result


async def revoke_now(svc: RotatorService, credential_ids: list[int]) -> dict[int, bool]:
    """Emergency: every old (PREVIOUS) value of these credentials expires now and its queued
    revocation is processed now (a failed one stays queued with its error, see
    :func:`still_valid`). Returns {credential_id: revoked?} for those that had one queued."""
    if not credential_ids:
        return {}
    engine = svc.engine
    now = engine.runtime.now()

    def due_now(conn: Connection) -> None:
        for cid in credential_ids:
            store_rot.revoke_all_now(conn, cid, now)

    await engine.writer.run(due_now)
    return await engine.process_revocations(credential_ids)


async def still_valid(svc: RotatorService, credential_ids: list[int]) -> list[StillValid]:
    """Old values of these credentials that are still valid on their targets: every
    revocation still queued (after an emergency, whose grace is 0, each one is a revocation
    that failed and waits for its retry), with the connector's last error."""
    rows = await svc.engine.runtime.read(lambda c: store_rot.pending_revocations(c, credential_ids))
    return [StillValid(r.credential, r.version, r.last_error) for r in rows]


async def report_still_valid(
    svc: RotatorService, result: BatchResult, credential_ids: list[int]
) -> None:
    """After an emergency: ``result.still_valid`` (:func:`still_valid`); when the store
    went away after the rotations, still_valid stays None (not known) and the reason is
    added to ``result.sweep_error``, so the rotations' report still reaches the caller."""
    try:
        result.still_valid = await still_valid(svc, credential_ids)
    except StoreError as exc:
        result.still_valid = None
        result.sweep_error = join_sweep_errors(
            result.sweep_error, f"old values still valid not looked up: {exc}"
        )


def join_sweep_errors(first: str | None, second: str) -> str:
    return second if first is None else f"{first}; {second}"


async def rotate_group(
    svc: RotatorService,
    name: str,
    *,
    emergency: bool = False,
    principal: Principal = LOCAL_PRINCIPAL,
) -> BatchResult:
    """Rotate a coordinated group now (see Engine.rotate_group), after the sweeps of
    :func:`rotate` (a non-owner's: only the members). Needs ROTATE on every member."""
    group = await svc.group_for(principal, Action.ROTATE, name)
    members = {m.name for m in group.members}
    ids = [c.id for c in await svc.find_credentials(principal) if c.name in members]
    sweep = owner_sweep(principal, ids)
    await svc.engine.recover(sweep)
    await svc.engine.process_revocations(sweep)
    result = await svc.engine.rotate_group(
        group, principal.tenant, emergency=emergency, requested_by=principal.name
    )
    if emergency:
        await report_still_valid(svc, result, ids)
    return result


async def plan_group(
    svc: RotatorService,
    name: str,
    *,
    emergency: bool = False,
    principal: Principal = LOCAL_PRINCIPAL,
) -> list[dict[str, Any]]:
    """The order a group would rotate in (level by level), without doing it. Needs ROTATE
    on every member."""
    group = await svc.group_for(principal, Action.ROTATE, name)
    members = await _named(svc, Selection(names=[m.name for m in group.members]), principal)
    steps = {s["name"]: s for s in svc.engine.plan(members, emergency=emergency)}
    out = []
    for level_no, level in enumerate(group.levels(), 1):
        for n in level:
            out.append(
                {
                    **steps[n],
                    "order": level_no,
                    "level": level_no,
                    "trigger": "group" if group.all_or_nothing else steps[n]["trigger"],
                }
            )
    return out


async def recover(
    svc: RotatorService, principal: Principal = LOCAL_PRINCIPAL
) -> list[RotationResult]:
    """Resume or roll back rotations whose process died; then process due revocations.
    Every tenant's: needs STORE_ADMIN (the store's owner)."""
    await svc.authorize(principal, Action.STORE_ADMIN)
    results = await svc.engine.recover()
    await svc.engine.process_revocations()
    return results


WORKER_LOCK = "worker"


def scheduler_options(
    *,
    catch_up_window: str | None = None,
    max_rate: str | None = None,
    batch: int | None = None,
    listen: bool = True,
) -> scheduler.SchedulerOptions:
    """The worker's scheduler options from its command-line text; InvalidInput (one line)
    naming a bad one. Defaults: a 1h catch-up window, 600/m (see rotator.scheduler.pacing)."""
    kw: dict[str, Any] = {"listen": listen}
    if catch_up_window is not None:
        window = parse_duration(catch_up_window, "--catch-up-window")
        if window.total_seconds() < 0:
            raise InvalidInput("--catch-up-window must not be negative")
        kw["catch_up_window"] = window
    if max_rate is not None:
        kw["max_rate"] = scheduler.parse_rate(max_rate)
    if batch is not None:
        if not 1 <= batch <= MAX_CONCURRENCY * 4:
            raise InvalidInput(f"--batch must be between 1 and {MAX_CONCURRENCY * 4}")
        kw["batch"] = batch
    return scheduler.SchedulerOptions(**kw)


async def serve(
    svc: RotatorService,
    stop: asyncio.Event,
    *,
    poll_s: float = 5.0,
    on_batch: Callable[[BatchResult], None] | None = None,
    options: scheduler.SchedulerOptions | None = None,
    principal: Principal = LOCAL_PRINCIPAL,
    slot_held: bool = False,
) -> None:
    """Run the scheduler loop (rotator.scheduler.run) on the service's engine until ``stop``
    is set. On SQLite one worker at a time: a second is refused (InvalidInput, one line) while
    the first runs; the lock (``flock`` on ``<database>.worker.lock``) ends with its process,
    also when it is killed. ``slot_held``: the caller holds :func:`worker_slot` already
    (``rotator serve`` takes it before it listens, so a refused second server never
    announces itself). On PostgreSQL any number of workers share the work. The loop acts for
    every tenant: needs STORE_ADMIN (the store's owner)."""
    await svc.authorize(principal, Action.STORE_ADMIN)
    with contextlib.nullcontext() if slot_held else worker_slot(svc):
        # Signed audit checkpoints every ROTATOR_AUDIT_CHECKPOINT_S (service.checkpoints), and
        # SIEM forwarders, run beside the scheduler: they read the log at their own pace and
        # write only their own rows, so a dead target never holds a rotation up.
        periodic = PeriodicCheckpoints(svc, svc.settings.audit_checkpoint_s)
        checkpointing = asyncio.create_task(periodic.run(stop, poll_s), name="audit-checkpoints")
        fwd_stop = asyncio.Event()
        fwd = asyncio.create_task(
            forwarding.run_forwarders(svc, fwd_stop, poll_s=min(poll_s, 1.0)), name="forwarders"
        )
        hooks = asyncio.create_task(
            webhooks.run_webhooks(svc, fwd_stop, poll_s=min(poll_s, 1.0)), name="webhooks"
        )
        try:
            await scheduler.run(svc.engine, stop, poll_s=poll_s, on_batch=on_batch, options=options)
        finally:
            fwd_stop.set()
            with contextlib.suppress(Exception):
                await hooks
            checkpointing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checkpointing
            with contextlib.suppress(Exception):
                await fwd


@contextlib.contextmanager
def worker_slot(svc: RotatorService) -> Iterator[None]:
    """The right to run the scheduler on this store, for the block: on SQLite one process at
    a time (InvalidInput, one line, at once when another holds it); on PostgreSQL always."""
    db = svc.db
    if db.dialect != "sqlite":
        yield
        return
    busy = (
        "another rotator worker is running on this SQLite store "
        f"({db.sqlite_path}); run one worker per SQLite store, or use PostgreSQL to run several"
    )
    held = contextlib.ExitStack()
    try:
        held.enter_context(db.exclusive_lock(WORKER_LOCK, busy))
    except ConcurrentModification as exc:
        raise InvalidInput(str(exc)) from None
    with held:
        yield
