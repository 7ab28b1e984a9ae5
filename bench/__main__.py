"""Run every benchmark: ``python -m bench [store_bench flags]`` (see bench/README.md).

Crypto first (seconds), then the store benchmark, whose flags (``--n``, ``--db``, ...) are
passed through unchanged, then the engine benchmark (``--engine-n`` rotations per batch,
``--engine-latency-ms`` per target call; it gets ``--db`` too), then the postgres connector
benchmark (``--pg-roles`` rotations per variant against a password-checking PostgreSQL 15),
then the reads benchmark (``--reads`` get_value calls) and the CLI benchmark (``--cli-n``
credentials rotated by ``rotator rotate --all``, then ``rotator credential get`` 20 times), then
the REST API benchmark (GET value and POST usage over HTTP, SQLite and PostgreSQL), then, with
``--soak-minutes`` > 0, the soak (``bench.soak``: ``rotator serve`` under rotation and reads
for that many minutes per database, RSS / fds / read latency over time).
"""

from __future__ import annotations

import argparse
import sys

from bench import (
    api_bench,
    cli_bench,
    crypto_bench,
    engine_bench,
    postgres_bench,
    reads_bench,
    soak,
    store_bench,
)
from bench.common import print_machine_info, timed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="crypto + store + engine benchmarks; unknown flags go to bench.store_bench",
    )
    ap.add_argument("--crypto-seconds", type=float, default=2.0, help="time per crypto loop")
    ap.add_argument("--skip-crypto", action="store_true")
    ap.add_argument("--skip-store", action="store_true")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--engine-n", type=int, default=1000, help="engine bench: rotations/batch")
    ap.add_argument("--engine-latency-ms", type=float, default=20.0, help="engine bench latency")
    ap.add_argument("--skip-postgres", action="store_true", help="skip bench.postgres_bench")
    ap.add_argument("--pg-roles", type=int, default=400, help="postgres bench: roles/rotations")
    ap.add_argument("--skip-reads", action="store_true", help="skip bench.reads_bench")
    ap.add_argument("--reads", type=int, default=5000, help="reads bench: get_value calls")
    ap.add_argument("--skip-cli", action="store_true", help="skip bench.cli_bench")
    ap.add_argument("--cli-n", type=int, default=200, help="cli bench: credentials rotated")
    ap.add_argument("--skip-api", action="store_true", help="skip bench.api_bench")
    ap.add_argument(
        "--soak-minutes", type=float, default=0.0, help="bench.soak minutes per db (0: skip)"
    )
    args, rest = ap.parse_known_args(argv)
    print_machine_info()
    with timed() as total:
        if not args.skip_crypto:
            rc = crypto_bench.main(["--seconds", str(args.crypto_seconds), "--no-machine"])
            if rc:
                return rc
        if not args.skip_store:
            rc = store_bench.main([*rest, "--no-machine"])
            if rc:
                return rc
        if not args.skip_engine:
            db = argparse.ArgumentParser(add_help=False)
            db.add_argument("--db", default="both")
            engine_args = [
                "--n",
                str(args.engine_n),
                "--latency-ms",
                str(args.engine_latency_ms),
                "--db",
                db.parse_known_args(rest)[0].db,
                "--no-machine",
            ]
            rc = engine_bench.main(engine_args)
            if rc:
                return rc
        if not args.skip_postgres:
            rc = postgres_bench.main(["--roles", str(args.pg_roles), "--no-machine"])
            if rc:
                return rc
        if not args.skip_reads:
            rc = reads_bench.main(["--reads", str(args.reads), "--no-machine"])
            if rc:
                return rc
        if not args.skip_cli:
            rc = cli_bench.main(["--n", str(args.cli_n), "--no-machine"])
            if rc:
                return rc
        if not args.skip_api:
            rc = api_bench.main(["--no-machine"])
            if rc:
                return rc
        if args.soak_minutes > 0:
            for db in ("sqlite", "postgresql"):
                rc = soak.main(["--db", db, "--minutes", str(args.soak_minutes), "--no-machine"])
                if rc:
                    return rc
    print(f"\nbenchmarks finished in {total.seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
