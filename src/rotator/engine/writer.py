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
import queue
import threading
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
    """Batches write operations into shared transactions. ``start()`` is optional (the
    first ``run`` starts it); end with ``aclose()``. Both are idempotent.

    On the event loop's thread, operations wait in a list; when none is being committed,
    everything waiting goes to the executor's thread as one batch (at most ``max_batch``),
    scheduled with ``call_soon`` so operations submitted in the same loop iteration share it.
    The thread hands the results back with one ``call_soon_threadsafe``, which also sends
    the next batch: no asyncio queue task and no future chaining between them (each was a
    loop iteration or two per value read). On the executor's thread a task takes batches
    from a thread-safe queue, so a batch costs a queue put, not an executor submit (a future
    and a work item each, on both threads); the task ends when idle and after each second of
    work (see ``_drain``), so the executor's thread can always be joined at interpreter
    exit, ``aclose`` or not."""

    def __init__(self, db: Database, executor: ThreadPoolExecutor, *, max_batch: int = 256) -> None:
        self._db = db
        self._executor = executor
        self._max_batch = max_batch
        self._pending: list[_Item] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = False  # a batch is scheduled or on the thread
        self._idle: asyncio.Future[None] | None = None  # aclose waits for the last batch
        self.batches = 0
        self.operations = 0
        self._closed = False
        self._batches: queue.SimpleQueue[list[_Item] | None] = queue.SimpleQueue()
        self._draining = False  # a _drain task is running or submitted; under _drain_lock
        self._drain_lock = threading.Lock()
        # One connection for back-to-back batches (used by the executor's thread only, one
        # batch at a time). Dropped after a failed batch, and after _KEEP_IDLE_S without one,
        # so a connection the server dropped meanwhile is replaced through the pool (which
        # pings it) instead of failing the next batch.
        self._conn: Connection | None = None
        self._conn_used = 0.0

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    async def run(self, fn: Callable[[Connection], T], *, durable: bool = True) -> T:
        """Run ``fn`` in a write transaction; return its result after the commit.

        ``durable=False``: the commit may be relaxed (see ``Database.write``) when every
        operation of its batch allows it; a batch holding any durable operation is durable."""
        if self._closed:
            raise StoreUnavailable("the store writer is closed (the service was shut down)")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, fut, durable))
        if not self._busy:
            self._busy = True
            loop.call_soon(self._send)
        return await fut

    def _send(self) -> None:
        """On the loop: hand what waits to the thread, or mark the writer idle."""
        if not self._pending:
            self._busy = False
            if self._idle is not None and not self._idle.done():
                self._idle.set_result(None)
            return
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        refused: BaseException | None = None
        with self._drain_lock:
            if not self._draining:
                try:
                    self._executor.submit(self._drain)
                except BaseException as exc:  # the executor is shut down: nothing will run
                    refused = exc
                else:
                    self._draining = True
            if refused is None:
                self._batches.put(batch)
        if refused is not None:
            self._deliver(batch, refused)  # outside the lock: it calls _send again

    def _drain(self) -> None:
        """On the executor's thread: run batches from the queue. Ends after _KEEP_IDLE_S
        without one, at the None that aclose sends, and, once it has run _KEEP_IDLE_S, as
        soon as no batch waits: the next batch then submits it again. So under steady load it
        costs one submit a second, and a process that exits without ``aclose`` is not held
        by it: the executor refuses that submit at interpreter exit and the batch's callers
        are told, as when every batch was a submit of its own."""
        started = time.monotonic()
        while True:
            try:
                batch = self._batches.get(timeout=_KEEP_IDLE_S)
            except queue.Empty:
                if self._stop_if_empty():
                    return
                continue
            if batch is None:
                return
            # A batch whose results cannot be handed back (the event loop is closed) has no
            # caller left to tell; the next batch still runs.
            with contextlib.suppress(BaseException):
                self._work(batch)
            if time.monotonic() - started > _KEEP_IDLE_S and self._stop_if_empty():
                return

    def _stop_if_empty(self) -> bool:
        with self._drain_lock:  # _send puts under it: nothing is left behind
            if self._batches.empty():
                self._draining = False
                return True
        return False

    def _work(self, batch: list[_Item]) -> None:
        """On the executor's thread: commit, then hand the results to the loop."""
        out: list[tuple[bool, Any]] | BaseException
        try:
            out = self._commit(batch)
        except BaseException as exc:  # the commit itself failed: every caller learns it
            out = exc
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, batch, out)

    def _deliver(self, batch: list[_Item], out: list[tuple[bool, Any]] | BaseException) -> None:
        self.batches += 1
        self.operations += len(batch)
        try:
            if isinstance(out, BaseException):
                failure = out if isinstance(out, Exception) else RuntimeError(out)
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(failure)
                if not isinstance(out, Exception):
                    raise out
                return
            for (_, fut, _), (ok, value) in zip(batch, out, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        finally:
            self._send()

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
        """Commit what is queued, stop the thread. Idempotent. Operations submitted after it
        began fail with StoreUnavailable (never wait forever), as do later calls."""
        self._closed = True
        if self._busy:
            loop = asyncio.get_running_loop()
            if self._idle is None or self._idle.done():
                self._idle = loop.create_future()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle
        for _, fut, _ in self._pending:
            if not fut.done():
                fut.set_exception(StoreUnavailable("the store writer is closed"))
        self._pending.clear()
        with self._drain_lock:
            if self._draining:
                self._batches.put(None)
        self._executor.shutdown(wait=True)
        self._drop_connection()
