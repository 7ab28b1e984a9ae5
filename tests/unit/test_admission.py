"""Priority admission: a freed slot goes to the best-ranked waiter, arrival order within a rank."""

from __future__ import annotations

import asyncio

import pytest

from rotator.engine.admission import PriorityLimiter


async def admitted_order(limit: int, ranks: list[tuple[int, ...]]) -> list[int]:
    """Hold every slot, queue one waiter per rank (in list order), free the slots, and return
    the indexes of the waiters in the order they were admitted."""
    lim = PriorityLimiter(limit)
    order: list[int] = []
    hold = asyncio.Event()

    async def holder(started: asyncio.Event) -> None:
        async with lim.slot((0,)):
            started.set()
            await hold.wait()

    async def waiter(i: int, rank: tuple[int, ...]) -> None:
        async with lim.slot(rank):
            order.append(i)
            await asyncio.sleep(0)

    holders = []
    for _ in range(limit):
        started = asyncio.Event()
        holders.append(asyncio.create_task(holder(started)))
        await started.wait()
    waiters = []
    for i, rank in enumerate(ranks):
        waiters.append(asyncio.create_task(waiter(i, rank)))
        await asyncio.sleep(0)  # each one queues before the next
    assert lim.waiting == len(ranks)
    hold.set()
    await asyncio.gather(*holders, *waiters)
    return order


def test_best_rank_first_then_arrival_order() -> None:
    ranks = [(2, 3), (2, 3), (1, 4), (0, 0), (2, 1), (1, 4)]
    assert asyncio.run(admitted_order(1, ranks)) == [3, 2, 5, 4, 0, 1]


def test_never_more_holders_than_the_limit() -> None:
    async def go() -> int:
        lim = PriorityLimiter(3)
        inside = peak = 0

        async def one(i: int) -> None:
            nonlocal inside, peak
            async with lim.slot((i % 4,)):
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0)
                inside -= 1

        await asyncio.gather(*(one(i) for i in range(50)))
        return peak

    assert asyncio.run(go()) == 3


def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    async def go() -> list[str]:
        lim = PriorityLimiter(1)
        order: list[str] = []
        release = asyncio.Event()

        async def hold() -> None:
            async with lim.slot((0,)):
                await release.wait()

        async def wait(name: str, rank: tuple[int, ...]) -> None:
            async with lim.slot(rank):
                order.append(name)

        h = asyncio.create_task(hold())
        await asyncio.sleep(0)
        first = asyncio.create_task(wait("first", (1,)))
        second = asyncio.create_task(wait("second", (2,)))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(h, second)
        with pytest.raises(asyncio.CancelledError):
            await first
        return order

    assert asyncio.run(go()) == ["second"]


def test_a_holder_asking_for_the_reserve_starts_past_the_limit_while_batch_work_waits() -> None:
    async def go() -> tuple[list[str], int]:
        lim = PriorityLimiter(1, reserve=1)
        order: list[str] = []
        release = asyncio.Event()

        async def hold(name: str, rank: tuple[int, ...], reserve: bool) -> None:
            async with lim.slot(rank, reserve=reserve):
                order.append(name)
                await release.wait()

        batch = [asyncio.create_task(hold(f"batch{i}", (2,), False)) for i in range(2)]
        await asyncio.sleep(0)
        assert order == ["batch0"]
        assert lim.waiting == 1  # batch1 waits at the limit
        person = asyncio.create_task(hold("person", (1,), True))
        await asyncio.sleep(0)
        in_use = lim.in_use
        release.set()
        await asyncio.gather(*batch, person)
        return order, in_use

    order, in_use = asyncio.run(go())
    assert order == ["batch0", "person", "batch1"]
    assert in_use == 2


def test_the_reserve_is_bounded_and_never_used_by_holders_that_do_not_ask_for_it() -> None:
    async def go(reserve: bool) -> int:
        lim = PriorityLimiter(2, reserve=3)
        inside = peak = 0

        async def one(i: int) -> None:
            nonlocal inside, peak
            async with lim.slot((i % 3,), reserve=reserve):
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0)
                inside -= 1

        await asyncio.gather(*(one(i) for i in range(40)))
        return peak

    assert asyncio.run(go(False)) == 2
    assert asyncio.run(go(True)) == 5


def test_without_a_free_reserved_slot_holders_asking_for_the_reserve_keep_their_rank() -> None:
    async def go() -> list[str]:
        lim = PriorityLimiter(1)  # no reserve: asking for it only ranks the waiter
        order: list[str] = []
        release = asyncio.Event()

        async def hold(name: str, rank: tuple[int, ...], reserve: bool) -> None:
            async with lim.slot(rank, reserve=reserve):
                order.append(name)
                if name == "first":
                    await release.wait()

        first = asyncio.create_task(hold("first", (0,), False))
        await asyncio.sleep(0)
        rest = []
        for name, rank, reserve in [
            ("batch", (2,), False),
            ("person", (1,), True),
            ("emergency", (0,), False),
        ]:
            rest.append(asyncio.create_task(hold(name, rank, reserve)))
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(first, *rest)
        return order

    assert asyncio.run(go()) == ["first", "emergency", "person", "batch"]
