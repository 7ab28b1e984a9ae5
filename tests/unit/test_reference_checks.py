"""StepRunner.references_busy: concurrent checks share a read that has not started yet, and
a check never gets its answer from a read that started before it was asked.

The store is replaced by a table of held credentials (the SQL is covered by
tests/integration/test_reference_order.py); reads run on a real thread, as the engine's do."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from rotator.engine import steps
from rotator.engine.steps import StepRunner


class FakeRuntime:
    def __init__(self) -> None:
        self.reads = 0

    def now(self) -> Any:
        return None  # no lease in this table: never compared

    async def read(self, fn: Any) -> Any:
        self.reads += 1
        return await asyncio.get_running_loop().run_in_executor(None, fn, None)


@dataclass
class Table:
    """Credentials held by a live rotation, as (tenant id, name)."""

    locked: set[tuple[int, str]] = field(default_factory=set)
    lookups: list[tuple[int, str]] = field(default_factory=list)
    entered: threading.Event = field(default_factory=threading.Event)  # a lock was looked up
    gate: threading.Event | None = None  # when set, a lock lookup returns only once it is set


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Table:
    t = Table()

    def credential_id(conn: Any, tid: int, name: str) -> tuple[int, str]:
        t.lookups.append((tid, name))
        return (tid, name)

    def lock_holder(conn: Any, cid: tuple[int, str]) -> str | None:
        holder = "rotation" if cid in t.locked else None
        t.entered.set()
        if t.gate is not None:
            t.gate.wait(10)
        return holder

    row = SimpleNamespace(terminal=False, owner=None, lease_expires_at=None)
    monkeypatch.setattr(steps.store_creds, "credential_id", credential_id)
    monkeypatch.setattr(steps.store_rot, "lock_holder", lock_holder)
    monkeypatch.setattr(steps.store_rot, "get_rotation", lambda conn, rid: row)
    return t


def ctx(tenant_id: int = 1) -> Any:
    return SimpleNamespace(tenant=SimpleNamespace(id=tenant_id))


def runner(rt: FakeRuntime) -> StepRunner:
    return StepRunner(rt, None, None)  # type: ignore[arg-type]


def test_concurrent_checks_each_get_their_own_names_answered_from_shared_reads(
    table: Table,
) -> None:
    table.locked.update({(1, "admin"), (1, "hmac")})
    rt = FakeRuntime()
    r = runner(rt)
    asks = [["admin"], ["other"], ["hmac", "admin"], ["other", "hmac"], []] * 8

    async def go() -> list[list[str]]:
        return await asyncio.gather(*(r.references_busy(ctx(), names) for names in asks))

    answers = asyncio.run(go())
    assert answers == [sorted(n for n in names if n in ("admin", "hmac")) for names in asks]
    assert rt.reads < len(asks)  # shared


def test_a_check_asked_while_a_read_runs_reads_again_and_sees_a_lock_taken_meanwhile(
    table: Table,
) -> None:
    rt = FakeRuntime()
    r = runner(rt)
    table.gate = threading.Event()

    async def go() -> tuple[list[str], list[str]]:
        first = asyncio.ensure_future(r.references_busy(ctx(), ["admin"]))
        await asyncio.get_running_loop().run_in_executor(None, table.entered.wait, 10)
        table.locked.add((1, "admin"))  # taken after the first read looked
        second = asyncio.ensure_future(r.references_busy(ctx(), ["admin"]))
        await asyncio.sleep(0.01)
        table.gate.set()  # type: ignore[union-attr]
        return await first, await second

    first, second = asyncio.run(go())
    assert first == []
    assert second == ["admin"]  # a read of its own, after the lock was taken
    assert rt.reads == 2


def test_checks_of_two_tenants_do_not_share_an_answer(table: Table) -> None:
    table.locked.add((2, "admin"))
    r = runner(FakeRuntime())

    async def go() -> list[list[str]]:
        return await asyncio.gather(
            r.references_busy(ctx(1), ["admin"]), r.references_busy(ctx(2), ["admin"])
        )

    assert asyncio.run(go()) == [[], ["admin"]]
    assert sorted(table.lookups) == [(1, "admin"), (2, "admin")]
