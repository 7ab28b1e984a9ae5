"""A/B of ``rotator serve`` builds on one store: GET value / POST usage req/s, p50, p99 and
the server process's CPU per request (user + sys from /proc, so Linux only).

On a shared machine req/s mostly measures the neighbours; CPU per request of the server
moves much less with their load, so it is what tells one build from another. Each source
tree (a directory holding ``rotator/``, e.g. a ``git archive`` of ``src``) serves the same
store in turn, round after round (interleaved), with the load generator of
``bench.api_bench`` (8 keep-alive connections, 100 credentials); medians are printed last.

    git archive HEAD~1 src | tar -x -C /tmp/before     # then /tmp/before/src
    python -m bench.api_ab [--db sqlite|postgresql] [--rounds 3] [--seconds 5]
                           [--kinds value,usage] /tmp/before/src src
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import api_bench
from bench.common import (
    CredSpec,
    ThrowawayPostgres,
    add_credential_blocking,
    close_service,
    create_token_blocking,
    open_service,
)

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _run(args: argparse.Namespace, pg: ThrowawayPostgres | None) -> None:
    home = Path(tempfile.mkdtemp(prefix="rotator-api-ab-"))
    try:
        url = pg.url() if pg is not None else f"sqlite:///{home / 'rotator.db'}"
        svc = open_service(home, url)
        names = [f"bench/api/{i:04d}" for i in range(100)]
        for name in names:
            add_credential_blocking(svc, CredSpec(name, "local", value=f"value-of-{name}"))
        token = create_token_blocking(svc, "bench-app", "app")
        close_service(svc)
        rotator = str(Path(sys.executable).parent / "rotator")
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in range(args.rounds):
            for src in args.sources:
                env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
                env.update(
                    ROTATOR_HOME=str(home),
                    ROTATOR_DB=url,
                    ROTATOR_API_RATE="1000000/s",
                    ROTATOR_API_AUTH_TTL_S="5",
                    PYTHONPATH=str(Path(src).resolve()),
                )
                proc = subprocess.Popen(
                    [rotator, "serve", "--port", "0", "--no-scheduler"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                try:
                    port = api_bench._wait_ready(proc, api_bench.READY)
                    for kind in args.kinds.split(","):
                        warm = argparse.Namespace(concurrency=8, warmup=0.0, seconds=2.0)
                        api_bench._run_load(port, kind, names, warm, token)
                        before = _cpu_s(proc.pid)
                        ns = argparse.Namespace(concurrency=8, warmup=0.0, seconds=args.seconds)
                        out = api_bench._run_load(port, kind, names, ns, token)
                        out["cpu_ms"] = (_cpu_s(proc.pid) - before) * 1000 / max(1, out["requests"])
                        results.setdefault((src, kind), []).append(out)
                        print(
                            f"round {r} {src} {kind:5} {out['per_s']:6.0f}/s "
                            f"p50 {out['p50_ms']:6.2f} ms p99 {out['p99_ms']:6.2f} ms "
                            f"CPU/request {out['cpu_ms']:.3f} ms "
                            f"(load {os.getloadavg()[0]:.1f})",
                            flush=True,
                        )
                finally:
                    api_bench._stop(proc)
        print(f"== medians ({args.db}, {args.rounds} rounds)")
        for (src, kind), outs in results.items():

            def med(key: str, outs: list[dict[str, Any]] = outs) -> float:
                return statistics.median(o[key] for o in outs)

            print(
                f"{src} {kind:5} {med('per_s'):6.0f}/s p50 {med('p50_ms'):6.2f} ms "
                f"p99 {med('p99_ms'):6.2f} ms CPU/request {med('cpu_ms'):.3f} ms"
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.api_ab", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--kinds", default="value,usage", help="value, usage or both")
    ap.add_argument("sources", nargs="+", help="source trees (directories holding rotator/)")
    args = ap.parse_args(argv)
    if args.db == "postgresql":
        with ThrowawayPostgres() as pg:
            _run(args, pg)
    else:
        _run(args, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
