"""Value reads: ``get_value`` calls/s from a single client on SQLite, and that every read was
counted (``use_count``) and audited (a ``value.read`` entry).

A fresh SQLite store (rotator's own settings: WAL, ``synchronous=FULL``; key-file master
key) in a temp dir gets ``--creds`` credentials (``local``, generated values). One client,
one request at a time, reads ``--reads`` values round-robin over them (after ``--warmup``
reads, counted too); reported: reads/s and the latency distribution (goal: >= 2,000/s).
Then the service is closed and the store opened again by a new service, and the check runs
on what is stored: each credential's ``use_count`` equals its reads, each has exactly that
many ``value.read`` audit entries, and the audit chain verifies. Any mismatch fails the run
(exit 1).

Beside it, in the same run, two floors written with ``sqlite3`` and ``AESGCM`` directly
(WAL, ``synchronous=FULL``, a 32-byte value sealed with AES-256-GCM): **read only** (SELECT
the ciphertext, decrypt: a read with nothing recorded) and **a commit per read** (the same
plus ``UPDATE use_count`` and an audit INSERT with an HMAC, committed before the read
returns: the simplest durable way, bound by one WAL fsync per read), and the latter again
with ``synchronous=NORMAL`` (no fsync per commit: a committed read survives a crash of the
process, not a power cut).

    python -m bench.reads_bench [--reads 5000] [--creds 100] [--warmup 200]

Every use of rotator's service goes through the adapters at the end of bench/common.py.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import (
    CredSpec,
    Result,
    add_credentials,
    audit_actions,
    audit_chain_ok,
    close_service,
    exit_on_sigterm,
    get_value,
    open_service,
    print_machine_info,
    print_results,
    print_table,
    source_version,
    sqlite_synchronous,
    timed,
    use_count,
)

GOAL_PER_S = 2000.0
FLOOR_SCHEMA = """
CREATE TABLE cred (id INTEGER PRIMARY KEY, name TEXT UNIQUE, nonce BLOB, ct BLOB,
                   use_count INTEGER NOT NULL DEFAULT 0);
CREATE TABLE audit (seq INTEGER PRIMARY KEY, ts REAL, cred TEXT, action TEXT, mac BLOB);
"""


def floor_reads(
    path: Path, names: list[str], reads: int, record: bool, synchronous: str = "FULL"
) -> tuple[float, float]:
    """(seconds, CPU seconds) for ``reads`` reads with sqlite3 + AESGCM, no rotator code;
    ``record``: count and audit each read, committed before the read returns."""
    import hashlib
    import hmac
    import os
    import sqlite3

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, mac_key = AESGCM(AESGCM.generate_key(256)), os.urandom(32)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executescript(FLOOR_SCHEMA)
    db.execute("BEGIN")
    for n in names:
        nonce = os.urandom(12)
        db.execute(
            "INSERT INTO cred (name, nonce, ct) VALUES (?, ?, ?)",
            (n, nonce, key.encrypt(nonce, os.urandom(32), n.encode())),
        )
    db.execute("COMMIT")
    prev = b""
    with timed() as t:
        for i in range(reads):
            name = names[i % len(names)]
            if record:
                db.execute("BEGIN IMMEDIATE")
            cid, nonce, ct = db.execute(
                "SELECT id, nonce, ct FROM cred WHERE name = ?", (name,)
            ).fetchone()
            key.decrypt(nonce, ct, name.encode())
            if record:
                db.execute("UPDATE cred SET use_count = use_count + 1 WHERE id = ?", (cid,))
                ts = time.time()
                prev = hmac.new(mac_key, prev + f"{ts}|{name}|value.read".encode(), hashlib.sha256)
                prev = prev.digest()
                db.execute(
                    "INSERT INTO audit (ts, cred, action, mac) VALUES (?, ?, 'value.read', ?)",
                    (ts, name, prev),
                )
                db.execute("COMMIT")
    db.close()
    return t.seconds, t.cpu_seconds


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def run(args: argparse.Namespace, home: Path) -> int:
    names = [f"read/c{i:04d}" for i in range(args.creds)]
    svc = open_service(home)
    info = {
        "rotator source": source_version(),
        "store": f"SQLite in a temp dir, synchronous={sqlite_synchronous(svc)}",
        "credentials": f"{args.creds} local, generated values",
    }
    reads: Counter[str] = Counter()
    lat_ms: list[float] = []
    try:
        await add_credentials(svc, [CredSpec(n, "local") for n in names])
        for i in range(args.warmup):
            name = names[i % len(names)]
            await get_value(svc, name)
            reads[name] += 1
        print(f"reads: {args.reads:,} get_value calls, one client ...", flush=True)
        with timed() as t:
            for i in range(args.reads):
                name = names[i % len(names)]
                t0 = time.perf_counter()
                await get_value(svc, name)
                lat_ms.append((time.perf_counter() - t0) * 1000)
                reads[name] += 1
    finally:
        close_service(svc)
    print("floors: sqlite3 + AESGCM ...", flush=True)
    floor_ro = floor_reads(home / "floor-ro.db", names, args.reads, record=False)
    floor_rec = floor_reads(home / "floor-rec.db", names, args.reads, record=True)
    floor_normal = floor_reads(
        home / "floor-normal.db", names, args.reads, record=True, synchronous="NORMAL"
    )

    # The check, on what a new service finds in the store.
    svc = open_service(home, init=False)
    try:
        counted = {n: await use_count(svc, n) for n in names}
        audited = {n: (await audit_actions(svc, n)).count("value.read") for n in names}
        chain_ok = await audit_chain_ok(svc)
    finally:
        close_service(svc)
    total = sum(reads.values())
    wrong_count = [n for n in names if counted[n] != reads[n]]
    wrong_audit = [n for n in names if audited[n] != reads[n]]
    ok = not wrong_count and not wrong_audit and chain_ok

    rate = args.reads / t.seconds
    verdict = "meets" if rate >= GOAL_PER_S else "MISSES"
    print_table("reads bench: settings", ["item", "value"], list(info.items()))
    print_results(
        "reads bench",
        [
            Result(
                "get_value, one client",
                args.reads,
                t.seconds,
                unit="reads",
                cpu_seconds=t.cpu_seconds,
                note=f"p50 {pct(lat_ms, 50):.2f} ms, p99 {pct(lat_ms, 99):.2f} ms; "
                f"{verdict} goal >= {GOAL_PER_S:,.0f}/s",
            ),
            Result(
                "floor: sqlite3 SELECT + AES-GCM open, nothing recorded",
                args.reads,
                floor_ro[0],
                unit="reads",
                cpu_seconds=floor_ro[1],
            ),
            Result(
                "floor: + UPDATE use_count + audit INSERT, a commit per read",
                args.reads,
                floor_rec[0],
                unit="reads",
                cpu_seconds=floor_rec[1],
                note="one WAL fsync per read (synchronous=FULL)",
            ),
            Result(
                "floor: the same with synchronous=NORMAL",
                args.reads,
                floor_normal[0],
                unit="reads",
                cpu_seconds=floor_normal[1],
                note="no fsync per commit: survives a process crash, not a power cut",
            ),
            Result(
                "rotator / floor with a commit per read",
                value=rate / (args.reads / floor_rec[0]),
                unit="x",
            ),
        ],
    )
    print_table(
        "reads bench: every read counted and audited (checked after reopening the store)",
        ["check", "result"],
        [
            ("reads made (incl. warm-up)", f"{total:,}"),
            ("sum of use_count", f"{sum(counted.values()):,}"),
            ("value.read audit entries", f"{sum(audited.values()):,}"),
            (
                "use_count == reads, per credential",
                "ok" if not wrong_count else f"WRONG for {len(wrong_count)}, e.g. {wrong_count[0]}",
            ),
            (
                "value.read entries == reads, per credential",
                "ok" if not wrong_audit else f"WRONG for {len(wrong_audit)}, e.g. {wrong_audit[0]}",
            ),
            ("audit chain verifies", "ok" if chain_ok else "BROKEN"),
        ],
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--reads", type=int, default=5000, help="timed get_value calls")
    ap.add_argument("--creds", type=int, default=100, help="credentials read round-robin")
    ap.add_argument("--warmup", type=int, default=200, help="untimed reads first")
    ap.add_argument("--no-machine", action="store_true", help="do not print machine info")
    args = ap.parse_args(argv)
    exit_on_sigterm()
    if not args.no_machine:
        print_machine_info()
    home = Path(tempfile.mkdtemp(prefix="rotator-bench-reads-"))
    try:
        return asyncio.run(run(args, home))
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
