"""The rotation protocol for one credential: create -> intent -> set -> test -> finish, with
rollback, the stage move, sinks and the revocation of a grace-0 rotation.

The intent (the new value, encrypted, as a PENDING version, plus a rotation row and the
credential's lock) is written in one transaction before anything touches the target. A crash
at any point leaves a rotation row whose lease runs out; recovery resumes it from its last
durable step (see ``engine.recovery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from rotator.connectors import base as cbase
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.engine.breaker import CircuitOpen
from rotator.engine.context import ContextLoader, Ctx
from rotator.engine.ownership import Lease, Leases
from rotator.engine.revoker import Revoker
from rotator.engine.runtime import Runtime
from rotator.engine.steps import StepRunner
from rotator.engine.types import Outcome, RotationRequest, RotationResult, Trigger
from rotator.engine.values import Values
from rotator.errors import (
    ConcurrentModification,
    ConnectorError,
    IntegrityError,
    LostOwnership,
    RotatorError,
)
from rotator.sinks import load_sink
from rotator.sinks.base import (
    SinkDenied,
    SinkError,
    SinkRequest,
    SinkSuperseded,
    SinkUnavailable,
)
from rotator.store import credentials as store_creds
from rotator.store import rotations as store_rot
from rotator.telemetry import metrics, tracing

if TYPE_CHECKING:
    from rotator.engine.recovery import Recovery
    from rotator.sinks.exec import ExecSink
    from rotator.sinks.openbao import OpenBaoSink

_STALE = "stale"  # begin's answer when CURRENT moved after the context was loaded
_EARLIER = 20  # earlier values a sink may compare with what it finds (the newest ones)


class _Reread(SinkDenied):
    """A sink refused its token or secret_id: the cached value is dropped, the write retried
    once with a fresh read (the credential may have been replaced since it was cached)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Refused:
    """begin's answer when the request's guard refused the rotation."""

    reason: str


class Protocol:
    """Drives one rotation through its steps. ``recovery`` is wired in by the engine."""

    recovery: Recovery

    def __init__(
        self,
        rt: Runtime,
        leases: Leases,
        steps: StepRunner,
        loader: ContextLoader,
        values: Values,
        revoker: Revoker,
    ) -> None:
        self.rt = rt
        self.leases = leases
        self.steps = steps
        self.loader = loader
        self.values = values
        self.revoker = revoker

    async def rotate(
        self, req: RotationRequest, batch_id: str | None, prepared: Ctx | None = None
    ) -> RotationResult:
        """Start and drive one rotation; joins one of the same credential under way."""
        t0 = time.monotonic()
        started = await self.start(req, batch_id, prepared, join=True)
        if isinstance(started, RotationResult):
            return started
        res = await self.drive(started, "created")
        return dataclasses.replace(res, duration_s=time.monotonic() - t0)

    async def start(
        self, req: RotationRequest, batch_id: str | None, prepared: Ctx | None, *, join: bool
    ) -> Ctx | RotationResult:
        """Load, create the candidate and write the intent. Returns the context of a rotation
        now holding the lock, or a result: failed, or (``join``) that of the rotation of the
        same credential already under way."""
        try:
            ctx = prepared or await self.loader.prepare(req)
        except RotatorError as exc:
            return RotationResult(req.name, Outcome.FAILED, error=str(exc))
        guard = req.guard
        if guard is not None:
            # Before the value is made: a claim lost already costs nothing (checked again,
            # under lock, in the intent's transaction).
            now = self.rt.now()
            refused = await self.rt.read(lambda conn: guard(conn, now))
            if refused is not None:
                return RotationResult(req.name, Outcome.SKIPPED, error=f"not started: {refused}")
        if (
            cbase.strategy_of(ctx.impl, ctx.cfg) is cbase.Strategy.ALTERNATING
            and ctx.req.trigger is not Trigger.EMERGENCY
        ):
            await self._wait_out_grace(ctx)
        try:
            value = await self._create(ctx)
        except RotatorError as exc:
            await self.rt.audit(ctx, "rotation.failed", step="create", error=str(exc))
            return RotationResult(req.name, Outcome.FAILED, error=f"create: {exc}")
        ctx.rotation_id = str(uuid.uuid4())
        lease = Lease(fence=uuid.uuid4().hex, valid_until=0.0)
        loop = asyncio.get_running_loop()
        for _ in range(3):
            try:
                lease.valid_until = loop.time() + self.rt.opts.lease_s
                holder = await self.rt.writer.run(
                    partial(self._begin, ctx=ctx, value=value, batch_id=batch_id, fence=lease.fence)
                )
            except ConcurrentModification:
                holder = await self.rt.read(
                    partial(store_rot.lock_holder, credential_id=ctx.cred.id)
                )
                if holder is None:
                    return RotationResult(
                        req.name, Outcome.FAILED, error="lost a race for the lock"
                    )
            if isinstance(holder, _Refused):
                return RotationResult(
                    req.name, Outcome.SKIPPED, error=f"not started: {holder.reason}"
                )
            if holder != _STALE:
                break
            # CURRENT moved since the context was loaded (a rotation finished in between).
            try:
                ctx = dataclasses.replace(
                    await self.loader.prepare(req), rotation_id=ctx.rotation_id
                )
            except RotatorError as exc:
                return RotationResult(req.name, Outcome.FAILED, error=str(exc))
        else:
            return RotationResult(req.name, Outcome.FAILED, error="CURRENT kept moving; try again")
        if holder is not None:
            if not join:
                return RotationResult(
                    req.name, Outcome.FAILED, holder, error="another rotation of it is under way"
                )
            return (await self.recovery.wait_for(holder, ctx)).joined_as(req.name)
        ctx.pending = value
        ctx.lease = self.leases.held[ctx.rotation_id] = lease
        return ctx

    async def _wait_out_grace(self, ctx: Ctx) -> None:
        """Alternating accounts: the idle account is the PREVIOUS one, so it may only change
        once PREVIOUS's grace has ended and it is revoked. Emergencies do not wait."""
        due = await self.rt.read(partial(store_rot.last_revocation_due, credential_id=ctx.cred.id))
        if due is None:
            return
        delay = (due - self.rt.now()).total_seconds()
        if delay > 0:
            await self.rt.audit(ctx, "rotation.wait_grace", seconds=round(delay, 3))
            await asyncio.sleep(delay)
        await self.revoker.process(credential_ids=[ctx.cred.id])

    async def _create(self, ctx: Ctx) -> Secret:
        kind = ctx.impl.kind
        t0 = time.monotonic()
        with tracing.span("step.create", step="create", connector=kind) as span:
            try:
                value = await self._make_value(ctx)
            except BaseException:
                tracing.set_attributes(span, attempts=1, outcome="error")
                raise
            finally:
                metrics.step_observed("create", kind, time.monotonic() - t0)
            tracing.set_attributes(span, attempts=1, outcome="ok")
            return value

    async def _make_value(self, ctx: Ctx) -> Secret:
        offload = getattr(ctx.impl, "offload", None)
        fn = offload(ctx.cfg) if offload is not None else None
        if fn is not None:
            if self.rt.procs is None:
                import multiprocessing  # only for connectors that generate in a process
                from concurrent.futures import ProcessPoolExecutor

                self.rt.procs = ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn"))
            raw: bytes = await asyncio.get_running_loop().run_in_executor(
                self.rt.procs, fn, ctx.cfg
            )
            return Secret(raw)
        req = cbase.CreateRequest(
            credential=ctx.cred.name,
            version=0,
            config=ctx.cfg,
            current=ctx.current,
            secrets=ctx.secrets,
        )
        return await self.steps.create(ctx.impl.kind, lambda: ctx.impl.create(req))

    def _begin(
        self, conn: Connection, ctx: Ctx, value: Secret, batch_id: str | None, fence: str
    ) -> str | _Refused | None:
        """The intent: lock, PENDING version, rotation row, audit, in one transaction.

        Returns None when taken, the holder's rotation id when another rotation holds the
        credential, _STALE when CURRENT moved since the context was loaded, or _Refused when
        the request's guard refuses (nothing written).
        """
        kernel = self.rt.kernel
        now = self.rt.now()
        if ctx.req.guard is not None:
            refused = ctx.req.guard(conn, now)
            if refused is not None:
                return _Refused(refused)
        holder = store_rot.try_lock(conn, ctx.cred.id, ctx.rotation_id, now)
        if holder is not None:
            return holder
        current, ctx.version = store_creds.version_numbers(conn, ctx.cred.id)
        if current != ctx.current_version:
            store_rot.release_lock(conn, ctx.cred.id, ctx.rotation_id)
            return _STALE
        kernel.check_stage_map(conn, ctx.cred.id)
        kernel.seal_version(conn, ctx.tenant, ctx.cred.id, ctx.version, value, Stage.PENDING, now)
        kernel.restamp(conn, ctx.cred.id)
        store_rot.insert_rotation(
            conn,
            id=ctx.rotation_id,
            credential_id=ctx.cred.id,
            tenant_id=ctx.tenant.id,
            credential=ctx.cred.name,
            batch_id=batch_id,
            trigger=ctx.req.trigger.value,
            priority=ctx.req.priority,
            grace_s=ctx.grace_s,
            owner=self.rt.owner,
            fence=fence,
            lease_expires_at=now + timedelta(seconds=self.rt.opts.lease_s),
            now=now,
            version=ctx.version,
        )
        self.rt.audit_in(
            conn,
            ctx,
            "rotation.create",
            connector=ctx.impl.kind,
            target=ctx.target,
            strategy=ctx.impl.strategy.value,
            # Who asked and when, signed: the evidence record takes them from here, not from
            # the rotations row (which anyone with the database can edit).
            requested_by=ctx.req.requested_by,
            started_at=now.isoformat(),
        )
        return None

    async def set_and_test(self, ctx: Ctx, from_step: str) -> None:
        """Run set and test from the last durable step; raises the step's error."""
        assert ctx.pending is not None
        pending = ctx.pending
        c = ctx.cred.name
        ctx.set_confirmed = from_step != "created"
        if from_step == "created":
            await self.steps.call(
                ctx,
                "set",
                lambda: ctx.impl.set(
                    cbase.SetRequest(
                        c,
                        ctx.version,
                        ctx.cfg,
                        pending,
                        ctx.current,
                        secrets=ctx.secrets,
                        fence=ctx.fence,
                    )
                ),
                after=lambda conn: self.rt.step(conn, ctx, "set"),
            )
            ctx.set_confirmed = True
        if from_step in ("created", "set"):
            await self.steps.call(
                ctx,
                "test",
                lambda: ctx.impl.test(
                    cbase.TestRequest(
                        c, ctx.version, ctx.cfg, pending, secrets=ctx.secrets, fence=ctx.fence
                    )
                ),
                after=lambda conn: self.rt.step(conn, ctx, "tested"),
            )

    async def finish_on_target(self, ctx: Ctx, defer: bool = False) -> None:
        assert ctx.pending is not None
        pending = ctx.pending
        await self.steps.call(
            ctx,
            "finish",
            lambda: ctx.impl.finish(
                cbase.FinishRequest(
                    ctx.cred.name,
                    ctx.version,
                    ctx.cfg,
                    pending,
                    ctx.current,
                    secrets=ctx.secrets,
                    fence=ctx.fence,
                )
            ),
            defer=defer,
        )

    async def drive(self, ctx: Ctx, from_step: str) -> RotationResult:
        """Run the remaining steps from the last durable one; roll back if set/test fail or
        the stage move cannot commit (e.g. the stage map fails its integrity check). The
        lease is dropped however this ends: an error that escapes (the store unreachable)
        leaves the rotation to recovery once the lease runs out."""
        try:
            return await self._drive_steps(ctx, from_step)
        finally:
            self.leases.drop(ctx.rotation_id)

    async def _drive_steps(self, ctx: Ctx, from_step: str) -> RotationResult:
        try:
            await self.set_and_test(ctx, from_step)
            await self.finish_on_target(ctx, defer=True)
        except LostOwnership as exc:
            return await self.recovery.lost(ctx, exc)
        except (ConnectorError, RotatorError) as exc:
            return await self.rollback(ctx, exc)
        try:
            previous = await self.rt.writer.run(lambda conn: self.stage_move(conn, ctx))
        except LostOwnership as exc:
            return await self.recovery.lost(ctx, exc)
        except RotatorError as exc:
            return await self.rollback(ctx, exc)
        return await self.after_finish(ctx, previous)

    async def after_finish(self, ctx: Ctx, previous: int | None) -> RotationResult:
        """After the stage move committed: a grace-0 rotation's revocation, then sinks."""
        self.leases.drop(ctx.rotation_id)
        self.values.forget(ctx.tenant.name, ctx.cred.name)
        c = ctx.cred.name
        revoked_ok = True
        if ctx.grace_s == 0:
            # First: a grace-0 (emergency) rotation revokes a value that may be compromised;
            # a slow sink must not keep it valid meanwhile.
            revoked = await self.revoker.process(credential_ids=[ctx.cred.id])
            revoked_ok = revoked.get(ctx.cred.id, True)
        warnings = await self._propagate(ctx)
        if not revoked_ok:
            return RotationResult(
                c,
                Outcome.FAILED,
                ctx.rotation_id,
                ctx.version,
                error="rotated, but revoking the old value failed; it stays queued for revocation",
                warnings=warnings,
            )
        return RotationResult(c, Outcome.ROTATED, ctx.rotation_id, ctx.version, warnings=warnings)

    async def _propagate(self, ctx: Ctx) -> tuple[str, ...]:
        """Write the new CURRENT value to the credential's sinks, with retries. A failure is
        audited (``sink.failed``) and reported as a warning; the rotation stays done. A write
        a later rotation made needless (its value is no longer CURRENT: that rotation writes
        its own) is audited as ``sink.skipped`` with ``reason=superseded``, no warning."""
        if not ctx.cred.sinks:
            # Nothing to write: neither tenacity and the file sink are loaded nor the
            # protected paths worked out (most credentials have no sink).
            return ()
        warnings: list[str] = []
        assert ctx.pending is not None
        value = ctx.pending
        from tenacity import (  # only when there are sinks
            AsyncRetrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential,
        )

        from rotator.sinks.file import FileSink  # as tenacity: only when there are sinks

        protected = self.rt.kernel.protected_paths()
        for stored in ctx.cred.sinks:
            try:
                sink = load_sink(dict(stored))
            except RotatorError as exc:
                warnings.append(f"sink skipped: {exc}")
                kind = str(stored.get("kind"))[:40]
                await self.rt.audit(
                    ctx, "sink.failed", sink=kind, error=str(exc), reason="error", attempts=0
                )
                continue
            where = sink.describe()
            reread = False
            try:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(3),
                    wait=wait_exponential(multiplier=self.rt.opts.retry_initial_s, max=1.0),
                    retry=retry_if_exception_type((OSError, SinkUnavailable, _Reread)),
                    reraise=True,
                ):
                    with attempt:
                        if not await self._still_current(ctx):
                            raise SinkSuperseded("superseded by a later rotation; not written")
                        if isinstance(sink, FileSink):
                            await asyncio.get_running_loop().run_in_executor(
                                self.rt.threads, sink.write, value, protected
                            )
                        else:
                            try:
                                await self._write_remote(ctx, sink, value)
                            except SinkDenied as exc:
                                if reread:
                                    raise
                                # The cached token may have been replaced (or revoked) since
                                # it was read: read it afresh, once.
                                reread = True
                                for ref in sink.references():
                                    self.values.forget(ctx.tenant.name, ref)
                                raise _Reread(str(exc)) from exc
            except SinkSuperseded as exc:
                await self.rt.audit(
                    ctx,
                    "sink.skipped",
                    sink=where,
                    reason=exc.reason,
                    attempts=attempt.retry_state.attempt_number,
                )
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                warnings.append(f"{where}: {reason}")
                await self.rt.audit(ctx, "sink.failed", sink=where, error=reason, attempts=3)
            except SinkError as exc:
                # A conflict (someone else wrote the destination) or a refusal is not retried.
                tries = attempt.retry_state.attempt_number
                warnings.append(f"{where}: {exc}")
                await self.rt.audit(
                    ctx,
                    "sink.failed",
                    sink=where,
                    error=str(exc),
                    reason=exc.reason,
                    attempts=tries,
                )
            else:
                await self.rt.audit(ctx, "sink.write", sink=where)
        return tuple(warnings)

    async def _write_remote(self, ctx: Ctx, sink: OpenBaoSink | ExecSink, value: Secret) -> None:
        """One attempt of an async sink's write (OpenBao, a hook), told the credential and
        version, how to check CURRENT and how to find the credential's earlier values."""
        req = SinkRequest(
            value,
            ctx.current,
            ctx.secrets,
            ctx.cred.name,
            ctx.version,
            still_current=partial(self._still_current, ctx),
            earlier=partial(self._earlier, ctx),
        )
        await sink.write(req)

    async def _still_current(self, ctx: Ctx) -> bool:
        """Is this rotation's version still the credential's CURRENT (one cheap read)?"""
        cred_id = ctx.cred.id
        current, _ = await self.rt.read(lambda conn: store_creds.version_numbers(conn, cred_id))
        return current == ctx.version

    async def _earlier(self, ctx: Ctx) -> list[Secret]:
        """The values the credential held before ``ctx.current`` (newest first, at most
        ``_EARLIER``), for a sink to recognise what rotator wrote there. Versions that never
        were CURRENT (PENDING, FAILED) and versions that do not open are left out."""
        kernel = self.rt.kernel
        cred_id, before = ctx.cred.id, ctx.current_version

        def read(conn: Connection) -> list[Secret]:
            m = store_creds.stage_map(conn, cred_id)
            if m is None or before is None:
                return []
            numbers = sorted(
                (
                    n
                    for n, st in m.stages
                    if n < before and st not in (Stage.PENDING.value, Stage.FAILED.value)
                ),
                reverse=True,
            )[:_EARLIER]
            out: list[Secret] = []
            for n in numbers:
                sv = store_creds.sealed_version(conn, cred_id, number=n)
                if sv is None:
                    continue
                with contextlib.suppress(RotatorError):
                    out.append(kernel.open_version(conn, sv))
            return out

        return await self.rt.read(read)

    def stage_move(self, conn: Connection, ctx: Ctx) -> int | None:
        """The stage move and its bookkeeping in the caller's transaction: PENDING->CURRENT,
        CURRENT->PREVIOUS (queued for revocation after the grace). The step write is fenced: a
        lost rotation raises LostOwnership (in the writer's group commit, when its step writes
        are sent just before the commit) and nothing of the transaction commits."""
        kernel = self.rt.kernel
        now = self.rt.now()
        self.rt.step(conn, ctx, "finished", now=now)
        for record in ctx.deferred:
            record(conn)
        grace = timedelta(seconds=ctx.grace_s)
        kernel.check_stage_map(conn, ctx.cred.id)
        previous = store_creds.promote(conn, ctx.cred.id, ctx.version, now=now, grace=grace)
        kernel.restamp(conn, ctx.cred.id)
        if previous is not None:
            store_rot.enqueue_revocation(conn, ctx.cred.id, previous, now + grace)
        if ctx.grace_s == 0:
            store_rot.revoke_all_now(conn, ctx.cred.id, now)
        # The next time from the effective policy (defaults by tag and tenant included) and
        # the connector's hint, with the rule that set it (kernel.schedule); the same write
        # records the rotation (last_rotated_at, use count back to 0).
        kernel.reschedule(
            conn,
            [ctx.cred.id],
            hints={ctx.cred.id: cbase.rotation_hint(ctx.impl, ctx.cfg, ctx.pending)},
            strict=False,
            rotated_at=now,
        )
        store_rot.release_lock(conn, ctx.cred.id, ctx.rotation_id)
        self.rt.audit_in(
            conn,
            ctx,
            "rotation.complete",
            previous_version=previous,
            grace_s=ctx.grace_s,
            duration_ms=round((time.monotonic() - ctx.started) * 1000, 2),
            finished_at=now.isoformat(),
        )
        return previous

    async def _leave_to_recovery(self, ctx: Ctx, error: str, rb_error: str) -> RotationResult:
        """The rollback could not reach the target (down, hung, its breaker open) after set
        succeeded: the candidate is valid there, so the rotation is not ended. It keeps its last
        durable step, its PENDING version and the credential's lock; once its lease runs out
        (or its process is gone) recovery takes it over and drives it on, to a finish if the
        candidate works on the target by then, else to a rollback that reaches it. Marking it
        failed would leave a value valid on the target that no one would ever remove."""
        msg = f"{error}; rollback failed: {rb_error}; left to recovery"
        self.leases.drop(ctx.rotation_id)
        with contextlib.suppress(RotatorError):  # audited when the store can take it
            await self.rt.audit(ctx, "rotation.rollback_deferred", error=msg)
        return RotationResult(ctx.cred.name, Outcome.FAILED, ctx.rotation_id, ctx.version, msg)

    async def rollback(self, ctx: Ctx, cause: Exception) -> RotationResult:
        """Undo the rotation on the target (if a call may have touched it) and mark its
        version FAILED; the credential is freed. LostOwnership on the way goes to recovery;
        so does a rollback that cannot reach the target after set succeeded (see
        ``_leave_to_recovery``)."""
        assert ctx.pending is not None
        pending = ctx.pending
        error = str(cause)
        rolled_back = False
        rb_error = None
        if ctx.touched_target:
            try:
                await self.steps.call(
                    ctx,
                    "rollback",
                    lambda: ctx.impl.rollback(
                        cbase.RollbackRequest(
                            ctx.cred.name,
                            ctx.version,
                            ctx.cfg,
                            pending,
                            ctx.current,
                            secrets=ctx.secrets,
                            fence=ctx.fence,
                        )
                    ),
                )
                rolled_back = True
            except LostOwnership as exc:
                return await self.recovery.lost(ctx, exc)
            except (cbase.TransientError, CircuitOpen) as exc:
                if ctx.set_confirmed:
                    return await self._leave_to_recovery(ctx, error, str(exc))
                rb_error = str(exc)
            except (ConnectorError, RotatorError) as exc:
                rb_error = str(exc)

        def record(conn: Connection) -> None:
            kernel = self.rt.kernel
            now = self.rt.now()
            msg = error if rb_error is None else f"{error}; rollback failed: {rb_error}"
            try:
                kernel.check_stage_map(conn, ctx.cred.id)
            except IntegrityError as exc:
                # Stages edited outside rotator: move none (re-stamping would seal the edit),
                # but end the rotation and free the credential so nothing stays stuck.
                msg = f"{msg}; version {ctx.version} left as it is: {exc}"
            else:
                store_rot.mark_version(
                    conn, ctx.cred.id, ctx.version, Stage.FAILED, now, only_from=(Stage.PENDING,)
                )
                kernel.restamp(conn, ctx.cred.id)
            self.rt.step(conn, ctx, "rolled_back" if rolled_back else "failed", now=now, error=msg)
            store_rot.release_lock(conn, ctx.cred.id, ctx.rotation_id)
            self.rt.audit_in(
                conn,
                ctx,
                "rotation.rollback" if rolled_back else "rotation.failed",
                error=msg,
                target_touched=ctx.touched_target,
                finished_at=now.isoformat(),
            )

        try:
            await self.rt.writer.run(record)
        except LostOwnership as exc:
            return await self.recovery.lost(ctx, exc)
        self.leases.drop(ctx.rotation_id)
        if rb_error is not None:
            error = f"{error}; rollback failed: {rb_error}"
        return RotationResult(
            ctx.cred.name,
            Outcome.ROLLED_BACK if rolled_back else Outcome.FAILED,
            ctx.rotation_id,
            ctx.version,
            error,
        )
