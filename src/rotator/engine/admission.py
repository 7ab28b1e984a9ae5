"""Priority admission: a limit whose waiters are admitted best rank first.

An ``asyncio.Semaphore`` wakes its waiters in arrival order, so a rotation a person asks for
while a 1,000-rotation batch is queued would wait behind all of it. Here every waiter carries
a rank (lower first; arrival order within a rank), so an emergency or an interactive request
takes the next free slot.

The next free slot can still be far off while a batch fills the limit: slots free only as
rotations end, and those end in bursts, when a group commit of their finishes lands (measured
under load: most of an interactive rotation's wait to start). So a limiter may hold a
*reserve* of slots above its limit that only holders asking for it may use (as PostgreSQL
keeps connections for superusers): a person's request starts at once unless the reserve is
taken too, and then waits ahead of everything ranked worse. Batch work never gets past the
limit.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from types import TracebackType

Rank = tuple[int, ...]
_Waiter = tuple[Rank, int, "asyncio.Future[None]"]


class PriorityLimiter:
    """At most ``limit`` holders at once, plus up to ``reserve`` holders that asked for the
    reserve; a freed slot goes to the best-ranked waiter that may use it."""

    def __init__(self, limit: int, *, reserve: int = 0) -> None:
        if limit < 1:
            raise ValueError("a limit must be at least 1")
        if reserve < 0:
            raise ValueError("a reserve cannot be negative")
        self._limit = limit
        self._reserve = reserve
        self._used = 0
        # Two queues, so the best waiter allowed into the reserve is found at once.
        self._waiters: list[_Waiter] = []
        self._reserved: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for q in (self._waiters, self._reserved) for _, _, f in q if not f.done())

    @property
    def in_use(self) -> int:
        return self._used

    def slot(self, rank: Rank, *, reserve: bool = False) -> _Slot:
        """Hold one slot for the ``async with`` block; ``reserve``: this holder may use the
        reserve once the limit is reached."""
        # A small class, not @asynccontextmanager: every rotation enters four slots (its
        # admission, and the target's limit for set, test and finish), and the generator
        # machinery cost more CPU than the limiter's own work.
        return _Slot(self, rank, reserve)

    async def _acquire(self, rank: Rank, reserve: bool) -> None:
        cap = self._limit + (self._reserve if reserve else 0)
        if self._used < cap and not self._waiters and not self._reserved:
            self._used += 1  # (cancelled waiters left queued take the path below: same result)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._reserved if reserve else self._waiters
        heapq.heappush(queue, (rank, next(self._seq), fut))
        self._grant()  # a reserved slot may be free while others queue at the limit
        try:
            await fut  # no suspension when granted just above
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # granted, then cancelled before it could use the slot
            raise  # a cancelled waiter stays queued; _grant skips it

    def _release(self) -> None:
        self._used -= 1
        self._grant()

    def _grant(self) -> None:
        while True:
            for q in (self._waiters, self._reserved):
                while q and q[0][2].done():  # cancelled
                    heapq.heappop(q)
            if self._used < self._limit:
                # the best of both queues
                if self._waiters and (not self._reserved or self._waiters[0] < self._reserved[0]):
                    q = self._waiters
                elif self._reserved:
                    q = self._reserved
                else:
                    return
            elif self._used < self._limit + self._reserve and self._reserved:
                q = self._reserved
            else:
                return
            _, _, fut = heapq.heappop(q)
            self._used += 1
            fut.set_result(None)


class _Slot:
    """One slot of a limiter for an ``async with`` block (see PriorityLimiter.slot)."""

    __slots__ = ("_limiter", "_rank", "_reserve")

    def __init__(self, limiter: PriorityLimiter, rank: Rank, reserve: bool) -> None:
        self._limiter = limiter
        self._rank = rank
        self._reserve = reserve

    async def __aenter__(self) -> None:
        await self._limiter._acquire(self._rank, self._reserve)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._limiter._release()
