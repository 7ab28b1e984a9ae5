"""Revocation: PREVIOUS values whose grace has ended are removed from their targets."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import Connection

from rotator.connectors import base as cbase
from rotator.domain.model import Stage
from rotator.engine.context import ContextLoader
from rotator.engine.runtime import Runtime
from rotator.engine.steps import StepRunner
from rotator.engine.types import RotationRequest
from rotator.errors import ConnectorError, RotatorError
from rotator.store import credentials as store_creds
from rotator.store import rotations as store_rot
from rotator.store.keys import tenant_name


class Revoker:
    def __init__(self, rt: Runtime, steps: StepRunner, loader: ContextLoader) -> None:
        self.rt = rt
        self.steps = steps
        self.loader = loader
        # Revocations under way in this process, by id: a second caller (the scheduler's
        # pass and a rotation waiting out its grace) joins the first instead of revoking the
        # same value on the target at the same time.
        self._inflight: dict[int, asyncio.Future[bool]] = {}

    async def process(self, credential_ids: list[int] | None = None) -> dict[int, bool]:
        """Revoke every PREVIOUS version whose grace has ended; RETIRED on success.

        A failed revocation stays queued with backoff. Returns {credential_id: revoked?}.
        """
        now = self.rt.now()
        rows = await self.rt.read(
            lambda c: store_rot.due_revocations(c, now, credential_ids=credential_ids)
        )
        done = await asyncio.gather(*(self._once(r) for r in rows))
        out: dict[int, bool] = {}
        for r, ok in zip(rows, done, strict=True):
            out[r.credential_id] = out.get(r.credential_id, True) and ok
        return out

    async def _once(self, r: store_rot.RevocationRow) -> bool:
        running = self._inflight.get(r.id)
        if running is not None:
            return await asyncio.shield(running)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight[r.id] = fut
        try:
            ok = await self._revoke(r)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: the joiners, if any, see it
            raise
        finally:
            del self._inflight[r.id]
        fut.set_result(ok)
        return ok

    async def _revoke(self, r: store_rot.RevocationRow) -> bool:
        rt = self.rt
        tenant = await rt.read(lambda c: tenant_name(c, r.tenant_id))
        try:
            ctx = await self.loader.prepare(RotationRequest(r.credential, tenant))
        except RotatorError:
            return False
        ctx.version = r.version
        sv = await rt.read(lambda c: store_creds.sealed_version(c, ctx.cred.id, number=r.version))
        if sv is None or sv.stage is not Stage.PREVIOUS:
            await rt.writer.run(lambda c: store_rot.finish_revocation(c, r.id))
            return True
        value = await rt.read(lambda c: rt.kernel.open_version(c, sv))
        try:
            await self.steps.call(
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
                store_rot.retry_revocation(conn, r.id, msg, rt.now() + backoff)
                rt.audit_in(conn, ctx, "rotation.revoke_failed", error=msg, attempts=r.attempts + 1)

            await rt.writer.run(again)
            return False

        def retire(conn: Connection) -> None:
            rt.kernel.check_stage_map(conn, ctx.cred.id)
            store_rot.mark_version(
                conn,
                ctx.cred.id,
                r.version,
                Stage.RETIRED,
                rt.now(),
                only_from=(Stage.PREVIOUS,),
            )
            rt.kernel.restamp(conn, ctx.cred.id)
            store_rot.finish_revocation(conn, r.id)

        await rt.writer.run(retire)
        return True
