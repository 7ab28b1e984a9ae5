"""The real ``rotator`` console script: a batch at ``--concurrency 32`` vs 1, and
``rotator credential get NAME`` wall time.

1. **batch** (``rotate``): ``--n`` (200) credentials on one target answering each call in
   ``--latency-ms`` (20 ms), in a fresh SQLite store (key-file master key, the default) in a
   temp ``ROTATOR_HOME``; the store is filled in this process through the service. Then
   ``rotator rotate --all --json --concurrency 32`` once unmeasured (so every measured run
   rotates credentials that have a PREVIOUS in its grace, as in steady use), then
   ``--concurrency 1``, then ``--concurrency 32``, each a new CLI process. Reported: the JSON
   ``duration_s`` (the engine's batch, inside the process) of each, their ratio (goal >= 20x),
   and each process's wall time (start-up, recovery and revocation included). With
   ``--target http``, bench/httpx_floor.py (httpx alone, the same two calls per rotation) runs
   too, at concurrency 1 over 1 client and at 32 over 8, and its own sequential / concurrent
   ratio is printed beside rotator's: how far 20x is from what httpx itself reaches here.

   ``--target http`` (default): the ``http`` connector against tests/support/api_server.py,
   a real HTTP server in this process (127.0.0.1, plain HTTP, ``ThreadingHTTPServer`` with
   a listen backlog of 511 instead of socketserver's 5, and TCP_NODELAY) that sleeps
   ``--latency-ms`` before answering every request; a rotation makes two calls (set =
   ``POST /keys``, test = ``GET /whoami``). The CLI is ``.venv/bin/rotator`` itself, with no
   test code in it, and the target is reached the way a user's would be: through rotator's
   real connector, its HTTP client and connection handling (which issue 8 changes), so the
   ratio measures rotator and not a double. ``--target double``: the test-double connector
   (in-memory, ``asyncio.sleep`` per call, three calls per rotation, 16 targets) through
   tests/support/run_cli.py, the way the tests install it into a CLI subprocess; it
   measures the engine and store alone, as bench.engine_bench does in-process.
2. **get** (``credential get``): ``rotator credential get NAME`` (the real console script)
   ``--gets`` (20) times one after another on that store: median and p90 of the process wall
   time (goal: median < 250 ms), next to ``python -c pass`` (the interpreter alone) and
   ``python -c "import rotator.cli.main"``. The printed value is checked against the
   stored one (never shown).

    python -m bench.cli_bench [--only rotate,get] [--n 200] [--latency-ms 20]
                              [--target http|double] [--gets 20]

Store set-up goes through the adapters at the end of bench/common.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so that tests.support imports
    sys.path.insert(0, str(ROOT))

from tests.support import api_server, doubles  # noqa: E402
from tests.support.api_server import ApiServer  # noqa: E402

from bench.common import (  # noqa: E402
    CredSpec,
    Result,
    add_credentials,
    close_service,
    exit_on_sigterm,
    get_value,
    open_service,
    print_machine_info,
    print_results,
    print_table,
    source_version,
)

GOAL_RATIO = 20.0
GOAL_GET_MS = 250.0
FAST, SLOW = 32, 1
ACCOUNT = "bench"
LISTEN_BACKLOG = 511  # nginx's default
SCENARIOS = ("rotate", "get")


def console_script() -> Path:
    """The ``rotator`` console script next to this interpreter (the venv's)."""
    here = Path(sys.executable).parent / "rotator"
    found = here if here.exists() else shutil.which("rotator")
    if not found:
        raise SystemExit("no rotator console script next to this python or on PATH")
    return Path(found)


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env["ROTATOR_HOME"] = str(home)
    return env


LAST_CPU: dict[str, float] = {}


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_cli(argv: list[str], home: Path, *, check_json: bool = True) -> tuple[Any, float]:
    """Run one CLI process; (parsed JSON stdout or raw stdout, wall seconds). Leaves the CPU
    seconds of the CLI process and of this one (the bench API's threads) in LAST_CPU."""
    child0, own0 = children_cpu_s(), time.process_time()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=cli_env(home), capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    LAST_CPU["cli"] = children_cpu_s() - child0
    LAST_CPU["bench"] = time.process_time() - own0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]}... exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return (json.loads(proc.stdout) if check_json else proc.stdout), wall


# ------------------------------------------------------------------------------- fill


ADMIN_PREFIX = "bench-admin-"


class AnyBenchAdmin(dict[str, str]):
    """The API's admin tokens: every token made by ``api/admin``'s generator (its prefix).

    ``rotate --all`` rotates ``api/admin`` (a ``local`` credential) too, first, as the
    others reference it; the bench API does not model rotating its admin token, so it takes
    any token with the prefix as the admin of the bench account."""

    def get(self, key: str, default: Any = None) -> Any:
        return ACCOUNT if key.startswith(ADMIN_PREFIX) else default


def http_specs(api: ApiServer, n: int) -> list[CredSpec]:
    token = ADMIN_PREFIX + secrets.token_hex(16)
    api.add_account(ACCOUNT, token)
    api.admin_tokens = AnyBenchAdmin()
    settings = {
        "base_url": api.url,
        "allow_insecure_http": "true",  # the bench API speaks plain HTTP on loopback
        "auth": "api/admin",
        "set_path": "/keys",
        "set_body": '{"key": "$value"}',
        "test_path": "/whoami",
        "revoke_path": "/keys/$value",
    }
    admin_settings = {"generator": "token", "prefix": ADMIN_PREFIX}
    specs = [CredSpec("api/admin", "local", admin_settings, value=token)]
    for i in range(n):
        first = f"first-{i:05d}-" + secrets.token_hex(8)
        api.add_key(ACCOUNT, first)
        specs.append(CredSpec(f"api/k{i:05d}", "http", settings, value=first))
    return specs


def double_specs(n: int, latency_ms: float) -> list[CredSpec]:
    return [
        CredSpec(
            f"dbl/c{i:05d}",
            "double",
            {"target": f"t{i % 16}", "latency_ms": str(latency_ms)},
        )
        for i in range(n)
    ]


# -------------------------------------------------------------------------- scenarios


def rotate_scenario(args: argparse.Namespace, home: Path, info: dict[str, str]) -> list[Result]:
    if args.target == "http":
        cli = [str(console_script())]
        info["rotate: CLI"] = f"{cli[0]} (the console script)"
    else:
        cli = [sys.executable, str(ROOT / "tests" / "support" / "run_cli.py")]
        info["rotate: CLI"] = "tests/support/run_cli.py (rotator.cli.main + the double)"

    def rotate(conc: int) -> tuple[dict[str, Any], float]:
        out, wall = run_cli([*cli, "rotate", "--all", "--json", "--concurrency", str(conc)], home)
        if out["failed"] or out["rolled_back"] or len(out["rotated"]) != args.n + extra:
            raise RuntimeError(
                f"--concurrency {conc}: {len(out['rotated'])} rotated, "
                f"{len(out['failed'])} failed (first: {out['failed'][:1]}), "
                f"{len(out['rolled_back'])} rolled back"
            )
        print(f"  --concurrency {conc:2}: duration_s {out['duration_s']:.2f}", flush=True)
        return {**out, "cpu": dict(LAST_CPU)}, wall

    api: ApiServer | None = None
    try:
        if args.target == "http":
            # socketserver's listen backlog is 5: 32 clients connecting at once overflow it
            # and wait a SYN retransmit (1 s). Production servers listen with hundreds.
            api_server._Server.request_queue_size = LISTEN_BACKLOG
            # http.server sends a response's headers and body in two send()s; on a kept-alive
            # connection (the connector keeps one per target) Nagle holds the body until the
            # client's delayed ACK, ~40 ms per call on Linux. Production servers set
            # TCP_NODELAY (nginx, uvicorn, gunicorn); so does the bench's test server.
            api_server._Handler.disable_nagle_algorithm = True
            api = ApiServer(delay_s=args.latency_ms / 1000).start()
            specs = http_specs(api, args.n)
            extra = 1  # api/admin (local) rotates too
            calls = 2
        else:
            specs = double_specs(args.n, args.latency_ms)
            extra, calls = 0, 3
        svc = open_service(home)
        try:
            asyncio.run(add_credentials(svc, specs))
        finally:
            close_service(svc)
        info["rotate: target"] = (
            f"{args.target}, {args.latency_ms:g} ms per call, {calls} calls per rotation"
        )
        print(f"rotate: warm-up at --concurrency {FAST} ...", flush=True)
        rotate(FAST)
        print(f"rotate: {args.n} credentials, --concurrency {SLOW} then {FAST} ...", flush=True)
        slow, slow_wall = rotate(SLOW)
        fast, fast_wall = rotate(FAST)
        floor = None
        if api is not None:
            floor = (
                httpx_floor(api, args.n + extra, SLOW, 1),
                httpx_floor(api, args.n + extra, FAST, 8),
            )
    finally:
        if api is not None:
            api.stop()
    ratio = slow["duration_s"] / fast["duration_s"]
    verdict = "meets" if ratio >= GOAL_RATIO else "MISSES"
    n = args.n + extra
    ideal = n * calls * args.latency_ms / 1000
    return [
        Result(
            f"rotate --all --concurrency {SLOW}: duration_s",
            n,
            slow["duration_s"],
            unit="rot",
            note=f"process wall {slow_wall:.2f} s; ideal {ideal:.1f} s "
            f"({n} x {calls} x {args.latency_ms:g} ms); {cpu_note(slow['cpu'])}",
        ),
        Result(
            f"rotate --all --concurrency {FAST}: duration_s",
            n,
            fast["duration_s"],
            unit="rot",
            note=f"process wall {fast_wall:.2f} s; ideal {ideal / FAST:.2f} s; "
            f"{cpu_note(fast['cpu'])}",
        ),
        Result(
            f"duration_s ratio, concurrency {SLOW} / {FAST}",
            value=ratio,
            unit="x",
            note=f"{verdict} goal >= {GOAL_RATIO:g}x; process wall ratio "
            f"{slow_wall / fast_wall:.1f}x; ideal {FAST}x if the engine cost nothing",
        ),
        *floor_results(floor, fast, ratio, n),
    ]


def httpx_floor(api: ApiServer, n: int, concurrency: int, clients: int) -> dict[str, float]:
    """bench.httpx_floor in its own process against ``api``: the same two calls per rotation
    at ``concurrency`` over ``clients`` clients, without rotator."""
    argv = [sys.executable, "-m", "bench.httpx_floor", "--url", api.url]
    argv += ["--admin", ADMIN_PREFIX + "floor", "--rotations", str(n)]
    argv += ["--concurrency", str(concurrency), "--clients", str(clients)]
    print(f"rotate: httpx alone, {n} x 2 calls at concurrency {concurrency} ...", flush=True)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT, check=True)
    out: dict[str, float] = json.loads(proc.stdout)
    return out


def floor_results(
    floor: tuple[dict[str, float], dict[str, float]] | None,
    fast: dict[str, Any],
    ratio: float,
    n: int,
) -> list[Result]:
    if floor is None:
        return []
    slow_floor, fast_floor = floor
    floor_ratio = slow_floor["wall_s"] / fast_floor["wall_s"]
    return [
        Result(
            f"httpx alone, the same 2 calls per rotation at concurrency {SLOW} (1 client)",
            n,
            slow_floor["wall_s"],
            unit="rot",
            note=f"CPU {slow_floor['cpu_s'] * 1000 / n:.2f} ms per rotation; bench/httpx_floor.py",
        ),
        Result(
            f"httpx alone, the same 2 calls per rotation at concurrency {FAST} (8 clients)",
            n,
            fast_floor["wall_s"],
            unit="rot",
            note=f"CPU {fast_floor['cpu_s'] * 1000 / n:.2f} ms per rotation (the CLI: "
            f"{fast['cpu']['cli'] * 1000 / n:.2f} ms, start-up included); bench/httpx_floor.py",
        ),
        Result(
            f"httpx alone: sequential / concurrent, concurrency {SLOW} / {FAST}",
            value=floor_ratio,
            unit="x",
            note=f"what httpx itself reaches on this machine; rotator's ratio {ratio:.2f}x "
            f"= {ratio / floor_ratio:.0%} of it (goal {GOAL_RATIO:g}x)",
        ),
        Result(
            f"rotator --concurrency {FAST} duration_s / httpx alone",
            value=fast["duration_s"] / fast_floor["wall_s"],
            unit="x",
            note="how far rotator's concurrent batch is from what httpx allows (1x = the floor)",
        ),
    ]


def cpu_note(cpu: dict[str, float]) -> str:
    return f"CPU: CLI process {cpu['cli']:.2f} s, target in the bench process {cpu['bench']:.2f} s"


def get_scenario(args: argparse.Namespace, home: Path, info: dict[str, str]) -> list[Result]:
    name = "cli/get-me"
    svc = open_service(home)
    try:
        asyncio.run(add_credentials(svc, [CredSpec(name, "local")]))
        expected = asyncio.run(get_value(svc, name)).reveal_text()
    finally:
        close_service(svc)
    script = str(console_script())
    info["get: CLI"] = f"{script} credential get {name} (store: SQLite, key-file master key)"

    def times(argv: list[str], check: bool) -> list[float]:
        out = []
        for _ in range(args.gets):
            text, wall = run_cli(argv, home, check_json=False)
            if check and text.strip() != expected:
                raise RuntimeError("credential get printed something else than the value")
            out.append(wall * 1000)
        return out

    print(f"get: {args.gets} x rotator credential get ...", flush=True)
    get_ms = times([script, "credential", "get", name], True)
    print(f"get: {args.gets} x python -c pass / import rotator.cli.main ...", flush=True)
    bare_ms = times([sys.executable, "-c", "pass"], False)
    import_ms = times([sys.executable, "-c", "import rotator.cli.main"], False)
    med = statistics.median(get_ms)
    verdict = "meets" if med < GOAL_GET_MS else "MISSES"
    return [
        Result(
            "rotator credential get NAME, median",
            value=med,
            unit="ms",
            note=f"{args.gets} runs; p90 {pct(get_ms, 90):.0f} ms, min {min(get_ms):.0f} ms; "
            f"{verdict} goal < {GOAL_GET_MS:g} ms",
        ),
        Result(
            "python -c pass, median",
            value=statistics.median(bare_ms),
            unit="ms",
            note=f"{args.gets} runs; the interpreter alone",
        ),
        Result(
            'python -c "import rotator.cli.main", median',
            value=statistics.median(import_ms),
            unit="ms",
            note=f"{args.gets} runs; p90 {pct(import_ms, 90):.0f} ms",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--only",
        type=lambda s: [x for x in s.split(",") if x],
        default=list(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    ap.add_argument("--n", type=int, default=200, help="credentials rotated by the CLI")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="per target call")
    ap.add_argument("--target", choices=["http", "double"], default="http")
    ap.add_argument("--gets", type=int, default=20, help="credential get runs")
    ap.add_argument("--no-machine", action="store_true", help="do not print machine info")
    args = ap.parse_args(argv)
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        ap.error(f"--only: unknown {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    exit_on_sigterm()
    if not args.no_machine:
        print_machine_info()
    doubles.install()  # the double connector, for filling a --target double store
    info: dict[str, str] = {"rotator source": source_version()}
    results: list[Result] = []
    home = Path(tempfile.mkdtemp(prefix="rotator-bench-cli-"))
    try:
        if "rotate" in args.only:
            results += rotate_scenario(args, home / "rotate", info)
        if "get" in args.only:
            results += get_scenario(args, home / "get", info)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print_table("cli bench: settings", ["item", "value"], list(info.items()))
    print_results("cli bench", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
