"""The group-commit writer's thread: it keeps taking batches while busy, ends when idle (so an
executor whose writer was never closed can still be joined), and starts again for the next
operation."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rotator.engine import writer as writer_mod
from rotator.engine.writer import StoreWriter
from rotator.errors import StoreUnavailable
from rotator.service import BlockingService


def _until_idle(writer: StoreWriter) -> None:
    """Wait (bounded) until the writer's thread task has ended for want of batches."""
    deadline = time.monotonic() + 60
    while writer._draining:
        assert time.monotonic() < deadline, "the writer's thread task never ended"
        time.sleep(0.01)


def test_the_writer_thread_ends_when_idle_and_starts_again_for_the_next_operation(
    svc: BlockingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_mod, "_KEEP_IDLE_S", 0.05)
    executor = ThreadPoolExecutor(max_workers=1)
    writer = StoreWriter(svc.kernel.db, executor)
    threads: list[int] = []

    def op(conn: Any) -> int:
        threads.append(threading.get_ident())
        return len(threads)

    async def go() -> list[int]:
        first = [await writer.run(op) for _ in range(3)]
        await asyncio.to_thread(_until_idle, writer)  # the thread's task ends, frees the executor
        assert executor.submit(lambda: "free").result(timeout=60) == "free"
        return [*first, await writer.run(op)]

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(go()) == [1, 2, 3, 4]
        _until_idle(writer)
        # Never closed: the executor still joins (nothing waits for batches). A task still
        # waiting for batches would hold the join: bounded here so that shows as a failure.
        joiner = threading.Thread(target=executor.shutdown, kwargs={"wait": True})
        joiner.start()
        joiner.join(timeout=60)
        assert not joiner.is_alive(), "the executor's thread never ended"
    finally:
        loop.close()
    assert len(set(threads)) == 1
    assert threads[0] != threading.get_ident()


def test_aclose_ends_the_writer_thread_and_later_operations_fail(svc: BlockingService) -> None:
    async def go() -> None:
        writer = StoreWriter(svc.kernel.db, ThreadPoolExecutor(max_workers=1))
        assert await writer.run(lambda conn: 7) == 7
        await writer.aclose()  # returns: the thread's task ended on the close
        with pytest.raises(StoreUnavailable):
            await writer.run(lambda conn: 8)

    asyncio.run(asyncio.wait_for(go(), timeout=30))


_BUSY_AT_EXIT = """
import asyncio, threading, time
from concurrent.futures import ThreadPoolExecutor
from rotator.engine.writer import StoreWriter

class Writer(StoreWriter):  # batches run without a store: the thread's lifecycle is the point
    def _run_batch(self, fns, relaxed):
        return [fn(None) for fn in fns]

async def traffic():
    writer = Writer(None, ThreadPoolExecutor(max_workers=1))
    while True:
        try:
            await writer.run(lambda conn: 1)
        except Exception:
            pass  # refused at interpreter exit, as a submit per batch was
        await asyncio.sleep(0.05)

loop = asyncio.new_event_loop()
threading.Thread(target=lambda: loop.run_until_complete(traffic()), daemon=True).start()
time.sleep(0.5)
print("main returns", flush=True)
"""


def test_a_process_exits_while_its_unclosed_writer_still_gets_operations() -> None:
    # A writer never closed (a BlockingService left open, its daemon loop thread still
    # writing) must not hold the interpreter's exit: the executor's thread is joined at exit,
    # and a writer task that waited for a second without operations never saw one.
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _BUSY_AT_EXIT],
        capture_output=True,
        text=True,
        timeout=120,  # the old task kept running as long as operations came: a hang
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "main returns\n"
