"""The step executor: every connector call the engine makes goes through here.

Calls that reach a target get one retry policy (exponential backoff with jitter, transient
errors only), one circuit breaker and one priority-admitted concurrency limit per target, one
step timeout. Rotation steps are also fenced by the rotation's lease and audited; calls outside
a rotation (``--verify``, publishing a first value at ``credential add``) get the same limits,
breaker, retries and timeout, and are audited by the use case that makes them. ``create``
(making a value, local work) gets the step timeout and the mapping of connector bugs only.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Connection

from rotator.connectors import base as cbase
from rotator.engine.admission import Rank
from rotator.engine.breaker import CircuitOpen
from rotator.engine.context import Ctx
from rotator.engine.ownership import Leases, owner_dead
from rotator.engine.runtime import Runtime
from rotator.engine.values import Values
from rotator.errors import ConnectorError, RotatorError
from rotator.store import credentials as store_creds
from rotator.store import rotations as store_rot
from rotator.telemetry import metrics, tracing

if TYPE_CHECKING:
    from tenacity import AsyncRetrying

T = TypeVar("T")
INTERACTIVE: Rank = (1, 0)  # the admission rank of calls a person waits for (see types.rank)


@dataclass
class _BusyCheck:
    """One read of which credentials of a tenant are held, shared by the checks that asked
    for it before it started (see ``StepRunner.references_busy``)."""

    tenant_id: int
    names: set[str] = field(default_factory=set)
    read: asyncio.Future[set[str]] | None = None


def _retrieved(read: asyncio.Future[set[str]]) -> None:
    # Every sharer may have been cancelled: then nobody awaits the read's failure.
    if not read.cancelled():
        read.exception()


class StepRunner:
    """Runs connector calls under the engine's limits (see the module docstring)."""

    def __init__(self, rt: Runtime, leases: Leases, values: Values) -> None:
        self.rt = rt
        self.leases = leases
        self.values = values
        # Reference checks not yet started, per tenant; the lock because a DB thread takes a
        # check out when its read starts.
        self._busy_checks: dict[int, _BusyCheck] = {}
        self._busy_lock = threading.Lock()

    def retrying(self, *, after_first: bool = False) -> AsyncRetrying:
        """The retry policy: exponential backoff with jitter, transient errors only, at most
        ``retry_attempts`` attempts. ``after_first``: the same policy for the attempts after a
        first one made outside it (see ``attempts``), numbered from 1 again: one attempt
        fewer, and each wait the one the full policy would wait after the same attempt."""
        # Imported on the first connector call: a value read (credential get) makes none.
        from tenacity import (
            AsyncRetrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential,
            wait_random,
        )

        o = self.rt.opts
        shift = 1 if after_first else 0
        return AsyncRetrying(
            stop=stop_after_attempt(o.retry_attempts - shift),
            wait=wait_exponential(multiplier=o.retry_initial_s * 2**shift, max=o.retry_max_s)
            + wait_random(0, o.retry_initial_s),
            retry=retry_if_exception_type(cbase.TransientError),
            reraise=True,
        )

    async def attempts(self, call: Callable[[int], Awaitable[T]]) -> T:
        """``call(n)`` for attempt n = 1, 2, ... under the retry policy (``retrying``).

        The first attempt is made directly and only a transient failure enters tenacity:
        setting up its loop costs about 35 µs per call, a tenth of the engine's CPU per
        rotation, and nearly every call succeeds at once. The waits and the attempt count are
        the policy's either way."""
        o = self.rt.opts
        try:
            return await call(1)
        except cbase.TransientError:
            if o.retry_attempts <= 1:
                raise
        # The wait the policy makes after attempt 1: exponential's first step plus jitter.
        await asyncio.sleep(
            min(o.retry_initial_s, o.retry_max_s) + random.uniform(0, o.retry_initial_s)  # noqa: S311 (jitter, not a secret)
        )
        async for attempt in self.retrying(after_first=True):
            with attempt:
                return await call(attempt.retry_state.attempt_number + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self,
        target: str,
        kind: str,
        step: str,
        fn: Callable[[], Awaitable[T]],
        rank: Rank,
        ctx: Ctx | None,
    ) -> T:
        """One attempt: the target's breaker and limit, the lease check, the bounded call.
        Raises TransientError (retry), PermanentError (a connector bug included: it never
        leaks), CircuitOpen, LostOwnership or the store's error."""
        breaker = self.rt.breaker(target)
        try:
            trial = breaker.before_call()
        except CircuitOpen:
            metrics.breaker_seen(target, "open")
            raise
        if trial:
            metrics.breaker_seen(target, "half-open")
        judged = False  # a half-open trial without a verdict must free its slot
        try:
            async with self.rt.target_limit(target).slot(rank):
                if ctx is not None:
                    await self.leases.check(ctx)
                    if step == "set":
                        ctx.touched_target = True
                    if step in ("set", "finish", "rollback"):
                        ctx.last_write = step
                cm: asyncio.Timeout | None = None
                try:
                    async with self.leases.bounded(ctx) as cm:
                        result = await fn()
                except cbase.TransientError:
                    breaker.record_failure()
                    metrics.breaker_seen(target, breaker.state)
                    judged = True
                    raise
                except TimeoutError as exc:
                    if ctx is not None and self.leases.cut_by_lease(ctx, cm):
                        # Cut by the lease, not by the target: go on only as owner.
                        await self.leases.check(ctx)
                        raise cbase.TransientError(
                            f"{step} cut short: the lease ran short"
                        ) from exc
                    breaker.record_failure()
                    metrics.breaker_seen(target, breaker.state)
                    judged = True
                    raise cbase.TransientError(
                        f"{step} timed out after {self.rt.opts.step_timeout_s:g}s"
                    ) from exc
                except (ConnectorError, RotatorError):
                    raise
                except Exception as exc:  # a connector bug: never retried, never leaks
                    raise cbase.PermanentError(
                        f"connector {kind!r} raised {type(exc).__name__} in {step}"
                    ) from exc
                breaker.record_success()
                if trial:
                    metrics.breaker_seen(target, breaker.state)
                judged = True
                return result
        finally:
            if trial and not judged:
                breaker.release_trial()

    async def call(
        self,
        ctx: Ctx,
        step: str,
        fn: Callable[[], Awaitable[T]],
        after: Callable[[Connection], None] | None = None,
        defer: bool = False,
    ) -> T:
        """One rotation step's connector call, fenced, limited, retried and audited.

        Transient errors (and timeouts) are retried with exponential backoff and jitter; each
        retry is audited. Permanent errors and an open breaker fail at once. On success the
        step's audit entry and ``after`` (its durable bookkeeping) commit together, or (``defer``)
        are kept in ``ctx.deferred`` to commit with the stage move. Fenced: no attempt starts
        unless the rotation's lease is valid for the safety margin, and a call cut because the
        lease ran short is retried only if ownership is confirmed; LostOwnership when the
        rotation was taken over (before, during or after the call).
        """
        fn = self._reread_on_refusal(ctx, fn)
        last_error = ""
        kind = ctx.impl.kind
        made = 0

        async def attempt(n: int) -> T:
            nonlocal last_error, made
            made = n
            if n > 1:
                await self.rt.audit(ctx, "rotation.retry", step=step, attempt=n, error=last_error)
            t0 = time.monotonic()
            try:
                result = await self._once(ctx.target, kind, step, fn, ctx.req.rank, ctx)
            except cbase.TransientError as exc:
                last_error = str(exc)
                raise
            finally:
                metrics.step_observed(step, kind, time.monotonic() - t0)
            ms = round((time.monotonic() - t0) * 1000, 2)
            record = partial(
                self._record_step, ctx=ctx, step=step, duration_ms=ms, attempt=n, after=after
            )
            if defer:
                ctx.deferred.append(record)
            else:
                await self.rt.writer.run(record)
            return result

        with tracing.span(f"step.{step}", step=step, connector=kind) as span:
            try:
                out = await self.attempts(attempt)
            except BaseException:
                tracing.set_attributes(span, attempts=made, outcome="error")
                raise
            tracing.set_attributes(span, attempts=made, outcome="ok")
            return out

    async def call_unowned(
        self,
        target: str,
        kind: str,
        step: str,
        fn: Callable[[], Awaitable[T]],
        rank: Rank = INTERACTIVE,
    ) -> T:
        """A connector call outside any rotation (generate, verify, publish a first value):
        the target's limit, breaker, step timeout and the retry policy, no lease."""
        return await self.attempts(lambda _n: self._once(target, kind, step, fn, rank, None))

    async def create(self, kind: str, fn: Callable[[], Awaitable[T]]) -> T:
        """A connector's ``create`` (making a value is local work): bounded by the step
        timeout, a connector bug mapped to PermanentError; neither limited nor retried nor
        counted by the target's breaker, which track the target."""
        return await self._timed(kind, "create", fn, cbase.PermanentError)

    async def _timed(
        self,
        kind: str,
        step: str,
        fn: Callable[[], Awaitable[T]],
        on_timeout: type[ConnectorError],
    ) -> T:
        """``fn()`` within the step timeout (``on_timeout`` when it runs out); a connector bug
        (an exception that is no rotator error) becomes PermanentError, its text not shown."""
        timeout_s = self.rt.opts.step_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await fn()
        except TimeoutError as exc:
            raise on_timeout(f"{step} timed out after {timeout_s:g}s") from exc
        except (ConnectorError, RotatorError):
            raise
        except Exception as exc:  # a connector bug: never retried, never leaks
            raise cbase.PermanentError(
                f"connector {kind!r} raised {type(exc).__name__} in {step}"
            ) from exc

    async def repair_call(self, ctx: Ctx, fn: Callable[[], Awaitable[None]]) -> None:
        """A lost rotation's one repair call: retried on transient errors and bounded like a
        step, but neither fenced (the rotation is no longer ours) nor stopped by an open
        breaker (the target must agree with the store again)."""

        async def attempt(_n: int) -> None:
            async with self.rt.target_limit(ctx.target).slot(ctx.req.rank):
                await self._timed(ctx.impl.kind, "repair", fn, cbase.TransientError)

        await self.attempts(attempt)

    def _record_step(
        self,
        conn: Connection,
        *,
        ctx: Ctx,
        step: str,
        duration_ms: float,
        attempt: int,
        after: Callable[[Connection], None] | None,
    ) -> None:
        self.rt.audit_in(
            conn,
            ctx,
            f"rotation.{step}",
            target=ctx.target,
            duration_ms=duration_ms,
            attempt=attempt,
        )
        if after is not None:
            after(conn)

    # -- references ---------------------------------------------------------------------------

    async def references_busy(self, ctx: Ctx, names: Iterable[str]) -> list[str]:
        """Which of ``names`` (credentials of ctx's tenant) a live rotation holds now. A lock
        whose rotation's lease ran out, or whose owner died, is recovery's to resolve: not
        worth waiting for.

        The answer comes from a read that starts after this call: concurrent checks of one
        tenant share a read that has not started yet (a batch level's rotations all check
        the credentials they reference as they start, most often the same few), so each
        gets an answer as fresh as a read of its own would give."""
        wanted = sorted(set(names))
        if not wanted:
            return []
        tenant_id = ctx.tenant.id
        with self._busy_lock:
            check = self._busy_checks.get(tenant_id)
            joined = check is not None and check.read is not None and not check.read.done()
            if check is None or not joined:
                check = self._busy_checks[tenant_id] = _BusyCheck(tenant_id)
            check.names.update(wanted)
        if check.read is None:
            shared = check  # bound now: the dict's entry is replaced by the next check
            check.read = asyncio.ensure_future(self.rt.read(lambda c: self._held(c, shared)))
            check.read.add_done_callback(_retrieved)
        busy = await asyncio.shield(check.read)
        return [name for name in wanted if name in busy]

    def _held(self, conn: Connection, check: _BusyCheck) -> set[str]:
        """On a DB thread: which of ``check.names`` a live rotation holds. Callers that come
        after this starts make a check of their own."""
        with self._busy_lock:
            if self._busy_checks.get(check.tenant_id) is check:
                del self._busy_checks[check.tenant_id]
            names = sorted(check.names)
        now = self.rt.now()
        busy = set()
        for name in names:
            cid = store_creds.credential_id(conn, check.tenant_id, name)
            holder = None if cid is None else store_rot.lock_holder(conn, cid)
            row = None if holder is None else store_rot.get_rotation(conn, holder)
            if row is None or row.terminal or owner_dead(row.owner):
                continue
            if row.lease_expires_at is not None and row.lease_expires_at < now:
                continue
            busy.add(name)
        return busy

    async def await_references(self, ctx: Ctx) -> str | None:
        """Wait until no credential ``ctx`` references is being rotated (by this process or
        another), polling, at most ``join_timeout_s``; then drop the cached values of those
        that were, so the new values are read. Returns why it gave up, or None."""
        names = cbase.references_of(ctx.impl, ctx.cfg) - {ctx.cred.name}
        if not names:
            return None
        join_s = self.rt.opts.join_timeout_s
        deadline = time.monotonic() + join_s
        delay = 0.02
        waited: set[str] = set()
        while busy := await self.references_busy(ctx, names):
            if not waited:
                await self.rt.audit(ctx, "rotation.wait_reference", references=busy)
            waited.update(busy)
            if time.monotonic() >= deadline:
                return (
                    f"not started: {busy[0]!r}, which it references, was still being rotated "
                    f"after {join_s:g}s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        for name in waited:
            self.values.forget(ctx.tenant.name, name)
        return None

    def _reread_on_refusal(
        self, ctx: Ctx, fn: Callable[[], Awaitable[T]]
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
                while await self.references_busy(ctx, [exc.reference]):
                    await asyncio.sleep(0.05)
                self.values.forget(ctx.tenant.name, exc.reference)
                await self.rt.audit(ctx, "rotation.reread_reference", reference=exc.reference)
                await self.leases.check(ctx)  # a second call: fenced like the first
                return await fn()

        return call
