"""Group commit: many concurrent rotations share few write transactions.

Each ``await writer.run(fn)`` runs ``fn(conn)`` in a shared transaction and returns once that
transaction has committed, so callers get durability without paying one commit each. A failing
``fn`` raises to its caller only; the others still commit. ``fn`` may run twice (see
``_commit``), so it must not have effects outside the transaction that matter twice.
In the shared transaction audit appends, fenced step writes (store/rotations.py) and stage-map
reads (store/credentials.py) are batched: audit entries are chained and step writes sent once
per batch, just before the commit, and a credential's stage map is read at most once.
On SQLite (one writer at a time anyway) this turns thousands of tiny transactions into a few
large ones; on PostgreSQL it cuts round trips the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection

from rotator.audit.log import BATCH_KEY, AuditBatch
from rotator.errors import LostOwnership, StoreUnavailable
from rotator.store import Database
from rotator.store.credentials import stage_cache
from rotator.store.rotations import STEP_BATCH_KEY, StepBatch

T = TypeVar("T")
_KEEP_IDLE_S = 1.0
_Item = tuple[Callable[[Connection], Any], "asyncio.Future[Any]", bool]


class StoreWriter:
    """Batches write operations into shared transactions. Start with ``start()``, end with
    ``aclose()``; both are idempotent."""

    def __init__(self, db: Database, executor: ThreadPoolExecutor, *, max_batch: int = 256) -> None:
        self._db = db
        self._executor = executor
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.operations = 0
        self._closed = False
        # One connection for back-to-back batches (used by the executor's thread only, one
        # batch at a time). Dropped after a failed batch, and after _KEEP_IDLE_S without one,
        # so a connection the server dropped meanwhile is replaced through the pool (which
        # pings it) instead of failing the next batch.
        self._conn: Connection | None = None
        self._conn_used = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="store-writer")

    async def run(self, fn: Callable[[Connection], T], *, durable: bool = True) -> T:
        """Run ``fn`` in a write transaction; return its result after the commit.

        ``durable=False``: the commit may be relaxed (see ``Database.write``) when every
        operation of its batch allows it; a batch holding any durable operation is durable."""
        if self._closed:
            raise StoreUnavailable("the store writer is closed (the service was shut down)")
        self.start()
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put((fn, fut, durable))
        return await fut

    async def _loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch: list[_Item] = [first]
            stop = False
            while len(batch) < self._max_batch and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            loop = asyncio.get_running_loop()
            try:
                results = await loop.run_in_executor(self._executor, self._commit, batch)
            except BaseException as exc:  # the commit itself failed: every caller learns it
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
                if not isinstance(exc, Exception):
                    raise
            else:
                for (_, fut, _), (ok, value) in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
            self.batches += 1
            self.operations += len(batch)
            if stop:
                return

    def _commit(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        # Optimistic: the whole batch in one transaction; audit entries chained, step writes
        # and stage MACs sent at the end. Operations rarely fail; when one does (a lost fence
        # found at the end included), the batch is rolled back as a whole and every operation
        # is run again alone, so only the failing one fails. (Cheaper than a savepoint around
        # each operation, which costs two statements each.)
        relaxed = not any(durable for _, _, durable in batch)
        try:
            return [(True, value) for value in self._run_batch([fn for fn, _, _ in batch], relaxed)]
        except Exception:
            if len(batch) == 1:
                raise
        results: list[tuple[bool, Any]] = []
        for fn, _, durable in batch:
            try:
                results.append((True, self._run_batch([fn], not durable)[0]))
            except Exception as exc:
                results.append((False, self._db.translate_error(exc)))
        return results

    def _run_batch(self, fns: list[Callable[[Connection], Any]], relaxed: bool) -> list[Any]:
        if self._conn is not None and time.monotonic() - self._conn_used > _KEEP_IDLE_S:
            self._drop_connection()
        if self._conn is None:
            self._conn = self._db.connect()
        try:
            out = self._run_batch_on(self._conn, fns, relaxed)
        except BaseException:
            self._drop_connection()
            raise
        self._conn_used = time.monotonic()
        return out

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _run_batch_on(
        self, kept: Connection, fns: list[Callable[[Connection], Any]], relaxed: bool
    ) -> list[Any]:
        with self._db.write_on(kept, relaxed=relaxed) as conn, stage_cache(conn) as stages:
            audit_batch = AuditBatch()
            steps = StepBatch()
            conn.info[BATCH_KEY] = audit_batch
            conn.info[STEP_BATCH_KEY] = steps
            try:
                try:
                    out = [fn(conn) for fn in fns]
                except Exception as exc:
                    # A step write made before the failure would have raised LostOwnership
                    # first, had it been sent at once: it still does. (Anything else the
                    # flush raises, e.g. on an aborted PostgreSQL transaction, is dropped.)
                    lost: LostOwnership | None = None
                    with contextlib.suppress(Exception):
                        try:
                            steps.flush(conn)
                        except LostOwnership as found:
                            lost = found
                    if lost is not None:
                        raise lost from exc
                    raise
                steps.flush(conn)
                # The audit head is locked last: every writer locks credential rows (use
                # counts, stage MACs) before the head, never after it, so two writers on
                # PostgreSQL never wait for each other in opposite orders (a deadlock).
                stages.flush(conn)
                audit_batch.flush(conn)
            finally:
                conn.info.pop(BATCH_KEY, None)
                conn.info.pop(STEP_BATCH_KEY, None)
        return out

    async def aclose(self) -> None:
        """Commit what is queued, stop the loop and its thread. Idempotent. Operations queued
        after it began fail with StoreUnavailable (never wait forever), as do later calls."""
        self._closed = True
        if self._task is not None:
            await self._queue.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and not item[1].done():
                item[1].set_exception(StoreUnavailable("the store writer is closed"))
        self._executor.shutdown(wait=True)
        self._drop_connection()
