"""The rotation engine: create -> set -> test -> finish, with rollback and revocation.

For each credential the engine writes the intent (the new value, encrypted, as a PENDING
version, plus a rotation row and the credential's lock) in one transaction before anything
touches the target. Steps then run with a global and a per-target concurrency limit, retries
with exponential backoff and jitter for transient errors only, and a circuit breaker per
target. Every step, retry and outcome is audited with the rotation id. A crash at any point
leaves a rotation row whose lease runs out; ``recover()`` resumes it from its last durable step.

Ownership is fenced. A rotation row carries its owner's token, new on every takeover, and every
write of its state is conditioned on it (LostOwnership when it no longer matches). The engine
knows until when each lease it holds is valid (monotonic time of its last renewal + the lease)
and starts no connector call without that much time left (a safety margin); a call under way
is cut when the lease runs short or a renewal finds the rotation taken over. An owner that
finds it lost a rotation after a connector call makes the target agree with the store again
(``_repair``), audits it, and makes no other call for that rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import multiprocessing
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from rotator.connectors import base as cbase
from rotator.connectors.registry import get_connector
from rotator.domain.group import Group
from rotator.domain.model import Credential, Stage, Tenant
from rotator.domain.secret import Secret
from rotator.engine import ordering
from rotator.engine.breaker import CircuitBreaker, CircuitOpen
from rotator.engine.types import BatchResult, Outcome, RotationRequest, RotationResult, Trigger
from rotator.engine.writer import StoreWriter
from rotator.errors import (
    ConcurrentModification,
    ConnectorError,
    IntegrityError,
    InvalidInput,
    LostOwnership,
    NotFound,
    RotationError,
    RotatorError,
)
from rotator.policy import earliest, next_rotation_at
from rotator.service.credentials import Principal, RotatorService
from rotator.sinks import load_sink
from rotator.store import credentials as store_creds
from rotator.store import rotations as store_rot

T = TypeVar("T")
_STALE = "stale"  # _begin's answer when CURRENT moved after the context was loaded
ENGINE_PRINCIPAL = Principal(name="engine")
FAILED_SCHEDULE_BACKOFF_S = 300


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Tuning knobs; the defaults suit a single node talking to a handful of targets.

    ``lease_s``: how long a rotation stays owned without a renewal (renewed every third of
    it). ``lease_margin_s``: no connector call starts, and a call under way is cut, when less
    than this is left of the lease (default a quarter of it). InvalidInput on a lease that is
    not a finite number of seconds above 0, or a margin not below the lease.
    """

    concurrency: int = 16
    per_target: int = 16
    lease_s: float = 30.0
    lease_margin_s: float | None = None
    step_timeout_s: float = 60.0
    retry_attempts: int = 6
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0
    breaker_threshold: int = 18
    breaker_window: int = 20
    breaker_reset_s: float = 30.0
    db_threads: int = 4
    join_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not (isinstance(self.lease_s, int | float) and math.isfinite(self.lease_s)):
            raise InvalidInput(f"the lease must be a finite number of seconds, not {self.lease_s}")
        if self.lease_s <= 0:
            raise InvalidInput(f"the lease must be above 0 seconds, not {self.lease_s:g}")
        m = self.lease_margin_s
        if m is not None and not (math.isfinite(m) and 0 <= m < self.lease_s):
            raise InvalidInput("the lease margin must be at least 0 and below the lease")

    @property
    def margin_s(self) -> float:
        return self.lease_s / 4 if self.lease_margin_s is None else self.lease_margin_s


@dataclass
class _Ctx:
    req: RotationRequest
    tenant: Tenant
    cred: Credential
    impl: cbase.Connector
    cfg: cbase.ConnectorConfig
    target: str
    current: Secret | None
    current_version: int | None
    grace_s: int
    rotation_id: str = ""
    version: int = 0
    pending: Secret | None = None
    touched_target: bool = False
    deferred: list[Callable[[Connection], None]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    secrets: cbase.SecretResolver = cbase.NO_SECRETS
    lease: _Lease | None = None  # while this process owns the rotation
    last_write: str | None = None  # the last call that may change the target: set/finish/rollback

    def who(self) -> Principal:
        return Principal(name=ENGINE_PRINCIPAL.name, tenant=self.tenant.name)

    @property
    def fence(self) -> str | None:
        return None if self.lease is None else self.lease.fence


@dataclass(eq=False)
class _Lease:
    """What this process knows of its ownership of one rotation. Times are event-loop
    (monotonic) times."""

    fence: str
    valid_until: float  # taken before the claim or renewal was sent, so never late
    lost: bool = False
    call: asyncio.Timeout | None = None  # the timeout of its last connector call
    step_deadline: float = 0.0  # that call's own step timeout


class _Secrets:
    """Connector access to other credentials' CURRENT values (admin secrets, CA keys).

    Each read goes through the service (audited, counted as a use) and is cached for
    ``ttl`` seconds so a batch of 1,000 rotations against one server reads its admin secret
    once, not 1,000 times; the engine drops an entry when it rotates that credential itself.
    """

    def __init__(self, engine: Engine, tenant: str, ttl: float = 30.0) -> None:
        self._engine = engine
        self._tenant = tenant
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Secret]] = {}

    async def get(self, name: str) -> Secret:
        hit = self._cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        principal = Principal(name=ENGINE_PRINCIPAL.name, tenant=self._tenant)
        try:
            value = await asyncio.get_running_loop().run_in_executor(
                self._engine._threads,
                partial(self._engine.svc.get_value, name, principal=principal),
            )
        except NotFound as exc:
            raise cbase.PermanentError(f"referenced credential {name!r}: {exc}") from exc
        self._cache[name] = (time.monotonic(), value)
        return value

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)


def _reschedule(cm: asyncio.Timeout | None, when: float) -> None:
    """Move a call's timeout if that call is still under way (else there is nothing to cut)."""
    if cm is not None and not cm.expired():
        with contextlib.suppress(RuntimeError):  # the call has ended: its timeout has exited
            cm.reschedule(when)


@functools.cache
def _machine() -> tuple[str, str]:
    """(boot id, PID-namespace id) of this process; "" where /proc cannot tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:  # "pid:[4026531836]": the number names the namespace
        pidns = os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    except OSError:
        pidns = ""
    return boot, pidns


def _owner_id() -> str:
    """``host:pid:boot-id:pid-namespace:random``: enough to tell, on this machine, that the
    owner's process is gone (see _owner_dead)."""
    boot, pidns = _machine()
    return f"{socket.gethostname()}:{os.getpid()}:{boot}:{pidns}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Engine:
    """Runs rotations. Use as ``async with Engine(svc) as engine: await engine.rotate(...)``."""

    def __init__(self, svc: RotatorService, options: EngineOptions | None = None) -> None:
        self.svc = svc
        self.opts = options or EngineOptions()
        self.owner = _owner_id()
        self._threads = ThreadPoolExecutor(
            max_workers=self.opts.db_threads, thread_name_prefix="rotator-db"
        )
        self._procs: ProcessPoolExecutor | None = None
        self.writer = StoreWriter(
            svc.db, ThreadPoolExecutor(max_workers=1, thread_name_prefix="rotator-writer")
        )
        self._global = asyncio.Semaphore(self.opts.concurrency)
        self._targets: dict[str, asyncio.Semaphore] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[RotationResult]] = {}
        self._leases: dict[str, _Lease] = {}  # rotation id -> lease, for those this process owns
        self._heartbeat: asyncio.Task[None] | None = None
        self._secrets: dict[str, _Secrets] = {}

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        self.writer.start()
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._renew_leases(), name="lease-heartbeat"
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await self.writer.aclose()
        self._threads.shutdown(wait=True)
        if self._procs is not None:
            self._procs.shutdown(wait=True, cancel_futures=True)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.opts.lease_s / 3)
            # A failed beat extends nothing: calls are cut when the lease runs short.
            with contextlib.suppress(RotatorError):
                await self._renew(dict(self._leases))

    async def _renew(self, leases: dict[str, _Lease]) -> None:
        """Renew ``leases`` in one write; cut the calls of rotations found taken over and
        extend the others' deadlines. Raises the store's error when the write failed."""
        if not leases:
            return
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        until = self._now() + timedelta(seconds=self.opts.lease_s)
        fences = {rid: lease.fence for rid, lease in leases.items()}
        lost = await self.writer.run(partial(store_rot.renew_leases, fences=fences, until=until))
        for rid, lease in leases.items():
            if rid in lost:
                self._lose(lease)
            elif not lease.lost:
                lease.valid_until = max(lease.valid_until, t0 + self.opts.lease_s)
                _reschedule(lease.call, self._call_deadline(lease))

    def _call_deadline(self, lease: _Lease) -> float:
        return min(lease.step_deadline, lease.valid_until - self.opts.margin_s)

    def _lose(self, lease: _Lease) -> None:
        """Mark ``lease`` lost and cut the call under way (it sees LostOwnership)."""
        lease.lost = True
        _reschedule(lease.call, asyncio.get_running_loop().time())

    async def _check_lease(self, ctx: _Ctx) -> None:
        """Before a connector call: return only if this process owns the rotation for at
        least the safety margin. Renews it now when it runs short; LostOwnership when it was
        taken over; the store's error when ownership cannot be confirmed (no call is made)."""
        lease = ctx.lease
        if lease is None:
            return
        loop = asyncio.get_running_loop()
        if not lease.lost and loop.time() < lease.valid_until - self.opts.margin_s:
            return
        if not lease.lost:
            await self._renew({ctx.rotation_id: lease})
        if lease.lost:
            raise LostOwnership(ctx.rotation_id)
        if loop.time() >= lease.valid_until - self.opts.margin_s:
            raise RotationError("the rotation's lease could not be renewed in time; no call made")

    def _bounded(self, ctx: _Ctx) -> asyncio.Timeout:
        """The step timeout for one call (enter it at once), cut short to the lease's deadline
        minus the margin, moved by each renewal and cut by a lost one (see _renew)."""
        step_deadline = asyncio.get_running_loop().time() + self.opts.step_timeout_s
        lease = ctx.lease
        if lease is None:
            return asyncio.timeout_at(step_deadline)
        lease.step_deadline = step_deadline
        lease.call = asyncio.timeout_at(self._call_deadline(lease))
        return lease.call

    # -- helpers --------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self.svc.clock()

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.svc.db.read() as conn:
                return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self._threads, run)

    def breaker(self, target: str) -> CircuitBreaker:
        b = self._breakers.get(target)
        if b is None:
            b = self._breakers[target] = CircuitBreaker(
                target,
                threshold=self.opts.breaker_threshold,
                window=self.opts.breaker_window,
                reset_after=self.opts.breaker_reset_s,
            )
        return b

    def _target_sem(self, target: str) -> asyncio.Semaphore:
        s = self._targets.get(target)
        if s is None:
            s = self._targets[target] = asyncio.Semaphore(self.opts.per_target)
        return s

    async def _audit(self, ctx: _Ctx, action: str, **details: Any) -> None:
        await self.writer.run(lambda c: self._audit_in(c, ctx, action, **details))

    def _audit_in(self, conn: Connection, ctx: _Ctx, action: str, **details: Any) -> None:
        details.setdefault("trigger", ctx.req.trigger.value)
        if ctx.version:
            details.setdefault("version", ctx.version)
        self.svc.audit(conn, ctx.who(), action, ctx.cred.name, ctx.rotation_id or None, details)

    async def _call(
        self,
        ctx: _Ctx,
        step: str,
        fn: Callable[[], Awaitable[T]],
        after: Callable[[Connection], None] | None = None,
        defer: bool = False,
    ) -> T:
        """One connector call with the target's limit, breaker, timeout and retries.

        Transient errors (and timeouts) are retried with exponential backoff and jitter; each
        retry is audited. Permanent errors and an open breaker fail at once. On success the
        step's audit entry and ``after`` (its durable bookkeeping) commit together.
        Fenced: no attempt starts unless the rotation's lease is valid for the safety margin,
        and a call cut because the lease ran short is retried only if ownership is confirmed;
        LostOwnership when the rotation was taken over (before, during or after the call).
        """
        fn = self._reread_on_refusal(ctx, fn)
        breaker = self.breaker(ctx.target)
        sem = self._target_sem(ctx.target)
        last_error = ""
        async for attempt in self._retrying():
            with attempt:
                n = attempt.retry_state.attempt_number
                if n > 1:
                    await self._audit(ctx, "rotation.retry", step=step, attempt=n, error=last_error)
                trial = breaker.before_call()
                judged = False  # a half-open trial without a verdict must free its slot
                try:
                    async with sem:
                        await self._check_lease(ctx)
                        t0 = time.monotonic()
                        cm: asyncio.Timeout | None = None
                        try:
                            if step == "set":
                                ctx.touched_target = True
                            if step in ("set", "finish", "rollback"):
                                ctx.last_write = step
                            async with self._bounded(ctx) as cm:
                                result = await fn()
                        except cbase.TransientError as exc:
                            breaker.record_failure()
                            judged = True
                            last_error = str(exc)
                            raise
                        except TimeoutError as exc:
                            lease = ctx.lease
                            if (
                                lease is not None
                                and cm is not None
                                and cm.expired()
                                and (lease.lost or (cm.when() or 0.0) < lease.step_deadline)
                            ):
                                # Cut by the lease, not by the target: go on only as owner.
                                await self._check_lease(ctx)
                                last_error = f"{step} cut short: the lease ran short"
                                raise cbase.TransientError(last_error) from exc
                            breaker.record_failure()
                            judged = True
                            last_error = f"timed out after {self.opts.step_timeout_s:g}s"
                            raise cbase.TransientError(f"{step} {last_error}") from exc
                        except ConnectorError:
                            raise
                        except RotatorError:
                            raise
                        except Exception as exc:  # a connector bug: never retried, never leaks
                            raise cbase.PermanentError(
                                f"connector {ctx.impl.kind!r} raised {type(exc).__name__} in {step}"
                            ) from exc
                        breaker.record_success()
                        judged = True
                finally:
                    if trial and not judged:
                        breaker.release_trial()
                ms = round((time.monotonic() - t0) * 1000, 2)
                record = partial(
                    self._record_step, ctx=ctx, step=step, duration_ms=ms, attempt=n, after=after
                )
                if defer:
                    ctx.deferred.append(record)
                else:
                    await self.writer.run(record)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.opts.retry_attempts),
            wait=wait_exponential(multiplier=self.opts.retry_initial_s, max=self.opts.retry_max_s)
            + wait_random(0, self.opts.retry_initial_s),
            retry=retry_if_exception_type(cbase.TransientError),
            reraise=True,
        )

    def _record_step(
        self,
        conn: Connection,
        *,
        ctx: _Ctx,
        step: str,
        duration_ms: float,
        attempt: int,
        after: Callable[[Connection], None] | None,
    ) -> None:
        self._audit_in(
            conn,
            ctx,
            f"rotation.{step}",
            target=ctx.target,
            duration_ms=duration_ms,
            attempt=attempt,
        )
        if after is not None:
            after(conn)

    # -- preparing ------------------------------------------------------------------------

    def _load(
        self, conn: Connection, req: RotationRequest
    ) -> tuple[Tenant, Credential, Secret | None, int | None]:
        tenant = self.svc.tenant(req.tenant)
        cred = store_creds.get_credential(conn, tenant.id, req.name, with_versions=False)
        if cred is None:
            raise NotFound(f"no credential {req.name!r}")
        self.svc.check_stage_map(conn, cred.id)
        sv = store_creds.sealed_version(conn, cred.id, stage=Stage.CURRENT)
        current = self.svc.open_version(conn, sv) if sv is not None else None
        return tenant, cred, current, sv.number if sv is not None else None

    async def _prepare(self, req: RotationRequest) -> _Ctx:
        tenant, cred, current, cur_no = await self._read(lambda c: self._load(c, req))
        return self._context(req, tenant, cred, current, cur_no)

    def _load_many(
        self, conn: Connection, reqs: list[RotationRequest]
    ) -> dict[tuple[str, str], _Ctx]:
        """Contexts for many requests in a few queries (a batch's prefetch). Requests that
        cannot be prepared are left out; preparing them alone reports why."""
        out: dict[tuple[str, str], _Ctx] = {}
        by_tenant: dict[str, list[RotationRequest]] = {}
        for r in reqs:
            by_tenant.setdefault(r.tenant, []).append(r)
        for tenant_name, group in by_tenant.items():
            tenant = self.svc.tenant(tenant_name)
            wanted = {r.name: r for r in group}
            names = list(wanted)
            for i in range(0, len(names), 500):
                creds = store_creds.list_credentials(conn, tenant.id, names=names[i : i + 500])
                current = store_creds.current_versions(conn, [c.id for c in creds])
                tampered = self.svc.stage_map_errors(conn, [c.id for c in creds])
                for cred in creds:
                    sv = current.get(cred.id)
                    try:
                        if cred.id in tampered:  # preparing it alone reports the failure
                            raise tampered[cred.id]
                        value = self.svc.open_version(conn, sv) if sv is not None else None
                        ctx = self._context(
                            wanted[cred.name],
                            tenant,
                            cred,
                            value,
                            sv.number if sv is not None else None,
                        )
                    except RotatorError:
                        continue
                    out[(tenant_name, cred.name)] = ctx
        return out

    def secrets_for(self, tenant: str) -> _Secrets:
        found = self._secrets.get(tenant)
        if found is None:
            found = self._secrets[tenant] = _Secrets(self, tenant)
        return found

    def _context(
        self,
        req: RotationRequest,
        tenant: Tenant,
        cred: Credential,
        current: Secret | None,
        cur_no: int | None,
    ) -> _Ctx:
        impl = get_connector(cred.connector)
        cfg = cbase.parse_config(impl, dict(cred.config))
        grace = req.grace_s if req.grace_s is not None else int(cred.policy.grace.total_seconds())
        return _Ctx(
            req=req,
            tenant=tenant,
            cred=cred,
            impl=impl,
            cfg=cfg,
            target=impl.target_key(cfg),
            current=current,
            current_version=cur_no,
            grace_s=grace,
            secrets=self.secrets_for(tenant.name),
        )

    # -- public API -----------------------------------------------------------------------

    async def rotate(
        self,
        requests: Iterable[RotationRequest],
        *,
        batch_id: str | None = None,
        progress: Callable[[RotationResult], None] | None = None,
    ) -> BatchResult:
        """Rotate every requested credential; highest priority first, bounded concurrency.

        Credentials that reference others (an admin secret, a CA) rotate in levels: what is
        referenced first, then its dependants, which read the new value (``engine.ordering``);
        within a level, priority order and full concurrency. Members of a reference cycle are
        refused. Never raises for one credential's failure: each result says what happened.
        """
        t0 = time.monotonic()
        batch_id = batch_id or str(uuid.uuid4())
        reqs = list(requests)
        results: list[RotationResult] = []
        prepared: dict[tuple[str, str], _Ctx] = {}
        for i in range(0, len(reqs), 2000):
            chunk = reqs[i : i + 2000]
            prepared.update(await self._read(partial(self._load_many, reqs=chunk)))
        plan = ordering.order(
            [(r.tenant, r.name) for r in reqs],
            {
                key: [(key[0], ref) for ref in cbase.references_of(ctx.impl, ctx.cfg)]
                for key, ctx in prepared.items()
            },
            label={(r.tenant, r.name): r.name for r in reqs},
        )
        level_of = plan.level_of()
        levels: list[list[tuple[int, int, RotationRequest]]] = [[] for _ in plan.levels]
        for i, r in enumerate(reqs):
            key = (r.tenant, r.name)
            if key in plan.refused:
                res = RotationResult(r.name, Outcome.FAILED, error=f"refused: {plan.refused[key]}")
                refused_ctx = prepared.pop(key, None)
                if refused_ctx is not None:
                    await self._audit(refused_ctx, "rotation.failed", step="order", error=res.error)
                results.append(res)
                if progress is not None:
                    progress(res)
            else:
                levels[level_of[key] - 1].append((r.priority, i, r))

        for level in levels:
            queue: asyncio.PriorityQueue[tuple[int, int, RotationRequest]] = asyncio.PriorityQueue()
            for item in level:
                queue.put_nowait(item)

            async def worker(
                queue: asyncio.PriorityQueue[tuple[int, int, RotationRequest]],
            ) -> None:
                while not queue.empty():
                    _, _, req = queue.get_nowait()
                    ctx = prepared.pop((req.tenant, req.name), None)
                    try:
                        res = await self.rotate_one(req, batch_id=batch_id, prepared=ctx)
                    except RotatorError as exc:
                        # The store failed under this one rotation (its lease lapses and
                        # recovery resumes it): the batch goes on and says so.
                        res = RotationResult(req.name, Outcome.FAILED, error=str(exc))
                    results.append(res)
                    if progress is not None:
                        progress(res)

            n = max(1, min(self.opts.concurrency, len(level)))
            await asyncio.gather(*(worker(queue) for _ in range(n)))
        order = {r.name: i for i, r in enumerate(reqs)}
        results.sort(key=lambda r: order.get(r.name, 0))
        return BatchResult(results=results, duration_s=time.monotonic() - t0)

    async def rotate_one(
        self, req: RotationRequest, *, batch_id: str | None = None, prepared: _Ctx | None = None
    ) -> RotationResult:
        """Rotate one credential. Joins a rotation of the same credential already under way.

        Does not start while a credential it references is being rotated, here or by another
        process: waits for that rotation to end (bounded by ``join_timeout_s``; then fails)."""
        key = (req.tenant, req.name)
        if key in self._inflight:
            res = await asyncio.shield(self._inflight[key])
            return _joined(res, req.name)
        fut: asyncio.Future[RotationResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            if prepared is None:
                with contextlib.suppress(RotatorError):  # _start prepares again and reports it
                    prepared = await self._prepare(req)
            busy = None if prepared is None else await self._await_references(prepared)
            if busy is not None:
                res = RotationResult(req.name, Outcome.FAILED, error=busy)
            else:
                async with self._global:
                    res = await self._rotate(req, batch_id, prepared)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            del self._inflight[key]
        fut.set_result(res)
        return res

    async def _references_busy(self, ctx: _Ctx, names: Iterable[str]) -> list[str]:
        """Which of ``names`` (credentials of ctx's tenant) a live rotation holds now. A lock
        whose rotation's lease ran out, or whose owner died, is recovery's to resolve: not
        worth waiting for."""

        def held(conn: Connection) -> list[str]:
            busy = []
            for name in sorted(names):
                cid = store_creds.credential_id(conn, ctx.tenant.id, name)
                holder = None if cid is None else store_rot.lock_holder(conn, cid)
                row = None if holder is None else store_rot.get_rotation(conn, holder)
                if row is None or row.terminal or _owner_dead(row.owner):
                    continue
                if row.lease_expires_at is not None and row.lease_expires_at < self._now():
                    continue
                busy.append(name)
            return busy

        return await self._read(held)

    async def _await_references(self, ctx: _Ctx) -> str | None:
        """Wait until no credential ``ctx`` references is being rotated (by this process or
        another), polling, at most ``join_timeout_s``; then drop the cached values of those
        that were, so the new values are read. Returns why it gave up, or None."""
        names = cbase.references_of(ctx.impl, ctx.cfg) - {ctx.cred.name}
        if not names:
            return None
        deadline = time.monotonic() + self.opts.join_timeout_s
        delay = 0.02
        waited: set[str] = set()
        while busy := await self._references_busy(ctx, names):
            if not waited:
                await self._audit(ctx, "rotation.wait_reference", references=busy)
            waited.update(busy)
            if time.monotonic() >= deadline:
                return (
                    f"not started: {busy[0]!r}, which it references, was still being rotated "
                    f"after {self.opts.join_timeout_s:g}s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        for name in waited:
            self.secrets_for(ctx.tenant.name).forget(name)
        return None

    def _reread_on_refusal(
        self, ctx: _Ctx, fn: Callable[[], Awaitable[T]]
    ) -> Callable[[], Awaitable[T]]:
        """``fn`` once more when the target refused a referenced credential's value (an admin
        login): that value may be stale (rotated elsewhere since it was read), so wait for its
        rotation to end, drop the cached copy and read it again. Once: a second refusal is
        final. Bounded by the step's timeout like the call itself."""

        async def call() -> T:
            try:
                return await fn()
            except cbase.ReferenceRefused as exc:
                if exc.reference == ctx.cred.name:
                    raise  # its own value: nothing newer to read
                while await self._references_busy(ctx, [exc.reference]):
                    await asyncio.sleep(0.05)
                self.secrets_for(ctx.tenant.name).forget(exc.reference)
                await self._audit(ctx, "rotation.reread_reference", reference=exc.reference)
                await self._check_lease(ctx)  # a second call: fenced like the first
                return await fn()

        return call

    async def _rotate(
        self, req: RotationRequest, batch_id: str | None, prepared: _Ctx | None = None
    ) -> RotationResult:
        t0 = time.monotonic()
        started = await self._start(req, batch_id, prepared, join=True)
        if isinstance(started, RotationResult):
            return started
        res = await self._drive(started, "created")
        return dataclasses.replace(res, duration_s=time.monotonic() - t0)

    async def _start(
        self, req: RotationRequest, batch_id: str | None, prepared: _Ctx | None, *, join: bool
    ) -> _Ctx | RotationResult:
        """Load, create the candidate and write the intent. Returns the context of a rotation
        now holding the lock, or a result: failed, or (``join``) that of the rotation of the
        same credential already under way."""
        try:
            ctx = prepared or await self._prepare(req)
        except RotatorError as exc:
            return RotationResult(req.name, Outcome.FAILED, error=str(exc))
        if (
            cbase.strategy_of(ctx.impl, ctx.cfg) is cbase.Strategy.ALTERNATING
            and ctx.req.trigger is not Trigger.EMERGENCY
        ):
            await self._wait_out_grace(ctx)
        try:
            value = await self._create(ctx)
        except RotatorError as exc:
            await self._audit(ctx, "rotation.failed", step="create", error=str(exc))
            return RotationResult(req.name, Outcome.FAILED, error=f"create: {exc}")
        ctx.rotation_id = str(uuid.uuid4())
        lease = _Lease(fence=uuid.uuid4().hex, valid_until=0.0)
        loop = asyncio.get_running_loop()
        for _ in range(3):
            try:
                lease.valid_until = loop.time() + self.opts.lease_s
                holder = await self.writer.run(
                    partial(self._begin, ctx=ctx, value=value, batch_id=batch_id, fence=lease.fence)
                )
            except ConcurrentModification:
                holder = await self._read(partial(store_rot.lock_holder, credential_id=ctx.cred.id))
                if holder is None:
                    return RotationResult(
                        req.name, Outcome.FAILED, error="lost a race for the lock"
                    )
            if holder != _STALE:
                break
            # CURRENT moved since the context was loaded (a rotation finished in between).
            try:
                ctx = dataclasses.replace(await self._prepare(req), rotation_id=ctx.rotation_id)
            except RotatorError as exc:
                return RotationResult(req.name, Outcome.FAILED, error=str(exc))
        else:
            return RotationResult(req.name, Outcome.FAILED, error="CURRENT kept moving; try again")
        if holder is not None:
            if not join:
                return RotationResult(
                    req.name, Outcome.FAILED, holder, error="another rotation of it is under way"
                )
            return _joined(await self._wait_for(holder, ctx), req.name)
        ctx.pending = value
        ctx.lease = self._leases[ctx.rotation_id] = lease
        return ctx

    async def _wait_out_grace(self, ctx: _Ctx) -> None:
        """Alternating accounts: the idle account is the PREVIOUS one, so it may only change
        once PREVIOUS's grace has ended and it is revoked. Emergencies do not wait."""
        due = await self._read(partial(store_rot.last_revocation_due, credential_id=ctx.cred.id))
        if due is None:
            return
        delay = (due - self._now()).total_seconds()
        if delay > 0:
            await self._audit(ctx, "rotation.wait_grace", seconds=round(delay, 3))
            await asyncio.sleep(delay)
        await self.process_revocations(credential_ids=[ctx.cred.id])

    async def _create(self, ctx: _Ctx) -> Secret:
        offload = getattr(ctx.impl, "offload", None)
        fn = offload(ctx.cfg) if offload is not None else None
        if fn is not None:
            if self._procs is None:
                self._procs = ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn"))
            raw: bytes = await asyncio.get_running_loop().run_in_executor(self._procs, fn, ctx.cfg)
            return Secret(raw)
        return await ctx.impl.create(
            cbase.CreateRequest(
                credential=ctx.cred.name,
                version=0,
                config=ctx.cfg,
                current=ctx.current,
                secrets=ctx.secrets,
            )
        )

    def _begin(
        self, conn: Connection, ctx: _Ctx, value: Secret, batch_id: str | None, fence: str
    ) -> str | None:
        """The intent: lock, PENDING version, rotation row, audit, in one transaction.

        Returns None when taken, the holder's rotation id when another rotation holds the
        credential, or _STALE when CURRENT moved since the context was loaded.
        """
        now = self._now()
        holder = store_rot.try_lock(conn, ctx.cred.id, ctx.rotation_id, now)
        if holder is not None:
            return holder
        current, ctx.version = store_creds.version_numbers(conn, ctx.cred.id)
        if current != ctx.current_version:
            store_rot.release_lock(conn, ctx.cred.id, ctx.rotation_id)
            return _STALE
        self.svc.check_stage_map(conn, ctx.cred.id)
        self.svc.seal_version(conn, ctx.tenant, ctx.cred.id, ctx.version, value, Stage.PENDING, now)
        self.svc.restamp(conn, ctx.cred.id)
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
            owner=self.owner,
            fence=fence,
            lease_expires_at=now + timedelta(seconds=self.opts.lease_s),
            now=now,
            version=ctx.version,
        )
        self._audit_in(
            conn,
            ctx,
            "rotation.create",
            connector=ctx.impl.kind,
            target=ctx.target,
            strategy=ctx.impl.strategy.value,
        )
        return None

    async def _set_and_test(self, ctx: _Ctx, from_step: str) -> None:
        """Run set and test from the last durable step; raises the step's error."""
        assert ctx.pending is not None
        pending = ctx.pending
        c = ctx.cred.name
        if from_step == "created":
            await self._call(
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
                after=lambda conn: self._step(conn, ctx, "set"),
            )
        if from_step in ("created", "set"):
            await self._call(
                ctx,
                "test",
                lambda: ctx.impl.test(
                    cbase.TestRequest(
                        c, ctx.version, ctx.cfg, pending, secrets=ctx.secrets, fence=ctx.fence
                    )
                ),
                after=lambda conn: self._step(conn, ctx, "tested"),
            )

    def _step(self, conn: Connection, ctx: _Ctx, step: str, **kw: Any) -> None:
        """Record the rotation's step, conditioned on this process's token (LostOwnership)."""
        assert ctx.fence is not None
        store_rot.set_step(conn, ctx.rotation_id, step, self._now(), fence=ctx.fence, **kw)

    async def _finish_on_target(self, ctx: _Ctx, defer: bool = False) -> None:
        assert ctx.pending is not None
        pending = ctx.pending
        await self._call(
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

    async def _drive(self, ctx: _Ctx, from_step: str) -> RotationResult:
        """Run the remaining steps from the last durable one; roll back if set/test fail or
        the stage move cannot commit (e.g. the stage map fails its integrity check). The
        lease is dropped however this ends: an error that escapes (the store unreachable)
        leaves the rotation to recovery once the lease runs out."""
        try:
            return await self._drive_steps(ctx, from_step)
        finally:
            self._leases.pop(ctx.rotation_id, None)

    async def _drive_steps(self, ctx: _Ctx, from_step: str) -> RotationResult:
        try:
            await self._set_and_test(ctx, from_step)
            await self._finish_on_target(ctx, defer=True)
        except LostOwnership as exc:
            return await self._lost(ctx, exc)
        except (ConnectorError, RotatorError) as exc:
            return await self._rollback(ctx, exc)
        try:
            previous = await self.writer.run(lambda conn: self._finish(conn, ctx))
        except LostOwnership as exc:
            return await self._lost(ctx, exc)
        except RotatorError as exc:
            return await self._rollback(ctx, exc)
        return await self._after_finish(ctx, previous)

    async def _after_finish(self, ctx: _Ctx, previous: int | None) -> RotationResult:
        self._leases.pop(ctx.rotation_id, None)
        self.secrets_for(ctx.tenant.name).forget(ctx.cred.name)
        warnings = await self._propagate(ctx)
        c = ctx.cred.name
        if ctx.grace_s == 0:
            revoked = await self.process_revocations(credential_ids=[ctx.cred.id])
            if not revoked.get(ctx.cred.id, True):
                return RotationResult(
                    c,
                    Outcome.FAILED,
                    ctx.rotation_id,
                    ctx.version,
                    error="rotated, but revoking the old value failed; "
                    "it stays queued for revocation",
                    warnings=warnings,
                )
        return RotationResult(c, Outcome.ROTATED, ctx.rotation_id, ctx.version, warnings=warnings)

    async def _propagate(self, ctx: _Ctx) -> tuple[str, ...]:
        """Write the new CURRENT value to the credential's sinks, with retries. A failure is
        audited and reported as a warning; the rotation stays done."""
        warnings: list[str] = []
        assert ctx.pending is not None
        value = ctx.pending
        for stored in ctx.cred.sinks:
            try:
                sink = load_sink(dict(stored))
            except RotatorError as exc:
                warnings.append(f"sink skipped: {exc}")
                continue
            where = sink.describe()
            try:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(3),
                    wait=wait_exponential(multiplier=self.opts.retry_initial_s, max=1.0),
                    retry=retry_if_exception_type(OSError),
                    reraise=True,
                ):
                    with attempt:
                        await asyncio.get_running_loop().run_in_executor(
                            self._threads, sink.write, value, self.svc.protected_paths()
                        )
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                warnings.append(f"{where}: {reason}")
                await self._audit(ctx, "sink.failed", sink=where, error=reason, attempts=3)
            else:
                await self._audit(ctx, "sink.write", sink=where)
        return tuple(warnings)

    # -- coordinated groups ---------------------------------------------------------------

    async def rotate_group(
        self, group: Group, tenant: str = "default", *, emergency: bool = False
    ) -> BatchResult:
        """Rotate a group's members in dependency order, ``min_offset`` apart per level.

        Not all-or-nothing: a member whose predecessor failed is not rotated; the others are.
        All-or-nothing: every member is set and tested first; any failure rolls back all that
        were set; then every member's stage move commits in one transaction. A crash in
        between rolls the group's members back on recovery (see ``_resume_row``).
        """
        t0 = time.monotonic()
        batch_id = str(uuid.uuid4())
        grace = 0 if emergency else None
        deps = {m.name: set(m.after) for m in group.members}
        results: dict[str, RotationResult] = {}
        offset = group.min_offset.total_seconds()
        if not group.all_or_nothing:
            trigger = Trigger.EMERGENCY if emergency else Trigger.MANUAL
            for i, level in enumerate(group.levels()):
                if i and offset:
                    await asyncio.sleep(offset)
                runnable = []
                for name in level:
                    bad = sorted(d for d in deps[name] if results[d].outcome is not Outcome.ROTATED)
                    if bad:
                        results[name] = RotationResult(
                            name, Outcome.FAILED, error=f"not rotated: {bad[0]!r} before it failed"
                        )
                    else:
                        runnable.append(name)
                outs = await asyncio.gather(
                    *(
                        self.rotate_one(
                            RotationRequest(n, tenant, trigger, grace), batch_id=batch_id
                        )
                        for n in runnable
                    )
                )
                results.update(zip(runnable, outs, strict=True))
        else:
            results = await self._rotate_atomically(group, tenant, grace, batch_id)
        return BatchResult([results[m.name] for m in group.members], time.monotonic() - t0)

    async def _rotate_atomically(
        self, group: Group, tenant: str, grace: int | None, batch_id: str
    ) -> dict[str, RotationResult]:
        results: dict[str, RotationResult] = {}
        staged: list[_Ctx] = []
        failure: str | None = None
        offset = group.min_offset.total_seconds()

        async def stage(name: str) -> _Ctx | RotationResult:
            started = await self._start(
                RotationRequest(name, tenant, Trigger.GROUP, grace), batch_id, None, join=False
            )
            if isinstance(started, RotationResult):
                return started
            try:
                await self._set_and_test(started, "created")
            except LostOwnership as exc:
                return await self._lost(started, exc)
            except (ConnectorError, RotatorError) as exc:
                return await self._rollback(started, exc)
            return started

        for i, level in enumerate(group.levels()):
            if i and offset:
                await asyncio.sleep(offset)
            for name, out in zip(
                level, await asyncio.gather(*(stage(n) for n in level)), strict=True
            ):
                if isinstance(out, RotationResult):
                    results[name] = out
                    failure = failure or f"{name!r} failed: {out.error}"
                else:
                    staged.append(out)
            if failure:
                break
        if failure is None:
            for ctx in staged:
                try:
                    await self._finish_on_target(ctx)
                except (ConnectorError, RotatorError) as exc:
                    failure = f"{ctx.cred.name!r} failed: {exc}"
                    break
        if failure is not None:
            cause = RotationError(f"group {group.name!r} rolled back: {failure}")
            for ctx in reversed(staged):
                results[ctx.cred.name] = await self._rollback(ctx, cause)
            for m in group.members:
                results.setdefault(
                    m.name, RotationResult(m.name, Outcome.FAILED, error=f"not started: {failure}")
                )
            return results

        def commit(conn: Connection) -> list[int | None]:
            return [self._finish(conn, ctx) for ctx in staged]

        try:
            previous = await self.writer.run(commit)
        except LostOwnership as exc:
            # Nothing of the group committed: the lost member repairs, the others roll back.
            cause = RotationError(f"group {group.name!r} rolled back: {exc}")
            for ctx in reversed(staged):
                if ctx.rotation_id == exc.rotation_id and ctx.lease is not None:
                    ctx.lease.lost = True
                results[ctx.cred.name] = await self._rollback(ctx, cause)
            return results
        for ctx, prev in zip(staged, previous, strict=True):
            results[ctx.cred.name] = await self._after_finish(ctx, prev)
        return results

    def _finish(self, conn: Connection, ctx: _Ctx) -> int | None:
        """Stage move and bookkeeping in one savepoint: PENDING->CURRENT, CURRENT->PREVIOUS.
        The fenced step write comes first: a lost rotation raises LostOwnership before any
        stage moves."""
        self._step(conn, ctx, "finished")
        for record in ctx.deferred:
            record(conn)
        now = self._now()
        grace = timedelta(seconds=ctx.grace_s)
        self.svc.check_stage_map(conn, ctx.cred.id)
        previous = store_creds.promote(conn, ctx.cred.id, ctx.version, now=now, grace=grace)
        self.svc.restamp(conn, ctx.cred.id)
        if previous is not None:
            store_rot.enqueue_revocation(conn, ctx.cred.id, previous, now + grace)
        if ctx.grace_s == 0:
            store_rot.revoke_all_now(conn, ctx.cred.id, now)
        store_creds.update_credential(
            conn,
            ctx.cred.id,
            now=now,
            last_rotated_at=now,
            use_count=0,
            set_next_rotation=True,
            next_rotation_at=earliest(
                next_rotation_at(ctx.cred.policy, now),
                cbase.rotation_hint(ctx.impl, ctx.cfg, ctx.pending),
            ),
        )
        store_rot.release_lock(conn, ctx.cred.id, ctx.rotation_id)
        self._audit_in(
            conn,
            ctx,
            "rotation.complete",
            previous_version=previous,
            grace_s=ctx.grace_s,
            duration_ms=round((time.monotonic() - ctx.started) * 1000, 2),
        )
        return previous

    async def _rollback(self, ctx: _Ctx, cause: Exception) -> RotationResult:
        assert ctx.pending is not None
        pending = ctx.pending
        error = str(cause)
        rolled_back = False
        rb_error = None
        if ctx.touched_target:
            try:
                await self._call(
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
                return await self._lost(ctx, exc)
            except (ConnectorError, RotatorError) as exc:
                rb_error = str(exc)

        def record(conn: Connection) -> None:
            now = self._now()
            msg = error if rb_error is None else f"{error}; rollback failed: {rb_error}"
            try:
                self.svc.check_stage_map(conn, ctx.cred.id)
            except IntegrityError as exc:
                # Stages edited outside rotator: move none (re-stamping would seal the edit),
                # but end the rotation and free the credential so nothing stays stuck.
                msg = f"{msg}; version {ctx.version} left as it is: {exc}"
            else:
                store_rot.mark_version(
                    conn, ctx.cred.id, ctx.version, Stage.FAILED, now, only_from=(Stage.PENDING,)
                )
                self.svc.restamp(conn, ctx.cred.id)
            self._step(conn, ctx, "rolled_back" if rolled_back else "failed", error=msg)
            store_rot.release_lock(conn, ctx.cred.id, ctx.rotation_id)
            self._audit_in(
                conn,
                ctx,
                "rotation.rollback" if rolled_back else "rotation.failed",
                error=msg,
                target_touched=ctx.touched_target,
            )

        try:
            await self.writer.run(record)
        except LostOwnership as exc:
            return await self._lost(ctx, exc)
        self._leases.pop(ctx.rotation_id, None)
        if rb_error is not None:
            error = f"{error}; rollback failed: {rb_error}"
        return RotationResult(
            ctx.cred.name,
            Outcome.ROLLED_BACK if rolled_back else Outcome.FAILED,
            ctx.rotation_id,
            ctx.version,
            error,
        )

    # -- lost ownership -------------------------------------------------------------------

    async def _lost(self, ctx: _Ctx, cause: LostOwnership) -> RotationResult:
        """This process lost the rotation (its lease ran out; another process took it over).

        A call of ours may have reached the target after the new owner's, so when we made a
        call that can change the target, one repair call makes it agree with the store again
        (see _repair). Then stop: no other connector call for this rotation. The loss and the
        repair are audited (no values)."""
        if ctx.lease is not None:
            ctx.lease.lost = True
        self._leases.pop(ctx.rotation_id, None)
        await self._audit(
            ctx, "rotation.lost", last_call=ctx.last_write or "none", error=str(cause)
        )
        if ctx.last_write is None:
            note = "this process changed nothing on the target"
        else:
            try:
                note = await self._repair(ctx)
            except (ConnectorError, RotatorError) as exc:
                note = f"repairing the target failed: {exc}"
                await self._audit(ctx, "rotation.repair_failed", error=str(exc))
        return RotationResult(
            ctx.cred.name, Outcome.FAILED, ctx.rotation_id, ctx.version, error=f"{cause}; {note}"
        )

    def _store_view(
        self, conn: Connection, ctx: _Ctx
    ) -> tuple[Stage | None, Secret | None, int | None, str | None]:
        """(stage of our version, CURRENT value, CURRENT number, lock holder), read fresh and
        through the stage-map check (IntegrityError: no repair from edited stages)."""
        self.svc.check_stage_map(conn, ctx.cred.id)
        own = store_creds.sealed_version(conn, ctx.cred.id, number=ctx.version)
        cur = store_creds.sealed_version(conn, ctx.cred.id, stage=Stage.CURRENT)
        current = self.svc.open_version(conn, cur) if cur is not None else None
        return (
            own.stage if own is not None else None,
            current,
            cur.number if cur is not None else None,
            store_rot.lock_holder(conn, ctx.cred.id),
        )

    async def _repair(self, ctx: _Ctx) -> str:
        """Make the target agree with the store after this process lost the rotation: one
        call, chosen by _repair_action from the strategy, our last call and the store read
        fresh. Waits (up to join_timeout_s) while another rotation holds the credential, so
        a stale write of ours that landed during it is overwritten after it; while the new
        owner of ours holds it with our version still PENDING, waits one lease for it to end
        that version (it may be deciding), then leaves the version to it. A CURRENT asserted
        again is checked once more after the call: if a rotation started and finished
        meanwhile, the repair runs again for the new CURRENT (at most three times). Returns
        what it did; raises the connector's error if the repair call failed."""
        deadline = time.monotonic() + self.opts.join_timeout_s
        for _ in range(3):
            asserted, note = await self._repair_once(ctx, deadline)
            if asserted is None:
                return note
            _, _, now_no, holder = await self._read(partial(self._store_view, ctx=ctx))
            if now_no == asserted and holder is None:
                return note
        return note

    async def _repair_once(self, ctx: _Ctx, deadline: float) -> tuple[int | None, str]:
        """One repair decision and call; returns (the CURRENT number it asserted, or None;
        what it did)."""
        assert ctx.pending is not None
        ours = ctx.pending
        strategy = cbase.strategy_of(ctx.impl, ctx.cfg)
        delay = 0.05
        # Our own version, still PENDING under its new owner: that owner drives it and will
        # end it (roll back, or finish); give it one lease to do so, then leave it to it.
        ours_until = time.monotonic() + self.opts.lease_s
        while True:
            stage, current, current_no, holder = await self._read(
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
        action = _repair_action(
            strategy, ctx.last_write, stage, current_no, ctx.version, ctx.current_version
        )
        left = ours if ctx.last_write in ("set", "finish") else ctx.current
        c = ctx.cred.name
        if action == "assert-current" and current is not None and current_no is not None:
            asserted = current_no
            await self._repair_call(
                ctx,
                lambda: ctx.impl.set(
                    cbase.SetRequest(
                        c, current_no, ctx.cfg, current, left, ctx.secrets, fence=ctx.fence
                    )
                ),
            )
        elif action == "remove-own":
            await self._repair_call(
                ctx,
                lambda: ctx.impl.rollback(
                    cbase.RollbackRequest(
                        c, ctx.version, ctx.cfg, ours, current, ctx.secrets, fence=ctx.fence
                    )
                ),
            )
        elif action == "restore-own":
            await self._repair_call(
                ctx,
                lambda: ctx.impl.set(
                    cbase.SetRequest(
                        c, ctx.version, ctx.cfg, ours, current, ctx.secrets, fence=ctx.fence
                    )
                ),
            )
        else:
            action = "none"
        await self._audit(
            ctx,
            "rotation.repair",
            repair=action,
            strategy=strategy.value,
            last_call=ctx.last_write,
            version_stage=stage.value if stage is not None else None,
            current_version=current_no,
        )
        return asserted, f"target repaired ({action})"

    async def _repair_call(self, ctx: _Ctx, fn: Callable[[], Awaitable[None]]) -> None:
        """The repair's one call: retried on transient errors and bounded like a step, but
        neither fenced (the rotation is no longer ours) nor stopped by an open breaker (the
        target must agree with the store again)."""
        async for attempt in self._retrying():
            with attempt:
                async with self._target_sem(ctx.target):
                    try:
                        async with asyncio.timeout(self.opts.step_timeout_s):
                            await fn()
                    except TimeoutError as exc:
                        raise cbase.TransientError(
                            f"repair timed out after {self.opts.step_timeout_s:g}s"
                        ) from exc
                    except (ConnectorError, RotatorError):
                        raise
                    except Exception as exc:  # a connector bug: never retried, never leaks
                        raise cbase.PermanentError(
                            f"connector {ctx.impl.kind!r} raised {type(exc).__name__} in repair"
                        ) from exc

    async def _wait_for(self, rotation_id: str, ctx: _Ctx) -> RotationResult:
        """Wait for a rotation another process holds; take it over if its owner dies."""
        deadline = time.monotonic() + self.opts.join_timeout_s
        delay = 0.05
        while time.monotonic() < deadline:
            row = await self._read(lambda c: store_rot.get_rotation(c, rotation_id))
            if row is None:
                return RotationResult(
                    ctx.cred.name,
                    Outcome.FAILED,
                    rotation_id,
                    error="the rotation it joined vanished",
                )
            if row.terminal:
                return _result_from_row(row)
            if (
                row.lease_expires_at is not None and row.lease_expires_at < self._now()
            ) or _owner_dead(row.owner):
                resumed = await self._resume_row(row)
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

    # -- recovery -------------------------------------------------------------------------

    async def recover(self) -> list[RotationResult]:
        """Resume every rotation whose owner died (lease ran out, or its local pid is gone)."""

        def find(conn: Connection) -> list[store_rot.RotationRow]:
            dead = [o for o in store_rot.active_owners(conn) if _owner_dead(o)]
            return store_rot.stale_rotations(conn, self._now(), dead)

        rows = await self._read(find)
        results = await asyncio.gather(*(self._resume_row(r) for r in rows))
        return [r for r in results if r is not None]

    async def _resume_row(self, row: store_rot.RotationRow) -> RotationResult | None:
        """Take ``row`` over under a new token (its old owner can no longer write it) and
        drive it on; None when another process claimed it first or its owner renewed."""
        until = self._now() + timedelta(seconds=self.opts.lease_s)
        lease = _Lease(
            fence=uuid.uuid4().hex,
            valid_until=asyncio.get_running_loop().time() + self.opts.lease_s,
        )
        dead = _owner_dead(row.owner)
        took = await self.writer.run(
            lambda c: store_rot.take_over(
                c, row, self.owner, lease.fence, until, self._now(), owner_dead=dead
            )
        )
        if not took:
            return None
        self._leases[row.id] = lease
        tenant_name = await self._read(lambda c: _tenant_name(c, row.tenant_id))
        req = RotationRequest(
            name=row.credential,
            tenant=tenant_name,
            trigger=Trigger(row.trigger),
            grace_s=row.grace_s,
        )
        try:
            ctx = await self._prepare(req)
        except RotatorError as exc:
            msg = f"{exc}; not resumed, so the target may still hold version {row.version}"

            def give_up(c: Connection) -> None:
                # The credential cannot be loaded (e.g. its stages were edited outside
                # rotator): touch nothing on the target, but end the rotation and free the
                # credential, so a repaired store can rotate it again.
                store_rot.set_step(c, row.id, "failed", self._now(), fence=lease.fence, error=msg)
                store_rot.release_lock(c, row.credential_id, row.id)

            # This process made no call: a claim lost meanwhile needs no repair.
            with contextlib.suppress(LostOwnership):
                await self.writer.run(give_up)
            self._leases.pop(row.id, None)
            return RotationResult(row.credential, Outcome.FAILED, row.id, error=str(exc))
        ctx.rotation_id = row.id
        ctx.grace_s = row.grace_s
        ctx.lease = lease
        ctx.touched_target = True  # we cannot know: roll back to be safe
        if row.version is None:  # intent never completed: nothing reached the target

            def abandon(c: Connection) -> None:
                self._step(c, ctx, "failed", error="abandoned before intent")
                store_rot.release_lock(c, ctx.cred.id, row.id)

            with contextlib.suppress(LostOwnership):
                await self.writer.run(abandon)
            self._leases.pop(row.id, None)
            return RotationResult(row.credential, Outcome.FAILED, row.id, error="abandoned")
        ctx.version = row.version
        sv = await self._read(
            lambda c: store_creds.sealed_version(c, ctx.cred.id, number=row.version)
        )
        assert sv is not None
        ctx.pending = await self._read(lambda c: self.svc.open_version(c, sv))
        await self._audit(ctx, "rotation.resume", from_step=row.step, previous_owner=row.owner)
        if row.trigger == Trigger.GROUP.value:
            # An all-or-nothing group cannot finish one member alone: undo it.
            return await self._rollback(
                ctx, RotationError("group rotation interrupted; rolled back")
            )
        return await self._drive(ctx, row.step)

    # -- the long-running loop -------------------------------------------------------------

    async def serve(
        self,
        stop: asyncio.Event,
        *,
        poll_s: float = 1.0,
        schedule: bool = True,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> None:
        """Run until ``stop`` is set: resume dead rotations, revoke values whose grace ended,
        and (``schedule``) rotate credentials whose ``next_rotation_at`` has come. Wakes at the
        next due time (indexed queries; it never scans every credential) or after ``poll_s``.
        """
        while not stop.is_set():
            await self.recover()
            await self.process_revocations()
            if schedule:
                due = await self._read(partial(store_creds.due_credentials, now=self._now()))
                if due:
                    result = await self.rotate(
                        [RotationRequest(name, tenant, Trigger.SCHEDULE) for tenant, name in due]
                    )
                    failed = [r.name for r in result.results if r.outcome is not Outcome.ROTATED]
                    by_name = dict((n, t) for t, n in due)
                    if failed:
                        # Try a failed scheduled rotation again later, not on every wake-up.
                        later = self._now() + timedelta(seconds=FAILED_SCHEDULE_BACKOFF_S)
                        await self.writer.run(
                            partial(
                                store_creds.postpone,
                                names=[(by_name[n], n) for n in failed],
                                until=later,
                            )
                        )
                    if on_batch is not None:
                        on_batch(result)
            nxt = await self._read(_next_due)
            wait = poll_s
            if nxt is not None:
                wait = max(0.0, min(poll_s, (nxt - self._now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)

    # -- revocation -----------------------------------------------------------------------

    async def process_revocations(self, credential_ids: list[int] | None = None) -> dict[int, bool]:
        """Revoke every PREVIOUS version whose grace has ended; RETIRED on success.

        A failed revocation stays queued with backoff. Returns {credential_id: revoked?}.
        """
        now = self._now()
        rows = await self._read(
            lambda c: store_rot.due_revocations(c, now, credential_ids=credential_ids)
        )
        done = await asyncio.gather(*(self._revoke(r) for r in rows))
        out: dict[int, bool] = {}
        for r, ok in zip(rows, done, strict=True):
            out[r.credential_id] = out.get(r.credential_id, True) and ok
        return out

    async def _revoke(self, r: store_rot.RevocationRow) -> bool:
        tenant_name = await self._read(lambda c: _tenant_name(c, r.tenant_id))
        try:
            ctx = await self._prepare(RotationRequest(r.credential, tenant_name))
        except RotatorError:
            return False
        ctx.version = r.version
        sv = await self._read(
            lambda c: store_creds.sealed_version(c, ctx.cred.id, number=r.version)
        )
        if sv is None or sv.stage is not Stage.PREVIOUS:
            await self.writer.run(lambda c: store_rot.finish_revocation(c, r.id))
            return True
        value = await self._read(lambda c: self.svc.open_version(c, sv))
        try:
            await self._call(
                ctx,
                "revoke",
                lambda: ctx.impl.revoke(
                    cbase.RevokeRequest(
                        ctx.cred.name, r.version, ctx.cfg, value, secrets=ctx.secrets
                    )
                ),
            )
        except (ConnectorError, RotatorError) as exc:
            backoff = timedelta(seconds=min(5 * 2**r.attempts, 3600))
            msg = str(exc)

            def again(conn: Connection) -> None:
                store_rot.retry_revocation(conn, r.id, msg, self._now() + backoff)
                self._audit_in(
                    conn, ctx, "rotation.revoke_failed", error=msg, attempts=r.attempts + 1
                )

            await self.writer.run(again)
            return False

        def retire(conn: Connection) -> None:
            self.svc.check_stage_map(conn, ctx.cred.id)
            store_rot.mark_version(
                conn,
                ctx.cred.id,
                r.version,
                Stage.RETIRED,
                self._now(),
                only_from=(Stage.PREVIOUS,),
            )
            self.svc.restamp(conn, ctx.cred.id)
            store_rot.finish_revocation(conn, r.id)

        await self.writer.run(retire)
        return True


def _next_due(conn: Connection) -> datetime | None:
    times = [
        t
        for t in (store_rot.next_revocation_due(conn), store_creds.next_due_time(conn))
        if t is not None
    ]
    return min(times) if times else None


def _tenant_name(conn: Connection, tenant_id: int) -> str:
    from sqlalchemy import select

    from rotator.store.schema import tenants

    return str(conn.execute(select(tenants.c.name).where(tenants.c.id == tenant_id)).scalar_one())


def _owner_dead(owner: str | None) -> bool:
    """True when ``owner`` is a process of this machine, boot and PID namespace that no longer
    runs. Anything else (another machine or container, an older owner format, no /proc)
    is not known dead: its lease decides."""
    if not owner:
        return False
    parts = owner.split(":")
    if len(parts) != 5:
        return False
    host, pid, boot, pidns, _ = parts
    here = _machine()
    if "" in here or (host, boot, pidns) != (socket.gethostname(), *here) or not pid.isdigit():
        return False
    return int(pid) != os.getpid() and not _pid_alive(int(pid))


def _repair_action(
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


def _joined(res: RotationResult, name: str) -> RotationResult:
    return RotationResult(
        name,
        res.outcome,
        res.rotation_id,
        res.version,
        res.error,
        joined=True,
        duration_s=res.duration_s,
    )


def _result_from_row(row: store_rot.RotationRow) -> RotationResult:
    outcome = {"finished": Outcome.ROTATED, "rolled_back": Outcome.ROLLED_BACK}.get(
        row.step, Outcome.FAILED
    )
    return RotationResult(row.credential, outcome, row.id, row.version, row.error, joined=True)


__all__ = ["CircuitOpen", "Engine", "EngineOptions"]
