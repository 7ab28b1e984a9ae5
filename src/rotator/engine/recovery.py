"""Recovery and lost ownership: resuming rotations whose owner died, waiting for one another
process holds, and making the target agree with the store again after this process lost a
rotation it had made calls for."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Connection

from rotator.connectors import base as cbase
from rotator.domain.model import Stage
from rotator.domain.principal import Principal
from rotator.domain.secret import Secret
from rotator.engine.context import ContextLoader, Ctx
from rotator.engine.options import MAX_LEASE_S
from rotator.engine.ownership import Lease, Leases, owner_dead
from rotator.engine.protocol import Protocol
from rotator.engine.runtime import Runtime
from rotator.engine.steps import StepRunner
from rotator.engine.types import Outcome, RotationRequest, RotationResult, Trigger
from rotator.engine.values import ENGINE_ACTOR
from rotator.errors import ConnectorError, LostOwnership, RotationError, RotatorError
from rotator.store import credentials as store_creds
from rotator.store import rotations as store_rot
from rotator.store.keys import tenant_name

# No process grants a lease longer than MAX_LEASE_S (ROTATOR_LEASE_SECONDS is capped there)
# and hosts' clocks agree within minutes, so a lease ending later than this from now was taken
# by a clock far ahead of ours (or by one that stepped back since). Whether its owner lives
# cannot be told: treat the lease as run out rather than wait days for it; fencing keeps a live
# owner from writing, and it makes its target agree with the store again. Such a takeover is
# audited with reason "lease beyond horizon" (a live worker whose clock is far ahead churns).
CLOCK_SKEW_S = 300.0
LEASE_HORIZON_S = MAX_LEASE_S + CLOCK_SKEW_S


class Recovery:
    def __init__(
        self,
        rt: Runtime,
        leases: Leases,
        steps: StepRunner,
        loader: ContextLoader,
        protocol: Protocol,
    ) -> None:
        self.rt = rt
        self.leases = leases
        self.steps = steps
        self.loader = loader
        self.protocol = protocol

    # -- resuming ---------------------------------------------------------------------------

    async def recover(self, credential_ids: list[int] | None = None) -> list[RotationResult]:
        """Resume every rotation whose owner died (lease ran out, or its local pid is gone);
        only those of ``credential_ids`` when given (None: every one in the store)."""
        now = self.rt.now()
        horizon = self._horizon(now)

        def find(conn: Connection) -> list[store_rot.RotationRow]:
            dead = [o for o in store_rot.active_owners(conn) if owner_dead(o)]
            return store_rot.stale_rotations(conn, now, dead, horizon)

        rows = await self.rt.read(find)
        if credential_ids is not None:
            wanted = set(credential_ids)
            rows = [r for r in rows if r.credential_id in wanted]
        results = await asyncio.gather(*(self.resume(r) for r in rows))
        return [r for r in results if r is not None]

    def _horizon(self, now: datetime) -> datetime:
        """Leases ending after this are taken by a clock far ahead (LEASE_HORIZON_S)."""
        return now + timedelta(seconds=max(LEASE_HORIZON_S, 2 * self.rt.opts.lease_s))

    async def resume(self, row: store_rot.RotationRow) -> RotationResult | None:
        """Take ``row`` over under a new token (its old owner can no longer write it) and
        drive it on; None when another process claimed it first or its owner renewed."""
        rt = self.rt
        until = rt.now() + timedelta(seconds=rt.opts.lease_s)
        lease = Lease.new(rt.opts.lease_s)
        dead = owner_dead(row.owner)
        # Taken only because its lease ends beyond the horizon (not run out, owner not known
        # dead): audited as such, so a live worker with a clock far ahead is visible.
        beyond = (
            not dead
            and row.lease_expires_at is not None
            and row.lease_expires_at > self._horizon(rt.now())
        )

        def take(c: Connection) -> bool:
            now = rt.now()
            return store_rot.take_over(
                c, row, rt.owner, lease.fence, until, now,
                owner_dead=dead, horizon=self._horizon(now),
            )  # fmt: skip

        took = await rt.writer.run(take)
        if not took:
            return None
        self.leases.held[row.id] = lease
        tenant = await rt.read(lambda c: tenant_name(c, row.tenant_id))
        req = RotationRequest(
            name=row.credential, tenant=tenant, trigger=Trigger(row.trigger), grace_s=row.grace_s
        )
        try:
            ctx = await self.loader.prepare(req)
        except RotatorError as exc:
            msg = f"{exc}; not resumed, so the target may still hold version {row.version}"

            def give_up(c: Connection) -> None:
                # The credential cannot be loaded (e.g. its stages were edited outside
                # rotator): touch nothing on the target, but end the rotation and free the
                # credential, so a repaired store can rotate it again.
                now = rt.now()
                store_rot.set_step(c, row.id, "failed", now, fence=lease.fence, error=msg)
                store_rot.release_lock(c, row.credential_id, row.id)
                # Signed, like every end of a rotation: the evidence record compares the
                # rotations row with it.
                rt.kernel.audit(
                    c,
                    Principal(name=ENGINE_ACTOR, tenant=tenant, owner=True),
                    "rotation.failed",
                    row.credential,
                    row.id,
                    {
                        "step": "resume",
                        "error": msg,
                        "trigger": row.trigger,
                        "version": row.version,
                        "finished_at": now.isoformat(),
                    },
                )

            # This process made no call: a claim lost meanwhile needs no repair.
            with contextlib.suppress(LostOwnership):
                await rt.writer.run(give_up)
            self.leases.drop(row.id)
            return RotationResult(row.credential, Outcome.FAILED, row.id, error=str(exc))
        ctx.rotation_id = row.id
        ctx.grace_s = row.grace_s
        ctx.lease = lease
        ctx.touched_target = True  # we cannot know: roll back to be safe
        if row.version is None:  # intent never completed: nothing reached the target

            def abandon(c: Connection) -> None:
                now = rt.now()
                rt.step(c, ctx, "failed", now=now, error="abandoned before intent")
                store_rot.release_lock(c, ctx.cred.id, row.id)
                rt.audit_in(
                    c,
                    ctx,
                    "rotation.failed",
                    step="resume",
                    error="abandoned before intent",
                    finished_at=now.isoformat(),
                )

            with contextlib.suppress(LostOwnership):
                await rt.writer.run(abandon)
            self.leases.drop(row.id)
            return RotationResult(row.credential, Outcome.FAILED, row.id, error="abandoned")
        ctx.version = row.version
        sv = await rt.read(lambda c: store_creds.sealed_version(c, ctx.cred.id, number=row.version))
        assert sv is not None
        ctx.pending = await rt.read(lambda c: rt.kernel.open_version(c, sv))
        await rt.audit(
            ctx,
            "rotation.resume",
            from_step=row.step,
            previous_owner=row.owner,
            **({"reason": "lease beyond horizon"} if beyond else {}),
        )
        if row.trigger == Trigger.GROUP.value:
            # An all-or-nothing group cannot finish one member alone: undo it.
            return await self.protocol.rollback(
                ctx, RotationError("group rotation interrupted; rolled back")
            )
        return await self.protocol.drive(ctx, row.step)

    async def wait_for(self, rotation_id: str, ctx: Ctx) -> RotationResult:
        """Wait for a rotation another process holds; take it over if its owner dies."""
        deadline = time.monotonic() + self.rt.opts.join_timeout_s
        delay = 0.05
        while time.monotonic() < deadline:
            row = await self.rt.read(lambda c: store_rot.get_rotation(c, rotation_id))
            if row is None:
                return RotationResult(
                    ctx.cred.name,
                    Outcome.FAILED,
                    rotation_id,
                    error="the rotation it joined vanished",
                )
            if row.terminal:
                return _result_from_row(row)
            now = self.rt.now()
            if (
                row.lease_expires_at is not None
                and not now <= row.lease_expires_at <= self._horizon(now)
            ) or owner_dead(row.owner):
                resumed = await self.resume(row)
                if resumed is not None:
                    return resumed
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        return RotationResult(
            ctx.cred.name,
            Outcome.FAILED,
            rotation_id,
            error="timed out waiting for the rotation under way",
        )

    # -- lost ownership ---------------------------------------------------------------------

    async def lost(self, ctx: Ctx, cause: LostOwnership) -> RotationResult:
        """This process lost the rotation (its lease ran out; another process took it over).

        A call of ours may have reached the target after the new owner's, so when we made a
        call that can change the target, one repair call makes it agree with the store again
        (see _repair). Then stop: no other connector call for this rotation. The loss and the
        repair are audited (no values)."""
        if ctx.lease is not None:
            ctx.lease.lost = True
        self.leases.drop(ctx.rotation_id)
        await self.rt.audit(
            ctx, "rotation.lost", last_call=ctx.last_write or "none", error=str(cause)
        )
        if ctx.last_write is None:
            note = "this process changed nothing on the target"
        else:
            try:
                note = await self._repair(ctx)
            except (ConnectorError, RotatorError) as exc:
                note = f"repairing the target failed: {exc}"
                await self.rt.audit(ctx, "rotation.repair_failed", error=str(exc))
        return RotationResult(
            ctx.cred.name, Outcome.FAILED, ctx.rotation_id, ctx.version, error=f"{cause}; {note}"
        )

    def _store_view(
        self, conn: Connection, ctx: Ctx
    ) -> tuple[Stage | None, Secret | None, int | None, str | None]:
        """(stage of our version, CURRENT value, CURRENT number, lock holder), read fresh and
        through the stage-map check (IntegrityError: no repair from edited stages)."""
        kernel = self.rt.kernel
        kernel.check_stage_map(conn, ctx.cred.id)
        own = store_creds.sealed_version(conn, ctx.cred.id, number=ctx.version)
        cur = store_creds.sealed_version(conn, ctx.cred.id, stage=Stage.CURRENT)
        current = kernel.open_version(conn, cur) if cur is not None else None
        return (
            own.stage if own is not None else None,
            current,
            cur.number if cur is not None else None,
            store_rot.lock_holder(conn, ctx.cred.id),
        )

    async def _repair(self, ctx: Ctx) -> str:
        """Make the target agree with the store after this process lost the rotation: one
        call, chosen by repair_action from the strategy, our last call and the store read
        fresh. Waits (up to join_timeout_s) while another rotation holds the credential, so
        a stale write of ours that landed during it is overwritten after it; while the new
        owner of ours holds it with our version still PENDING, waits one lease for it to end
        that version (it may be deciding), then leaves the version to it. A CURRENT asserted
        again is checked once more after the call: if a rotation started and finished
        meanwhile, the repair runs again for the new CURRENT (at most three times). Returns
        what it did; raises the connector's error if the repair call failed."""
        deadline = time.monotonic() + self.rt.opts.join_timeout_s
        note = ""
        for _ in range(3):
            asserted, note = await self._repair_once(ctx, deadline)
            if asserted is None:
                return note
            _, _, now_no, holder = await self.rt.read(partial(self._store_view, ctx=ctx))
            if now_no == asserted and holder is None:
                return note
        return note

    async def _repair_once(self, ctx: Ctx, deadline: float) -> tuple[int | None, str]:
        """One repair decision and call; returns (the CURRENT number it asserted, or None;
        what it did)."""
        assert ctx.pending is not None
        ours = ctx.pending
        strategy = cbase.strategy_of(ctx.impl, ctx.cfg)
        delay = 0.05
        # Our own version, still PENDING under its new owner: that owner drives it and will
        # end it (roll back, or finish); give it one lease to do so, then leave it to it.
        ours_until = time.monotonic() + self.rt.opts.lease_s
        while True:
            stage, current, current_no, holder = await self.rt.read(
                partial(self._store_view, ctx=ctx)
            )
            if holder is None:
                break
            if (
                holder == ctx.rotation_id
                and stage is Stage.PENDING
                and time.monotonic() > ours_until
            ):
                break
            if time.monotonic() > deadline:
                raise RotationError("another rotation kept the credential busy; not repaired")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        asserted: int | None = None
        action = repair_action(
            strategy, ctx.last_write, stage, current_no, ctx.version, ctx.current_version
        )
        left = ours if ctx.last_write in ("set", "finish") else ctx.current
        c = ctx.cred.name
        call: Callable[[], Awaitable[None]] | None = None
        if action == "assert-current" and current is not None and current_no is not None:
            asserted = current_no
            req = cbase.SetRequest(c, current_no, ctx.cfg, current, left, ctx.secrets, ctx.fence)
            call = partial(ctx.impl.set, req)
        elif action == "remove-own":
            rb = cbase.RollbackRequest(
                c, ctx.version, ctx.cfg, ours, current, ctx.secrets, ctx.fence
            )
            call = partial(ctx.impl.rollback, rb)
        elif action == "restore-own":
            req = cbase.SetRequest(c, ctx.version, ctx.cfg, ours, current, ctx.secrets, ctx.fence)
            call = partial(ctx.impl.set, req)
        else:
            action = "none"
        if call is not None:
            await self.steps.repair_call(ctx, call)
        await self.rt.audit(
            ctx,
            "rotation.repair",
            repair=action,
            strategy=strategy.value,
            last_call=ctx.last_write,
            version_stage=stage.value if stage is not None else None,
            current_version=current_no,
        )
        return asserted, f"target repaired ({action})"


def repair_action(
    strategy: cbase.Strategy,
    last_write: str | None,
    own_stage: Stage | None,
    current_no: int | None,
    own_no: int,
    old_current_no: int | None,
) -> str:
    """What makes the target agree with the store after an owner lost its rotation, given
    the last call it made that can change the target (``last_write``: set, finish or
    rollback; a stalled one may have landed after the new owner's calls):

    - our version still PENDING: "none": the new owner is driving this very version and its
      own steps (set is idempotent, test checks) settle the target;
    - ``single`` (one secret): the target must hold the store's CURRENT: "assert-current"
      (set CURRENT again) unless our call left exactly CURRENT there;
    - ``dual`` (several valid secrets) and ``alternating`` (two accounts): our value must be
      valid on the target exactly while the store holds it CURRENT or PREVIOUS. After a set or
      finish that is "remove-own" (rollback of our value, which on an alternating target
      resets its account, or puts CURRENT back when CURRENT's account now holds our value)
      unless the store still holds it valid; after a rollback (which removed our value) it is
      "restore-own" (set it again) if the store holds it valid. A PREVIOUS on the other
      account of an alternating target that our stale write overwrote is not restored: it
      stays unusable until its revocation (documented limit).
    """
    if own_stage is Stage.PENDING:
        return "none"
    if strategy is cbase.Strategy.SINGLE:
        left = own_no if last_write in ("set", "finish") else old_current_no
        return "none" if left is not None and left == current_no else "assert-current"
    valid = own_stage in (Stage.CURRENT, Stage.PREVIOUS)
    if last_write == "rollback":
        return "restore-own" if valid else "none"
    return "none" if valid else "remove-own"


def _result_from_row(row: store_rot.RotationRow) -> RotationResult:
    outcome = {"finished": Outcome.ROTATED, "rolled_back": Outcome.ROLLED_BACK}.get(
        row.step, Outcome.FAILED
    )
    return RotationResult(row.credential, outcome, row.id, row.version, row.error, joined=True)
