"""The scheduler's tick at scale: time to find and claim due work, flat as the store grows,
and a worker's RSS.

A store is filled with plain credential rows (``COPY`` on PostgreSQL, ``executemany`` on
SQLite): 1% due (``next_rotation_at`` an hour ago), the rest spread over the next 30 days.
They have no versions and no values: a claim reads and writes only ``credentials`` and
``credential_claims``, so values would change nothing here. A **tick** is what the worker's
loop does each time it wakes to schedule: count the overdue work up to the rate's burst + 1
(is there more than the rate allows?), claim ``--batch`` due credentials in one write
transaction (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, then the lease and the
claim rows), and read the next due time and next revocation for its sleep. Measured at the
small size, then again after the store has grown 10x (same 1% due): median and p95 ms per
tick and the ratio large/small (goal: < 50 ms and flat). The rows a tick claimed are made
due again after it (untimed), so every tick finds as much due work.

**RSS**: a real ``rotator worker`` runs for ``--worker-s`` seconds on the large store; its
peak RSS (VmHWM) is read before it is stopped (goal < 300 MB). Its claims' rotations fail
at once (the rows have no values) and are postponed: it claims and releases all the while.

    python -m bench.scheduler_bench [--db postgresql|sqlite|both] [--pg-sizes 100000,1000000]
                                    [--sqlite-sizes 10000,100000] [--ticks 25] [--batch 32]
                                    [--worker-s 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    ThrowawayPostgres,
    close_service,
    open_service,
    print_machine_info,
    print_table,
)

DUE_SHARE = 0.01
# The worker counts due work up to its rate's burst + 1 on each tick (the default 600/m: 600),
# and in full only when a catch-up begins (see Scheduler._overdue).
COUNT_BURST = 600


def _rows(start: int, end: int, now: datetime) -> Any:
    """(name, next_rotation_at) of rows ``start``..``end``: 1 in 100 due an hour ago."""
    for i in range(start, end):
        if i % 100 == 0:
            when = now - timedelta(hours=1)
        else:
            when = now + timedelta(seconds=60 + (i * 7919) % (30 * 86400))
        yield f"bench/c{i:08d}", when


def fill_pg(dsn: str, tenant_id: int, start: int, end: int, now: datetime) -> None:
    import psycopg

    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY credentials (tenant_id, name, connector, config, policy, created_at, "
            "updated_at, next_rotation_at, use_count, sinks) FROM STDIN"
        ) as copy:
            for name, when in _rows(start, end, now):
                copy.write_row((tenant_id, name, "local", "{}", "{}", now, now, when, 0, "[]"))
        conn.execute("ANALYZE credentials")


def _sqlite_ts(d: datetime) -> str:
    return d.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def fill_sqlite(path: Path, tenant_id: int, start: int, end: int, now: datetime) -> None:
    conn = sqlite3.connect(path)
    try:
        ts = _sqlite_ts(now)
        conn.executemany(
            "INSERT INTO credentials (tenant_id, name, connector, config, policy, created_at, "
            "updated_at, next_rotation_at, use_count, sinks) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                (tenant_id, name, "local", "{}", "{}", ts, ts, _sqlite_ts(when), 0, "[]")
                for name, when in _rows(start, end, now)
            ),
        )
        conn.commit()
        conn.execute("ANALYZE")
    finally:
        conn.close()


def measure_ticks(svc: Any, ticks: int, batch: int) -> list[float]:
    """``ticks`` scheduler ticks through the store functions the loop uses; ms each. The
    rows claimed are made due again after each tick (untimed)."""
    from sqlalchemy import delete, update

    from rotator.store import claims as store_claims
    from rotator.store import credentials as store_creds
    from rotator.store import rotations as store_rot
    from rotator.store.schema import credential_claims, credentials

    db = svc.kernel.db
    samples: list[float] = []
    for _ in range(ticks):
        t0 = time.perf_counter()
        now = datetime.now(UTC)
        with db.read() as conn:
            store_claims.count_due(conn, now, COUNT_BURST + 1)
        with db.write() as conn:
            got = store_claims.claim_due(
                conn,
                worker="bench",
                now=now,
                lease_until=now + timedelta(seconds=30),
                limit=batch,
            )
        with db.read() as conn:
            store_rot.next_revocation_due(conn)
            store_creds.next_due_time(conn)
        samples.append((time.perf_counter() - t0) * 1000)
        assert len(got) == batch, f"only {len(got)} due rows claimed"
        with db.write() as conn:  # untimed: put them back, so every tick finds as much due
            for c in got:
                conn.execute(
                    update(credentials)
                    .where(credentials.c.id == c.credential_id)
                    .values(next_rotation_at=c.due_at)
                )
            conn.execute(delete(credential_claims))
    return samples


def worker_rss(home: Path, db_url: str, seconds: float) -> tuple[float, int]:
    """Peak RSS (MiB) of a real `rotator worker` after ``seconds``, and its exit code."""
    env = {**os.environ, "ROTATOR_HOME": str(home), "ROTATOR_DB": db_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rotator.cli.main", "worker", "--poll", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            break
        time.sleep(0.5)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return peak / 1024, proc.returncode


def run_db(kind: str, sizes: list[int], ticks: int, batch: int, worker_s: float) -> list[list[str]]:
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="rotator-sched-bench-") as tmp:
        home = Path(tmp) / "home"
        pg: ThrowawayPostgres | None = None
        if kind == "postgresql":
            pg = ThrowawayPostgres().start()
            url = pg.create_database("sched")
        else:
            url = f"sqlite:///{home / 'rotator.db'}"
        try:
            svc = open_service(home, url)
            with svc.kernel.db.read() as conn:
                from sqlalchemy import select

                from rotator.store.schema import tenants

                tenant_id = int(conn.execute(select(tenants.c.id)).scalars().first() or 1)
            filled = 0
            first_median = None
            for size in sizes:
                t0 = time.perf_counter()
                now = datetime.now(UTC)
                if pg is not None:
                    fill_pg(pg.dsn("sched"), tenant_id, filled, size, now)
                else:
                    fill_sqlite(home / "rotator.db", tenant_id, filled, size, now)
                load_s = time.perf_counter() - t0
                filled = size
                measure_ticks(svc, 3, batch)  # warm the caches and the plan
                samples = measure_ticks(svc, ticks, batch)
                med = statistics.median(samples)
                p95 = sorted(samples)[max(0, int(len(samples) * 0.95) - 1)]
                first_median = first_median or med
                rows.append(
                    [
                        kind,
                        f"{size:,}",
                        f"{int(size * DUE_SHARE):,}",
                        f"{load_s:.1f} s",
                        f"{med:.2f}",
                        f"{p95:.2f}",
                        f"{med / first_median:.2f}x",
                    ]
                )
                print(
                    f"  {kind} {size:,}: median {med:.2f} ms/tick, loaded in {load_s:.1f} s",
                    flush=True,
                )
            close_service(svc)
            rss, rc = worker_rss(home, url, worker_s)
            rows.append(
                [
                    kind,
                    f"{filled:,}",
                    "worker",
                    f"{worker_s:g} s run",
                    "",
                    "",
                    f"peak RSS {rss:.0f} MiB (rc {rc})",
                ]
            )
        finally:
            if pg is not None:
                pg.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", choices=["postgresql", "sqlite", "both"], default="both")
    p.add_argument("--pg-sizes", default="100000,1000000")
    p.add_argument("--sqlite-sizes", default="10000,100000")
    p.add_argument("--ticks", type=int, default=25)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--worker-s", type=float, default=10.0)
    a = p.parse_args(argv)
    print_machine_info()
    rows: list[list[str]] = []
    if a.db in ("sqlite", "both"):
        sizes = [int(x) for x in a.sqlite_sizes.split(",")]
        rows += run_db("sqlite", sizes, a.ticks, a.batch, a.worker_s)
    if a.db in ("postgresql", "both"):
        sizes = [int(x) for x in a.pg_sizes.split(",")]
        rows += run_db("postgresql", sizes, a.ticks, a.batch, a.worker_s)
    print_table(
        f"scheduler tick: count due + claim {a.batch} + next times (ms), 1% due",
        ["db", "credentials", "due", "load", "median ms", "p95 ms", "vs smallest"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
