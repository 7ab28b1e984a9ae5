"""Priority admission: a limit whose waiters are admitted best rank first.

An ``asyncio.Semaphore`` wakes its waiters in arrival order, so a rotation a person asks for
while a 1,000-rotation batch is queued would wait behind all of it. Here every waiter carries
a rank (lower first; arrival order within a rank), so an emergency or an interactive request
takes the next free slot.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

Rank = tuple[int, ...]


class PriorityLimiter:
    """At most ``limit`` holders at once; a freed slot goes to the best-ranked waiter."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a limit must be at least 1")
        self._free = limit
        self._waiters: list[tuple[Rank, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    @asynccontextmanager
    async def slot(self, rank: Rank) -> AsyncIterator[None]:
        """Hold one slot for the ``async with`` block."""
        if self._free > 0 and not self.waiting:
            self._free -= 1
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (rank, next(self._seq), fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release()  # granted, then cancelled before it could use the slot
                raise  # a cancelled waiter stays in the heap; _release skips it
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1
