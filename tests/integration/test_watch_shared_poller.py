"""The change feed reads the store once per poll for all open feeds of a process
(service/watch.py's poller), not once per feed: open streams do not multiply store load.

In-process against a real store (SQLite and PostgreSQL); reads of the feed are counted by
wrapping ``audit.feed.entries_after`` (the real query still runs).
"""

from __future__ import annotations

import asyncio
import queue
from typing import Any

import pytest
from sqlalchemy import Connection

from rotator.audit import feed
from rotator.domain.change import Change
from rotator.domain.principal import LOCAL_PRINCIPAL
from rotator.service import BlockingService, ValueInput, watch

FEEDS = 50
WAIT_S = 30.0  # a bound on waiting for an event: never a sleep


def test_open_feeds_share_one_poller_so_store_reads_do_not_grow_with_their_number(
    svc: BlockingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str | None] = []  # the tenant each read asked for (None: every tenant)
    real = feed.entries_after

    def counting(conn: Connection, after: int, **kw: Any) -> Any:
        reads.append(kw.get("tenant"))
        return real(conn, after, **kw)

    monkeypatch.setattr(feed, "entries_after", counting)
    got: queue.Queue[tuple[int, Change]] = queue.Queue()
    stop = asyncio.Event()

    async def consume(i: int, sub: watch.Subscription) -> None:
        async for c in sub:
            got.put((i, c))

    async def start() -> list[asyncio.Task[None]]:
        subs = [
            await watch.subscribe(svc.service, LOCAL_PRINCIPAL, stop=stop) for _ in range(FEEDS)
        ]
        return [asyncio.create_task(consume(i, s)) for i, s in enumerate(subs)]

    tasks = svc.run(start())
    try:
        svc.add_credential("prod/one", "local", value=ValueInput(generate=True))
        first = [got.get(timeout=WAIT_S) for _ in range(FEEDS)]
        assert sorted(i for i, _ in first) == list(range(FEEDS))
        assert {c.name for _, c in first} == {"prod/one"}
        reads.clear()  # every feed is running and in step with the poller now
        svc.add_credential("prod/two", "local", value=ValueInput(generate=True))
        second = [got.get(timeout=WAIT_S) for _ in range(FEEDS)]
        assert sorted(i for i, _ in second) == list(range(FEEDS))
        assert {c.name for _, c in second} == {"prod/two"}
        # Each feed polling the store itself needs at least one read per feed to see the
        # change (>= 50). One poller reads once per 0.2 s tick for all of them.
        assert 1 <= len(reads) < FEEDS // 2, reads
        assert set(reads) == {None}, reads  # no feed fell behind and read on its own
    finally:

        async def end() -> None:
            stop.set()
            await asyncio.gather(*tasks)

        svc.run(end())
    assert got.empty()
