"""The long-running loop of ``rotator worker``: resume dead rotations, revoke values whose
grace ended, and rotate credentials whose ``next_rotation_at`` has come."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Connection

from rotator.engine import BatchResult, Engine, Outcome, RotationRequest, Trigger
from rotator.store import credentials as store_creds
from rotator.store import rotations as store_rot

FAILED_SCHEDULE_BACKOFF_S = 300


async def run(
    engine: Engine,
    stop: asyncio.Event,
    *,
    poll_s: float = 1.0,
    schedule: bool = True,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> None:
    """Run until ``stop`` is set. Wakes at the next due time (indexed queries; it never scans
    every credential) or after ``poll_s``. A scheduled rotation that fails is tried again
    after FAILED_SCHEDULE_BACKOFF_S, not on every wake-up."""
    rt = engine.runtime
    while not stop.is_set():
        await engine.recover()
        await engine.process_revocations()
        if schedule:
            due = await rt.read(partial(store_creds.due_credentials, now=rt.now()))
            if due:
                result = await engine.rotate(
                    [RotationRequest(name, tenant, Trigger.SCHEDULE) for tenant, name in due]
                )
                failed = [r.name for r in result.results if r.outcome is not Outcome.ROTATED]
                by_name = dict((n, t) for t, n in due)
                if failed:
                    later = rt.now() + timedelta(seconds=FAILED_SCHEDULE_BACKOFF_S)
                    await rt.writer.run(
                        partial(
                            store_creds.postpone,
                            names=[(by_name[n], n) for n in failed],
                            until=later,
                        )
                    )
                if on_batch is not None:
                    on_batch(result)
        nxt = await rt.read(_next_due)
        wait = poll_s
        if nxt is not None:
            wait = max(0.0, min(poll_s, (nxt - rt.now()).total_seconds()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=wait)


def _next_due(conn: Connection) -> datetime | None:
    times = [
        t
        for t in (store_rot.next_revocation_due(conn), store_creds.next_due_time(conn))
        if t is not None
    ]
    return min(times) if times else None
