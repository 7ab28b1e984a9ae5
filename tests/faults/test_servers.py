"""Faults of the servers rotator depends on, each made real and landed mid-batch.

* the store's PostgreSQL restarted while a batch runs;
* a target PostgreSQL, then a target Redis, stopped while a batch runs, then started again;
* a target Redis that hangs (SIGSTOP: connections are accepted, nothing is ever answered).

Each test owns the server it breaks (tests/support/faults_servers.py), holds a real
``rotator rotate`` subprocess at the Nth connector call of its batch (so the fault lands with
rotations in flight whatever the machine's speed), breaks the server, lets the batch run on to
its end, recovers as an operator would (server back, then ``rotator rotate`` again, or
``rotator recover`` and a rotation of what did not move on) and checks the
invariants of tests/faults/invariants.py by code, plus what the fault must show: the batch
ended and reported every credential as rotated or failed (exit 1, one line each, no
traceback), a dead target was not hammered, a hung one cost no more than its timeouts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine, func, select

from rotator.config import Settings
from rotator.domain.model import Credential, Stage
from rotator.domain.secret import Secret
from rotator.engine.options import EngineOptions
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.store import credentials as store_creds
from rotator.store.schema import audit_log, rotations
from tests.conftest import PgTarget
from tests.faults.invariants import (
    Probe,
    check_recovered,
    default_probe,
    snapshot,
)
from tests.support import doubles
from tests.support.doubles import DoubleConfig
from tests.support.faults_servers import OwnRedis, own_pg, own_redis, run_rotator_until_barrier

BATCH = 16  # credentials per batch
CONCURRENCY = 4
FAILED_LINE = re.compile(r"^failed (\S+): (.+)$")
SUMMARY = re.compile(r"^rotated (\d+), failed (\d+) \((\d+) rolled back\)")
RUN_TIMEOUT_S = 120.0  # a hang, not slowness: every batch here ends in seconds


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
        "COLUMNS": "400",  # one line per failure, however long its message
    }


def check_report(code: int, out: str, err: str, names: list[str]) -> dict[str, str]:
    """The batch's plain report: every credential rotated or failed, a failure one line
    each, exit 1 iff any failed, no traceback. Returns {failed name: its error}."""
    assert "Traceback" not in err + out, err[-4000:]
    lines = [line for line in out.splitlines() if line.strip()]
    failed = {m.group(1): m.group(2) for line in lines if (m := FAILED_LINE.match(line))}
    summary = [m for line in lines if (m := SUMMARY.match(line))]
    assert len(summary) == 1, out
    rotated, n_failed = int(summary[0].group(1)), int(summary[0].group(2))
    assert n_failed == len(failed), out
    assert set(failed) <= set(names), out
    assert rotated + n_failed == len(names), f"not every credential reported:\n{out}"
    assert code == (1 if failed else 0), (code, out, err[-2000:])
    return failed


def rotation_rows(db_url: str) -> list[dict[str, object]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(rotations)).all()]
    finally:
        engine.dispose()


def audit_actions(db_url: str, since_seq: int = 0) -> list[tuple[str, str]]:
    """(action, details JSON) of the audit entries after ``since_seq``, in order."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(audit_log.c.action, audit_log.c.details)
                .where(audit_log.c.seq > since_seq)
                .order_by(audit_log.c.seq)
            ).all()
    finally:
        engine.dispose()
    return [(str(a), str(d)) for a, d in rows]


# ------------------------------------------------------------------ 1. store PostgreSQL restart

RUN_CLI = Path(__file__).resolve().parents[1] / "support" / "run_cli.py"


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI (with the test-double connector) as an operator runs it."""
    return subprocess.run(
        [sys.executable, str(RUN_CLI), *args],
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def double_probe(cred: Credential, value: str) -> bool:
    return value in doubles.target_values(DoubleConfig(**cred.config), cred.name)


@pytest.mark.postgres
def test_store_postgres_restarted_or_stopped_mid_batch_every_credential_reported_then_recovered(
    tmp_path: Path,
) -> None:
    doubles.install()
    with own_pg() as pg:
        with psycopg.connect(pg.server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE rotator")
        settings = Settings(home=tmp_path / "home", db_url=pg.server.url("rotator"))
        cfg = {"state": str(tmp_path / "target.json"), "latency_ms": "20"}
        names = [f"app/s{i:02d}" for i in range(BATCH)]
        svc, _ = BlockingService.init(settings)
        try:
            for name in names:
                svc.add_credential(
                    name, "double", settings=cfg, policy=PolicyInput(grace="1h"),
                    value=ValueInput(generate=True),
                )  # fmt: skip
                doubles.target_add(DoubleConfig(**cfg), name, svc.get_value(name).reveal_text())
        finally:
            svc.close()
        before = snapshot(settings.db_url)
        batch = ["rotate", "--all", "--concurrency", str(CONCURRENCY)]
        hook = "tests.support.doubles:DoubleConnector.test"

        # a) `pg_ctl restart -m fast` while the batch is held mid-way: every store session
        # it holds is ended under it.
        run = run_rotator_until_barrier(cli_env(settings), batch, hook, BATCH // 2, tmp_path)
        pg.restart()
        run.release()
        code, out, err = run.finish(RUN_TIMEOUT_S)
        check_report(code, out, err, names)

        # b) stopped mid-batch, and still down when the batch ends: the rotations in flight
        # and those not started fail (each reported), the ones done are reported rotated.
        run = run_rotator_until_barrier(cli_env(settings), batch, hook, BATCH // 2, tmp_path)
        pg.stop()
        run.release()
        code, out, err = run.finish(RUN_TIMEOUT_S)
        pg.start()
        failed = check_report(code, out, err, names)
        assert failed, "the store was down for half of the batch: some rotations must fail"
        assert all("cannot reach database" in why for why in failed.values()), failed
        assert "warning revocations not processed" in out

        # Recovery as an operator runs it: the same command again, store up.
        again = run_cli(settings, *batch)
        check_report(again.returncode, again.stdout, again.stderr, names)
        assert again.returncode == 0, again.stdout + again.stderr[-2000:]
        after = check_recovered(settings, before, double_probe)
        for name in names:  # three batches: the second one's rotated half, then all of them
            assert len(after.versions[name]) >= 3, (name, after.versions[name])


# ------------------------------------------------------------ 2-4. targets stopped or hung


def admin_exec(target: PgTarget, query: sql.Composable) -> None:
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        conn.execute(query)


def add_targets(
    settings: Settings, add: Callable[[BlockingService, str, int], None], count: int = BATCH
) -> list[str]:
    """A fresh store holding ``count`` credentials tagged tier=app, made by ``add(svc, name,
    i)``."""
    names = [f"app/t{i:02d}" for i in range(count)]
    svc, _ = BlockingService.init(settings)
    try:
        for i, name in enumerate(names):
            add(svc, name, i)
    finally:
        svc.close()
    return names


def batch_with_fault(
    settings: Settings,
    names: list[str],
    hook: str,
    fault: Callable[[], None],
    workdir: Path,
) -> dict[str, str]:
    """``rotator rotate --tag tier=app`` held at the ``hook`` call half-way through the
    batch, ``fault()``, then let go: it must end, reporting every credential. Returns
    {failed name: error}."""
    args = ["rotate", "--tag", "tier=app", "--concurrency", str(CONCURRENCY)]
    call = max(1, len(names) // 2)
    run = run_rotator_until_barrier(cli_env(settings), args, hook, call, workdir)
    fault()
    run.release()
    code, out, err = run.finish(RUN_TIMEOUT_S)
    failed = check_report(code, out, err, names)
    assert failed, f"the target was down for half of the batch: some rotations must fail\n{out}"
    return failed


def recover(settings: Settings, failed: dict[str, str]) -> None:
    """Recovery as an operator runs it once the target is back: ``rotator recover`` (drives
    on, to a finish or a rollback, what the batch left), then the failed credentials that
    did not move on rotated again (one that recovery finished is in its grace now: an
    alternating one would wait for it to end before its next rotation)."""
    rec = run_cli(settings, "recover")
    assert rec.returncode == 0, rec.stdout + rec.stderr[-2000:]
    assert "Traceback" not in rec.stderr
    # No one locked out once recovery ran, before anything is rotated again: a single-mode
    # role whose candidate was set but never rolled back would refuse its CURRENT.
    svc = BlockingService.open(settings)
    try:
        for name in svc.list_credentials():
            cred = svc.show(name.name)
            assert default_probe(cred, svc.get_value(cred.name).reveal_text()) is not False, (
                f"{cred.name}: CURRENT refused by its target after `rotator recover`"
            )
    finally:
        svc.close()
    # Nor any rolled-back candidate left valid (the alternating clone or the extra Redis
    # password a set added): checked before anything rotates again and overwrites it.
    stale = stale_values_refused(settings, sorted(failed), default_probe)
    print(f"rolled-back values checked after recover: {stale}")
    versions = snapshot(settings.db_url).versions
    names = sorted(n for n in failed if versions[n][max(versions[n])][0] != Stage.CURRENT.value)
    if not names:
        return
    again = run_cli(settings, "rotate", *names, "--concurrency", str(CONCURRENCY))
    check_report(again.returncode, again.stdout, again.stderr, names)
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]


def attempts_while_down(db_url: str, since_seq: int) -> tuple[int, int]:
    """(connector calls that reached the target and failed, calls the breaker refused) in the
    audit after ``since_seq``: every retry entry carries the previous attempt's error."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(audit_log.c.action, audit_log.c.details).where(audit_log.c.seq > since_seq)
            ).all()
    finally:
        engine.dispose()
    reached = refused = 0
    for action, details in rows:
        error = str(json.loads(details).get("error") or "")
        if action == "rotation.retry" or (action in FAIL_ACTIONS and error):
            if "circuit breaker" in error:
                refused += 1
            else:
                reached += 1
    return reached, refused


FAIL_ACTIONS = frozenset({"rotation.failed", "rotation.rollback"})


def audit_seq(db_url: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.max(audit_log.c.seq))).scalar() or 0)
    finally:
        engine.dispose()


def stale_values_refused(settings: Settings, names: list[str], probe: Probe) -> int:
    """Every candidate that was rolled back (FAILED versions) logs in nowhere: the target
    does not keep accepting a value the store gave up. Returns how many were checked."""
    svc = BlockingService.open(settings)
    checked = 0
    try:
        kernel = svc.kernel
        with kernel.db.read() as conn:
            for name in names:
                cred = svc.show(name)
                for v in cred.versions:
                    if v.stage is not Stage.FAILED:
                        continue
                    sealed = store_creds.sealed_version(conn, cred.id, number=v.number)
                    assert sealed is not None
                    value = kernel.open_version(conn, sealed).reveal_text()
                    accepted = probe(cred, value)
                    assert accepted is not True, f"{name} v{v.number}: rolled back, logs in"
                    checked += 1
    finally:
        svc.close()
    return checked


@pytest.mark.postgres
def test_target_postgres_stopped_mid_batch_then_started_nothing_lost_breaker_spares_it(
    tmp_path: Path,
) -> None:
    password = "pg-admin-" + uuid.uuid4().hex
    with own_pg(password) as pg:
        target = pg.target
        settings = Settings(home=tmp_path / "home", db_url=f"sqlite:///{tmp_path}/rotator.db")

        def add(svc: BlockingService, name: str, i: int) -> None:
            if i == 0:
                svc.add_credential("pg/admin", "local", value=ValueInput(value=Secret(password)))
            role, initial = f"app_{i:02d}", "initial-" + uuid.uuid4().hex
            admin_exec(
                target,
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(initial)
                ),
            )
            cfg = {
                "host": target.host,
                "port": str(target.port),
                "role": role,
                "admin": "pg/admin",
                "connect_timeout_s": "2",
                "mode": "single" if i % 4 == 3 else "alternating",
            }
            svc.add_credential(
                name, "postgres", settings=cfg, tags={"tier": "app"},
                policy=PolicyInput(grace="1h"), value=ValueInput(value=Secret(initial)),
            )  # fmt: skip

        names = add_targets(settings, add)
        before = snapshot(settings.db_url)
        seq = audit_seq(settings.db_url)
        failed = batch_with_fault(
            settings, names, "rotator.connectors.postgres:PostgresConnector.test", pg.stop,
            tmp_path,
        )  # fmt: skip
        reached, refused = attempts_while_down(settings.db_url, seq)
        print(f"target postgres down: {len(failed)} failed, {reached} calls reached it, "
              f"{refused} refused by the breaker")  # fmt: skip
        # Not hammered: once the breaker opened, calls stopped reaching the dead target.
        assert reached <= EngineOptions().breaker_threshold + CONCURRENCY, (reached, refused)
        pg.start()
        recover(settings, failed)
        check_recovered(settings, before, default_probe)


def add_redis_batch(
    settings: Settings, server: OwnRedis, count: int = BATCH, **extra: str
) -> list[str]:
    def add(svc: BlockingService, name: str, i: int) -> None:
        cfg = {"host": "127.0.0.1", "port": str(server.port), "username": f"app{i:02d}", **extra}
        svc.add_credential(
            name, "redis", settings=cfg, tags={"tier": "app"},
            policy=PolicyInput(grace="1h"), value=ValueInput(generate=True),
        )  # fmt: skip

    return add_targets(settings, add, count)


def redis_stopped_mid_batch(
    tmp_path: Path, server: OwnRedis, count: int
) -> tuple[Settings, list[str]]:
    """A batch of ``count`` redis credentials, the target stopped (ACL saved) half-way, the
    batch's report and the breaker checked, the target started, recovery run, invariants."""
    settings = Settings(home=tmp_path / "home", db_url=f"sqlite:///{tmp_path}/rotator.db")
    names = add_redis_batch(settings, server, count)
    before = snapshot(settings.db_url)
    seq = audit_seq(settings.db_url)
    failed = batch_with_fault(
        settings, names, "rotator.connectors.redis:RedisConnector.test",
        server.acl_save_and_stop, tmp_path,
    )  # fmt: skip
    reached, refused = attempts_while_down(settings.db_url, seq)
    print(f"target redis down: {len(failed)} failed, {reached} calls reached it, "
          f"{refused} refused by the breaker")  # fmt: skip
    assert reached <= EngineOptions().breaker_threshold + CONCURRENCY, (reached, refused)
    server.start()
    recover(settings, failed)
    check_recovered(settings, before, default_probe)
    return settings, names


@pytest.mark.redis
def test_target_redis_stopped_mid_batch_then_started_nothing_lost_breaker_spares_it(
    tmp_path: Path,
) -> None:
    with own_redis() as server:
        redis_stopped_mid_batch(tmp_path, server, BATCH)


HANG_TIMEOUT_S = 0.5  # the redis connector's timeout_s for every credential of the batch


@pytest.mark.redis
def test_target_redis_hung_mid_batch_timeouts_end_every_step_then_recovered(
    tmp_path: Path,
) -> None:
    with own_redis() as server:
        settings = Settings(home=tmp_path / "home", db_url=f"sqlite:///{tmp_path}/rotator.db")
        names = add_redis_batch(settings, server, timeout_s=str(HANG_TIMEOUT_S))
        before = snapshot(settings.db_url)
        seq = audit_seq(settings.db_url)
        o = EngineOptions()
        failed = batch_with_fault(
            settings, names, "rotator.connectors.redis:RedisConnector.test", server.freeze,
            tmp_path,
        )  # fmt: skip
        # The connector's own timeout ended the calls the hang caught (each audited retry
        # carries the previous attempt's error), and the breaker stopped the rest.
        errors = [
            str(json.loads(d).get("error") or "")
            for a, d in audit_actions(settings.db_url, seq)
            if a == "rotation.retry"
        ]
        timeouts = [e for e in errors if f"did not answer within {HANG_TIMEOUT_S:g}s" in e]
        assert timeouts, errors
        assert len(errors) <= o.breaker_threshold + CONCURRENCY, errors
        # Bounded by the configured timeouts, as the engine recorded it: a rotation makes at
        # most three target steps that can meet the hang (set, test, rollback), each at most
        # retry_attempts attempts of at most two timeouts (connect, then the reply) plus the
        # backoff between them; far below the engine's own step timeout.
        backoff = sum(
            min(o.retry_initial_s * 2**k, o.retry_max_s) + o.retry_initial_s
            for k in range(o.retry_attempts - 1)
        )
        per_step = o.retry_attempts * 2 * HANG_TIMEOUT_S + backoff
        bound = 3 * per_step + 1.0  # + the store's own work
        assert bound < o.step_timeout_s
        durations = {
            str(r["credential"]): (r["finished_at"] - r["created_at"]).total_seconds()
            for r in rotation_rows(settings.db_url)
            if r["finished_at"] is not None and r["credential"] in failed
        }
        print(f"hung redis: {len(failed)} failed; rotation durations {durations}; "
              f"bound {bound:.1f}s")  # fmt: skip
        assert durations, "the rotations the hang caught recorded when they ended"
        assert max(durations.values()) <= bound, (durations, bound)
        server.thaw()
        recover(settings, failed)
        check_recovered(settings, before, default_probe)
