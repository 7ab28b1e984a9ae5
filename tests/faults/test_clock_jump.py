"""Fault: the wall clock jumps forward and back under running ``rotator worker`` processes.

libfaketime (Debian ``faketime``; scripts/test.sh installs it) is preloaded into each worker
with its own timestamp file, which the test rewrites while the worker runs (re-read every
second); ``FAKETIME_DONT_FAKE_MONOTONIC=1`` keeps the monotonic clock true, so only the wall
clock jumps, like an NTP step (tests/support/run_cli_clock.py works around the one libfaketime
bug that setting hits). Two workers share one PostgreSQL store:

* worker A (its own UTS namespace: another host name, so no one can see whether its process
  lives) runs at the true time; its clock jumps two days forward, every credential (due
  daily) becomes due and A starts rotating them; mid-batch A is SIGKILLed;
* worker B runs a day *behind* the true time (three days behind A's last clock): the leases
  A left run out only at A's future time. B must still resume or roll back A's rotations at
  once, not after three days; then B's own clock jumps two days forward (the credentials A
  did not reach become due and rotate, each once) and back to the true time, still running
  (an operator's rotation still works).

Then the invariants (tests/faults/invariants.py); no storm (each credential rotated by the
schedule once per due time its workers' clocks passed); and the audit chain verifies although
its timestamps go back in time where B's entries follow A's.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, func, select

from rotator.config import Settings
from rotator.service import BlockingService, PolicyInput
from rotator.store.schema import audit_log, credentials, rotations, versions
from tests.conftest import PgServer, RedisServer
from tests.faults.invariants import check_recovered, snapshot, unfinished_rotations
from tests.faults.process_rig import (
    cli,
    redis_acl_cleanup,
    rotation_steps,
    rotator_env,
    seed_batch,
    wait_for,
)

# Debian's faketime package, under the machine's multiarch folder.
LIBFAKETIME = next(
    iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))),
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
)
RUN_CLI_CLOCK = Path(__file__).resolve().parents[1] / "support" / "run_cli_clock.py"


class Worker:
    """``rotator worker`` under libfaketime, its wall clock offset given by ``clock``."""

    def __init__(
        self, settings: Settings, tmp: Path, name: str, offset: str, *, other_host: bool = False
    ) -> None:
        self.name = name
        self.clock = tmp / f"clock-{name}"
        self.set_clock(offset)
        self.log = tmp / f"worker-{name}.log"
        env = rotator_env(
            settings,
            ROTATOR_LEASE_SECONDS="2",
            PGAPPNAME=f"rotator-{name}",
            LD_PRELOAD=str(LIBFAKETIME),
            FAKETIME_TIMESTAMP_FILE=str(self.clock),
            # Re-read the file every second rather than on every clock call (NO_CACHE): the
            # jump lands within a second, and the event loop is not slowed by file reads.
            FAKETIME_CACHE_DURATION="1",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
        )
        cmd = [sys.executable, str(RUN_CLI_CLOCK), "worker", "--poll", "0.2", "--concurrency", "3"]
        if other_host:
            # exec all the way down: the pid is the worker's, for the SIGKILL.
            cmd = ["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$0" "$@"', *cmd]
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )

    def set_clock(self, offset: str) -> None:
        """Move the worker's wall clock to the true time plus ``offset`` (``+2d``, ``-1d``)."""
        tmp = self.clock.with_suffix(".new")
        tmp.write_text(offset + "\n")
        tmp.replace(self.clock)  # atomic: libfaketime never reads half a file

    def connected(self, pg: PgServer) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (f"rotator-{self.name}",),
            ).fetchone()
        return row is not None and row[0] > 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


@pytest.fixture
def redis_users(redis_server: RedisServer) -> Iterator[list[str]]:
    with redis_acl_cleanup(redis_server) as made:
        yield made


def _requirements() -> None:
    if not LIBFAKETIME.is_file():
        pytest.skip(f"{LIBFAKETIME} missing: install the 'faketime' package (scripts/test.sh)")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a worker under another host name needs root and unshare (CI runs as root)")


def _newest(db_url: str) -> dict[str, int]:
    """Each credential's newest version number, in one query."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(credentials.c.name, func.max(versions.c.number))
                .join(versions, versions.c.credential_id == credentials.c.id)
                .group_by(credentials.c.name)
            ).all()
    finally:
        engine.dispose()
    return {name: n for name, n in rows}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_clock_jumps_forward_and_back_rotate_each_due_credential_once_and_never_block_recovery(
    db_url: str,
    tmp_path: Path,
    pg_server: PgServer,
    redis_server: RedisServer,
    redis_users: list[str],
    workers: list[Worker],
) -> None:
    _requirements()
    settings = Settings(home=tmp_path / "home", db_url=db_url)
    svc, _ = BlockingService.init(settings)
    batch = seed_batch(
        svc, settings, tmp_path, n_doubles=10, latency_ms=150,
        redis_server=redis_server, redis_users=redis_users, n_redis=1,
        policy=PolicyInput(every="1d", grace="1h"),
    )  # fmt: skip
    svc.close()
    before = snapshot(settings.db_url)

    # Worker A, on "another host", at the true time: nothing is due.
    a = Worker(settings, tmp_path, "clock-a", "+0", other_host=True)
    workers.append(a)
    wait_for("worker A to reach the store", lambda: a.connected(pg_server))
    a.set_clock("+2d")  # every credential is due now, once
    wait_for(
        "worker A to be mid-batch",
        lambda: (
            (s := rotation_steps(db_url)).get("finished", 0) >= 3
            and sum(n for k, n in s.items() if k not in {"finished", "rolled_back", "failed"})
        ),
    )
    os.kill(a.proc.pid, signal.SIGKILL)
    assert a.proc.wait(timeout=30) == -signal.SIGKILL
    in_flight = unfinished_rotations(db_url)
    assert in_flight
    engine = create_engine(db_url)
    with engine.connect() as conn:
        leases = conn.execute(
            select(rotations.c.lease_expires_at).where(rotations.c.finished_at.is_(None))
        ).scalars()
        # A's leases end at A's future time: two days after the true time.
        assert all(lease > datetime.now(UTC) + timedelta(days=1) for lease in leases)

    # Worker B, a day behind the true time: it must not wait three days for A's leases.
    b = Worker(settings, tmp_path, "clock-b", "-1d")
    workers.append(b)
    wait_for(
        "worker B to resume or roll back A's rotations", lambda: not unfinished_rotations(db_url)
    )
    check_recovered(settings, before, batch.probe)

    # B's clock jumps forward: what A did not reach is due and rotates, each once.
    b.set_clock("+2d")
    wait_for(
        "every credential to be rotated by the schedule",
        lambda: (
            not unfinished_rotations(db_url) and all(_newest(db_url)[n] >= 2 for n in batch.names)
        ),
    )
    # And back to the true time, still running: an operator's rotation works.
    b.set_clock("+0")
    # libfaketime re-reads the clock file once a second inside B (FAKETIME_CACHE_DURATION):
    # until then B still lives 2 days ahead, sees the operator's fresh lease as run out and
    # rightly takes the rotation over. No clock of B's can be passed in: wait the cache out.
    time.sleep(2.5)
    manual = cli(settings, "rotate", batch.doubles[0], "--json")
    assert manual.returncode == 0, manual.stdout + manual.stderr
    assert json.loads(manual.stdout)["rotated"] == [batch.doubles[0]]
    b.stop()
    after = check_recovered(settings, before, batch.probe)
    assert after.names() == set(before.names())

    # No storm: each credential was rotated by the schedule once per due time it saw. Once by
    # A at its +2d; a rotation A left mid-way ended (resumed or rolled back) at B's -1d, so it
    # was due again at B's +2d: at most twice, and twice only for those.
    with engine.connect() as conn:
        rows = conn.execute(
            select(rotations.c.credential, rotations.c.step).where(
                rotations.c.trigger == "schedule"
            )
        ).all()
    runs = {name: sum(1 for c, _ in rows if c == name) for name in batch.names}
    resumed = {c for c, _ in in_flight}
    for name, n in runs.items():
        assert 1 <= n <= (2 if name in resumed else 1), f"{name}: {n} scheduled rotations"

    # The audit chain verifies (check_recovered); its timestamps follow each writer's clock,
    # so they go back in time where B's entries follow A's.
    with engine.connect() as conn:
        texts = conn.execute(select(audit_log.c.ts).order_by(audit_log.c.seq)).scalars()
        stamps = [datetime.fromisoformat(t) for t in texts]
    engine.dispose()
    backwards = sum(1 for x, y in itertools.pairwise(stamps) if y < x)
    assert backwards >= 1, "the audit shows no clock jump"
    for w in (a, b):
        assert "Traceback" not in w.log.read_text(), w.log.read_text()
