"""Soak: a real ``rotator serve`` (REST API + scheduler + engine, one process) on loopback under
continuous rotation while clients read values at a steady rate, for a few minutes; its RSS,
open file descriptors and threads sampled every second. Does it stay flat?

Set-up: a fresh home with a key-file master key, the store on SQLite (in the home) or on a
throwaway PostgreSQL 15 (``bench.common.ThrowawayPostgres``, default durability). ``--creds``
(200) credentials with grace ``--grace`` (5s, so revocations run during the soak too):

* ``--http-creds`` (20) on the ``http`` connector against tests/support/api_server.py (a real
  HTTP server in this process, answering each call after ``--latency-ms``, 20 ms; a rotation
  makes two calls to it, set and test, and a revocation one), with their admin token in the
  ``local`` credential ``api/admin`` (not rotated, not read);
* the rest ``local`` (rotator generates the value; no target), of which ``--scheduled`` (40)
  have ``--every`` (30s), so ``serve``'s scheduler (``--poll 1``) rotates them by itself.

Load, all open-loop (each request is scheduled on the clock, and latency is measured from its
scheduled time, so a stalled server is not hidden by a client that waits for it, i.e. no
coordinated omission):

* a driver in this process ``POST /v1/credentials/{name}/rotate`` at ``--rotate-rate`` (4/s)
  round-robin over every credential but ``api/admin`` (an ``operator`` token); each 202 is a
  background job, whose result is read back at the end (``GET /v1/rotations``);
* a reader process (its CPU is not this one's) with one client per ``--read-kinds`` entry
  (``sdk,sdk,raw,sdk-cached``), each reading at ``--read-rate`` (25/s) round-robin over the
  credentials with an ``app`` token, through a pool of ``--read-workers`` (8) threads per
  client (so a slow answer delays no other request's sending, only its own answer).
  ``sdk`` is ``rotator.client.Client(cache_ttl=0)`` (every ``get`` is one ``GET /value``),
  ``raw`` an ``httpx.Client`` GET of ``/value`` without the SDK, ``sdk-cached`` the SDK with
  a 1 s cache and its watch stream (which drops a name's entry when it rotates);
* a sampler in this process, every second: VmRSS, Threads (``/proc/PID/status``), the
  number of ``/proc/PID/fd`` entries and the CPU time (``/proc/PID/stat``) of the serve
  process, its ``rotator_rotations_total`` counters from ``GET /metrics`` (by result; the
  scheduler's rotations included), the machine's load average and, on SQLite, the size of
  the ``-wal`` file (a checkpoint starved by readers would show there).

Errors are counted, never ignored: a failed read is any exception or non-200 (by kind and
error type), a failed rotation a job or scheduled rotation that ended ``failed`` or
``rolled_back`` (``skipped``, e.g. the credential was already rotating, is reported apart),
or a POST not answered 202. After the run the audit chain is verified.

Output in ``--out`` (default: a new temp dir): ``soak-DB.csv`` (one row per second),
``soak-DB.png`` (RSS, read p50/p99 and fds/threads over time; needs matplotlib, the ``bench``
extra), ``soak-DB.json`` (the summary). The verdict ``flat`` is computed (:func:`verdict`):
after the warm-up (the first ``--warmup`` seconds, default a third of the run up to 60 s) the
least-squares RSS slope is below ``RSS_SLOPE_MAX`` MiB/min and
the thread and non-socket fd floors do not rise and the sockets stay within what the clients
explain (``FILE_FLOOR_GROWTH_MAX``, ``SOCKET_SLACK``); see those constants for why.

    python -m bench.soak --db sqlite|postgresql [--minutes 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so that tests.support imports
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    CredSpec,
    ThrowawayPostgres,
    add_credential_blocking,
    audit_verify_blocking,
    close_service,
    create_token_blocking,
    exit_on_sigterm,
    open_service,
    print_machine_info,
    source_version,
)

# Flatness criterion (after warm-up).
#
# RSS: a least-squares slope below 1 MiB/min. The default load makes ~100 reads/s and ~5
# rotations/s, so a leak of ~175 bytes per read (one small dict or a few strings per request)
# or ~3.5 KiB per rotation crosses it; what stays under it cannot be told from allocator noise
# in a two-minute window (CPython's arenas and SQLite's/psycopg's caches step up by a few
# hundred KiB at a time). A real leak under this bound still needs a longer run to show.
RSS_SLOPE_MAX = 1.0  # MiB/min
# fds, split into sockets and the rest (files, pipes, epoll/event fds):
# - the rest: the floor (lowest count) of the last third of the samples after warm-up at most
#   FILE_FLOOR_GROWTH_MAX above the floor of the first third. SQLite's pooled connections hold
#   3 fds each (db, -wal, -shm) and an overflow connection comes and goes, so the count may
#   swing by 3s; a leaked fd stays, so a leak lifts the floor (one per 1,000 reads at 100/s
#   lifts it by ~8 between the first and the last third of two minutes).
# - sockets: never more than the connections the soak's clients can hold open at once (every
#   read worker, the driver, the sampler, each watch stream) plus SOCKET_SLACK (the listening
#   socket, PostgreSQL's pool of at most 10, the http connector's connections to its target).
#   Their count swings by tens legitimately: when answers slow down every read worker holds a
#   connection, when they are fast uvicorn closes the idle ones after 5 s. A floor would
#   follow the latency, not leaks; a leaked socket is never closed, so leaks pass the bound.
# Threads: their floor rises by at most THREAD_FLOOR_GROWTH_MAX.
FILE_FLOOR_GROWTH_MAX = 3
SOCKET_SLACK = 16
THREAD_FLOOR_GROWTH_MAX = 1
TOKEN_ENV = "ROTATOR_SOAK_TOKEN"
LOG_LEVELS = ("warning", "error", "critical", "traceback")
CSV_FIELDS = (
    "t_s",
    "rss_mib",
    "fds",
    "sockets",
    "threads",
    "rotations_total",
    "rotations_failed_total",
    "rotations_per_s",
    "reads",
    "reads_failed",
    "read_p50_ms",
    "read_p99_ms",
    "read_max_ms",
    "serve_cpu_pct",
    "loadavg_1m",
    "wal_mib",
)


# --------------------------------------------------------------------- pure functions


@dataclass(frozen=True)
class Sample:
    """One second of the serve process: ``t`` seconds since the load started."""

    t: float
    rss_mib: float
    fds: int  # all open fds, sockets included
    threads: int
    rotations: int  # ended (any result) in the process so far, from /metrics
    rotations_failed: int  # of which failed or rolled back
    sockets: int = 0  # of which sockets
    cpu_s: float = 0.0  # the serve process's CPU seconds so far (user + system)
    loadavg: float = 0.0  # the machine's 1-minute load average (a shared box: context)
    wal_mib: float = 0.0  # SQLite: size of the -wal file (checkpoint starvation shows here)


@dataclass(frozen=True)
class Read:
    """One read: scheduled ``t`` seconds since the load started, its latency from then."""

    t: float
    latency_s: float
    kind: str
    ok: bool
    error: str = ""


@dataclass
class Window:
    """A sample and the reads scheduled in the second before it."""

    sample: Sample
    rotations_per_s: float
    reads: int
    reads_failed: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_pct: float = 0.0


@dataclass
class Summary:
    seconds: float
    warmup_s: float
    rotations: int
    rotations_failed: int
    rotations_per_s: float
    reads: int
    reads_failed: int
    reads_per_s: float
    read_ms: dict[str, dict[str, float]]  # kind (and "all") -> p50, p99, max, n
    rss_first_min_mib: float
    rss_last_min_mib: float
    rss_slope_mib_per_min: float
    fd_min: int
    fd_max: int
    sockets_max: int
    socket_bound: int | None
    file_fd_min: int
    file_fd_max: int
    file_fd_floor_growth: int
    threads_min: int
    threads_max: int
    flat: bool
    why: list[str] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; NaN if empty.
    Nearest rank, so a p99 is a latency some read really had."""
    if not values:
        return math.nan
    s = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(s)))
    return s[min(rank, len(s)) - 1]


def slope_per_min(ts: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``ts`` (seconds), per minute; 0 with < 2 points."""
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return 60.0 * sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var


def windows(samples: Sequence[Sample], reads: Iterable[Read]) -> list[Window]:
    """Each sample with the reads scheduled in (previous sample's t, its t] and the rotations
    ended between the two; the first sample's window starts at 0."""
    ordered = sorted(samples, key=lambda s: s.t)
    bins: list[list[Read]] = [[] for _ in ordered]
    bounds = [s.t for s in ordered]
    for r in reads:
        # bisect by hand: the first sample at or after the read's scheduled time
        lo, hi = 0, len(bounds)
        while lo < hi:
            mid = (lo + hi) // 2
            if bounds[mid] < r.t:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(bins):
            bins[lo].append(r)
    out = []
    prev_t = 0.0
    prev_rot = ordered[0].rotations if ordered else 0
    prev_cpu = ordered[0].cpu_s if ordered else 0.0
    for s, rs in zip(ordered, bins, strict=True):
        lat = [r.latency_s * 1000 for r in rs]
        dt = s.t - prev_t
        out.append(
            Window(
                sample=s,
                rotations_per_s=(s.rotations - prev_rot) / dt if dt > 0 else 0.0,
                reads=len(rs),
                reads_failed=sum(not r.ok for r in rs),
                p50_ms=percentile(lat, 50),
                p99_ms=percentile(lat, 99),
                max_ms=max(lat) if lat else math.nan,
                cpu_pct=100 * (s.cpu_s - prev_cpu) / dt if dt > 0 else 0.0,
            )
        )
        prev_t, prev_rot, prev_cpu = s.t, s.rotations, s.cpu_s
    return out


def verdict(
    steady: Sequence[Sample],
    socket_bound: int | None = None,
    rss_slope_max: float = RSS_SLOPE_MAX,
) -> tuple[bool, list[str]]:
    """Flat or not, and why not, from the samples after warm-up (in time order);
    ``socket_bound``: the most sockets the load can explain (None: not checked)."""
    if len(steady) < 3:
        return False, ["fewer than 3 samples after warm-up"]
    why = []
    slope = slope_per_min([s.t for s in steady], [s.rss_mib for s in steady])
    if slope >= rss_slope_max:
        why.append(f"RSS grows {slope:.2f} MiB/min (limit {rss_slope_max:g})")
    file_growth, thread_growth = floor_growth(steady)
    if file_growth > FILE_FLOOR_GROWTH_MAX:
        why.append(f"the non-socket fd floor rose by {file_growth} (limit {FILE_FLOOR_GROWTH_MAX})")
    if thread_growth > THREAD_FLOOR_GROWTH_MAX:
        why.append(f"the thread floor rose by {thread_growth} (limit {THREAD_FLOOR_GROWTH_MAX})")
    most = max(s.sockets for s in steady)
    if socket_bound is not None and most > socket_bound:
        why.append(f"{most} sockets open, more than the load explains ({socket_bound})")
    return not why, why


def floor_growth(steady: Sequence[Sample]) -> tuple[int, int]:
    """(non-socket fds, threads): lowest count in the last third of ``steady`` minus the lowest
    in the first third."""
    third = max(1, len(steady) // 3)
    first, last = steady[:third], steady[-third:]
    return (
        min(s.fds - s.sockets for s in last) - min(s.fds - s.sockets for s in first),
        min(s.threads for s in last) - min(s.threads for s in first),
    )


def summarize(
    samples: Sequence[Sample],
    reads: Sequence[Read],
    warmup_s: float,
    socket_bound: int | None = None,
) -> Summary:
    """The figures of a run (see the module docstring); ``samples`` in time order."""
    seconds = samples[-1].t if samples else 0.0
    steady = [s for s in samples if s.t > warmup_s]
    flat, why = verdict(steady, socket_bound)
    read_ms: dict[str, dict[str, float]] = {}
    for kind in ["all", *sorted({r.kind for r in reads})]:
        lat = [r.latency_s * 1000 for r in reads if kind in ("all", r.kind)]
        read_ms[kind] = {
            "n": float(len(lat)),
            "p50": percentile(lat, 50),
            "p99": percentile(lat, 99),
            "max": max(lat) if lat else math.nan,
        }
    first = [s.rss_mib for s in samples if s.t <= 60.0]
    last = [s.rss_mib for s in samples if s.t > seconds - 60.0]
    base = samples[0].rotations if samples else 0
    rotations = samples[-1].rotations - base if samples else 0
    return Summary(
        seconds=seconds,
        warmup_s=warmup_s,
        rotations=rotations,
        rotations_failed=(samples[-1].rotations_failed - samples[0].rotations_failed)
        if samples
        else 0,
        rotations_per_s=rotations / seconds if seconds else 0.0,
        reads=len(reads),
        reads_failed=sum(not r.ok for r in reads),
        reads_per_s=len(reads) / seconds if seconds else 0.0,
        read_ms=read_ms,
        rss_first_min_mib=sum(first) / len(first) if first else math.nan,
        rss_last_min_mib=sum(last) / len(last) if last else math.nan,
        rss_slope_mib_per_min=slope_per_min([s.t for s in steady], [s.rss_mib for s in steady]),
        fd_min=min((s.fds for s in steady), default=0),
        fd_max=max((s.fds for s in steady), default=0),
        sockets_max=max((s.sockets for s in steady), default=0),
        socket_bound=socket_bound,
        file_fd_min=min((s.fds - s.sockets for s in steady), default=0),
        file_fd_max=max((s.fds - s.sockets for s in steady), default=0),
        file_fd_floor_growth=floor_growth(steady)[0] if steady else 0,
        threads_min=min((s.threads for s in steady), default=0),
        threads_max=max((s.threads for s in steady), default=0),
        flat=flat,
        why=why,
    )


def write_csv(path: Path, rows: Sequence[Window]) -> None:
    """One row per window, columns CSV_FIELDS (latencies blank where a window had no read)."""

    def ms(x: float) -> str:
        return "" if math.isnan(x) else f"{x:.3f}"

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in rows:
            s = r.sample
            w.writerow(
                [
                    f"{s.t:.3f}",
                    f"{s.rss_mib:.2f}",
                    s.fds,
                    s.sockets,
                    s.threads,
                    s.rotations,
                    s.rotations_failed,
                    f"{r.rotations_per_s:.2f}",
                    r.reads,
                    r.reads_failed,
                    ms(r.p50_ms),
                    ms(r.p99_ms),
                    ms(r.max_ms),
                    f"{r.cpu_pct:.0f}",
                    f"{s.loadavg:.2f}",
                    f"{s.wal_mib:.2f}",
                ]
            )


def format_summary(s: Summary, failures: dict[str, Any]) -> str:
    lines = [
        f"soak: {s.seconds:.0f} s (warm-up {s.warmup_s:.0f} s excluded from the verdict)",
        f"rotations: {s.rotations} ended ({s.rotations_per_s:.2f}/s), "
        f"{s.rotations_failed} failed or rolled back",
        f"reads: {s.reads} ({s.reads_per_s:.1f}/s), {s.reads_failed} failed",
    ]
    for kind, q in s.read_ms.items():
        lines.append(
            f"  read latency {kind:10}: p50 {q['p50']:7.2f} ms  p99 {q['p99']:7.2f} ms  "
            f"max {q['max']:8.2f} ms  (n={q['n']:.0f})"
        )
    lines += [
        f"RSS: first minute {s.rss_first_min_mib:.1f} MiB, last minute "
        f"{s.rss_last_min_mib:.1f} MiB, slope after warm-up {s.rss_slope_mib_per_min:+.2f} "
        f"MiB/min (limit {RSS_SLOPE_MAX:g})",
        f"fds after warm-up: {s.fd_min}..{s.fd_max}; sockets at most {s.sockets_max} (bound "
        f"{s.socket_bound}); other fds {s.file_fd_min}..{s.file_fd_max}, floor rose by "
        f"{s.file_fd_floor_growth} (limit {FILE_FLOOR_GROWTH_MAX}); "
        f"threads: min {s.threads_min}, max {s.threads_max}",
    ]
    for k, v in failures.items():
        lines.append(f"{k}: {v}")
    lines.append("verdict: " + ("flat" if s.flat else "NOT flat: " + "; ".join(s.why)))
    return "\n".join(lines)


def plot(path: Path, rows: Sequence[Window], warmup_s: float, title: str) -> None:
    """RSS, read p50/p99 and fds/threads over time, three panels sharing the time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r.sample.t for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, sharex=True, figsize=(9, 8))
    ax1.plot(t, [r.sample.rss_mib for r in rows], color="tab:blue")
    ax1.set_ylabel("RSS (MiB)")
    ax2.plot(t, [r.p99_ms for r in rows], color="tab:red", label="p99")
    ax2.plot(t, [r.p50_ms for r in rows], color="tab:green", label="p50")
    ax2.set_ylabel("read latency (ms)")
    ax2.set_yscale("log")
    ax2.legend(loc="upper right")
    ax3.plot(t, [r.sample.fds for r in rows], color="tab:purple", label="open fds")
    ax3.plot(t, [r.sample.sockets for r in rows], color="tab:pink", label="of which sockets")
    ax3.plot(t, [r.sample.threads for r in rows], color="tab:orange", label="threads")
    ax3.set_ylabel("count")
    ax3.set_xlabel("seconds since the load started")
    ax3.legend(loc="upper right")
    for ax in (ax1, ax2, ax3):
        ax.axvspan(0, warmup_s, color="0.9", zorder=0)
        ax.grid(True, alpha=0.3)
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------- the serve process


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_sockets(pid: int) -> int:
    """How many of process ``pid``'s open fds are sockets."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return n


def proc_figures(pid: int) -> tuple[float, int, int]:
    """(VmRSS MiB, Threads, open fds) of process ``pid`` from /proc."""
    rss_kib = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss_kib / 1024.0, threads, len(os.listdir(f"/proc/{pid}/fd"))


def rotation_counts(metrics_text: str, label: str = "result") -> Counter[str]:
    """``rotator_rotations_total`` summed by ``label`` (result, trigger or connector), from
    a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Counter[str] = Counter()
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name != "rotator_rotations":
            continue
        for s in fam.samples:
            if s.name == "rotator_rotations_total":
                out[s.labels.get(label, "")] += int(s.value)
    return out


class Sampler(threading.Thread):
    """Every second on the clock (not a second after the previous sample): one Sample."""

    def __init__(
        self, pid: int, url: str, t0: float, stop: threading.Event, wal: Path | None = None
    ) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        import httpx

        self.pid, self.t0, self.stop_event, self.wal = pid, t0, stop, wal
        self.http = httpx.Client(base_url=url, timeout=10.0)
        self.samples: list[Sample] = []
        self.by_result: Counter[str] = Counter()
        self.by_trigger: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        k = 1
        while not self.stop_event.wait(max(0.0, self.t0 + k - time.monotonic())):
            k += 1
            t = time.monotonic() - self.t0
            try:
                rss, threads, fds = proc_figures(self.pid)
                cpu = proc_cpu_s(self.pid)
                sockets = proc_sockets(self.pid)
                wal = self.wal.stat().st_size / 2**20 if self.wal and self.wal.exists() else 0.0
                resp = self.http.get("/metrics")
                resp.raise_for_status()
                self.by_result = rotation_counts(resp.text)
                self.by_trigger = rotation_counts(resp.text, "trigger")
            except Exception as exc:  # the serve process died or hung: report, go on
                self.errors[type(exc).__name__] += 1
                continue
            failed = self.by_result["failed"] + self.by_result["rolled_back"]
            self.samples.append(
                Sample(
                    t,
                    rss,
                    fds,
                    threads,
                    sum(self.by_result.values()),
                    failed,
                    sockets=sockets,
                    cpu_s=cpu,
                    loadavg=os.getloadavg()[0],
                    wal_mib=wal,
                )
            )
        self.http.close()


class Driver(threading.Thread):
    """Open-loop rotation requests: POST .../rotate at ``rate``/s, round-robin."""

    def __init__(
        self, url: str, token: str, names: list[str], rate: float, t0: float, end: float
    ) -> None:
        super().__init__(name="soak-driver", daemon=True)
        import httpx

        self.http = httpx.Client(
            base_url=url, timeout=30.0, headers={"Authorization": f"Bearer {token}"}
        )
        self.names, self.rate, self.t0, self.end = names, rate, t0, end
        self.jobs: list[str] = []
        self.errors: Counter[str] = Counter()
        self.latency_s: list[float] = []

    def run(self) -> None:
        import urllib.parse

        k = 0
        while True:
            due = self.t0 + k / self.rate
            if due >= self.end:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            name = self.names[k % len(self.names)]
            k += 1
            path = "/v1/credentials/" + urllib.parse.quote(name, safe="") + "/rotate"
            try:
                resp = self.http.post(path)
            except Exception as exc:
                self.errors[type(exc).__name__] += 1
                continue
            self.latency_s.append(time.monotonic() - due)
            if resp.status_code != 202:
                self.errors[f"HTTP {resp.status_code}"] += 1
            else:
                self.jobs.append(resp.json()["id"])
        self.http.close()


def job_outcomes(url: str, token: str, ids: set[str], timeout_s: float = 120.0) -> Counter[str]:
    """Per-rotation outcomes of the driver's jobs (rotated, failed, rolled_back, skipped),
    ``running`` for jobs still running after ``timeout_s``, ``interrupted`` for lost ones."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(
        base_url=url, timeout=30.0, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        while True:
            out: Counter[str] = Counter()
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"limit": 1000}
                if cursor:
                    params["cursor"] = cursor
                page = http.get("/v1/rotations", params=params)
                page.raise_for_status()
                doc = page.json()
                for job in doc["items"]:
                    if job["id"] not in ids:
                        continue
                    if job["status"] != "done":
                        out[job["status"]] += 1
                        continue
                    res = job["result"]
                    for key in ("rotated", "failed", "rolled_back", "skipped"):
                        out[key] += len(res[key])
                cursor = doc.get("next_cursor")
                if not cursor:
                    break
            if not out["running"] or time.monotonic() > deadline:
                return out
            time.sleep(1.0)


# --------------------------------------------------------------------- the reader process


Getter = Callable[[str], None]


def _reader(kind: str, url: str, token: str) -> tuple[Getter, Callable[[], None]]:
    """(read one name, close) for a reader of ``kind``: ``raw``, ``sdk``, ``sdk-cached``."""
    import urllib.parse

    import httpx

    from rotator.client import Client

    if kind == "raw":
        http = httpx.Client(
            base_url=url, timeout=10.0, headers={"Authorization": f"Bearer {token}"}
        )

        def get_raw(name: str) -> None:
            resp = http.get("/v1/credentials/" + urllib.parse.quote(name, safe="") + "/value")
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}")

        return get_raw, http.close
    if kind not in ("sdk", "sdk-cached"):
        raise SystemExit(f"unknown read kind {kind!r}: raw, sdk or sdk-cached")
    client = Client(url, token, cache_ttl=1.0 if kind == "sdk-cached" else 0.0)

    def get_sdk(name: str) -> None:
        client.get(name)

    return get_sdk, client.close


def _read_loop(
    kind: str,
    get: Getter,
    names: list[str],
    rate: float,
    t0: float,
    end: float,
    offset: int,
    out: list[Read],
    workers: int,
) -> None:
    """Open loop: read number k is due at t0 + phase + k/rate and is handed to one of
    ``workers`` threads then, whether or not the reads before it came back (so a slow answer
    does not hold back the next request: up to ``workers`` are outstanding, more wait in the
    pool's queue); its latency counts from when it was due, queueing included."""
    from concurrent.futures import ThreadPoolExecutor

    def one(name: str, due: float) -> None:
        try:
            get(name)
            out.append(Read(due - t0, time.monotonic() - due, kind, True))
        except Exception as exc:  # counted; the SDK's errors never hold a value
            error = f"{type(exc).__name__}: {str(exc)[:120]}"
            out.append(Read(due - t0, time.monotonic() - due, kind, False, error))

    # Spread the kinds' schedules over the period, so they do not all fire at once.
    phase = offset / (rate * 7)
    with ThreadPoolExecutor(workers, thread_name_prefix=f"soak-read-{kind}") as pool:
        k = 0
        while True:
            due = t0 + phase + k / rate
            if due >= end:
                return
            time.sleep(max(0.0, due - time.monotonic()))
            pool.submit(one, names[(offset * 37 + k) % len(names)], due)
            k += 1


def _reader_main(args: argparse.Namespace) -> int:
    """The reader process: opens its clients (one read each, unmeasured), prints ``ready``,
    reads ``t0 end`` (time.monotonic values: one clock for every process on Linux) from
    stdin, reads until ``end``, then prints every Read as JSON."""
    token = os.environ[TOKEN_ENV]
    names = args.names.split(",")
    readers = [_reader(kind, args.readers, token) for kind in args.read_kinds.split(",")]
    for get, _close in readers:
        get(names[0])
    print("ready", flush=True)
    t0, end = (float(x) for x in sys.stdin.readline().split())
    out: list[Read] = []
    threads = [
        threading.Thread(
            target=_read_loop,
            args=(kind, get, names, args.read_rate, t0, end, i, out, args.read_workers),
            name=f"soak-read-{kind}-{i}",
        )
        for i, (kind, (get, _close)) in enumerate(
            zip(args.read_kinds.split(","), readers, strict=True)
        )
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for _get, close in readers:
        close()
    json.dump([asdict(r) for r in out], sys.stdout)
    return 0


# --------------------------------------------------------------------- diagnosis

TRACE_FRAMES = 8


def _traced(serve: Any, trace_dir: Path) -> Any:
    """``serve`` started as ``python -X tracemalloc bench/soak.py --traced-serve DIR serve
    ...``: the same CLI, plus a thread dumping a tracemalloc snapshot every 30 s into
    ``trace_dir`` (compare two with :func:`compare_snapshots`). Diagnosis only: tracing slows
    every allocation, so figures of a traced run are not the soak's."""
    trace_dir.mkdir(parents=True, exist_ok=True)
    wrapper = trace_dir / "traced-rotator"
    wrapper.write_text(
        f"#!/bin/sh\nexec {sys.executable} -X tracemalloc={TRACE_FRAMES} {Path(__file__)} "
        f'--traced-serve {trace_dir} "$@"\n'
    )
    wrapper.chmod(0o755)

    class Traced(type(serve)):  # type: ignore[misc]
        def __enter__(self) -> Any:
            from tests.support import server

            saved, server.ROTATOR = server.ROTATOR, str(wrapper)
            try:
                return super().__enter__()
            finally:
                server.ROTATOR = saved

    return Traced(serve.env, serve.args, start_timeout_s=600.0, stop_timeout_s=60.0)


def _traced_serve(trace_dir: Path, argv: list[str]) -> int:
    import tracemalloc

    from rotator.cli.main import run as rotator_main

    def dump() -> None:
        k = 0
        while True:
            time.sleep(30.0)
            k += 1
            tracemalloc.take_snapshot().dump(str(trace_dir / f"snap-{k:03d}.tracemalloc"))

    threading.Thread(target=dump, name="soak-tracemalloc", daemon=True).start()
    sys.argv = ["rotator", *argv]
    rotator_main()
    return 0


def compare_snapshots(old: Path, new: Path, top: int = 15) -> str:
    """The allocation sites that grew most from snapshot ``old`` to ``new``."""
    import tracemalloc

    a = tracemalloc.Snapshot.load(str(old))
    b = tracemalloc.Snapshot.load(str(new))
    lines = []
    for stat in b.compare_to(a, "traceback")[:top]:
        lines.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
        lines += ["    " + ln for ln in stat.traceback.format(limit=8)]
    return "\n".join(lines)


# --------------------------------------------------------------------- the run


def _specs(args: argparse.Namespace, api: Any) -> list[CredSpec]:
    import secrets

    specs: list[CredSpec] = []
    n_http = min(args.http_creds, args.creds)
    if n_http:
        admin = "soak-admin-" + secrets.token_hex(16)
        api.add_account("soak", admin)
        specs.append(CredSpec("api/admin", "local", value=admin))
        settings = {
            "base_url": api.url,
            "allow_insecure_http": "true",  # the target speaks plain HTTP on loopback
            "auth": "api/admin",
            "set_path": "/keys",
            "set_body": '{"key": "$value"}',
            "test_path": "/whoami",
            "revoke_path": "/keys/$value",
        }
        for i in range(n_http):
            first = f"first-{i:04d}-" + secrets.token_hex(8)
            api.add_key("soak", first)
            specs.append(
                CredSpec(f"soak/http/{i:04d}", "http", settings, value=first, grace=args.grace)
            )
    for i in range(args.creds - n_http):
        every = args.every if i < args.scheduled else None
        specs.append(CredSpec(f"soak/local/{i:04d}", "local", grace=args.grace, every=every))
    return specs


def run(args: argparse.Namespace, pg: ThrowawayPostgres | None) -> int:
    import logging

    from tests.support import api_server
    from tests.support.server import ServeProcess, serve_env

    from bench.common import LOOPBACK

    logging.getLogger("http.server").disabled = True
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="rotator-soak-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="rotator-soak-home-"))
    api_server._Handler.disable_nagle_algorithm = True  # as bench.cli_bench, see there
    api = api_server.ApiServer(delay_s=args.latency_ms / 1000).start()
    try:
        url = pg.url() if pg is not None else f"sqlite:///{home / 'rotator.db'}"
        svc = open_service(home, url)
        specs = _specs(args, api)
        for spec in specs:
            add_credential_blocking(svc, spec)
        operator = create_token_blocking(svc, "soak-driver", "operator")
        reader = create_token_blocking(svc, "soak-reader", "app")
        close_service(svc)
        names = [s.name for s in specs if s.name != "api/admin"]
        env = serve_env(home, url, ROTATOR_API_RATE="1000000/s")
        seconds = args.minutes * 60
        warmup = args.warmup if args.warmup is not None else min(60.0, seconds / 3)
        serve_proc = ServeProcess(env, ["--poll", "1"])
        if args.tracemalloc:
            serve_proc = _traced(serve_proc, Path(args.tracemalloc))
        with serve_proc as serve:
            assert serve.proc is not None
            pid = serve.proc.pid
            print(f"serve pid {pid} at {serve.base_url}; {len(specs)} credentials", flush=True)
            readers = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.soak",
                    "--readers",
                    serve.base_url,
                    "--names",
                    ",".join(names),
                    "--read-kinds",
                    args.read_kinds,
                    "--read-rate",
                    str(args.read_rate),
                    "--read-workers",
                    str(args.read_workers),
                ],
                cwd=ROOT,
                env={**os.environ, TOKEN_ENV: reader},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert readers.stdin is not None
            assert readers.stdout is not None
            if readers.stdout.readline().strip() != "ready":
                readers.kill()
                raise RuntimeError("the reader process did not start")
            t0 = time.monotonic() + 0.5
            end = t0 + seconds
            readers.stdin.write(f"{t0!r} {end!r}\n")
            readers.stdin.flush()
            stop = threading.Event()
            wal = home / "rotator.db-wal" if pg is None else None
            sampler = Sampler(pid, serve.base_url, t0, stop, wal)
            driver = Driver(serve.base_url, operator, names, args.rotate_rate, t0, end)
            sampler.start()
            driver.start()
            try:
                stdout, _ = readers.communicate(timeout=seconds + 120)
            finally:
                stop.set()
                if readers.poll() is None:
                    readers.kill()
            driver.join()
            sampler.join()
            if readers.returncode != 0:
                raise RuntimeError(f"reader process exit {readers.returncode}")
            reads = [Read(**r) for r in json.loads(stdout)]
            outcomes = job_outcomes(serve.base_url, operator, set(driver.jobs))
            ended = dict(sampler.by_result)
            code = serve.stop()
            serve_log = serve.stderr
        svc = open_service(home, url, init=False)
        try:
            chain = audit_verify_blocking(svc)
        finally:
            close_service(svc)
    finally:
        api.stop()
        shutil.rmtree(home, ignore_errors=True)

    samples = [s for s in sampler.samples if s.t <= seconds + 0.5]
    rows = windows(samples, reads)
    kinds = args.read_kinds.split(",")
    socket_bound = len(kinds) * args.read_workers + kinds.count("sdk-cached") + 2 + SOCKET_SLACK
    summary = summarize(samples, reads, warmup, socket_bound)
    read_errors = Counter(f"{r.kind}: {r.error}" for r in reads if not r.ok)
    failures: dict[str, Any] = {
        "rotation requests not accepted": dict(driver.errors) or 0,
        "driver jobs (rotations by outcome)": dict(outcomes),
        "all rotations ended in serve, by result (/metrics)": ended,
        "... by trigger (manual: the driver's; schedule: serve's scheduler)": dict(
            sampler.by_trigger
        ),
        "failed reads by kind and error": dict(read_errors) or 0,
        "sampler errors": dict(sampler.errors) or 0,
        "audit chain": "verifies" if chain.ok else f"BROKEN: {chain}",
        "serve exit code": code,
        "serve log lines at WARNING or above": sum(
            1 for ln in serve_log.splitlines() if any(w in ln.lower() for w in LOG_LEVELS)
        ),
    }
    text = format_summary(summary, failures)
    print("\n" + text, flush=True)
    stem = out_dir / f"soak-{args.db}"
    write_csv(stem.with_suffix(".csv"), rows)
    doc = {
        "summary": asdict(summary),
        "failures": failures,
        "source": source_version(),
        "args": vars(args),
        "loopback": LOOPBACK,
    }
    (out_dir / f"soak-{args.db}-serve.log").write_text(serve_log)
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=str))
    try:
        plot(
            stem.with_suffix(".png"),
            rows,
            warmup,
            f"rotator serve soak on {args.db}: {summary.rotations_per_s:.1f} rotations/s, "
            f"{summary.reads_per_s:.0f} reads/s",
        )
    except ImportError:
        print("no matplotlib (pip install -e '.[bench]'): no plot", flush=True)
    print(f"\nwrote {stem}.csv, .json, .png", flush=True)
    bad = (
        summary.reads_failed
        or outcomes["failed"]
        or outcomes["rolled_back"]
        or outcomes["running"]
        or outcomes["interrupted"]
        or driver.errors
        or not chain.ok
    )
    return 1 if bad or not summary.flat else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--minutes", type=float, default=3.0, help="length of the load")
    ap.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds excluded from the verdict (default: a third, at most 60)",
    )
    ap.add_argument("--out", help="directory for the CSV, JSON and PNG (default: a temp dir)")
    ap.add_argument("--creds", type=int, default=200, help="credentials in all")
    ap.add_argument("--http-creds", type=int, default=20, help="of which on the http target")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="http target's answer delay")
    ap.add_argument("--scheduled", type=int, default=40, help="local ones with --every")
    ap.add_argument("--every", default="30s", help="their rotation interval")
    ap.add_argument("--grace", default="5s", help="every credential's grace")
    ap.add_argument("--rotate-rate", type=float, default=4.0, help="REST rotations requested/s")
    ap.add_argument(
        "--read-kinds",
        default="sdk,sdk,raw,sdk-cached",
        help="one client each, each at --read-rate",
    )
    ap.add_argument("--read-rate", type=float, default=25.0, help="reads/s of each kind")
    ap.add_argument(
        "--read-workers", type=int, default=8, help="most reads of one kind outstanding at once"
    )
    ap.add_argument("--no-machine", action="store_true", help="do not print machine info")
    ap.add_argument(
        "--tracemalloc", metavar="DIR", help="diagnosis: trace serve's allocations into DIR"
    )
    ap.add_argument("--readers", help=argparse.SUPPRESS)  # internal: reader process mode
    ap.add_argument("--names", default="", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--traced-serve"]:
        return _traced_serve(Path(argv[1]), argv[2:])
    if argv[:1] == ["--compare"]:
        print(compare_snapshots(Path(argv[1]), Path(argv[2])))
        return 0
    args = ap.parse_args(argv)
    if args.readers:
        return _reader_main(args)
    exit_on_sigterm()
    if not args.no_machine:
        print_machine_info()
    print(
        f"\n== soak: rotator serve on {args.db}, {args.minutes:g} min; rotator source "
        f"{source_version()}",
        flush=True,
    )
    if args.db == "postgresql":
        with ThrowawayPostgres() as pg:
            return run(args, pg)
    return run(args, None)


if __name__ == "__main__":
    sys.exit(main())
