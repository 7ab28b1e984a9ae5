"""The REST API under load: ``GET /v1/credentials/{name}/value`` and ``POST
/v1/credentials/{name}/usage`` requests/s and latency (p50, p99) of a real ``rotator serve``
(``--no-scheduler``), on SQLite and PostgreSQL 15, next to a minimal FastAPI/uvicorn app
answering a constant from memory (the ceiling of the HTTP stack on this machine).

The load generator is a separate process (``--load``, started by this one): ``--concurrency``
raw asyncio HTTP/1.1 keep-alive connections, each sending its next request as soon as the
previous answer is read, round-robin over ``--creds`` credentials, for ``--seconds`` after
``--warmup`` seconds that are not counted. Every answer must be 200 (any other status fails
the run). The token is an ``app`` principal's over ``*`` (VALUE_READ, USAGE_REPORT), passed to
the generator in its environment, never on a command line. The issue's goal for GET value:
>= 1,000/s with p99 < 20 ms.

Every value read is counted and audited by the server (one store write each), as every
usage report is. ``--auth-ttl`` sets ``ROTATOR_API_AUTH_TTL_S`` of the server (0: every
request reads its token from the store).

    python -m bench.api_bench [--db sqlite|postgresql|both] [--seconds 10] [--concurrency 8]
                              [--creds 100] [--auth-ttl 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    CredSpec,
    ThrowawayPostgres,
    add_credential_blocking,
    close_service,
    create_token_blocking,
    exit_on_sigterm,
    open_service,
    print_machine_info,
    print_table,
    source_version,
)

GOAL_PER_S = 1000.0
GOAL_P99_MS = 20.0
TOKEN_ENV = "ROTATOR_BENCH_TOKEN"
READY = re.compile(r"serving on http://([\d.]+):(\d+)")
HOST = "127.0.0.1"


# ------------------------------------------------------------------------ load generator


def _requests(kind: str, names: list[str], token: str) -> list[bytes]:
    out = []
    for name in names:
        if kind == "value":
            out.append(
                f"GET /v1/credentials/{name}/value HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n".encode()
            )
        else:
            body = b'{"count": 1}'
            out.append(
                f"POST /v1/credentials/{name}/usage HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
    return out


async def _connection(
    port: int,
    reqs: list[bytes],
    offset: int,
    start: float,
    end: float,
    lat: list[float],
    statuses: Counter[int],
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    i = offset
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            writer.write(reqs[i % len(reqs)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if m:
                await reader.readexactly(int(m.group(1)))
            t1 = time.perf_counter()
            if t0 >= start:
                lat.append(t1 - t0)
                statuses[status] += 1
    finally:
        writer.close()


async def _load(
    port: int, kind: str, names: list[str], conc: int, warm: float, secs: float
) -> dict[str, Any]:
    token = os.environ[TOKEN_ENV]
    reqs = _requests(kind, names, token)
    lat: list[float] = []
    statuses: Counter[int] = Counter()
    start = time.perf_counter() + warm
    end = start + secs
    await asyncio.gather(
        *(_connection(port, reqs, k * 7, start, end, lat, statuses) for k in range(conc))
    )
    lat.sort()
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [0.0] * 99
    return {
        "requests": len(lat),
        "per_s": len(lat) / secs,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def _run_load(
    port: int, kind: str, names: list[str], args: argparse.Namespace, token: str
) -> dict[str, Any]:
    """Run the generator in its own process (its CPU is not the server's)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.api_bench",
            "--load",
            str(port),
            "--kind",
            kind,
            "--names",
            ",".join(names),
            "--concurrency",
            str(args.concurrency),
            "--warmup",
            str(args.warmup),
            "--seconds",
            str(args.seconds),
        ],
        env={**os.environ, TOKEN_ENV: token},
        capture_output=True,
        text=True,
        timeout=args.warmup + args.seconds + 120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


# ------------------------------------------------------------------------ servers


def _wait_ready(proc: subprocess.Popen[str], pattern: re.Pattern[str]) -> int:
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = pattern.search(line)
        if m:
            return int(m.group(2))
    proc.kill()
    raise RuntimeError("server did not start:\n" + "".join(lines))


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _baseline_server() -> int:
    """A FastAPI app with the same two routes answering constants, served like rotator
    serves (uvicorn on a pre-bound socket, the same options, one asyncio loop)."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/credentials/{name:path}/value")
    async def value(name: str) -> dict[str, Any]:
        return {"name": name, "version": 1, "stage": "CURRENT", "value": "constant-value"}

    @app.post("/v1/credentials/{name:path}/usage")
    async def usage(name: str, body: dict[str, int]) -> dict[str, Any]:
        return {"name": name, "use_count": 1}

    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP
    # (rotator serve's socket comes from getaddrinfo and does); without it every answer
    # written in two parts waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((HOST, 0))
    sock.listen(2048)
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", server_header=False
    )
    server = uvicorn.Server(config)
    print(
        f"baseline: serving on http://{HOST}:{sock.getsockname()[1]}", file=sys.stderr, flush=True
    )
    asyncio.run(server.serve(sockets=[sock]))
    return 0


# ------------------------------------------------------------------------ the benchmark


def _measure(
    label: str, port: int, names: list[str], args: argparse.Namespace, token: str
) -> list[dict[str, Any]]:
    rows = []
    for kind in ("value", "usage"):
        r = _run_load(port, kind, names, args, token)
        bad = {k: v for k, v in r["statuses"].items() if k != "200"}
        if bad:
            raise RuntimeError(f"{label} {kind}: non-200 answers {bad}")
        rows.append({"server": label, "kind": kind, **r})
        print(
            f"  {label:22} {kind:5}: {r['per_s']:8.0f}/s  p50 {r['p50_ms']:6.2f} ms  "
            f"p99 {r['p99_ms']:6.2f} ms",
            flush=True,
        )
    return rows


def _rotator(
    db: str, args: argparse.Namespace, pg: ThrowawayPostgres | None
) -> list[dict[str, Any]]:
    home = Path(tempfile.mkdtemp(prefix="rotator-api-bench-"))
    try:
        url = pg.url() if pg is not None else f"sqlite:///{home / 'rotator.db'}"
        svc = open_service(home, url)
        names = [f"bench/api/{i:04d}" for i in range(args.creds)]
        for name in names:
            add_credential_blocking(svc, CredSpec(name, "local", value=f"value-of-{name}"))
        token = create_token_blocking(svc, "bench-app", "app")
        close_service(svc)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
        env.update(
            ROTATOR_HOME=str(home),
            ROTATOR_DB=url,
            ROTATOR_API_RATE="1000000/s",
            ROTATOR_API_AUTH_TTL_S=str(args.auth_ttl),
        )
        rotator = shutil.which("rotator", path=str(Path(sys.executable).parent)) or "rotator"
        proc = subprocess.Popen(
            [rotator, "serve", "--port", "0", "--no-scheduler"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            port = _wait_ready(proc, READY)
            return _measure(f"rotator ({db})", port, names, args, token)
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.api_bench", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds first")
    ap.add_argument("--concurrency", type=int, default=8, help="keep-alive connections")
    ap.add_argument("--creds", type=int, default=100, help="credentials, requested round-robin")
    ap.add_argument("--auth-ttl", type=float, default=5.0, help="server's ROTATOR_API_AUTH_TTL_S")
    ap.add_argument("--no-machine", action="store_true", help="do not print machine info")
    ap.add_argument("--load", type=int, help=argparse.SUPPRESS)  # internal: generator mode
    ap.add_argument("--kind", default="value", help=argparse.SUPPRESS)
    ap.add_argument("--names", default="", help=argparse.SUPPRESS)
    ap.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.baseline_server:
        return _baseline_server()
    if args.load is not None:
        out = asyncio.run(
            _load(
                args.load,
                args.kind,
                args.names.split(","),
                args.concurrency,
                args.warmup,
                args.seconds,
            )
        )
        print(json.dumps(out))
        return 0
    exit_on_sigterm()
    if not args.no_machine:
        print_machine_info()
    print(
        f"\n== REST API: GET value / POST usage, {args.concurrency} connections, "
        f"{args.seconds:g} s each (+{args.warmup:g} s warm-up), auth TTL {args.auth_ttl:g} s; "
        f"rotator source {source_version()}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    base = subprocess.Popen(
        [sys.executable, "-m", "bench.api_bench", "--baseline-server"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = _wait_ready(base, READY)
        names = [f"bench/api/{i:04d}" for i in range(args.creds)]
        rows += _measure("baseline (constant)", port, names, args, "rtr_baseline")
    finally:
        _stop(base)
    dbs = ("sqlite", "postgresql") if args.db == "both" else (args.db,)
    for db in dbs:
        if db == "postgresql":
            with ThrowawayPostgres() as pg:
                rows += _rotator(db, args, pg)
        else:
            rows += _rotator(db, args, None)
    ceiling = {r["kind"]: r["per_s"] for r in rows if r["server"].startswith("baseline")}
    table = []
    for r in rows:
        table.append(
            [
                r["server"],
                r["kind"],
                f"{r['per_s']:.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['per_s'] / ceiling[r['kind']]:.2f}",
            ]
        )
    print_table(
        "REST API load", ["server", "request", "req/s", "p50 ms", "p99 ms", "x ceiling"], table
    )
    for r in rows:
        if r["server"].startswith("rotator") and r["kind"] == "value":
            ok = r["per_s"] >= GOAL_PER_S and r["p99_ms"] < GOAL_P99_MS
            print(
                f"goal (GET value >= {GOAL_PER_S:.0f}/s, p99 < {GOAL_P99_MS:.0f} ms) "
                f"{r['server']}: {'met' if ok else 'NOT met'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
