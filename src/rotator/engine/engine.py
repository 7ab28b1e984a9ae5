"""The rotation engine: one object over the kernel that runs every connector call.

The parts, one concern per file: ``context`` (loading a rotation's context), ``values``
(counted, audited reads; connectors' secret resolvers), ``steps`` (the step executor: limits,
breaker, timeout, retries, step audit), ``protocol`` (create -> intent -> set -> test -> finish,
rollback, stage move), ``groups``, ``recovery`` (resuming, lost ownership and repair),
``ownership`` (owner ids, leases), ``revoker``, ``admission`` (priority admission into the
limits), ``writer`` (group commit). This module wires them and holds the public API: batches
in dependency and priority order, single rotations, and the connector calls the service makes
outside a rotation (generate, verify, publish a first value), so every call that reaches a
target gets one retry policy, one breaker and one limit per target (making a value, local
work, gets the step timeout only; see ``steps``). Rotations read referenced credentials
through a per-tenant cached resolver, calls made for a caller read them fresh as that caller
(``values``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rotator.connectors import base as cbase
from rotator.connectors.registry import ConnectorSet
from rotator.domain.group import Group
from rotator.domain.model import Credential, Stage
from rotator.domain.principal import Principal
from rotator.domain.secret import Secret
from rotator.engine import ordering
from rotator.engine.breaker import CircuitBreaker
from rotator.engine.context import ContextLoader, Ctx
from rotator.engine.groups import Groups
from rotator.engine.options import EngineOptions
from rotator.engine.ownership import Leases
from rotator.engine.protocol import Protocol
from rotator.engine.recovery import Recovery
from rotator.engine.revoker import Revoker
from rotator.engine.runtime import Runtime
from rotator.engine.steps import StepRunner
from rotator.engine.types import (
    BatchResult,
    Guard,
    Outcome,
    RotationRequest,
    RotationResult,
    Trigger,
)
from rotator.engine.values import Values
from rotator.engine.writer import StoreWriter
from rotator.errors import RotatorError
from rotator.kernel import Kernel
from rotator.telemetry import metrics, tracing

log = logging.getLogger(__name__)

_Inflight = tuple[asyncio.Future[RotationResult], Guard | None]


class Engine:
    """Runs rotations. Use as ``async with Engine(kernel) as engine: await engine.rotate(...)``.

    One engine per process and event loop: its limits, breakers and connector connections
    are shared by every rotation and call it runs."""

    def __init__(
        self,
        kernel: Kernel,
        options: EngineOptions | None = None,
        connectors: ConnectorSet | None = None,
        *,
        runtime: Runtime | None = None,
        values: Values | None = None,
    ) -> None:
        # ``runtime`` and ``values``: parts made before the engine, over the same kernel (the
        # service reads values through them without building the rest of the engine).
        if runtime is None:
            runtime = Runtime(kernel, options or EngineOptions(), connectors)
        self.runtime = rt = runtime
        self.leases = Leases(rt)
        self.values = values if values is not None else Values(rt)
        self.loader = ContextLoader(rt, self.values)
        self.steps = StepRunner(rt, self.leases, self.values)
        self.revoker = Revoker(rt, self.steps, self.loader)
        self.protocol = Protocol(
            rt, self.leases, self.steps, self.loader, self.values, self.revoker
        )
        self.recovery = Recovery(rt, self.leases, self.steps, self.loader, self.protocol)
        self.protocol.recovery = self.recovery
        self.groups = Groups(rt, self.protocol, self.recovery, self.rotate_one)
        # (tenant, name) -> the rotation under way in this process and its request's guard
        self._inflight: dict[tuple[str, str], _Inflight] = {}

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        self.runtime.writer.start()
        self.leases.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.leases.stop()
        await self.runtime.aclose()

    @property
    def kernel(self) -> Kernel:
        return self.runtime.kernel

    @property
    def opts(self) -> EngineOptions:
        return self.runtime.opts

    @property
    def owner(self) -> str:
        return self.runtime.owner

    @property
    def writer(self) -> StoreWriter:
        return self.runtime.writer

    def breaker(self, target: str) -> CircuitBreaker:
        return self.runtime.breaker(target)

    # -- rotations ------------------------------------------------------------------------

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
        prepared = await self.loader.prepare_many(reqs)
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
                    await self.runtime.audit(
                        refused_ctx, "rotation.failed", step="order", error=res.error
                    )
                results.append(res)
                if progress is not None:
                    progress(res)
            else:
                levels[level_of[key] - 1].append((r.priority, i, r))

        async def worker(queue: asyncio.PriorityQueue[tuple[int, int, RotationRequest]]) -> None:
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

        for level in levels:
            queue: asyncio.PriorityQueue[tuple[int, int, RotationRequest]] = asyncio.PriorityQueue()
            for item in level:
                queue.put_nowait(item)
            n = max(1, min(self.opts.concurrency, len(level)))
            await asyncio.gather(*(worker(queue) for _ in range(n)))
        order = {r.name: i for i, r in enumerate(reqs)}
        results.sort(key=lambda r: order.get(r.name, 0))
        return BatchResult(results=results, duration_s=time.monotonic() - t0)

    async def rotate_one(
        self, req: RotationRequest, *, batch_id: str | None = None, prepared: Ctx | None = None
    ) -> RotationResult:
        """Rotate one credential. Joins a rotation of the same credential already under way.

        Admitted into the global limit by ``req.rank`` (emergencies and interactive requests
        ahead of queued batch work; interactive ones may also use the limit's reserve, see
        ``EngineOptions``). Does not start while a credential it references is being
        rotated, here or by another process: waits for that rotation to end (bounded by
        ``join_timeout_s``; then fails)."""
        key = (req.tenant, req.name)
        while key in self._inflight:
            fut, guard = self._inflight[key]
            res = await asyncio.shield(fut)
            if res.outcome is not Outcome.SKIPPED or req.guard is guard:
                return res.joined_as(req.name)
            # The joined request's guard refused it (its claim was lost): that says nothing
            # about this request, which runs under another guard or none. It starts its own
            # rotation (or joins one another request started meanwhile).
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = (fut, req.guard)
        trigger = req.trigger.value
        kind = "unknown"  # the connector, once the context is loaded
        try:
            with tracing.span(
                "rotation", credential=req.name, tenant=req.tenant, trigger=trigger
            ) as span:
                if prepared is None:
                    with contextlib.suppress(RotatorError):  # start prepares again, reports it
                        prepared = await self.loader.prepare(req)
                if prepared is not None:
                    kind = prepared.impl.kind
                    tracing.set_attributes(span, connector=kind)
                busy = None if prepared is None else await self.steps.await_references(prepared)
                if busy is not None:
                    res = RotationResult(req.name, Outcome.FAILED, error=busy)
                else:
                    res = await self._admitted(req, batch_id, prepared)
                tracing.set_attributes(span, rotation_id=res.rotation_id, result=res.outcome.value)
        except BaseException as exc:
            if isinstance(exc, RotatorError):
                metrics.rotation_ended(Outcome.FAILED.value, kind, trigger)
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            del self._inflight[key]
        if not res.joined:  # a joined rotation is counted by the request that ran it
            metrics.rotation_ended(res.outcome.value, kind, trigger)
        log.debug(
            "rotation ended",
            extra={
                "credential": req.name,
                "tenant": req.tenant,
                "connector": kind,
                "trigger": trigger,
                "rotation_id": res.rotation_id,
                "result": res.outcome.value,
                "duration_s": round(res.duration_s, 6),
            },
        )
        fut.set_result(res)
        return res

    async def _admitted(
        self, req: RotationRequest, batch_id: str | None, prepared: Ctx | None
    ) -> RotationResult:
        """The rotation run once admitted into the global limit by ``req.rank``; counted in
        the queue-depth gauge while it waits and the in-flight gauge while it runs."""
        metrics.QUEUE_DEPTH.inc()
        queued = True
        try:
            async with self.runtime.admission.slot(req.rank, reserve=req.interactive):
                metrics.QUEUE_DEPTH.dec()
                queued = False
                metrics.IN_FLIGHT.inc()
                try:
                    return await self.protocol.rotate(req, batch_id, prepared)
                finally:
                    metrics.IN_FLIGHT.dec()
        finally:
            if queued:  # cancelled while waiting
                metrics.QUEUE_DEPTH.dec()

    async def rotate_group(
        self,
        group: Group,
        tenant: str = "default",
        *,
        emergency: bool = False,
        requested_by: str | None = None,
    ) -> BatchResult:
        """See :meth:`rotator.engine.groups.Groups.rotate`."""
        return await self.groups.rotate(
            group, tenant, emergency=emergency, requested_by=requested_by
        )

    async def recover(self, credential_ids: list[int] | None = None) -> list[RotationResult]:
        """Resume every rotation whose owner died (lease ran out, or its local pid is gone);
        only those of ``credential_ids`` when given (None: every one in the store)."""
        return await self.recovery.recover(credential_ids)

    async def process_revocations(self, credential_ids: list[int] | None = None) -> dict[int, bool]:
        """Revoke every PREVIOUS version whose grace has ended (see Revoker.process)."""
        return await self.revoker.process(credential_ids)

    def plan(self, creds: Sequence[Credential], *, emergency: bool = False) -> list[dict[str, Any]]:
        """What rotating ``creds`` would do, in the order :meth:`rotate` would do it, without
        doing it (``--dry-run``): no connector call, no store access.

        Each step has ``order`` (its position), ``level`` (level 1 rotates first, then level 2,
        ...: credentials referenced by others before those that reference them) and ``after``
        (the given credentials it references, rotated in earlier levels). A member of a
        reference cycle has ``level`` None and ``refused`` saying why; it comes last."""
        by_name = {c.name: c for c in sorted(creds, key=lambda c: c.name)}
        parsed = {}
        for c in by_name.values():
            impl = self.runtime.connectors.get(c.connector)
            parsed[c.name] = (impl, cbase.parse_config(impl, dict(c.config)))
        batch = ordering.order(
            list(by_name),
            {n: cbase.references_of(impl, cfg) for n, (impl, cfg) in parsed.items()},
        )
        level_of = batch.level_of()
        ranked = sorted(by_name, key=lambda n: (level_of.get(n, len(batch.levels) + 1), n))
        out = []
        for i, name in enumerate(ranked, 1):
            impl, cfg = parsed[name]
            step: dict[str, Any] = {
                "order": i,
                "level": level_of.get(name),
                "name": name,
                "connector": impl.kind,
                "target": impl.target_key(cfg),
                "strategy": cbase.strategy_of(impl, cfg).value,
                "trigger": (Trigger.EMERGENCY if emergency else Trigger.MANUAL).value,
                "grace_s": 0 if emergency else int(by_name[name].policy.grace.total_seconds()),
                "after": batch.after.get(name, []),
            }
            if name in batch.refused:
                step["refused"] = batch.refused[name]
            out.append(step)
        return out

    # -- values and calls outside a rotation ------------------------------------------------

    async def read_value(
        self, principal: Principal, name: str, stage: Stage = Stage.CURRENT
    ) -> Secret:
        """A value, counted as a use and audited before it is returned (see Values.read)."""
        return await self.values.read(principal, name, stage)

    async def read_numbered_value(
        self, principal: Principal, name: str, stage: Stage = Stage.CURRENT
    ) -> tuple[Secret, int]:
        """As :meth:`read_value`, with the number of the version read."""
        return await self.values.read_numbered(principal, name, stage)

    def connector(self, kind: str) -> cbase.Connector:
        """This engine's instance of connector ``kind`` (UnknownConnector if none)."""
        return self.runtime.connectors.get(kind)

    async def generate(
        self,
        impl: cbase.Connector,
        cfg: cbase.ConnectorConfig,
        credential: str,
        version: int,
        principal: Principal,
    ) -> Secret:
        """A new value made by the connector (``--generate``): local work, so bounded by the
        step timeout but not by the target's limit or breaker. Referenced credentials (a CA)
        are read fresh and audited as ``principal``."""
        req = cbase.CreateRequest(
            credential=credential,
            version=version,
            config=cfg,
            secrets=self.values.reader(principal),
        )
        return await self.steps.create(impl.kind, lambda: impl.create(req))

    async def verify(
        self,
        impl: cbase.Connector,
        cfg: cbase.ConnectorConfig,
        credential: str,
        current: Secret | None,
        principal: Principal,
        *,
        generated: bool = False,
    ) -> None:
        """The connector's check of its target (``--verify``), if it has one, through the
        step executor; PermanentError naming what is wrong. A value rotator just generated is
        not on the target yet: ``extra["generated"]`` tells the connector not to expect it to
        work."""
        verify = getattr(impl, "verify", None)
        if verify is None:
            return
        req = cbase.VerifyRequest(
            credential=credential,
            config=cfg,
            current=None if generated else current,
            secrets=self.values.reader(principal),
            extra={"generated": generated},
        )
        await self.steps.call_unowned(
            impl.target_key(cfg), impl.kind, "verify", lambda: verify(req)
        )

    async def publish_first(
        self,
        impl: cbase.Connector,
        cfg: cbase.ConnectorConfig,
        credential: str,
        value: Secret,
        principal: Principal,
    ) -> None:
        """For connectors that set ``publish_on_add`` (a JWK set, a trust bundle, a Redis ACL
        password): make a first value real through finish(), through the step executor.
        Others: nothing."""
        if not getattr(impl, "publish_on_add", False):
            return
        req = cbase.FinishRequest(
            credential=credential,
            version=1,
            config=cfg,
            current=value,
            previous=None,
            secrets=self.values.reader(principal),
        )
        await self.steps.call_unowned(
            impl.target_key(cfg), impl.kind, "publish", lambda: impl.finish(req)
        )


__all__ = ["Engine", "EngineOptions"]
