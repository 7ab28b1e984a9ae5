"""The compliance report on a large tenant: ``python -m bench.report_bench [--n 10000]``.

Fills a store through the service with ``--n`` credentials (a quarter each: every 30d, a
weekly cron, max age 90d, no time policy), rotates ``--rotate`` of them and reads
``--reads`` values as three principals, then times ``compliance_report`` in process (median
of 3; the figures and the control table, no rendering) and the real ``rotator report
compliance`` command per format (a whole process: start-up, report, rendering, the file
written). ``--db sqlite|postgres|both`` (PostgreSQL: a throwaway 15 cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    ThrowawayPostgres,
    close_service,
    open_service,
    print_machine_info,
    print_table,
)

CHUNK = 200  # adds in flight at once (the group-commit writer batches them)


def _policy(i: int) -> dict[str, str]:
    return [{"every": "30d"}, {"cron": "0 3 * * 0"}, {"max_age": "90d"}, {}][i % 4]


async def _fill(svc, n: int, rotate: int, reads: int) -> None:  # type: ignore[no-untyped-def]
    from rotator.domain.principal import Principal
    from rotator.service import PolicyInput, ValueInput
    from rotator.service.rotation import Selection
    from rotator.service.rotation import rotate as rotate_uc

    service = await svc.service()

    async def add(i: int) -> None:
        await service.add_credential(
            f"app{i % 50:02d}/cred{i:05d}",
            "local",
            tags={"team": f"t{i % 7}", "env": "prod" if i % 2 else "dev"},
            policy=PolicyInput(**_policy(i)),
            value=ValueInput(generate=True),
        )

    for start in range(0, n, CHUNK):
        await asyncio.gather(*(add(i) for i in range(start, min(n, start + CHUNK))))
    names = [f"app{i % 50:02d}/cred{i:05d}" for i in range(n)]
    for start in range(0, rotate, 500):
        await rotate_uc(service, Selection(names=names[start : min(rotate, start + 500)]))
    who = [Principal(name=f"reader{k}", owner=True) for k in range(3)]
    for start in range(0, reads, CHUNK):
        await asyncio.gather(
            *(
                service.get_value(names[(i * 7) % n], principal=who[i % 3])
                for i in range(start, min(reads, start + CHUNK))
            )
        )


def run_one(label: str, home: Path, db_url: str | None, args: argparse.Namespace) -> list[str]:
    svc = open_service(home, db_url)
    t0 = time.perf_counter()
    asyncio.run(_fill(svc, args.n, args.rotate, args.reads))
    fill_s = time.perf_counter() - t0
    samples = []
    cpu = []  # this process's CPU seconds (all threads): less noisy than wall time on a busy box
    report = None
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        report = svc.blocking.compliance_report()
        samples.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    close_service(svc)
    assert report is not None
    assert len(report.credentials) == args.n, len(report.credentials)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env["ROTATOR_HOME"] = str(home)
    if db_url:
        env["ROTATOR_DB"] = db_url
    cli = Path(sys.executable).parent / "rotator"
    per_format = []
    for fmt in ("json", "csv", "html"):
        out = home / f"report.{fmt}"
        t = time.perf_counter()
        subprocess.run(
            [str(cli), "report", "compliance", "--format", fmt, "--output", str(out)],
            env=env,
            check=True,
        )
        per_format.append(
            f"{fmt} {time.perf_counter() - t:.2f} s ({out.stat().st_size // 1024} KiB)"
        )
    return [
        label,
        str(args.n),
        f"{fill_s:.0f} s",
        f"{statistics.median(samples) * 1000:.0f} ms (min {min(samples) * 1000:.0f}; "
        f"CPU {statistics.median(cpu) * 1000:.0f} ms)",
        "; ".join(per_format),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report_bench", description=__doc__)
    ap.add_argument("--n", type=int, default=10_000, help="credentials")
    ap.add_argument("--rotate", type=int, default=2_000, help="of them rotated once")
    ap.add_argument("--reads", type=int, default=5_000, help="values read")
    ap.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--no-machine", action="store_true")
    args = ap.parse_args(argv)
    if not args.no_machine:
        print_machine_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rotator-report-bench-") as tmp:
        if args.db in ("sqlite", "both"):
            rows.append(run_one("sqlite", Path(tmp) / "sqlite", None, args))
            print(" | ".join(rows[-1]), flush=True)
        if args.db in ("postgres", "both"):
            with ThrowawayPostgres() as pg:
                url = pg.create_database("report_bench")
                rows.append(run_one("postgres", Path(tmp) / "pghome", url, args))
    print_table(
        "compliance report",
        [
            "db",
            "credentials",
            "fill",
            "compliance_report() median of 3",
            "rotator report compliance",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
