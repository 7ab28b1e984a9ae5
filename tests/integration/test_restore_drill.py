"""The restore drill, with real processes, a real PostgreSQL target and both store backends:
back up online while a batch rotates, leave one rotation in flight (the CLI killed with SIGKILL
between set and test, its lease made to look like another host's), back up again, split the
master key 3-of-5, destroy the store AND the key, rebuild the key from 3 shares on a new home,
restore, recover, and check that every credential still works on its target.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine, inspect, select, update
from sqlalchemy.engine import make_url
from tests.conftest import PgServer, PgTarget

from rotator.cli.main import main
from rotator.config import Settings
from rotator.connectors.postgres import parse_value
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.store import normalize_url
from rotator.store.schema import rotations

SUPPORT = Path(__file__).resolve().parents[1] / "support"
RUN_HOOKED = SUPPORT / "run_cli_hooked.py"
PG_CREDS = 8
LOCAL_CREDS = 3
IN_FLIGHT = "pg/app0"
FINAL_STEPS = {"finished", "rolled_back", "failed"}


def env_for(home: Path, db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    return {**env, "ROTATOR_HOME": str(home), "ROTATOR_DB": db_url, **extra}


def ok(result: subprocess.CompletedProcess[str] | Run) -> str:
    code = result.code if isinstance(result, Run) else result.returncode
    assert code == 0, result.stderr
    return result.stdout


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


Rot = Callable[..., Run]


@pytest.fixture
def rot(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Rot:
    """``rot(home, db_url, *args, stdin=None)``: the CLI run in this process (a subprocess
    costs seconds of start-up on a loaded machine); exit code, stdout, stderr."""

    def run(home: Path, db_url: str, *args: str, stdin: str | None = None) -> Run:
        with monkeypatch.context() as m:
            for k in [k for k in os.environ if k.startswith("ROTATOR_")]:
                m.delenv(k)
            m.setenv("ROTATOR_HOME", str(home))
            m.setenv("ROTATOR_DB", db_url)
            if stdin is not None:
                m.setattr(sys, "stdin", io.StringIO(stdin))
            capsys.readouterr()
            code = main(list(args))
            cap = capsys.readouterr()
        return Run(code, cap.out, cap.err)

    return run


def admin(target: PgTarget, query: sql.Composable) -> None:
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        conn.execute(query)


def can_login(target: PgTarget, user: str, password: str) -> bool:
    try:
        with psycopg.connect(target.dsn(user=user, password=password)) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


@pytest.fixture
def roles(pg_target: PgTarget) -> Iterator[list[tuple[str, str]]]:
    """PG_CREDS fresh login roles (name, password) on the target; dropped (with clones) after."""
    made = [(f"dr_{uuid.uuid4().hex[:10]}", "initial-" + uuid.uuid4().hex) for _ in range(PG_CREDS)]
    for name, password in made:
        admin(
            pg_target,
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            ),
        )
    yield made
    for name, _ in made:
        for r in (name + "_clone", name):
            admin(pg_target, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(r)))


@pytest.fixture
def spare_pg_database(pg_server: PgServer) -> Iterator[str]:
    """The URL of an empty PostgreSQL database of this test's own (dropped after)."""
    name = f"dr_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield pg_server.url(name)
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def destroy_store(db_url: str, pg_server: PgServer | None) -> None:
    """Lose the store: delete the SQLite file (and its WAL) or drop the PostgreSQL database."""
    url = make_url(normalize_url(db_url))
    if url.get_backend_name() == "sqlite":
        assert url.database
        for suffix in ("", "-wal", "-shm"):
            Path(url.database + suffix).unlink(missing_ok=True)
        return
    assert pg_server is not None
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(str(url.database)))
        )


def versions_of(svc: BlockingService) -> dict[str, dict[int, Stage]]:
    return {
        c.name: {v.number: v.stage for v in svc.show(c.name).versions}
        for c in svc.list_credentials()
    }


def set_up(settings: Settings, target: PgTarget, roles: list[tuple[str, str]]) -> None:
    svc, created = BlockingService.init(settings)
    assert created
    try:
        svc.add_credential(
            "pg/admin",
            "local",
            tags={"kind": "pg-admin"},
            value=ValueInput(value=Secret(target.password)),
        )
        for i, (role, password) in enumerate(roles):
            cfg: dict[str, Any] = {
                "host": target.host,
                "port": str(target.port),
                "role": role,
                "admin": "pg/admin",
                "mode": "alternating" if i % 2 == 0 else "single",
            }
            svc.add_credential(
                f"pg/app{i}",
                "postgres",
                settings=cfg,
                # The batch rotates every credential but the one the drill leaves in flight.
                tags={"drill": "flight" if i == 0 else "yes", "kind": "pg"},
                policy=PolicyInput(grace="1h"),
                value=ValueInput(value=Secret(password)),
            )
        for i in range(LOCAL_CREDS):
            svc.add_credential(
                f"local/k{i}",
                "local",
                tags={"drill": "yes", "kind": "local"},
                value=ValueInput(generate=True),
            )
    finally:
        svc.close()


def rotate_online_while_backing_up(
    rot: Rot, home: Path, db_url: str, backup: Path, gate: Path
) -> None:
    """A batch rotation in a subprocess, held right before the test step of its first local
    rotation (its set step done: a rotation in flight) while `rotator backup` runs; it must
    still be running when the backup returns, then it is let go and finishes.

    Concurrency 1: the hook holds the whole process, and the rotations before the held one
    have all ended, so the only rotation in flight in the backup is a local one, which the
    test may recover in a scratch restore without touching the PostgreSQL target."""
    gate.mkdir()
    hook = {
        "target": "rotator.connectors.local:LocalConnector.test",
        "call": 1,
        "when": "before",
        "action": "barrier",
        "dir": str(gate),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            str(RUN_HOOKED),
            "rotate",
            "--tag",
            "drill=yes",
            "--concurrency",
            "1",
            "--json",
        ],
        env=env_for(home, db_url, ROTATOR_TEST_HOOK=json.dumps(hook)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (gate / "first").exists():  # the batch is held, mid-rotation
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the batch never reached its hook"
            time.sleep(0.02)
        ok(rot(home, db_url, "backup", str(backup)))
        assert proc.poll() is None, "the batch ended before the backup did: not an online backup"
        (gate / "release").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert json.loads(out)["failed"] == []


def unfinished_rotations(db_url: str) -> list[tuple[str, str]]:
    engine = create_engine(normalize_url(db_url))
    try:
        with engine.connect() as c:
            rows = c.execute(select(rotations.c.credential, rotations.c.step)).all()
    finally:
        engine.dispose()
    return [(name, step) for name, step in rows if step not in FINAL_STEPS]


def kill_rotation_between_set_and_test(home: Path, db_url: str) -> None:
    """`rotator rotate IN_FLIGHT` killed with SIGKILL right before its test step: the intent
    (PENDING version, rotation row at step set) stays, with a live-looking lease."""
    hook = {
        "target": "rotator.connectors.postgres:PostgresConnector.test",
        "call": 1,
        "when": "before",
        "action": "kill",
    }
    # Its own session: helper processes it started (a process pool) die with it, and hold
    # no pipe of ours open.
    proc = subprocess.Popen(
        [sys.executable, str(RUN_HOOKED), "rotate", IN_FLIGHT],
        env=env_for(home, db_url, ROTATOR_TEST_HOOK=json.dumps(hook)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proc.wait(timeout=120) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    engine = create_engine(normalize_url(db_url))
    try:
        with engine.begin() as c:
            steps = (
                c.execute(
                    select(rotations.c.step)
                    .where(rotations.c.credential == IN_FLIGHT)
                    .order_by(rotations.c.created_at)
                )
                .scalars()
                .all()
            )
            assert steps[-1] == "set"
            # As if its owner ran on the machine that was lost: a host we cannot probe, with
            # an hour of lease left. Restore must not make recovery wait for it.
            c.execute(
                update(rotations)
                .where(rotations.c.step == "set")
                .values(
                    owner="lost-host:4242:boot:ns:abcd1234",
                    lease_expires_at=datetime.now(UTC) + timedelta(hours=1),
                )
            )
    finally:
        engine.dispose()


def test_restore_drill_backup_destroy_rebuild_key_restore_recover_every_current_works(
    tmp_path: Path,
    db_url: str,
    pg_target: PgTarget,
    roles: list[tuple[str, str]],
    request: pytest.FixtureRequest,
    rot: Rot,
) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home, db_url=db_url)
    set_up(settings, pg_target, roles)

    # 1. Online backup while a batch rotates; it restores to a consistent store.
    online = tmp_path / "online.bak"
    rotate_online_while_backing_up(rot, home, db_url, online, tmp_path / "gate")
    assert unfinished_rotations(db_url) == []
    scratch_home = tmp_path / "scratch"
    scratch_home.mkdir(mode=0o700)
    shutil.copy2(home / "master.key", scratch_home / "master.key")
    scratch_db = f"sqlite:///{tmp_path}/scratch.db"
    ok(rot(scratch_home, scratch_db, "restore", str(online)))
    # The backup caught the held rotation in flight; recovery resolves it.
    [(held, _)] = unfinished_rotations(scratch_db)
    assert held.startswith("local/"), held
    assert "recovered 1 rotation(s)" in ok(rot(scratch_home, scratch_db, "recover"))
    assert unfinished_rotations(scratch_db) == []
    ok(rot(scratch_home, scratch_db, "audit", "verify"))
    scratch = BlockingService.open(Settings(home=scratch_home, db_url=scratch_db))
    try:
        for name, stages in versions_of(scratch).items():
            assert list(stages.values()).count(Stage.CURRENT) == 1, (name, stages)
    finally:
        scratch.close()

    # 2. One rotation left in flight, then the backup the drill restores.
    kill_rotation_between_set_and_test(home, db_url)
    final = tmp_path / "final.bak"
    line = ok(rot(home, db_url, "backup", str(final)))
    assert "rows" in line
    assert "audit head seq" in line
    assert (final.stat().st_mode & 0o777) == 0o600
    svc = BlockingService.open(settings)
    try:
        before = versions_of(svc)
        pending = [n for n, s in before[IN_FLIGHT].items() if s is Stage.PENDING]
        assert pending, before[IN_FLIGHT]
    finally:
        svc.close()

    # 3. Escrow 3-of-5, then lose everything: the store and the master key.
    shares = tmp_path / "shares"
    ok(rot(home, db_url, "keys", "export", "--split", "3-of-5", "--out", str(shares)))
    files = sorted(shares.glob("share-*-of-5.txt"))
    assert len(files) == 5
    assert all((f.stat().st_mode & 0o777) == 0o600 for f in files)
    destroy_store(db_url, request.getfixturevalue("pg_server") if "postgres" in db_url else None)
    shutil.rmtree(home)

    # 4. A new machine: the key from 3 shares, then restore into a new, empty store.
    new_home = tmp_path / "new-home"
    if "postgres" in db_url:
        new_db = request.getfixturevalue("spare_pg_database")
    else:
        new_db = f"sqlite:///{tmp_path}/new/rotator.db"
    ok(rot(new_home, new_db, "keys", "import", str(files[0]), str(files[2]), str(files[4])))
    assert (new_home / "master.key").stat().st_mode & 0o777 == 0o600
    out = ok(rot(new_home, new_db, "restore", str(final)))
    assert "lease(s) from the old host ended" in out

    # 5. Recovery does not wait for the dead host's lease (an hour): it resumes at once.
    out = ok(rot(new_home, new_db, "recover"))
    assert "recovered 1 rotation(s)" in out, out
    ok(rot(new_home, new_db, "audit", "verify"))

    new = Settings(home=new_home, db_url=new_db)
    svc = BlockingService.open(new)
    try:
        after = versions_of(svc)
        assert set(after) == set(before)
        for name, stages in after.items():
            assert set(before[name]) <= set(stages), f"{name}: a version was lost"
            assert list(stages.values()).count(Stage.CURRENT) == 1, (name, stages)
            if name.startswith("pg/app"):
                cfg_role = svc.show(name).config["role"]
                login = parse_value(svc.get_value(name), cfg_role)
                assert can_login(pg_target, login.username, login.password), name
        # The in-flight rotation finished forward or rolled back; its account logs in either
        # way (checked above), and nothing is left active.
        n = pending[0]
        assert after[IN_FLIGHT][n] in (Stage.CURRENT, Stage.FAILED), after[IN_FLIGHT]
        if after[IN_FLIGHT][n] is Stage.CURRENT:
            prev = parse_value(svc.get_value(IN_FLIGHT, Stage.PREVIOUS), roles[0][0])
            assert can_login(pg_target, prev.username, prev.password), "PREVIOUS locked out"
        engine = create_engine(normalize_url(new_db))
        try:
            with engine.connect() as c:
                steps = set(c.execute(select(rotations.c.step)).scalars())
        finally:
            engine.dispose()
        assert steps <= FINAL_STEPS, steps
        actions = [e.action for e in svc.audit_entries()]
        assert "store.restore" in actions
        assert "rotation.resume" in actions
        assert svc.audit_verify().ok
    finally:
        svc.close()
    # The restored store rotates on (its id sequences moved past the restored rows).
    ok(rot(new_home, new_db, "rotate", "--tag", "kind=local"))


def one_line_refusal(result: Run, *expected: str) -> None:
    """Exit 2 with exactly one ``rotator: error:`` line naming the problem, no traceback."""
    assert result.code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rotator: error: "), lines
    assert "Traceback" not in result.stderr + result.stdout
    for text in expected:
        assert text in lines[0], lines[0]


def pg_tables(url: str) -> list[str]:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as c:
            return inspect(c).get_table_names()
    finally:
        engine.dispose()


def test_restore_refuses_changed_truncated_foreign_files_non_empty_stores_and_bad_shares(
    tmp_path: Path, rot: Rot, pg_database: str
) -> None:
    src_home, src_db = tmp_path / "src", f"sqlite:///{tmp_path}/src.db"
    ok(rot(src_home, src_db, "init"))
    for name in ("app/a", "app/b"):
        ok(rot(src_home, src_db, "credential", "add", name, "--connector", "local", "--generate"))
    ok(rot(src_home, src_db, "rotate", "app/a"))
    value = ok(rot(src_home, src_db, "credential", "get", "app/a"))
    bak = tmp_path / "store.bak"
    ok(rot(src_home, src_db, "backup", str(bak)))
    one_line_refusal(rot(src_home, src_db, "backup", str(bak)), "exists", "--force")
    ok(rot(src_home, src_db, "backup", str(bak), "--force"))
    assert bak.stat().st_mode & 0o777 == 0o600
    shares = ok(rot(src_home, src_db, "keys", "export", "--split", "3-of-5", "--stdout"))
    shares_list = shares.splitlines()
    assert len(shares_list) == 5

    # Key escrow: too few shares, or one word changed, rebuild nothing.
    new_home = tmp_path / "new"
    one_line_refusal(
        rot(new_home, pg_database, "keys", "import", stdin="\n".join(shares_list[:2])), "needs 3"
    )
    words = shares_list[1].split()
    words[5] = "academic" if words[5] != "academic" else "acid"
    bad = [shares_list[0], " ".join(words), shares_list[2]]
    result = rot(new_home, pg_database, "keys", "import", stdin="\n".join(bad))
    one_line_refusal(result, "share 2 is not a valid share")
    assert not any(w in result.stderr for w in words[:3] if len(w) > 3)
    assert not (new_home / "master.key").exists()
    ok(rot(new_home, pg_database, "keys", "import", stdin="\n".join(shares_list[2:])))

    # Changed, truncated or foreign files: refused before anything is written.
    data = bak.read_bytes()
    header_at = data.index(b'"created_at":"') + len(b'"created_at":"')
    cases = {
        "body byte": (data[:-100] + bytes([data[-100] ^ 1]) + data[-99:], "signature"),
        "header": (data[:header_at] + b"1" + data[header_at + 1 :], "signature"),
        "truncated": (data[:-10], "truncated"),
        "format": (b"not-a-backup\n" + data, "not a rotator backup"),
    }
    for what, (blob, message) in cases.items():
        f = tmp_path / f"{what}.bak"
        f.write_bytes(blob)
        result = rot(new_home, pg_database, "restore", str(f))
        one_line_refusal(result, message)
        assert pg_tables(pg_database) == [], what
    other_home = tmp_path / "other"
    ok(rot(other_home, f"sqlite:///{tmp_path}/other.db", "init"))
    one_line_refusal(
        rot(other_home, f"sqlite:///{tmp_path}/empty.db", "restore", str(bak)), "master key"
    )
    assert not (tmp_path / "empty.db").exists()
    # A store that exists (even one only initialized) is never overwritten.
    before = ok(rot(src_home, src_db, "audit", "head"))
    one_line_refusal(rot(src_home, src_db, "restore", str(bak)), "empty store")
    assert ok(rot(src_home, src_db, "audit", "head")) == before

    # Cross-backend: the SQLite store's backup restores into PostgreSQL, and rotates on.
    out = ok(rot(new_home, pg_database, "restore", str(bak)))
    assert value.strip() not in out
    ok(rot(new_home, pg_database, "audit", "verify"))
    assert ok(rot(new_home, pg_database, "credential", "get", "app/a")) == value
    ok(rot(new_home, pg_database, "rotate", "--all"))
    ok(
        rot(
            new_home,
            pg_database,
            "credential",
            "add",
            "app/c",
            "--connector",
            "local",
            "--generate",
        )
    )
    ok(rot(new_home, pg_database, "audit", "verify"))
