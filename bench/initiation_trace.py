"""Where an interactive rotation waits between ``rotate_one`` and the connector's ``create``.

``bench.engine_bench`` with its initiation scenario, instrumented (the engine's methods wrapped
in this process only): for every single, timestamps at ``rotate_one``, the context read on a
DB thread (start, end, back on the loop), admission into the global limit (asked, granted) and
``create``; per segment p50/p90/p99/max, the five slowest singles' segments, the group-commit
writer's batches while the batch ran (size, duration, share of the time busy) and the event
loop's lag (a 5 ms sleep probe). Same arguments as bench.engine_bench, e.g.

    python -m bench.initiation_trace --db sqlite --only initiation --no-machine
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import engine_bench as eb  # noqa: E402
from rotator.engine import context as ctx_mod  # noqa: E402
from rotator.engine import engine as eng_mod  # noqa: E402
from rotator.engine import protocol as proto_mod  # noqa: E402
from rotator.engine import writer as wr_mod  # noqa: E402

SEGMENTS = ["enter", "read start", "read end", "prepared", "asks admission", "admitted", "create"]
marks: dict[str, dict[str, float]] = {}
writer_batches: list[tuple[float, float, int]] = []  # (start, seconds, operations)
lags: list[float] = []


def mark(name: str, key: str) -> None:
    if name.startswith("one/"):  # the singles, not the batch
        marks.setdefault(name, {})[key] = time.perf_counter()


def wrap_async(cls: Any, attr: str, key: str, name_of: Any, after: bool = False) -> None:
    orig = getattr(cls, attr)

    async def wrapped(self: Any, *a: Any, **k: Any) -> Any:
        if not after:
            mark(name_of(*a, **k), key)
        out = await orig(self, *a, **k)
        if after:
            mark(name_of(*a, **k), key)
        return out

    setattr(cls, attr, wrapped)


def install() -> None:
    wrap_async(eng_mod.Engine, "rotate_one", "enter", lambda req, **_: req.name)
    wrap_async(ctx_mod.ContextLoader, "prepare", "prepared", lambda req: req.name, after=True)
    wrap_async(eng_mod.Engine, "_admitted", "asks admission", lambda req, *_: req.name)
    wrap_async(proto_mod.Protocol, "start", "admitted", lambda req, *_, **__: req.name)
    wrap_async(eb.BenchDouble, "create", "create", lambda req: req.credential)

    load = ctx_mod.ContextLoader._load

    def _load(self: Any, conn: Any, req: Any) -> Any:
        mark(req.name, "read start")
        out = load(self, conn, req)
        mark(req.name, "read end")
        return out

    ctx_mod.ContextLoader._load = _load  # type: ignore[method-assign]

    commit = wr_mod.StoreWriter._commit

    def _commit(self: Any, batch: Any) -> Any:
        t0 = time.perf_counter()
        out = commit(self, batch)
        writer_batches.append((t0, time.perf_counter() - t0, len(batch)))
        return out

    wr_mod.StoreWriter._commit = _commit  # type: ignore[method-assign]

    under_batch = eb.initiation_under_batch

    async def traced(*a: Any, **k: Any) -> Any:
        marks.clear()
        writer_batches.clear()
        lags.clear()
        probe = asyncio.create_task(lag_probe())
        t0 = time.perf_counter()
        out = await under_batch(*a, **k)
        t1 = time.perf_counter()
        probe.cancel()
        report(t0, t1)
        return out

    eb.initiation_under_batch = traced


async def lag_probe() -> None:
    while True:
        t = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append((time.perf_counter() - t - 0.005) * 1000)


def pct(xs: list[float], p: float) -> float:
    return eb.pct(xs, p) if xs else float("nan")


def report(t0: float, t1: float) -> None:
    full = [m for m in marks.values() if all(k in m for k in SEGMENTS)]
    total = [(m["create"] - m["enter"]) * 1000 for m in full]
    print(
        f"trace: {len(full)} singles; rotate_one -> create p50 {pct(total, 50):.1f} ms, "
        f"p90 {pct(total, 90):.1f}, p99 {pct(total, 99):.1f}"
    )
    pairs = list(itertools.pairwise(SEGMENTS))
    for a, b in pairs:
        d = [(m[b] - m[a]) * 1000 for m in full]
        print(
            f"  {a:>15} -> {b:<15} p50 {pct(d, 50):7.2f}  p90 {pct(d, 90):7.2f}  "
            f"p99 {pct(d, 99):7.2f}  max {max(d):7.2f} ms"
        )
    for m in sorted(full, key=lambda m: m["create"] - m["enter"])[-5:]:
        print(
            "  slowest, by segment (ms):", " ".join(f"{(m[b] - m[a]) * 1000:.1f}" for a, b in pairs)
        )
    during = [w for w in writer_batches if t0 <= w[0] <= t1]
    if during:
        sizes = [float(w[2]) for w in during]
        secs = [w[1] * 1000 for w in during]
        print(
            f"  writer: {len(during)} group commits, operations p50 {pct(sizes, 50):.0f} "
            f"max {max(sizes):.0f}; ms p50 {pct(secs, 50):.1f} p99 {pct(secs, 99):.1f} "
            f"max {max(secs):.1f}; busy {sum(w[1] for w in during) / (t1 - t0) * 100:.0f}% "
            "of the time"
        )
    print(
        f"  event loop lag (5 ms sleep probe): p50 {pct(lags, 50):.1f} ms, "
        f"p99 {pct(lags, 99):.1f}, max {max(lags or [0.0]):.1f}"
    )


if __name__ == "__main__":
    install()
    raise SystemExit(eb.main(sys.argv[1:]))
