"""Coordinated groups: members in dependency order, ``min_offset`` apart per level; optionally
all-or-nothing (every member set and tested, then every stage move in one transaction)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import Connection

from rotator.domain.group import Group
from rotator.engine.context import Ctx
from rotator.engine.protocol import Protocol
from rotator.engine.recovery import Recovery
from rotator.engine.runtime import Runtime
from rotator.engine.types import BatchResult, Outcome, RotationRequest, RotationResult, Trigger
from rotator.errors import ConnectorError, LostOwnership, RotationError, RotatorError

RotateOne = Callable[..., Awaitable[RotationResult]]


class Groups:
    def __init__(
        self, rt: Runtime, protocol: Protocol, recovery: Recovery, rotate_one: RotateOne
    ) -> None:
        self.rt = rt
        self.protocol = protocol
        self.recovery = recovery
        self.rotate_one = rotate_one

    async def rotate(
        self,
        group: Group,
        tenant: str = "default",
        *,
        emergency: bool = False,
        requested_by: str | None = None,
    ) -> BatchResult:
        """Rotate a group's members in dependency order, ``min_offset`` apart per level
        (``requested_by``: see RotationRequest).

        Not all-or-nothing: a member whose predecessor failed is not rotated; the others are.
        All-or-nothing: every member is set and tested first; any failure rolls back all that
        were set; then every member's stage move commits in one transaction. A crash in
        between rolls the group's members back on recovery (see ``Recovery.resume``).
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
                            RotationRequest(n, tenant, trigger, grace, requested_by=requested_by),
                            batch_id=batch_id,
                        )
                        for n in runnable
                    )
                )
                results.update(zip(runnable, outs, strict=True))
        else:
            results = await self._rotate_atomically(group, tenant, grace, batch_id, requested_by)
        return BatchResult([results[m.name] for m in group.members], time.monotonic() - t0)

    async def _rotate_atomically(
        self,
        group: Group,
        tenant: str,
        grace: int | None,
        batch_id: str,
        requested_by: str | None = None,
    ) -> dict[str, RotationResult]:
        p = self.protocol
        results: dict[str, RotationResult] = {}
        staged: list[Ctx] = []
        failure: str | None = None
        offset = group.min_offset.total_seconds()

        async def stage(name: str) -> Ctx | RotationResult:
            started = await p.start(
                RotationRequest(name, tenant, Trigger.GROUP, grace, requested_by=requested_by),
                batch_id,
                None,
                join=False,
            )
            if isinstance(started, RotationResult):
                return started
            try:
                await p.set_and_test(started, "created")
            except LostOwnership as exc:
                return await self.recovery.lost(started, exc)
            except (ConnectorError, RotatorError) as exc:
                return await p.rollback(started, exc)
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
                    await p.finish_on_target(ctx)
                except (ConnectorError, RotatorError) as exc:
                    failure = f"{ctx.cred.name!r} failed: {exc}"
                    break
        if failure is not None:
            cause = RotationError(f"group {group.name!r} rolled back: {failure}")
            for ctx in reversed(staged):
                results[ctx.cred.name] = await p.rollback(ctx, cause)
            for m in group.members:
                results.setdefault(
                    m.name, RotationResult(m.name, Outcome.FAILED, error=f"not started: {failure}")
                )
            return results

        def commit(conn: Connection) -> list[int | None]:
            return [p.stage_move(conn, ctx) for ctx in staged]

        try:
            previous = await self.rt.writer.run(commit)
        except LostOwnership as exc:
            # Nothing of the group committed: the lost member repairs, the others roll back.
            cause = RotationError(f"group {group.name!r} rolled back: {exc}")
            for ctx in reversed(staged):
                if ctx.rotation_id == exc.rotation_id and ctx.lease is not None:
                    ctx.lease.lost = True
                results[ctx.cred.name] = await p.rollback(ctx, cause)
            return results
        for ctx, prev in zip(staged, previous, strict=True):
            results[ctx.cred.name] = await p.after_finish(ctx, prev)
        return results
