"""The hot statements sent at driver level (store/prepared.py) write and read exactly what Core
writes and reads, so the MACs over stage maps and audit entries see the same bytes."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, event, insert, select, text, update
from tests.support import doubles
from tests.support.doubles import DoubleConfig

from rotator.domain.model import Stage
from rotator.engine import Engine, EngineOptions, Outcome, RotationRequest
from rotator.errors import ConcurrentModification
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.store import credentials as store_creds
from rotator.store import rotations as store_rot
from rotator.store.schema import credentials, rotations, versions

FAST = EngineOptions(retry_initial_s=0.001, retry_max_s=0.01)
# A moment with microseconds and a non-UTC offset: both must be stored as Core stores them.
WHEN = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC).astimezone(timezone(timedelta(hours=-7)))


@pytest.fixture(autouse=True)
def double_connector() -> Iterator[None]:
    doubles.install()
    doubles.CALLS.clear()
    yield
    doubles.MemoryTarget.valid.clear()


def add_double(svc: BlockingService, name: str) -> int:
    svc.add_credential(
        name, "double", settings={}, policy=PolicyInput(grace="5m"), value=ValueInput(generate=True)
    )
    doubles.target_add(DoubleConfig(), name, svc.get_value(name).reveal_text())
    return svc.show(name).id


def raw(conn: Connection, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows as the driver returns them (no type processing)."""
    return [tuple(r) for r in conn.execute(text(sql), params)]


def test_rows_written_at_driver_level_are_stored_and_read_back_exactly_as_core_writes_them(
    svc: BlockingService,
) -> None:
    fast_id, core_id = add_double(svc, "fast"), add_double(svc, "core")
    tenant_id = svc.tenant("default").id
    rotation = {
        "tenant_id": tenant_id,
        "batch_id": None,
        "trigger": "manual",
        "priority": 3,
        "version": 2,
        "grace_s": 60,
        "owner": "owner-1",
        "fence": "fence-1",
        "lease_expires_at": WHEN + timedelta(seconds=30),
        "now": WHEN,
    }
    with svc.db.write() as conn:
        key_id = conn.execute(select(versions.c.data_key_id).limit(1)).scalar_one()
        store_rot.insert_rotation(
            conn, id="r-fast", credential_id=fast_id, credential="fast", **rotation
        )
        now = rotation.pop("now")
        conn.execute(
            insert(rotations),
            {
                **rotation,
                "id": "r-core",
                "credential_id": core_id,
                "credential": "core",
                "step": "created",
                "attempts": 0,
                "error": None,
                "created_at": now,
                "updated_at": now,
                "finished_at": None,
            },
        )
        store_creds.insert_version(
            conn,
            credential_id=fast_id,
            number=2,
            stage=Stage.PENDING,
            ciphertext=b"\x00sealed\xff",
            data_key_id=key_id,
            now=WHEN,
        )
        conn.execute(
            insert(versions),
            {
                "credential_id": core_id,
                "number": 2,
                "stage": "PENDING",
                "ciphertext": b"\x00sealed\xff",
                "data_key_id": key_id,
                "created_at": WHEN,
                "staged_at": WHEN,
                "expires_at": None,
            },
        )
        settings = {"target": "t1", "note": 'ünïcode "quoted"'}
        sinks = [{"kind": "file", "path": "/tmp/x", "n": 1}]
        store_creds.update_credential(
            conn, fast_id, now=WHEN, config=settings, sinks=sinks, set_next_rotation=True
        )
        conn.execute(
            update(credentials)
            .where(credentials.c.id == core_id)
            .values(updated_at=WHEN, config=settings, sinks=sinks, next_rotation_at=None)
        )

    with svc.db.read() as conn:
        # Stored bytes: the same on both paths (timestamps, JSON text, binary).
        rot_cols = "created_at, updated_at, lease_expires_at, finished_at, step, attempts"
        assert raw(conn, f"SELECT {rot_cols} FROM rotations WHERE id = 'r-fast'") == raw(
            conn, f"SELECT {rot_cols} FROM rotations WHERE id = 'r-core'"
        )
        ver_cols = "stage, ciphertext, data_key_id, created_at, staged_at, expires_at"
        ver_sql = f"SELECT {ver_cols} FROM versions WHERE credential_id = :c AND number = 2"
        assert raw(conn, ver_sql, c=fast_id) == raw(conn, ver_sql, c=core_id)
        cred_sql = "SELECT CAST(config AS TEXT), CAST(sinks AS TEXT), updated_at FROM credentials"
        cred_sql += " WHERE id = :c"
        assert raw(conn, cred_sql, c=fast_id) == raw(conn, cred_sql, c=core_id)

        # Read through Core: aware UTC datetimes, equal to what was written; JSON equal.
        r = conn.execute(select(rotations).where(rotations.c.id == "r-fast")).one()
        assert r.created_at == WHEN
        assert r.created_at.tzinfo == UTC
        assert r.lease_expires_at == WHEN + timedelta(seconds=30)
        assert (r.step, r.version, r.finished_at) == ("created", 2, None)
        v = conn.execute(
            select(versions).where(versions.c.credential_id == fast_id, versions.c.number == 2)
        ).one()
        assert v.staged_at == WHEN
        assert v.staged_at.tzinfo == UTC
        assert v.ciphertext == b"\x00sealed\xff"
        c = conn.execute(select(credentials).where(credentials.c.id == fast_id)).one()
        assert (c.config, c.sinks, c.next_rotation_at) == (settings, sinks, None)

        # And the driver-level reads convert as Core does.
        found = store_creds.value_read(conn, tenant_id, "fast", Stage.PENDING)
        assert found is not None
        stage_map, sealed = found
        assert (stage_map.config, stage_map.sinks) == (settings, sinks)
        assert stage_map.stages == ((1, "CURRENT"), (2, "PENDING"))
        assert sealed is not None
        assert sealed.ciphertext == b"\x00sealed\xff"
        assert store_creds.stage_map(conn, fast_id) == stage_map


def test_stage_maps_and_the_audit_chain_verify_after_batches_written_at_driver_level(
    svc: BlockingService,
) -> None:
    names = [f"app/{i}" for i in range(12)]
    ids = [add_double(svc, n) for n in names]
    old = {n: svc.get_value(n).reveal_text() for n in names}

    async def go() -> Any:
        async with Engine(svc.kernel, FAST) as engine:
            result = await engine.rotate([RotationRequest(n) for n in names])
            return result, engine.writer.operations / max(engine.writer.batches, 1)

    result, ops_per_batch = asyncio.run(go())
    assert [r.outcome for r in result.results] == [Outcome.ROTATED] * len(names)
    assert ops_per_batch > 1, "the rotations must have shared group commits"

    with svc.db.read() as conn:
        assert svc.kernel.stage_map_errors(conn, ids) == {}
    verdict = svc.audit_verify()
    assert verdict.ok, verdict.reason
    for n in names:  # every read checks the map; the old value is PREVIOUS now
        assert svc.get_value(n).reveal_text() != old[n]
        assert svc.get_value(n, Stage.PREVIOUS).reveal_text() == old[n]
    assert svc.audit_verify().ok


def test_a_rotation_batch_sends_its_writes_at_driver_level_within_its_statement_budget(
    svc: BlockingService, db_url: str
) -> None:
    """Guards the per-rotation cost: the group-commit writer compiles no Core statement, and
    the statements it sends per rotation do not go back up (PostgreSQL adds a row lock before
    each of the two stage-map reads)."""
    names = [f"svc/{i}" for i in range(16)]
    for n in names:
        add_double(svc, n)
    sent: Counter[tuple[bool, str]] = Counter()

    def listen(*args: Any) -> None:
        context = args[4]  # None for a statement sent at driver level
        if threading.current_thread().name.startswith("rotator-writer"):
            compiled = context is not None and context.compiled is not None
            sent[(compiled, args[2].split()[0])] += 1

    async def go() -> Any:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.rotate([RotationRequest(n) for n in names])

    event.listen(svc.db.engine, "before_cursor_execute", listen)
    try:
        result = asyncio.run(go())
    finally:
        event.remove(svc.db.engine, "before_cursor_execute", listen)
    assert [r.outcome for r in result.results] == [Outcome.ROTATED] * len(names)
    core = {stmt: n for (compiled, stmt), n in sent.items() if compiled}
    assert core == {}, f"Core-compiled statements on the writer: {core}"
    # A finish reschedules with the policy defaults by tag and tenant (kernel.reschedule):
    # the credential, its tags and its tenant's defaults read, the schedule written.
    budget = 15 if db_url.startswith("sqlite") else 17
    per_rotation = sum(sent.values()) / len(names)
    assert per_rotation <= budget, f"{per_rotation:.2f} statements per rotation: {sent}"


def test_a_conflicting_write_at_driver_level_fails_as_a_store_error_and_commits_nothing(
    svc: BlockingService,
) -> None:
    cid = add_double(svc, "app/db")
    before = svc.show("app/db")

    def conflicting_write() -> None:
        with svc.db.write() as conn:
            store_creds.update_credential(conn, cid, now=WHEN, use_count=99)
            store_creds.insert_version(  # version 1 exists: the unique key refuses it
                conn,
                credential_id=cid,
                number=1,
                stage=Stage.PENDING,
                ciphertext=b"x",
                data_key_id=1,
                now=WHEN,
            )

    with pytest.raises(ConcurrentModification):
        conflicting_write()
    after = svc.show("app/db")
    assert (after.use_count, after.updated_at) == (before.use_count, before.updated_at)
    assert [v.number for v in after.versions] == [1]
    # The pooled connection is usable again (PostgreSQL: its aborted transaction is gone).
    with svc.db.write() as conn:
        store_creds.count_use(conn, cid, 2)
    assert svc.show("app/db").use_count == before.use_count + 2
