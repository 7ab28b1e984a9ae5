"""The long-running loop of ``rotator worker``: resume dead rotations, revoke values whose
grace ended, and rotate credentials whose ``next_rotation_at`` has come.

Several workers may share one PostgreSQL store. A worker claims due credentials (see
``store.claims``: ``FOR UPDATE SKIP LOCKED`` under a lease) *before* the engine creates any
value for them, so no two workers rotate the same credential; a heartbeat extends the claims
of rotations under way. A claimed credential whose rotation is already in flight (its worker
died mid-rotation) is not rotated again: the engine's recovery resumes that rotation from its
rotation row once its lease runs out. The loop sleeps until the next due time (indexed), the
pacing allows the next start (``scheduler.pacing``), or a ``NOTIFY rotator_work`` arrives
(PostgreSQL: a dedicated ``LISTEN`` connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Connection

from rotator.engine import BatchResult, Engine, Outcome, RotationRequest, Trigger
from rotator.errors import RotatorError
from rotator.scheduler import rollouts
from rotator.scheduler.pacing import DEFAULT_RATE, DEFAULT_WINDOW, Pacer, Rate
from rotator.store import claims as store_claims
from rotator.store import credentials as store_creds
from rotator.store import rotations as store_rot

FAILED_SCHEDULE_BACKOFF_S = 300
log = logging.getLogger(__name__)
COUNT_CAP = 1_000_000  # overdue credentials counted to size a catch-up, at most
LISTEN_RETRY_S = 1.0  # before reconnecting a lost LISTEN connection (the poll covers the gap)
ROLLOUT_IDLE_S = 1.0  # between rollout passes while due items cannot start yet


@dataclass(frozen=True, slots=True)
class SchedulerOptions:
    """``batch``: credentials claimed per tick and held at once (0: twice the engine's
    concurrency). ``max_rate`` and ``catch_up_window``: see ``scheduler.pacing``.
    ``lease_s``: how long a claim lasts without a heartbeat (None: the engine's lease).
    ``listen``: on PostgreSQL, wake on ``NOTIFY rotator_work``."""

    batch: int = 0
    max_rate: Rate = DEFAULT_RATE
    catch_up_window: timedelta = DEFAULT_WINDOW
    lease_s: float | None = None
    listen: bool = True


async def run(
    engine: Engine,
    stop: asyncio.Event,
    *,
    poll_s: float = 1.0,
    schedule: bool = True,
    on_batch: Callable[[BatchResult], None] | None = None,
    options: SchedulerOptions | None = None,
) -> None:
    """Run until ``stop`` is set. Wakes at the next due time (indexed queries; it never scans
    every credential), on a notification, or after ``poll_s``. A scheduled rotation that fails
    is tried again after FAILED_SCHEDULE_BACKOFF_S, not on every wake-up. When ``stop`` is
    set, rotations under way finish and their claims are released before it returns."""
    await Scheduler(engine, options or SchedulerOptions(), on_batch).run(stop, poll_s, schedule)


class Scheduler:
    """One worker's scheduler over one engine."""

    def __init__(
        self,
        engine: Engine,
        options: SchedulerOptions,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> None:
        self.engine = engine
        self.rt = engine.runtime
        self.opts = options
        self.on_batch = on_batch
        self.worker = self.rt.owner
        self.lease_s = options.lease_s or self.rt.opts.lease_s
        self.batch = options.batch or 2 * self.rt.opts.concurrency
        self.pacer = Pacer(options.max_rate, options.catch_up_window)
        self.held: dict[int, datetime] = {}  # credential id -> its claim's lease_until
        self.since: dict[int, datetime] = {}  # credential id -> its claim's claimed_at
        self.claims_lock = asyncio.Lock()  # heartbeat vs. release: one sees the other's leases
        self.wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rollouts: asyncio.Task[int] | None = None

    async def run(self, stop: asyncio.Event, poll_s: float, schedule: bool) -> None:
        helpers: list[asyncio.Task[None]] = []
        if schedule:
            helpers.append(asyncio.create_task(self._heartbeat(), name="claims-heartbeat"))
            if self.opts.listen and self.rt.kernel.db.dialect == "postgresql":
                helpers.append(asyncio.create_task(self._listen(), name="listen-rotator-work"))
        try:
            while not stop.is_set():
                self.wake.clear()
                try:
                    wait = await self._tick(poll_s, schedule)
                except RotatorError as exc:
                    # The store (or a target during recovery) failed under this tick: a worker
                    # rides it out and tries again after the poll interval, it does not exit.
                    log.warning("scheduler tick failed (%s): %s", type(exc).__name__, exc)
                    wait = poll_s
                await self._sleep(stop, max(0.0, wait))
        finally:
            if self._rollouts is not None:
                await asyncio.gather(self._rollouts, return_exceptions=True)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            for t in helpers:
                t.cancel()
            for t in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    async def _tick(self, poll_s: float, schedule: bool) -> float:
        """One pass: recover, revoke, advance rollouts, claim due work; how long to sleep."""
        await self.engine.recover()
        await self.engine.process_revocations()
        self._advance_rollouts()
        wait = min(poll_s, await self._rollouts_wait())
        if schedule:
            return min(wait, await self._schedule())
        return min(wait, await self._until(_next_revocation))

    def _advance_rollouts(self) -> None:
        """Start durable rollouts' due items (``scheduler.rollouts.advance``) in a task of
        their own, one at a time: it waits for its rotations, and the schedule must not wait
        with it. The task's end wakes the loop for the next items."""
        if self._rollouts is not None and not self._rollouts.done():
            return
        task = asyncio.create_task(rollouts.advance(self.engine, self.rt.now()))
        task.add_done_callback(self._rollouts_done)
        self._rollouts = task

    def _rollouts_done(self, task: asyncio.Task[int]) -> None:
        # A failed pass (the store unavailable) is tried again at the next tick; its items'
        # claims run out by themselves. Retrieved here so asyncio does not report it as lost.
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            # A defect's text may quote a value (a UnicodeDecodeError quotes its bytes): only
            # rotator's own errors, whose messages never hold one, are logged with theirs.
            text = str(exc) if isinstance(exc, RotatorError) else "message withheld"
            log.warning("rollout pass failed (%s): %s", type(exc).__name__, text)
        elif task.result() > 0:
            self.wake.set()  # it started items: the next ones may be due at once

    async def _rollouts_wait(self) -> float:
        if self._rollouts is not None and not self._rollouts.done():
            return float("inf")  # its end wakes the loop when it started anything
        nxt = await rollouts.next_due(self.engine)
        if nxt is None:
            return float("inf")
        wait = (nxt - self.rt.now()).total_seconds()
        last = self._rollouts
        idle = (
            last is not None
            and not last.cancelled()
            and last.exception() is None
            and last.result() == 0
        )
        if wait <= 0 and idle:
            # Items are due but the last pass could start none (a rate cap, a halt rule
            # bounding claims, another process holding them): do not spin on claim
            # transactions; look again in a moment.
            return ROLLOUT_IDLE_S
        return wait

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _until(self, fn: Callable[[Connection], datetime | None]) -> float:
        t = await self.rt.read(fn)
        return float("inf") if t is None else (t - self.rt.now()).total_seconds()

    # -- claims -------------------------------------------------------------------------------

    async def _schedule(self) -> float:
        """Claim what is due and may start, hand it to the engine; return how long to sleep."""
        room = self.batch - len(self.held)
        now = self.rt.now()
        if room > 0:
            overdue = await self._overdue(now)
            n = min(room, self.pacer.allowance(now, overdue))
            if n > 0:
                await self._claim(n, now)
        wait = await self._until(_next_revocation)
        due = await self.rt.read(store_creds.next_due_time)
        if due is None:
            return wait
        now = self.rt.now()
        if due > now:
            return min(wait, (due - now).total_seconds())
        if len(self.held) >= self.batch:
            return wait  # full: a batch that ends wakes the loop
        nxt = self.pacer.next_start(now)
        return min(wait, 0.0 if nxt is None else (nxt - now).total_seconds())

    async def _overdue(self, now: datetime) -> int:
        """How many credentials are due, as far as pacing needs it: counted up to the burst
        (is there more than the rate allows?) on every tick, and in full (up to COUNT_CAP)
        only once when a catch-up begins, to size it. Counting every due row on every tick
        would cost as much as the backlog is long."""
        cap = int(self.pacer.burst) + 1
        overdue = await self.rt.read(partial(store_claims.count_due, now=now, cap=cap))
        if overdue >= cap and not self.pacer.catching_up:
            overdue = await self.rt.read(partial(store_claims.count_due, now=now, cap=COUNT_CAP))
        return overdue

    async def _claim(self, n: int, now: datetime) -> None:
        until = now + timedelta(seconds=self.lease_s)
        async with self.claims_lock:
            claimed = await self.rt.writer.run(
                partial(
                    store_claims.claim_due,
                    worker=self.worker,
                    now=now,
                    lease_until=until,
                    limit=n,
                )
            )
            # One already held: claimed again while its request is still queued (an operator
            # moved its time). This worker now holds the new claim; no second request starts:
            # the queued one, made under the old claim, is refused by its guard and then runs
            # again under the new one (_rotate_claimed).
            again = {c.credential_id for c in claimed if c.credential_id in self.held}
            for c in claimed:
                self.held[c.credential_id] = until
                self.since[c.credential_id] = c.claimed_at
        # A rotation of it is in flight (its worker died mid-rotation, or `rotator rotate`
        # runs it): never start a second one. Recovery resumes it once its lease runs out; if
        # it ends without rotating, the credential is due again when this claim's lease ends.
        joined = [c.credential_id for c in claimed if c.in_flight and c.credential_id not in again]
        if joined:
            await self._release(joined)
        fresh = [c for c in claimed if not c.in_flight and c.credential_id not in again]
        self.pacer.started(len(fresh), now)
        by_tenant: dict[str, list[store_claims.Claim]] = {}
        for c in fresh:
            by_tenant.setdefault(c.tenant, []).append(c)
        for group in by_tenant.values():
            self._spawn(group)

    def _spawn(self, group: list[store_claims.Claim]) -> None:
        task = asyncio.create_task(self._rotate(group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _mine(self, c: store_claims.Claim) -> bool:
        """Whether this worker still holds claim ``c`` (not a later claim of its credential)."""
        return self.since.get(c.credential_id) == c.claimed_at

    async def _rotate(self, claimed: list[store_claims.Claim]) -> None:
        handed: set[int] = set()
        try:
            handed = await self._rotate_claimed(claimed)
        finally:
            # Whatever ended the batch (a defect included), no claim outlives it: a claim
            # still held here would be extended by the heartbeat forever.
            left = [
                c.credential_id
                for c in claimed
                if c.credential_id in self.held and c.credential_id not in handed
            ]
            if left:
                await asyncio.shield(self._release(left))
            self.wake.set()  # room for more claims

    async def _rotate_claimed(self, claimed: list[store_claims.Claim]) -> set[int]:
        """Rotate claimed credentials and release their claims; returns the ids handed on to
        a new batch (claimed again meanwhile, see below), whose claims stay held."""
        ids = {c.name: c.credential_id for c in claimed}
        try:
            result = await self.engine.rotate(
                [
                    RotationRequest(
                        c.name,
                        c.tenant,
                        Trigger.SCHEDULE,
                        requested_by="scheduler",
                        guard=partial(
                            store_claims.check_held,
                            credential_id=c.credential_id,
                            worker=self.worker,
                            claimed_at=c.claimed_at,
                        ),
                    )
                    for c in claimed
                ]
            )
        except RotatorError:
            # The store failed under the batch: the credentials are due again when their
            # claims' leases end (rotations it began are resumed by recovery).
            await self._release(list(ids.values()))
            return set()
        # SKIPPED: the claim was lost (another worker has it): nothing to release or delay.
        failed = {
            ids[r.name]
            for r in result.results
            if r.outcome not in (Outcome.ROTATED, Outcome.SKIPPED)
        }
        skipped = {r.name for r in result.results if r.outcome is Outcome.SKIPPED}
        # Claimed again by this worker while its request was queued (see _claim): the request
        # made under the old claim was refused; it runs once more under the new one.
        again = [
            dataclasses.replace(c, claimed_at=self.since[c.credential_id])
            for c in claimed
            if c.name in skipped and c.credential_id in self.since and not self._mine(c)
        ]
        handed = {c.credential_id for c in again}
        # Refused ones did not start (those run again were counted once, and still are).
        self.pacer.not_started(len(skipped) - len(again))
        if failed:
            later = self.rt.now() + timedelta(seconds=FAILED_SCHEDULE_BACKOFF_S)
            await self._release(sorted(failed), until=later)
        await self._release([i for i in ids.values() if i not in failed and i not in handed])
        if again:
            self._spawn(again)
        if self.on_batch is not None:
            self.on_batch(result)
        return handed

    async def _release(self, ids: list[int], *, until: datetime | None = None) -> None:
        if not ids:
            return
        async with self.claims_lock:
            held = {i: self.held[i] for i in ids if i in self.held}
            # A failed write leaves the claims to run out by themselves.
            with contextlib.suppress(RotatorError):
                await self.rt.writer.run(
                    partial(
                        store_claims.release, worker=self.worker, ids=ids, held=held, until=until
                    )
                )
            for i in ids:
                self.held.pop(i, None)
                self.since.pop(i, None)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            async with self.claims_lock:
                if not self.held:
                    continue
                until = self.rt.now() + timedelta(seconds=self.lease_s)
                held = dict(self.held)
                try:
                    kept = await self.rt.writer.run(
                        partial(
                            store_claims.extend,
                            worker=self.worker,
                            held=held,
                            claimed=dict(self.since),
                            until=until,
                        )
                    )
                except RotatorError:
                    continue  # a missed beat: the next one tries again before the lease ends
                for i in held:
                    if i in kept:
                        self.held[i] = until
                    else:
                        # Its rotation finished (and set its next time) or it was taken over.
                        self.held.pop(i, None)
                        self.since.pop(i, None)

    # -- wake-ups ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Set ``wake`` on every ``NOTIFY rotator_work``, on a connection of its own
        (reconnected when lost; the poll covers the gap)."""
        import psycopg  # PostgreSQL only

        url = self.rt.kernel.db.engine.url.set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {store_claims.WORK_CHANNEL}")
                    self.wake.set()  # anything sent before LISTEN took effect was missed
                    async for _ in conn.notifies():
                        self.wake.set()
            except (psycopg.Error, OSError):
                await asyncio.sleep(LISTEN_RETRY_S)


def _next_revocation(conn: Connection) -> datetime | None:
    return store_rot.next_revocation_due(conn)
