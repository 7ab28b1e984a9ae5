"""A value read in the same group commit as a stage move of that credential verifies its map
as moved (the new stage MAC is written only at the end of the transaction)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from rotator.domain.model import Stage
from rotator.domain.principal import Principal
from rotator.domain.secret import Secret
from rotator.engine.writer import StoreWriter
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
        return kernel.read_value(conn, Principal(), "app/db").reveal_text()

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
