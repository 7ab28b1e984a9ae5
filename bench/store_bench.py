"""Store throughput and latency with many credentials, on SQLite and/or PostgreSQL 15.

Fill (``--n`` credentials, each with two tags and one sealed 1 KiB CURRENT version):

* **bulk**: ``n - service_n - rowfill_n`` rows written straight to the store tables with
  ``executemany`` in transactions of ``--batch`` rows. Each value is still sealed with
  ``rotator.crypto.seal`` and every row gets a properly chained ``credential.add`` audit
  entry, but there is no name/config validation, no duplicate check and no re-read.
* **store functions, per row**: ``rowfill_n`` rows through ``rotator.store.credentials`` /
  ``rotator.audit.append`` one call per statement, all in one big transaction (what the
  service does per credential, minus validation and re-read, amortising the commit).
* **service**: the last ``service_n`` rows through ``RotatorService.add_credential`` with a
  value: the real path (validation, encryption, audit, one commit per credential).

Then: ``get_value`` and ``show`` on random names, list by tag, the due query
(``list_credentials(due=True)``) with its query plan, a full ``list_credentials()``, a full
audit-chain verify, and peak RSS.

    python -m bench.store_bench --n 100000 --db both
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, event, func, insert, select, text, update

from bench.common import (
    CredSpec,
    Result,
    ThrowawayPostgres,
    add_credential_blocking,
    audit_keyring,
    audit_verify_blocking,
    close_service,
    current_rss_mib,
    exit_on_sigterm,
    get_value_blocking,
    list_credentials_blocking,
    master_keyring,
    open_service,
    peak_rss_mib,
    print_comparison,
    print_machine_info,
    print_results,
    print_table,
    repeat_ms,
    restamp,
    rss_note,
    run_per_database,
    show_blocking,
    source_version,
    sql_engine,
    stage_key,
    store_database,
    store_dialect,
    timed,
)
from rotator import audit, crypto
from rotator.audit.chain import AuditEntry, entry_mac, head_message
from rotator.audit.log import format_ts
from rotator.domain.model import DEFAULT_TENANT, Stage
from rotator.domain.policy import RotationPolicy
from rotator.domain.secret import Secret
from rotator.kernel import integrity
from rotator.store import credentials as store_creds
from rotator.store import db as store_db
from rotator.store import keys as store_keys
from rotator.store.schema import audit_head, audit_log, credential_tags, credentials, versions

ROOT = Path(__file__).resolve().parent.parent
PLAN_KEY = "due query plan"
VALUE_BYTES = 1024
TEAMS = 100
ENVS = ("prod", "staging", "dev")
EVERY = timedelta(days=30)


# ------------------------------------------------------------------------- data shape


def cred_name(i: int) -> str:
    return f"app{i % 50:02d}/svc-{i:06d}"


def cred_tags(i: int) -> dict[str, str]:
    return {"team": f"team{i % TEAMS:02d}", "env": ENVS[i % 3]}


def cred_policy(i: int) -> RotationPolicy:
    """Nine in ten rotate every 30 days; one in ten is on demand (no due time)."""
    return RotationPolicy() if i % 10 == 9 else RotationPolicy(every=EVERY)


def cred_next(i: int, pol: RotationPolicy, now: datetime) -> datetime | None:
    """Bulk rows only: due times spread over the coming 30 days (as in a store that has been
    rotating for a while), except one in a hundred that is up to a week overdue, so the due
    query returns ~1% of them.
    """
    if pol.every is None:
        return None
    spread = (i * 7919) % int(pol.every.total_seconds())
    if i % 100 == 0:
        return now - timedelta(seconds=60 + spread % (7 * 86400))
    return now + timedelta(seconds=60 + spread)


def new_value() -> Secret:
    return Secret(os.urandom(VALUE_BYTES))


# ------------------------------------------------------------------------------ fills


def _tenant_and_key(svc: Any) -> tuple[int, crypto.DataKey]:
    with store_database(svc).read() as conn:
        tenant = store_keys.get_tenant(conn, DEFAULT_TENANT)
        assert tenant is not None
        found = store_keys.latest_data_key(conn, tenant.id)
        assert found is not None
    dk_id, wrapped, by = found
    return tenant.id, crypto.unwrap(master_keyring(svc).get(by), wrapped, tenant.id, dk_id)


def bulk_fill(svc: Any, start: int, count: int, batch: int) -> None:
    """executemany straight into the tables; values sealed, audit chain kept valid."""
    tenant_id, dk = _tenant_and_key(svc)
    ins_creds = insert(credentials).returning(credentials.c.id, sort_by_parameter_order=True)
    for lo in range(start, start + count, batch):
        idx = range(lo, min(lo + batch, start + count))
        now = datetime.now(UTC)
        pols = {i: cred_policy(i) for i in idx}
        with store_database(svc).write() as conn:
            rows = [
                {
                    "tenant_id": tenant_id,
                    "name": cred_name(i),
                    "connector": "local",
                    "config": {},
                    "policy": pols[i].to_json(),
                    "created_at": now,
                    "updated_at": now,
                    "next_rotation_at": cred_next(i, pols[i], now),
                    "last_rotated_at": now,
                    "use_count": 0,
                }
                for i in idx
            ]
            ids = list(conn.execute(ins_creds, rows).scalars())
            assert len(ids) == len(rows)
            conn.execute(
                insert(credential_tags),
                [
                    {"credential_id": cid, "key": k, "value": v}
                    for i, cid in zip(idx, ids, strict=True)
                    for k, v in cred_tags(i).items()
                ],
            )
            conn.execute(
                insert(versions),
                [
                    {
                        "credential_id": cid,
                        "number": 1,
                        "stage": Stage.CURRENT.value,
                        "ciphertext": crypto.seal(dk, new_value(), cid, 1),
                        "data_key_id": dk.id,
                        "created_at": now,
                        "staged_at": now,
                        "expires_at": None,
                    }
                    for cid in ids
                ],
            )
            _, mac_key = stage_key(svc, conn, dk.id)
            conn.execute(
                update(credentials)
                .where(credentials.c.id == bindparam("b_id"))
                .values(stage_mac=bindparam("b_mac")),
                [
                    {
                        "b_id": cid,
                        "b_mac": f"{dk.id}:"
                        + mac_key.mac(
                            integrity.stage_message(
                                store_creds.StageMap(
                                    cid,
                                    tenant_id,
                                    cred_name(i),
                                    ((1, "CURRENT"),),
                                    None,
                                    connector="local",
                                    config={},
                                    sinks=[],  # the column's default
                                )
                            )
                        ),
                    }
                    for i, cid in zip(idx, ids, strict=True)
                ],
            )
            head = conn.execute(
                select(audit_head.c.seq, audit_head.c.hash, audit_head.c.key_id)
                .where(audit_head.c.id == 1)
                .with_for_update()
            ).one()
            seq, prev = head.seq, head.hash
            audit_key = audit_keyring(svc).get(head.key_id)
            entries = []
            ts = format_ts(now)
            for i in idx:
                seq += 1
                details = {
                    "connector": "local",
                    "tags": cred_tags(i),
                    "policy": pols[i].to_json(),
                    "version": 1,
                }
                e = AuditEntry(
                    seq,
                    ts,
                    DEFAULT_TENANT,
                    "bench",
                    "credential.add",
                    cred_name(i),
                    None,
                    details,
                    prev,
                    key_id=audit_key.id,
                )
                prev = entry_mac(audit_key, e)
                entries.append(
                    {
                        "seq": seq,
                        "ts": ts,
                        "tenant": DEFAULT_TENANT,
                        "actor": "bench",
                        "action": "credential.add",
                        "credential": e.credential,
                        "rotation_id": None,
                        "details": json.dumps(details, sort_keys=True),
                        "prev_hash": e.prev_hash,
                        "hash": prev,
                        "key_id": audit_key.id,
                    }
                )
            conn.execute(insert(audit_log), entries)
            conn.execute(
                update(audit_head)
                .where(audit_head.c.id == 1)
                .values(
                    seq=seq, hash=prev, mac=audit_key.mac(head_message(seq, prev, audit_key.id))
                )
            )


def rowfill(svc: Any, start: int, count: int, batch: int) -> None:
    """The store functions one statement at a time, like the service, in big transactions."""
    tenant_id, dk = _tenant_and_key(svc)
    for lo in range(start, start + count, batch):
        with store_database(svc).write() as conn:
            for i in range(lo, min(lo + batch, start + count)):
                now = datetime.now(UTC)
                name, pol = cred_name(i), cred_policy(i)
                assert store_creds.credential_id(conn, tenant_id, name) is None
                cid = store_creds.insert_credential(
                    conn,
                    tenant_id=tenant_id,
                    name=name,
                    connector="local",
                    config={},
                    policy=pol,
                    tags=cred_tags(i),
                    now=now,
                    next_rotation_at=None if pol.every is None else now + pol.every,
                )
                store_creds.insert_version(
                    conn,
                    credential_id=cid,
                    number=1,
                    stage=Stage.CURRENT,
                    ciphertext=crypto.seal(dk, new_value(), cid, 1),
                    data_key_id=dk.id,
                    now=now,
                )
                store_creds.update_credential(conn, cid, now=now, last_rotated_at=now)
                restamp(svc, conn, cid)
                audit.append(
                    conn,
                    now=now,
                    tenant=DEFAULT_TENANT,
                    actor="bench",
                    action="credential.add",
                    credential=name,
                    details={
                        "connector": "local",
                        "tags": cred_tags(i),
                        "policy": pol.to_json(),
                        "version": 1,
                    },
                    keys=audit_keyring(svc),
                )


def service_fill(svc: Any, start: int, count: int) -> list[float]:
    """RotatorService.add_credential per credential; returns per-call seconds."""
    lat: list[float] = []
    for i in range(start, start + count):
        pol = cred_policy(i)
        spec = CredSpec(
            cred_name(i),
            "local",
            tags=cred_tags(i),
            value=new_value().reveal(),
            every="30d" if pol.every is not None else None,
        )
        with timed() as t:
            add_credential_blocking(svc, spec)
        lat.append(t.seconds)
    return lat


# --------------------------------------------------------------------------- helpers


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def lat_note(lat: list[float]) -> str:
    ms = [x * 1000 for x in lat]
    return f"p50 {pct(ms, 50):.2f} ms, p99 {pct(ms, 99):.2f} ms"


def capture_sql(svc: Any, fn: Callable[[], Any]) -> list[tuple[str, Any]]:
    """Statements (and parameters) ``fn`` sends to the driver."""
    seen: list[tuple[str, Any]] = []

    def listener(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        seen.append((statement, params))

    event.listen(sql_engine(svc), "before_cursor_execute", listener)
    try:
        fn()
    finally:
        event.remove(sql_engine(svc), "before_cursor_execute", listener)
    return seen


def explain(svc: Any, statement: str, params: Any) -> list[str]:
    prefix = "EXPLAIN QUERY PLAN " if store_dialect(svc) == "sqlite" else "EXPLAIN "
    with store_database(svc).read() as conn:
        rows = conn.exec_driver_sql(prefix + statement, params).all()
    if store_dialect(svc) == "sqlite":
        return [str(r[-1]) for r in rows]
    return [str(r[0]) for r in rows]


def db_size_mib(svc: Any, sqlite_path: Path | None) -> float:
    if sqlite_path is not None:
        files = [sqlite_path, Path(f"{sqlite_path}-wal")]
        return sum(f.stat().st_size for f in files if f.exists()) / 2**20
    with store_database(svc).read() as conn:
        return (
            float(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
            / 2**20
        )


def profile_service(svc: Any, n: int, rng: random.Random, top: int) -> None:
    """cProfile 500 adds, 1,000 get_value, 1,000 show and 3 due queries; print hotspots."""
    import cProfile
    import pstats

    calls: list[tuple[str, Callable[[], Any]]] = [
        ("add_credential x500", lambda: service_fill(svc, n + 1_000_000, 500)),
        (
            "get_value x1000",
            lambda: [get_value_blocking(svc, cred_name(rng.randrange(n))) for _ in range(1000)],
        ),
        (
            "show x1000",
            lambda: [show_blocking(svc, cred_name(rng.randrange(n))) for _ in range(1000)],
        ),
        (
            "list_credentials(due=True) x3",
            lambda: [list_credentials_blocking(svc, due=True) for _ in range(3)],
        ),
    ]
    for label, fn in calls:
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        print(f"\n--- profile: {store_dialect(svc)} {label} ---")
        stats = pstats.Stats(prof, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(r"rotator/", top)


# ------------------------------------------------------------------------------- run


def run_db(kind: str, args: argparse.Namespace) -> tuple[list[Result], dict[str, str]]:
    n = args.n
    service_n = min(args.service_n, n)
    rowfill_n = min(args.rowfill_n, n - service_n)
    bulk_n = n - service_n - rowfill_n
    results: list[Result] = []
    info: dict[str, str] = {"rotator source (git)": source_version(), "credentials": f"{n:,}"}
    rng = random.Random(args.seed)
    pg: ThrowawayPostgres | None = None
    home = Path(tempfile.mkdtemp(prefix=f"rotator-bench-{kind}-"))
    sqlite_path: Path | None = None
    svc: Any = None
    try:
        if kind == "sqlite":
            sqlite_path = home / "rotator.db"
            url = f"sqlite:///{sqlite_path}"
        else:
            extra = dict(kv.split("=", 1) for kv in args.pg_set)
            pg = ThrowawayPostgres(extra_settings=extra).start()
            url = pg.create_database("rotator_bench")
            info.update(pg.settings("fsync", "synchronous_commit", "shared_buffers"))
        with timed() as t:
            svc = open_service(home, url)
        results.append(Result("init (schema + master key)", value=t.seconds * 1000, unit="ms"))
        if kind == "sqlite":
            with store_database(svc).read() as conn:
                info["journal_mode"] = str(conn.exec_driver_sql("PRAGMA journal_mode").scalar())
                sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
                info["synchronous"] = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
                    int(sync or 0), str(sync)
                )

        print(
            f"[{kind}] fill: bulk {bulk_n:,} + store-fn {rowfill_n:,} + service {service_n:,}",
            flush=True,
        )
        if bulk_n:
            with timed() as t:
                bulk_fill(svc, 0, bulk_n, args.batch)
            results.append(
                Result(
                    "insert: bulk executemany (fill)",
                    bulk_n,
                    t.seconds,
                    cpu_seconds=t.cpu_seconds,
                    unit="creds",
                    note=f"{args.batch:,}/txn",
                )
            )
        if rowfill_n:
            with timed() as t:
                rowfill(svc, bulk_n, rowfill_n, args.batch)
            results.append(
                Result(
                    "insert: store functions per row",
                    rowfill_n,
                    t.seconds,
                    cpu_seconds=t.cpu_seconds,
                    unit="creds",
                    note=f"{args.batch:,}/txn",
                )
            )
        if service_n:
            with timed() as t:
                lat = service_fill(svc, bulk_n + rowfill_n, service_n)
            results.append(
                Result(
                    "insert: RotatorService.add_credential",
                    service_n,
                    t.seconds,
                    cpu_seconds=t.cpu_seconds,
                    unit="creds",
                    note=f"1 txn each; {lat_note(lat)}",
                )
            )
        with store_database(svc).read() as conn:
            count = conn.execute(select(func.count()).select_from(credentials)).scalar_one()
        assert count == n, (count, n)
        if pg is not None:
            # Autovacuum would do this eventually; without it the planner has no row counts.
            with store_database(svc).write() as conn:
                conn.exec_driver_sql("ANALYZE")
        results.append(
            Result("peak RSS after fill", value=peak_rss_mib(), unit="MiB", note=rss_note())
        )
        print(f"[{kind}] reads", flush=True)

        names = [cred_name(rng.randrange(n)) for _ in range(args.gets)]
        lat = []
        with timed() as t:
            for name in names:
                with timed() as one:
                    v = get_value_blocking(svc, name)
                lat.append(one.seconds)
                assert len(v) == VALUE_BYTES
        results.append(
            Result(
                "get_value (random names)",
                len(names),
                t.seconds,
                cpu_seconds=t.cpu_seconds,
                unit="gets",
                note=f"1 write txn each (use count + audit); {lat_note(lat)}",
            )
        )

        names = [cred_name(rng.randrange(n)) for _ in range(args.shows)]
        lat = []
        with timed() as t:
            for name in names:
                with timed() as one:
                    show_blocking(svc, name)
                lat.append(one.seconds)
        results.append(
            Result(
                "show (random names)",
                len(names),
                t.seconds,
                cpu_seconds=t.cpu_seconds,
                unit="shows",
                note=f"3 queries each; {lat_note(lat)}",
            )
        )

        for label, tags in (
            ("list by tag team=team07", {"team": "team07"}),
            ("list by tags team=team07,env=prod", {"team": "team07", "env": "prod"}),
        ):
            med, lo, found = repeat_ms(
                functools.partial(list_credentials_blocking, svc, tags=tags), args.repeat
            )
            results.append(
                Result(
                    label,
                    value=med,
                    unit="ms",
                    note=f"{len(found):,} rows; median of {args.repeat}, min {lo:.1f} ms",
                )
            )

        med, lo, due = repeat_ms(lambda: list_credentials_blocking(svc, due=True), args.repeat)
        results.append(
            Result(
                "list_credentials(due=True)",
                value=med,
                unit="ms",
                note=f"{len(due):,} due rows; median of {args.repeat}, min {lo:.1f} ms",
            )
        )
        stmts = capture_sql(svc, lambda: list_credentials_blocking(svc, due=True))
        main_q = next(s for s in stmts if "next_rotation_at <=" in s[0])
        plan = explain(svc, *main_q)
        uses = any("ix_credentials_next_rotation_at" in line for line in plan)
        info["due query: statements per call"] = str(len(stmts))
        info["due query: uses ix_credentials_next_rotation_at"] = "yes" if uses else "NO"
        info[PLAN_KEY] = "\n".join(plan)

        print(f"[{kind}] full list + audit verify", flush=True)
        rss0 = current_rss_mib()
        with timed() as t:
            everything = list_credentials_blocking(svc)
        rss1 = current_rss_mib()
        results.append(
            Result(
                "list_credentials() all",
                value=t.seconds * 1000,
                unit="ms",
                note=f"{len(everything):,} rows with versions; RSS +{rss1 - rss0:.0f} MiB",
            )
        )
        del everything
        with timed() as t:
            vr = audit_verify_blocking(svc)
        assert vr.ok, vr
        results.append(
            Result(
                "audit verify (whole chain)",
                value=t.seconds * 1000,
                unit="ms",
                note=f"{vr.entries:,} entries",
            )
        )
        results.append(Result("database size", value=db_size_mib(svc, sqlite_path), unit="MiB"))
        results.append(
            Result("peak RSS (whole run)", value=peak_rss_mib(), unit="MiB", note=rss_note())
        )
        if args.profile:
            profile_service(svc, n, rng, args.profile_top)
        return results, info
    finally:
        if svc is not None:
            close_service(svc)
        if pg is not None:
            pg.stop()
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="credentials in the store")
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument(
        "--service-n",
        type=int,
        default=10_000,
        help="how many of the n go through RotatorService.add_credential",
    )
    ap.add_argument(
        "--rowfill-n",
        type=int,
        default=2_000,
        help="how many go through the store functions one row at a time",
    )
    ap.add_argument("--batch", type=int, default=5_000, help="rows per transaction in fills")
    ap.add_argument("--gets", type=int, default=5_000)
    ap.add_argument("--shows", type=int, default=5_000)
    ap.add_argument("--repeat", type=int, default=5, help="runs of each list/due query")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--pg-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra postgresql.conf setting, e.g. synchronous_commit=off",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="after the measurements, cProfile the service calls and print hotspots",
    )
    ap.add_argument("--profile-top", type=int, default=15)
    ap.add_argument("--json", type=Path, help="write results as JSON here")
    ap.add_argument("--no-machine", action="store_true", help="do not print machine info")
    ap.add_argument(
        "--sqlite-synchronous",
        choices=["NORMAL", "FULL"],
        default="FULL",
        help="SQLite PRAGMA synchronous for the store (rotator uses FULL; NORMAL to compare)",
    )
    args = ap.parse_args(argv)
    store_db.SQLITE_SYNCHRONOUS = args.sqlite_synchronous
    exit_on_sigterm()
    if not args.no_machine:
        print_machine_info()

    if args.db != "both":
        results, info = run_db(args.db, args)
        plan = info.pop(PLAN_KEY, "")
        print_table(f"{args.db} settings", ["item", "value"], list(info.items()))
        print(f"\n{PLAN_KEY} ({args.db}):\n" + "\n".join(f"    {ln}" for ln in plan.splitlines()))
        print_results(f"store: {args.db}, {args.n:,} credentials", results)
        if args.json:
            args.json.write_text(
                json.dumps({"results": [r.to_json() for r in results], "info": info}, indent=1)
            )
        return 0

    runs = run_per_database(
        "bench.store_bench", list(argv if argv is not None else sys.argv[1:]), ROOT
    )
    if isinstance(runs, int):
        return runs
    columns = {k: [Result.from_json(r) for r in d["results"]] for k, d in runs.items()}
    sources = {k: d["info"].get("rotator source (git)", "?") for k, d in runs.items()}
    print_comparison(f"store: {args.n:,} credentials, SQLite vs PostgreSQL", columns)
    if len(set(sources.values())) > 1:
        print(f"\nWARNING: the source changed between runs: {sources}")
    if args.json:
        args.json.write_text(
            json.dumps({k: [r.to_json() for r in v] for k, v in columns.items()}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
