"""Rotation engine: sequential vs concurrent throughput, initiation latency, overhead, RSS.

Against the ``double`` test connector (tests/support/doubles.py; an in-memory target whose
every call sleeps ``--latency-ms``), on SQLite and/or a throwaway PostgreSQL 15:

1. **throughput**: ``--n`` credentials spread over ``--targets`` targets (``target=t{i%16}``),
   stored with ``RotatorService.add_credential(..., value=ValueInput(generate=True))``, rotated
   through ``Engine.rotate`` once with ``concurrency=1, per_target=1`` (sequential) and once
   with ``concurrency=64, per_target=64`` (concurrent). Each rotation makes 3 target calls
   (set, test, finish). Goal: concurrent/sequential >= 30x.
2. **initiation latency**: time from requesting one rotation (``rotate_one``) to the
   connector's ``create`` being entered (a ``bench-double`` subclass timestamps it).
   (a) idle engine, ``--singles`` requests one after another; (b) on ONE engine
   (concurrency 64, the global limit): a batch of the ``--n`` credentials with
   ``Trigger.SCHEDULE`` (one ``Engine.rotate`` call, so the batch fills the global limit and
   queues the rest), and meanwhile single requests with an interactive trigger
   (``--single-triggers``, default ``manual,emergency``: one batch per trigger) submitted at
   ``--single-rate``/s, up to ``--singles``, while the batch runs. Only singles submitted
   while the batch ran count. This is issue 8's item 5 (interactive work is admitted ahead
   of queued batch work). Goal: p99 < 50 ms.
3. **overhead**: ``--n`` rotations at concurrency 64 with 0 ms latency: wall and process CPU
   per rotation (goal <= 1 ms), CPU per thread (event loop, writer, reads; /proc/self/task),
   for PostgreSQL also the server's CPU, the group-commit writer's batches/operations and
   the SQL statements sent to the driver.
4. peak RSS (``--db both`` runs each database in its own child process).

    python -m bench.engine_bench [--n 1000] [--latency-ms 20] [--db sqlite|postgresql|both]
        [--only throughput,initiation,overhead] [--profile] [--sqlite-synchronous NORMAL|FULL]

Every use of rotator's service and engine goes through the adapters at the end of
bench/common.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import event

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so that tests.support.doubles imports
    sys.path.insert(0, str(ROOT))

from tests.support import doubles  # noqa: E402

from bench.common import (  # noqa: E402
    CredSpec,
    Result,
    ThrowawayPostgres,
    add_credentials,
    close_service,
    engine_options,
    exit_on_sigterm,
    not_rotated,
    open_engine,
    open_service,
    peak_rss_mib,
    print_comparison,
    print_machine_info,
    print_results,
    print_table,
    proc_tree_cpu_s,
    rotate_batch,
    rotate_one,
    rotation_request,
    run_per_database,
    source_version,
    sql_engine,
    sqlite_synchronous,
    store_dialect,
    timed,
    writer_stats,
)
from rotator.connectors import base as cbase  # noqa: E402
from rotator.connectors.registry import register  # noqa: E402
from rotator.domain.secret import Secret  # noqa: E402
from rotator.store import db as store_db  # noqa: E402

SEQUENTIAL = engine_options(1)
CONCURRENT = engine_options(64)
GOAL_CPU_MS = 1.0
CALLS_PER_ROTATION = 3  # set, test, finish
GOAL_RATIO = 30.0
GOAL_P99_MS = 50.0
SCENARIOS = ("throughput", "initiation", "overhead")


class BenchDouble(doubles.DoubleConnector):
    """The double connector, timestamping (time.perf_counter) when ``create`` is entered."""

    kind: ClassVar[str] = "bench-double"
    entered: ClassVar[dict[str, float]] = {}

    async def create(self, req: cbase.CreateRequest) -> Secret:
        BenchDouble.entered[req.credential] = time.perf_counter()
        return await super().create(req)


def install_connectors() -> None:
    doubles.install()
    register(BenchDouble)


# ----------------------------------------------------------------------------- helpers


def pct(samples: Sequence[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def thread_cpu_s(thread: threading.Thread) -> float:
    """CPU seconds (user+sys) of one live thread, from /proc/self/task; 0 if unknown."""
    tid = thread.native_id
    if tid is None:
        return 0.0
    try:
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postmaster_pid(pg: ThrowawayPostgres) -> int | None:
    try:
        return int((pg.data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


check_rotated = not_rotated


def lat_result(name: str, ms: Sequence[float], note: str) -> list[Result]:
    p99 = pct(ms, 99)
    verdict = "meets" if p99 < GOAL_P99_MS else "MISSES"
    return [
        Result(f"{name} p50", value=pct(ms, 50), unit="ms", note=f"{len(ms)} requests; {note}"),
        Result(
            f"{name} p99",
            value=p99,
            unit="ms",
            note=f"max {max(ms):.2f} ms; {verdict} goal p99 < {GOAL_P99_MS:g} ms",
        ),
    ]


# ------------------------------------------------------------------------------- fill


async def fill(svc: Any, args: argparse.Namespace) -> dict[str, list[str]]:
    """Credentials for each scenario, all with a generated first value."""
    sets: dict[str, list[str]] = {"latency": [], "zero": [], "singles": []}
    plan: list[tuple[str, str, str, float]] = []  # (set, name, connector, latency)
    if {"throughput", "initiation"} & set(args.only):
        for i in range(args.n):
            plan.append(("latency", f"lat/c{i:05d}", "double", args.latency_ms))
    if "overhead" in args.only:
        for i in range(args.n):
            plan.append(("zero", f"zero/c{i:05d}", "double", 0.0))
    if "initiation" in args.only:
        for i in range(args.singles):
            plan.append(("singles", f"one/c{i:05d}", "bench-double", args.latency_ms))
    specs = []
    for k, (which, name, kind, latency) in enumerate(plan):
        settings = {"target": f"t{k % args.targets}", "latency_ms": str(latency)}
        specs.append(CredSpec(name, kind, settings))
        sets[which].append(name)
    await add_credentials(svc, specs)
    return sets


# -------------------------------------------------------------------------- scenarios


async def timed_batch(svc: Any, opts: Any, names: Sequence[str]) -> tuple[Any, float, Any]:
    """One batch on a fresh engine: (BatchResult, seconds inside the engine's rotate, engine)."""
    reqs = [rotation_request(n) for n in names]
    async with open_engine(svc, opts) as engine:
        with timed() as t:
            res = await rotate_batch(engine, reqs)
    return res, t.seconds, engine


async def throughput(svc: Any, args: argparse.Namespace, names: list[str]) -> list[Result]:
    n = len(names)
    print(f"  sequential: {n:,} rotations at concurrency 1 ...", flush=True)
    seq, seq_s, _ = await timed_batch(svc, SEQUENTIAL, names)
    check_rotated("sequential", seq.results, n)
    print(f"  concurrent: {n:,} rotations at concurrency 64 ...", flush=True)
    conc, conc_s, engine = await timed_batch(svc, CONCURRENT, names)
    batches, operations = writer_stats(engine)
    check_rotated("concurrent", conc.results, n)
    lat = args.latency_ms
    ideal_seq = n * CALLS_PER_ROTATION * lat / 1000
    ideal_conc = n / CONCURRENT.concurrency * CALLS_PER_ROTATION * lat / 1000
    ratio = seq_s / conc_s
    verdict = "meets" if ratio >= GOAL_RATIO else "MISSES"
    return [
        Result(
            "throughput: sequential (concurrency 1)",
            n,
            seq_s,
            unit="rot",
            note=f"ideal {ideal_seq:.1f} s ({n} x 3 x {lat:g} ms)",
        ),
        Result(
            "throughput: concurrent (concurrency 64)",
            n,
            conc_s,
            unit="rot",
            note=f"ideal {ideal_conc:.2f} s ({n}/64 x 3 x {lat:g} ms); "
            f"writer {operations:,} ops in {batches:,} batches",
        ),
        Result(
            "throughput: concurrent / sequential",
            value=ratio,
            unit="x",
            note=f"{verdict} goal >= {GOAL_RATIO:g}x; ideal ratio "
            f"{ideal_seq / ideal_conc:.0f}x if the engine cost nothing",
        ),
    ]


async def initiation(
    svc: Any, args: argparse.Namespace, singles: list[str], background: list[str]
) -> list[Result]:
    entered = BenchDouble.entered
    results: list[Result] = []

    # (a) idle engine: one request after another.
    print(f"  idle: {len(singles)} single requests ...", flush=True)
    idle_ms: list[float] = []
    async with open_engine(svc, CONCURRENT) as engine:
        for name in singles:
            entered.pop(name, None)
            t0 = time.perf_counter()
            res = await rotate_one(engine, rotation_request(name, "manual", interactive=True))
            check_rotated("idle single", [res], 1)
            idle_ms.append((entered[name] - t0) * 1000)
    results += lat_result("initiation, idle engine", idle_ms, "one after another")

    # (b) one engine: a SCHEDULE batch of all ``background`` credentials (one engine.rotate
    # call: it fills the global limit and queues the rest) and interactive singles meanwhile.
    for trigger in args.single_triggers:
        results += await initiation_under_batch(svc, args, singles, background, trigger)
    return results


async def initiation_under_batch(
    svc: Any, args: argparse.Namespace, singles: list[str], background: list[str], trigger: str
) -> list[Result]:
    entered = BenchDouble.entered
    rate = args.single_rate
    print(
        f"  under a batch: {len(background):,} rotations (trigger schedule) on one engine "
        f"(global limit {CONCURRENT.concurrency}) + up to {len(singles)} singles "
        f"(trigger {trigger}) at {rate:g}/s while it runs ...",
        flush=True,
    )
    load_ms: list[float] = []
    took_ms: list[float] = []
    lag_ms: list[float] = []
    late = 0
    async with open_engine(svc, CONCURRENT) as engine:
        batch_reqs = [rotation_request(n, "schedule") for n in background]
        batch_done = asyncio.Event()

        async def batch() -> tuple[Any, float]:
            with timed() as t:
                res = await rotate_batch(engine, batch_reqs)
            batch_done.set()
            return res, t.seconds

        async def single(name: str, submitted: float) -> None:
            res = await rotate_one(engine, rotation_request(name, trigger, interactive=True))
            check_rotated(f"{trigger} single", [res], 1)
            took_ms.append((time.perf_counter() - submitted) * 1000)
            load_ms.append((entered[name] - submitted) * 1000)

        batch_task = asyncio.create_task(batch())
        await asyncio.sleep(args.load_warmup_s)  # the batch has filled the limit by then
        tasks = []
        start = time.perf_counter()
        for i, name in enumerate(singles):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if batch_done.is_set():
                late = len(singles) - i
                break
            entered.pop(name, None)
            now = time.perf_counter()
            lag_ms.append((now - due) * 1000)
            tasks.append(asyncio.create_task(single(name, now)))
        await asyncio.gather(*tasks)
        bg, bg_s = await batch_task
        check_rotated("batch", bg.results, len(background))
    if not load_ms:
        raise RuntimeError("the batch ended before the first single: raise --n")
    return lat_result(
        f"initiation, {trigger} single during a schedule batch",
        load_ms,
        f"same engine as a {len(background):,}-rotation batch ({bg_s:.2f} s); "
        f"{len(load_ms)} singles submitted while it ran"
        + (f" ({late} not sent: the batch had ended)" if late else "")
        + f"; submit lag p99 {pct(lag_ms, 99):.1f} ms; whole single rotation p50 "
        f"{pct(took_ms, 50):.0f} ms, p99 {pct(took_ms, 99):.0f} ms",
    )


async def overhead(svc: Any, names: list[str], pg: ThrowawayPostgres | None) -> list[Result]:
    n = len(names)
    print(f"  overhead: {n:,} rotations at concurrency 64, 0 ms latency ...", flush=True)
    ppid = postmaster_pid(pg) if pg is not None else None
    statements = 0

    def count(*_: object) -> None:
        nonlocal statements
        statements += 1

    event.listen(sql_engine(svc), "before_cursor_execute", count)
    try:
        srv0 = proc_tree_cpu_s(ppid) if ppid else 0.0
        cpu0 = cpu_s()
        loop0 = thread_cpu_s(threading.main_thread())
        # Earlier engines' writer threads can outlive them (until garbage-collected): skip them.
        older = {th.native_id for th in threading.enumerate()}
        async with open_engine(svc, CONCURRENT) as engine:
            with timed() as t:
                res = await rotate_batch(engine, [rotation_request(x) for x in names])
            # The engine's threads end with it: read their CPU time now.
            split = {"event loop": thread_cpu_s(threading.main_thread()) - loop0}
            for th in threading.enumerate():
                if th.name.startswith("rotator-") and th.native_id not in older:
                    role = "writer thread" if "writer" in th.name else "read threads"
                    split[role] = split.get(role, 0.0) + thread_cpu_s(th)
        wall = t.seconds
        cpu = cpu_s() - cpu0
        srv = proc_tree_cpu_s(ppid) - srv0 if ppid else 0.0
    finally:
        event.remove(sql_engine(svc), "before_cursor_execute", count)
    check_rotated("overhead", res.results, n)
    batches, operations = writer_stats(engine)
    cpu_verdict = "meets" if cpu / n * 1000 <= GOAL_CPU_MS else "MISSES"
    out = [
        Result(
            "overhead: wall per rotation (0 ms, conc 64)",
            value=wall / n * 1000,
            unit="ms",
            note=f"{n:,} in {wall:.2f} s = {n / wall:,.0f} rot/s",
        ),
        Result(
            "overhead: process CPU per rotation",
            value=cpu / n * 1000,
            unit="ms",
            note=f"{cpu:.2f} s CPU = {cpu / wall:.2f} cores busy (user+sys, all threads); "
            f"{cpu_verdict} goal <= {GOAL_CPU_MS:g} ms",
        ),
        Result(
            "overhead: CPU per rotation by thread",
            value=sum(split.values()) / n * 1000,
            unit="ms",
            note=", ".join(f"{k} {v / n * 1000:.2f} ms" for k, v in split.items()),
        ),
    ]
    if ppid:
        out.append(
            Result(
                "overhead: PostgreSQL server CPU per rotation",
                value=srv / n * 1000,
                unit="ms",
                note=f"{srv:.2f} s CPU in the postmaster and its backends",
            )
        )
    out.append(
        Result(
            "overhead: writer batches / operations",
            value=float(batches),
            unit="batches",
            note=f"{operations:,} ops = {operations / max(batches, 1):.1f} ops/batch, "
            f"{operations / n:.1f} ops/rotation",
        )
    )
    out.append(
        Result(
            "overhead: SQL statements per rotation",
            value=statements / n,
            unit="stmts",
            note=f"{statements:,} sent to the driver (reads and writes; commits not counted)",
        )
    )
    return out


def profile_overhead(svc: Any, names: list[str], top: int) -> None:
    """cProfile one more 0 ms concurrent batch (event-loop thread only) and print hotspots."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(timed_batch(svc, CONCURRENT, names))
    prof.disable()
    print(f"\n--- profile: {store_dialect(svc)} {len(names)} rotations, 0 ms, concurrency 64 ---")
    print("(cProfile sees the event-loop thread; DB threads run outside it)")
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"rotator/", top)


# ------------------------------------------------------------------------------- run


def run_db(kind: str, args: argparse.Namespace) -> tuple[list[Result], dict[str, str]]:
    install_connectors()
    results: list[Result] = []
    info: dict[str, str] = {
        "rotator source": source_version(),
        "credentials": f"{args.n:,} with latency, {args.n:,} without, {args.singles} singles",
        "engine": f"concurrency {CONCURRENT.concurrency}, per target {CONCURRENT.per_target}",
        "targets": str(args.targets),
        "latency per target call": f"{args.latency_ms:g} ms",
    }
    pg: ThrowawayPostgres | None = None
    home = Path(tempfile.mkdtemp(prefix=f"rotator-bench-engine-{kind}-"))
    svc: Any = None
    try:
        if kind == "sqlite":
            url = f"sqlite:///{home / 'rotator.db'}"
        else:
            pg = ThrowawayPostgres().start()
            url = pg.create_database("rotator_engine_bench")
            info.update(pg.settings("fsync", "synchronous_commit"))
        svc = open_service(home, url)
        if kind == "sqlite":
            info["sqlite synchronous"] = sqlite_synchronous(svc)

        async def scenarios() -> dict[str, list[str]]:
            print(f"[{kind}] fill", flush=True)
            with timed() as t:
                sets = await fill(svc, args)
            filled = sum(len(v) for v in sets.values())
            results.append(
                Result(
                    "fill: add_credential(generate=True)",
                    filled,
                    t.seconds,
                    unit="creds",
                    note="1 txn each",
                )
            )
            print(f"[{kind}] scenarios: {', '.join(args.only)}", flush=True)
            if "throughput" in args.only:
                results.extend(await throughput(svc, args, sets["latency"]))
            if "initiation" in args.only:
                results.extend(await initiation(svc, args, sets["singles"], sets["latency"]))
            if "overhead" in args.only:
                results.extend(await overhead(svc, sets["zero"], pg))
            return sets

        sets = asyncio.run(scenarios())
        results.append(
            Result(
                "peak RSS (ru_maxrss)",
                value=maxrss_mib(),
                unit="MiB",
                note=f"VmHWM (this process image) {peak_rss_mib():.0f} MiB",
            )
        )
        if args.profile:
            profile_overhead(svc, sets["zero"], args.profile_top)
        return results, info
    finally:
        if svc is not None:
            close_service(svc)
        if pg is not None:
            pg.stop()
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="rotations per batch")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="sleep per target call")
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--targets", type=int, default=16, help="distinct targets (t0..t15)")
    ap.add_argument("--singles", type=int, default=200, help="single requests per case")
    ap.add_argument("--single-rate", type=float, default=100.0, help="singles/s under load")
    ap.add_argument(
        "--single-triggers",
        type=lambda s: [x for x in s.split(",") if x],
        default=["manual", "emergency"],
        help="triggers of the singles during the batch, one batch each (manual,emergency)",
    )
    ap.add_argument("--load-warmup-s", type=float, default=0.2, help="batch head start")
    ap.add_argument(
        "--only",
        type=lambda s: [x for x in s.split(",") if x],
        default=list(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="afterwards cProfile one more 0 ms concurrent batch and print hotspots",
    )
    ap.add_argument("--profile-top", type=int, default=20)
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
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        ap.error(f"--only: unknown {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    exit_on_sigterm()
    if not args.no_machine:
        print_machine_info()

    if args.db != "both":
        results, info = run_db(args.db, args)
        print_table(f"engine bench: {args.db} settings", ["item", "value"], list(info.items()))
        print_results(f"engine: {args.db}", results)
        if args.json:
            args.json.write_text(
                json.dumps({"results": [r.to_json() for r in results], "info": info}, indent=1)
            )
        return 0

    runs = run_per_database(
        "bench.engine_bench", list(argv if argv is not None else sys.argv[1:]), ROOT
    )
    if isinstance(runs, int):
        return runs
    columns = {k: [Result.from_json(r) for r in d["results"]] for k, d in runs.items()}
    print_comparison(f"engine: {args.n:,} rotations, SQLite vs PostgreSQL", columns)
    if args.json:
        args.json.write_text(
            json.dumps({k: [r.to_json() for r in v] for k, v in columns.items()}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
