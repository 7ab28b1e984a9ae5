"""A value read in the same group commit as a stage move of that credential verifies its map
as moved (the new stage MAC is written only at the end of the transaction)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from rotator.domain.model import Stage
from rotator.domain.principal import LOCAL_PRINCIPAL
from rotator.domain.secret import Secret
from rotator.engine import Engine as RotationEngine
from rotator.engine.writer import StoreWriter
from rotator.errors import IntegrityError, NotFound
from rotator.service import BlockingService, ValueInput
from rotator.store import credentials as store_creds


def test_a_read_after_a_stage_move_in_one_group_commit_sees_the_new_current(
    svc: BlockingService,
) -> None:
    svc.add_credential("app/db", "local", value=ValueInput(value=Secret("old-value-7c1")))
    kernel = svc.kernel
    cid = svc.show("app/db").id
    tenant = svc.tenant("default")
    now = kernel.clock()

    def move(conn: Any) -> None:
        kernel.check_stage_map(conn, cid)
        kernel.seal_version(conn, tenant, cid, 2, Secret("new-value-9d2"), Stage.PENDING, now)
        store_creds.promote(conn, cid, 2, now=now, grace=timedelta(minutes=5))
        kernel.restamp(conn, cid)

    def read(conn: Any) -> str:
        return kernel.read_value(conn, LOCAL_PRINCIPAL, "app/db").reveal_text()

    async def go() -> list[Any]:
        writer = StoreWriter(kernel.db, ThreadPoolExecutor(max_workers=1))
        out = await asyncio.gather(writer.run(move), writer.run(read), return_exceptions=True)
        batches = writer.batches
        await writer.aclose()
        assert batches == 1, "both operations must share one group commit"
        return list(out)

    assert asyncio.run(go()) == [None, "new-value-9d2"]
    assert svc.get_value("app/db").reveal_text() == "new-value-9d2"
    assert svc.get_value("app/db", Stage.PREVIOUS).reveal_text() == "old-value-7c1"


def _tamper(raw_db: Engine, cid: int) -> None:
    with raw_db.begin() as c:  # version 1 (PREVIOUS, the old value) relabelled PENDING
        c.execute(
            text("UPDATE versions SET stage='PENDING' WHERE credential_id=:c AND number=1"),
            {"c": cid},
        )


def test_a_read_in_a_group_commit_refuses_a_stage_edited_after_the_batch_read_its_map(
    svc: BlockingService, raw_db: Engine, db_url: str
) -> None:
    """PostgreSQL: another connection edits a stage after an earlier operation of the same
    group commit read (and cached) the credential's map; the read verifies the rows it reads,
    not the cached map, and refuses."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite's BEGIN IMMEDIATE keeps other writers out of the batch")
    svc.add_credential("app/db", "local", value=ValueInput(value=Secret("old-value-1")))
    svc.update_credential("app/db", value=ValueInput(value=Secret("new-value-2")))
    cid = svc.show("app/db").id
    kernel = svc.kernel

    def earlier_op(conn: Any) -> None:
        kernel.check_stage_map(conn, cid)  # caches the verified map for the batch
        _tamper(raw_db, cid)  # another connection commits meanwhile

    def read(conn: Any) -> str:
        return kernel.read_value(conn, LOCAL_PRINCIPAL, "app/db", Stage.PENDING).reveal_text()

    async def go() -> list[Any]:
        writer = StoreWriter(kernel.db, ThreadPoolExecutor(max_workers=1))
        out = await asyncio.gather(writer.run(earlier_op), writer.run(read), return_exceptions=True)
        assert writer.batches == 1
        await writer.aclose()
        return list(out)

    out = asyncio.run(go())
    assert isinstance(out[1], IntegrityError), "the edited stage was served"


def test_a_read_of_a_missing_name_does_not_replay_its_group_commit(
    svc: BlockingService, db_url: str
) -> None:
    """A refused read writes nothing and fails alone: the other reads of its group commit
    are not rolled back and replayed one transaction each."""
    for i in range(50):
        svc.add_credential(f"c{i}", "local", value=ValueInput(value=Secret(f"v{i}")))
    kernel = svc.kernel

    async def go() -> tuple[list[Any], int]:
        async with RotationEngine(kernel) as engine:
            writer = engine.writer
            names = [f"c{i}" for i in range(50)] + ["missing"]
            out = await asyncio.gather(
                *(engine.read_value(LOCAL_PRINCIPAL, n) for n in names), return_exceptions=True
            )
            return list(out), writer.batches

    out, batches = asyncio.run(go())
    assert isinstance(out[-1], NotFound)
    assert [v.reveal_text() for v in out[:-1]] == [f"v{i}" for i in range(50)]
    assert batches <= 3, f"{batches} write transactions for 51 reads"
    assert sum(c.use_count for c in svc.list_credentials()) == 50
