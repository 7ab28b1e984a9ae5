"""Values are bound to the credential, tenant and stage they claim (issue 7, item 4).

A real store is made through the CLI (and the service for a second tenant); then one row is
edited directly in the database (the ``sqlite3`` module, or SQL through psycopg on PostgreSQL),
as someone with write access to the database but not the master key would. Every read of a
value of the edited credential must then fail: ``rotator credential get`` exits 1 with one
stderr line naming an integrity failure and the credential, and prints no value.
Also: a store written before migration 0006 is sealed by the keyed upgrade when opened.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, event, select, update

from rotator.audit.chain import GENESIS, AuditEntry, entry_hash
from rotator.config import Settings
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.engine.writer import StoreWriter
from rotator.errors import AuditChainBroken, IntegrityError
from rotator.service import LOCAL_PRINCIPAL, BlockingService, ValueInput
from rotator.store import Database
from rotator.store import credentials as store_creds
from rotator.store import rotations as store_rot
from rotator.store.db import MIGRATIONS
from rotator.store.schema import audit_head, audit_log, credentials, versions

ROTATOR = str(Path(sys.executable).parent / "rotator")
VALUES = {"alpha": "alpha-value-1f9c", "beta": "beta-value-83d2"}


def cli(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")},
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
    }
    return subprocess.run(
        [ROTATOR, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sql(settings: Settings, *statements: str) -> None:
    """Edit the store behind rotator's back: sqlite3 for SQLite, psycopg for PostgreSQL."""
    url = settings.db_url
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.split("///", 1)[1])
        with db:
            for s in statements:
                db.execute(s)
        db.close()
        return
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        for s in statements:
            conn.execute(s)  # type: ignore[arg-type]


@pytest.fixture
def store(settings: Settings) -> Settings:
    """Initialized through the CLI: ``alpha`` and ``beta`` with known values; ``theirs`` in a
    second tenant ``other`` (made through the service: the CLI acts in the default tenant)."""
    assert cli(settings, "init").returncode == 0
    for name, value in VALUES.items():
        out = cli(settings, "credential", "add", name, "-c", "local", "--value-stdin", stdin=value)
        assert out.returncode == 0, out.stderr
    svc = BlockingService.open(settings)
    svc.add_tenant("other")
    svc.add_credential(
        "theirs",
        "local",
        value=ValueInput(value=Secret("their-value-5e1a")),
        principal=LOCAL_PRINCIPAL.with_tenant("other"),
    )
    svc.close()
    for name, value in VALUES.items():
        got = cli(settings, "credential", "get", name)
        assert (got.returncode, got.stdout) == (0, value + "\n"), got.stderr
    return settings


def assert_integrity_failure(settings: Settings, name: str, *args: str) -> None:
    out = cli(settings, "credential", "get", name, *args)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "integrity check failed" in lines[0], lines[0]
    assert repr(name) in lines[0], lines[0]
    for value in [*VALUES.values(), "their-value-5e1a"]:
        assert value not in out.stderr


def test_swapped_credential_names_fail_integrity(store: Settings) -> None:
    sql(
        store,
        "UPDATE credentials SET name = 'tmp' WHERE name = 'alpha'",
        "UPDATE credentials SET name = 'alpha' WHERE name = 'beta'",
        "UPDATE credentials SET name = 'beta' WHERE name = 'tmp'",
    )
    assert_integrity_failure(store, "alpha")
    assert_integrity_failure(store, "beta")


def test_credential_moved_from_another_tenant_fails_integrity(store: Settings) -> None:
    sql(
        store,
        "UPDATE credentials SET tenant_id = (SELECT id FROM tenants WHERE name = 'default') "
        "WHERE name = 'theirs'",
    )
    assert_integrity_failure(store, "theirs")


def test_previous_version_marked_current_fails_integrity(store: Settings) -> None:
    out = cli(store, "credential", "update", "alpha", "--value-stdin", stdin="alpha-value-2")
    assert out.returncode == 0, out.stderr
    sql(
        store,
        "UPDATE versions SET stage = 'RETIRED' WHERE stage = 'CURRENT' AND credential_id = "
        "(SELECT id FROM credentials WHERE name = 'alpha')",
        "UPDATE versions SET stage = 'CURRENT' WHERE stage = 'PREVIOUS' AND credential_id = "
        "(SELECT id FROM credentials WHERE name = 'alpha')",
    )
    assert_integrity_failure(store, "alpha")
    assert_integrity_failure(store, "alpha", "--stage", "PREVIOUS")


def test_retired_version_marked_current_fails_integrity(store: Settings) -> None:
    for i in (2, 3):
        out = cli(store, "credential", "update", "alpha", "--value-stdin", stdin=f"alpha-{i}")
        assert out.returncode == 0, out.stderr
    rotated = cli(store, "rotate", "alpha", "--emergency")  # grace 0: old values RETIRED
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    shown = json.loads(cli(store, "credential", "show", "alpha", "--json").stdout)
    retired = [v["version"] for v in shown["versions"] if v["stage"] == "RETIRED"]
    assert retired
    assert shown["versions"][-1]["stage"] == "CURRENT"
    sql(
        store,
        "UPDATE versions SET stage = 'RETIRED' WHERE stage = 'CURRENT' AND credential_id = "
        "(SELECT id FROM credentials WHERE name = 'alpha')",
        f"UPDATE versions SET stage = 'CURRENT' WHERE number = {retired[0]} AND credential_id = "
        "(SELECT id FROM credentials WHERE name = 'alpha')",
    )
    assert_integrity_failure(store, "alpha")


def test_missing_stage_mac_is_an_integrity_failure(store: Settings) -> None:
    sql(store, "UPDATE credentials SET stage_mac = NULL WHERE name = 'beta'")
    assert_integrity_failure(store, "beta")
    good = cli(store, "credential", "get", "alpha")
    assert (good.returncode, good.stdout) == (0, VALUES["alpha"] + "\n")


def test_rotating_a_tampered_credential_fails_and_changes_nothing(store: Settings) -> None:
    sql(
        store,
        "UPDATE credentials SET name = 'tmp' WHERE name = 'alpha'",
        "UPDATE credentials SET name = 'alpha' WHERE name = 'beta'",
        "UPDATE credentials SET name = 'beta' WHERE name = 'tmp'",
    )
    out = cli(store, "rotate", "alpha", "beta", "--json")
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["rotated"] == []
    assert {f["name"] for f in result["failed"]} == {"alpha", "beta"}
    assert all("integrity check failed" in f["error"] for f in result["failed"])
    shown = json.loads(cli(store, "credential", "show", "alpha", "--json").stdout)
    assert [v["stage"] for v in shown["versions"]] == ["CURRENT"]


def test_untouched_store_keeps_verifying_through_rotations(store: Settings) -> None:
    for _ in range(2):
        out = cli(store, "rotate", "alpha", "beta")
        assert out.returncode == 0, out.stdout + out.stderr
    assert cli(store, "rotate", "alpha", "--emergency").returncode == 0
    for name in VALUES:
        got = cli(store, "credential", "get", name)
        assert got.returncode == 0, got.stderr
        assert cli(store, "credential", "get", name, "--stage", "PREVIOUS").returncode in (0, 2)
    assert cli(store, "audit", "verify").returncode == 0


# -- stores from before migration 0006 --------------------------------------------------------


def make_legacy(settings: Settings, raw_db: Engine, *, break_chain: bool = False) -> None:
    """Turn a store into what rotator wrote before 0006: schema at 0004, no MACs, the audit
    chain hashed with unkeyed SHA-256."""
    db = Database(settings.db_url)
    with db.write() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    db.dispose()
    with raw_db.begin() as c:
        rows = c.execute(
            select(*[audit_log.c[k] for k in AuditEntry.__slots__ if k != "key_id"]).order_by(
                audit_log.c.seq
            )
        ).all()
        prev = GENESIS
        for r in rows:
            fields = {k: getattr(r, k) for k in AuditEntry.__slots__ if k != "key_id"}
            e = AuditEntry(**{**fields, "details": json.loads(r.details), "prev_hash": prev})
            prev = entry_hash(e)
            c.execute(
                update(audit_log)
                .where(audit_log.c.seq == r.seq)
                .values(prev_hash=e.prev_hash, hash=prev)
            )
        c.exec_driver_sql(f"UPDATE audit_head SET seq = {len(rows)}, hash = '{prev}'")
        if break_chain:  # an edit the unkeyed chain shows (not recomputed)
            c.execute(update(audit_log).where(audit_log.c.seq == 2).values(actor="mallory"))


def test_store_from_before_0006_is_sealed_when_opened(store: Settings, raw_db: Engine) -> None:
    make_legacy(store, raw_db)
    got = cli(store, "credential", "get", "alpha")  # opens, migrates, seals
    assert (got.returncode, got.stdout) == (0, VALUES["alpha"] + "\n"), got.stderr
    with raw_db.connect() as c:
        assert c.execute(select(credentials.c.stage_mac)).scalars().all().count(None) == 0
        assert c.execute(select(audit_log.c.key_id)).scalars().all().count(None) == 0
        assert c.execute(select(audit_head.c.mac)).scalar_one() is not None
        actions = c.execute(select(audit_log.c.action).order_by(audit_log.c.seq)).scalars().all()
    assert actions[-2:] == ["store.integrity_upgrade", "value.read"]
    assert cli(store, "audit", "verify").returncode == 0
    # From now on the MACs hold: an edit is an integrity failure.
    sql(store, "UPDATE credentials SET stage_mac = NULL WHERE name = 'beta'")
    assert_integrity_failure(store, "beta")


def test_store_from_before_0006_with_a_broken_chain_is_not_sealed(
    store: Settings, raw_db: Engine
) -> None:
    make_legacy(store, raw_db, break_chain=True)
    with pytest.raises(AuditChainBroken, match=r"entry 2 .* not re-sealed"):
        BlockingService.open(store)
    out = cli(store, "credential", "get", "alpha")
    assert out.returncode == 1
    assert out.stdout == ""
    assert "not re-sealed" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    with raw_db.connect() as c:
        assert set(c.execute(select(audit_log.c.key_id)).scalars()) == {None}


def test_two_processes_opening_a_store_from_before_0006_at_once_both_work(
    store: Settings, raw_db: Engine
) -> None:
    """Both run the migration and the keyed upgrade at the same moment: one does each, the
    other finds it done; both read the value, and the chain verifies with one upgrade."""
    make_legacy(store, raw_db)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")},
        "ROTATOR_HOME": str(store.home),
        "ROTATOR_DB": store.db_url,
    }
    procs = [
        subprocess.Popen(
            [ROTATOR, "credential", "get", "alpha"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [(p.returncode, out) for p, (out, _) in zip(procs, outs, strict=True)] == [
        (0, VALUES["alpha"] + "\n")
    ] * 2, [err for _, err in outs]
    with raw_db.connect() as c:
        actions = c.execute(select(audit_log.c.action)).scalars().all()
    assert actions.count("store.integrity_upgrade") == 1
    assert cli(store, "audit", "verify").returncode == 0


def test_two_services_running_the_keyed_upgrade_at_once_seal_the_store_once(
    store: Settings, raw_db: Engine
) -> None:
    make_legacy(store, raw_db)
    db = Database(store.db_url)
    db.migrate()  # 0004 -> 0006: the store is marked for the keyed upgrade
    db.dispose()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def open_store() -> None:
        barrier.wait()
        try:
            BlockingService.open(store).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with raw_db.connect() as c:
        actions = c.execute(select(audit_log.c.action)).scalars().all()
    assert actions.count("store.integrity_upgrade") == 1
    assert cli(store, "audit", "verify").returncode == 0


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("config", '{"length": "12", "alphabet": "attacker"}'),
        ("connector", "double"),
        ("sinks", '[{"path": "/tmp/exfiltrated", "format": "raw", "mode": "0600"}]'),
    ],
)
def test_connector_settings_or_sinks_edited_in_the_database_fail_integrity(
    store: Settings, column: str, value: str
) -> None:
    """Where a value goes (connector, its settings: a target host, an admin reference; the
    sinks) is covered by the MAC too: an edit could send the next value elsewhere."""
    sql(store, f"UPDATE credentials SET {column} = '{value}' WHERE name = 'alpha'")
    assert_integrity_failure(store, "alpha")


def test_updating_settings_through_rotator_keeps_the_credential_readable(store: Settings) -> None:
    out = cli(store, "credential", "update", "alpha", "--tag", "team=payments")
    assert out.returncode == 0, out.stderr
    got = cli(store, "credential", "get", "alpha")
    assert (got.returncode, got.stdout) == (0, VALUES["alpha"] + "\n"), got.stderr


def test_stage_moves_in_one_group_commit_read_each_map_once_and_stamp_maps_that_verify(
    svc: BlockingService, raw_db: Engine
) -> None:
    """The engine's writer checks and re-stamps stage maps from one read per credential per
    group commit, also when several operations move the same credential's stages; a map
    edited before the group commit is still refused, and only its operation fails."""
    ids = {}
    for name in ("a", "b", "c"):
        svc.add_credential(name, "local", value=ValueInput(generate=True))
        ids[name] = svc.show(name).id
    tenant = svc.tenant("default")
    with raw_db.begin() as conn:  # c's version 1 relabelled behind rotator's back
        conn.execute(
            update(versions).where(versions.c.credential_id == ids["c"]).values(stage="PREVIOUS")
        )
    now = svc.clock()

    def add_pending(name: str) -> Callable[[Connection], None]:
        def op(conn: Connection) -> None:
            _, number = store_creds.version_numbers(conn, ids[name])
            svc.kernel.check_stage_map(conn, ids[name])
            svc.kernel.seal_version(
                conn, tenant, ids[name], number, Secret(b"v2"), Stage.PENDING, now
            )
            svc.kernel.restamp(conn, ids[name])

        return op

    def fail_pending(name: str) -> Callable[[Connection], None]:
        def op(conn: Connection) -> None:
            svc.kernel.check_stage_map(conn, ids[name])
            store_rot.mark_version(conn, ids[name], 2, Stage.FAILED, now)
            svc.kernel.restamp(conn, ids[name])

        return op

    maps_read: list[str] = []

    def listen(_c: object, _cur: object, stmt: str, *_: object) -> None:
        if "credentials.stage_mac, versions.number" in " ".join(stmt.split()):
            maps_read.append(stmt)

    def group_commit(*ops: Callable[[Connection], None]) -> list[object]:
        async def go() -> tuple[list[object], int]:
            writer = StoreWriter(svc.db, ThreadPoolExecutor(max_workers=1))
            out = await asyncio.gather(*(writer.run(op) for op in ops), return_exceptions=True)
            await writer.aclose()
            return list(out), writer.batches

        maps_read.clear()
        event.listen(svc.db.engine, "before_cursor_execute", listen)
        try:
            results, batches = asyncio.run(go())
        finally:
            event.remove(svc.db.engine, "before_cursor_execute", listen)
        assert batches == 1
        return results

    assert group_commit(add_pending("a"), fail_pending("a"), add_pending("b")) == [None] * 3
    assert len(maps_read) == 2  # a's and b's, once each
    assert {v.number: v.stage for v in svc.show("a").versions} == {
        1: Stage.CURRENT,
        2: Stage.FAILED,
    }
    assert {v.number: v.stage for v in svc.show("b").versions} == {
        1: Stage.CURRENT,
        2: Stage.PENDING,
    }
    with svc.db.read() as conn:
        assert svc.kernel.stage_map_errors(conn, list(ids.values())) == {ids["c"]: mock.ANY}
    assert svc.get_value("a").reveal_text()

    tampered, moved = group_commit(add_pending("c"), fail_pending("b"))
    assert isinstance(tampered, IntegrityError)
    assert moved is None
    assert {v.number: v.stage for v in svc.show("c").versions} == {1: Stage.PREVIOUS}
    assert {v.number: v.stage for v in svc.show("b").versions} == {
        1: Stage.CURRENT,
        2: Stage.FAILED,
    }
    with svc.db.read() as conn:
        assert set(svc.kernel.stage_map_errors(conn, list(ids.values()))) == {ids["c"]}
    assert svc.get_value("b").reveal_text()


def test_another_workers_stage_move_waits_for_a_group_commit_that_read_the_map(
    svc: BlockingService, db_url: str
) -> None:
    """PostgreSQL, several workers: a group commit locks a credential's row when it first
    reads its map, so another worker's retire cannot commit between our check and our
    re-stamp (our MAC would leave its move out and the credential would fail every read);
    it waits, then re-stamps over both moves."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serializes writers")
    svc.add_credential("app/db", "local", value=ValueInput(value=Secret("v1")))
    svc.update_credential("app/db", value=ValueInput(value=Secret("v2")))  # v1 PREVIOUS
    kernel = svc.kernel
    cid = svc.show("app/db").id
    tenant = svc.tenant("default")
    now = kernel.clock()

    def other_worker_retires_v1() -> None:  # what Revoker.retire does, in another process
        with kernel.db.write() as c:
            kernel.check_stage_map(c, cid)
            store_rot.mark_version(c, cid, 1, Stage.RETIRED, now, only_from=(Stage.PREVIOUS,))
            kernel.restamp(c, cid)

    def waiting_on_a_lock() -> bool:
        with kernel.db.read() as c:
            n = c.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ).scalar()
        return bool(n)

    other = threading.Thread(target=other_worker_retires_v1)

    def stage_move(conn: Any) -> None:  # Protocol._begin + stage_move, condensed
        kernel.check_stage_map(conn, cid)
        other.start()
        deadline = time.monotonic() + 30
        while not waiting_on_a_lock():  # the other worker reached our lock and waits
            assert other.is_alive(), "it did not wait for our lock"
            assert time.monotonic() < deadline, "it did not reach our lock"
            time.sleep(0.01)
        kernel.seal_version(conn, tenant, cid, 3, Secret("v3"), Stage.PENDING, now)
        store_creds.promote(conn, cid, 3, now=now, grace=timedelta(minutes=5))
        kernel.restamp(conn, cid)

    async def go() -> None:
        writer = StoreWriter(kernel.db, ThreadPoolExecutor(max_workers=1))
        await writer.run(stage_move)
        await writer.aclose()

    asyncio.run(go())
    other.join(30)
    assert not other.is_alive()
    assert svc.get_value("app/db").reveal_text() == "v3"
    stages = {v.number: v.stage for v in svc.show("app/db").versions}
    assert stages == {1: Stage.RETIRED, 2: Stage.PREVIOUS, 3: Stage.CURRENT}
