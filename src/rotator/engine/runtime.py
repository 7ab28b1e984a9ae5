"""What every part of the engine shares: the kernel, options, threads, the group-commit
writer, the connectors, the limits and breakers, and the audit of a rotation's steps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection

from rotator.connectors.registry import ConnectorSet
from rotator.engine.admission import PriorityLimiter
from rotator.engine.breaker import CircuitBreaker
from rotator.engine.options import EngineOptions
from rotator.engine.ownership import owner_id
from rotator.engine.writer import StoreWriter
from rotator.kernel import Kernel
from rotator.store import rotations as store_rot

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from rotator.engine.context import Ctx

T = TypeVar("T")


class Runtime:
    """Shared state of one engine. Create inside a running event loop's lifetime; call
    :meth:`aclose` once at the end."""

    def __init__(
        self, kernel: Kernel, opts: EngineOptions, connectors: ConnectorSet | None = None
    ) -> None:
        self.kernel = kernel
        self.opts = opts
        self.owner = owner_id()
        self.threads = ThreadPoolExecutor(
            max_workers=opts.db_threads, thread_name_prefix="rotator-db"
        )
        self.procs: ProcessPoolExecutor | None = None
        self.writer = StoreWriter(
            kernel.db, ThreadPoolExecutor(max_workers=1, thread_name_prefix="rotator-writer")
        )
        self.connectors = (
            connectors if connectors is not None else ConnectorSet(per_target=opts.per_target)
        )
        self.admission = PriorityLimiter(opts.concurrency, reserve=opts.reserve)
        self._targets: dict[str, PriorityLimiter] = {}
        self._breakers: dict[str, CircuitBreaker] = {}

    async def aclose(self) -> None:
        await self.writer.aclose()
        await self.connectors.aclose()
        self.threads.shutdown(wait=True)
        if self.procs is not None:
            self.procs.shutdown(wait=True, cancel_futures=True)

    def now(self) -> datetime:
        return self.kernel.clock()

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a read transaction on a worker thread."""

        def run() -> T:
            with self.kernel.db.read() as conn:
                return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self.threads, run)

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

    def target_limit(self, target: str) -> PriorityLimiter:
        s = self._targets.get(target)
        if s is None:
            s = self._targets[target] = PriorityLimiter(self.opts.per_target)
        return s

    # -- a rotation's audit and step record -------------------------------------------------

    async def audit(self, ctx: Ctx, action: str, **details: Any) -> None:
        await self.writer.run(lambda c: self.audit_in(c, ctx, action, **details))

    def audit_in(self, conn: Connection, ctx: Ctx, action: str, **details: Any) -> None:
        details.setdefault("trigger", ctx.req.trigger.value)
        if ctx.version:
            details.setdefault("version", ctx.version)
        self.kernel.audit(conn, ctx.who(), action, ctx.cred.name, ctx.rotation_id or None, details)

    def step(
        self, conn: Connection, ctx: Ctx, step: str, now: datetime | None = None, **kw: Any
    ) -> None:
        """Record the rotation's step, conditioned on this process's token (LostOwnership).
        ``now``: the time recorded (default the clock's), so a caller can sign the same time
        in the step's audit entry."""
        assert ctx.fence is not None
        at = self.now() if now is None else now
        store_rot.set_step(conn, ctx.rotation_id, step, at, fence=ctx.fence, **kw)
