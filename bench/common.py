"""Shared helpers for the benchmarks: a throwaway PostgreSQL 15, peak RSS, timing, tables,
and the only doors from the benchmarks into rotator's service and engine (the last section).

The benchmarks import it as ``bench.common`` (run them from the repository root with
``python -m bench...``).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
PG_SUPERUSER = "postgres"
LOOPBACK = "127.0.0.1"
PG_START_ATTEMPTS = 3
PG_READY_TIMEOUT_S = 30.0


# ----------------------------------------------------------------------------- timing


@dataclass
class Timer:
    """Wall-clock seconds of a ``with timed() as t:`` block in ``t.seconds``, and the CPU
    seconds this process used meanwhile (all threads) in ``t.cpu_seconds``. On a shared box
    wall time includes waiting for a core; CPU time mostly does not.
    """

    start: float = 0.0
    seconds: float = 0.0
    cpu_start: float = 0.0
    cpu_seconds: float = 0.0


@contextmanager
def timed() -> Iterator[Timer]:
    t = Timer(start=time.perf_counter(), cpu_start=time.process_time())
    try:
        yield t
    finally:
        t.seconds = time.perf_counter() - t.start
        t.cpu_seconds = time.process_time() - t.cpu_start


def repeat_ms(fn: Callable[[], Any], times: int) -> tuple[float, float, Any]:
    """Run ``fn`` ``times`` times; (median ms, min ms, last result)."""
    samples: list[float] = []
    result: Any = None
    for _ in range(times):
        with timed() as t:
            result = fn()
        samples.append(t.seconds * 1000.0)
    return statistics.median(samples), min(samples), result


# -------------------------------------------------------------------------------- RSS


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB.

    ``ru_maxrss`` (KiB on Linux) is the portable source, but Linux carries it over from the
    parent across fork+exec, so a child started by a bigger parent reports the parent's peak.
    Where ``/proc/self/status`` has ``VmHWM`` (this process image's own high-water mark,
    reset by exec) we use that instead; see :func:`rss_note`.
    """
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_note() -> str:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    src = "VmHWM" if _proc_status_kib("VmHWM") is not None else "ru_maxrss"
    return f"{src}; getrusage ru_maxrss {maxrss:.0f} MiB"


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def current_rss_mib() -> float:
    """Current resident set size (VmRSS), or 0 where /proc is unavailable."""
    kib = _proc_status_kib("VmRSS")
    return 0.0 if kib is None else kib / 1024.0


# ----------------------------------------------------------------------------- results


@dataclass
class Result:
    """One measured quantity. ``count``/``seconds`` give rates; ``value`` is anything else."""

    name: str
    count: int = 0
    seconds: float = 0.0
    value: float | None = None
    unit: str = ""
    note: str = ""
    cpu_seconds: float | None = None  # this process's CPU time for ``count`` ops, if measured

    @property
    def per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")

    @property
    def us_per_op(self) -> float:
        return self.seconds / self.count * 1e6 if self.count else 0.0

    def render(self) -> tuple[str, str, str]:
        """(value, per-op, note) strings for a table row."""
        if self.value is not None:
            return f"{self.value:,.{2 if self.value < 100 else 0}f} {self.unit}", "", self.note
        cpu = ""
        if self.cpu_seconds is not None and self.count:
            cpu = f"; process CPU {_fmt_per_op(self.cpu_seconds / self.count * 1e6)}"
        return (
            f"{self.per_s:,.0f} {self.unit or 'ops'}/s",
            _fmt_per_op(self.us_per_op),
            f"{self.count:,} in {self.seconds:.2f} s{cpu}"
            + (f"; {self.note}" if self.note else ""),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "count": self.count,
            "seconds": self.seconds,
            "value": self.value,
            "unit": self.unit,
            "note": self.note,
            "cpu_seconds": self.cpu_seconds,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Result:
        return cls(**d)


def _fmt_per_op(us: float) -> str:
    if us >= 1000:
        return f"{us / 1000:,.2f} ms/op"
    return f"{us:,.1f} µs/op"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain aligned text table (also valid Markdown, so it can be pasted into docs)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(f"\n### {title}\n")
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    sys.stdout.flush()


def print_results(title: str, results: Sequence[Result]) -> None:
    print_table(
        title,
        ["measurement", "result", "per op", "detail"],
        [(r.name, *r.render()) for r in results],
    )


def print_comparison(title: str, columns: dict[str, list[Result]]) -> None:
    """One row per measurement name, one column per run (e.g. per database)."""
    names: list[str] = []
    for rs in columns.values():
        for r in rs:
            if r.name not in names:
                names.append(r.name)
    rows = []
    for name in names:
        row = [name]
        for rs in columns.values():
            found = [r for r in rs if r.name == name]
            if not found:
                row.append("-")
                continue
            r = found[0]
            value, per_op, _ = r.render()
            if r.cpu_seconds is not None and r.count:
                per_op += f", CPU {_fmt_per_op(r.cpu_seconds / r.count * 1e6)}"
            row.append(f"{value} ({per_op})" if per_op else value)
        rows.append(row)
    print_table(title, ["measurement", *columns], rows)


# ------------------------------------------------------------------------ machine info


def source_version() -> str:
    """Which rotator source the benchmark imports: the git commit, and whether src/ has
    uncommitted changes; or the snapshot ``bench/run.sh --snapshot`` made.

    Others may commit while a long benchmark runs; each benchmark process records this at
    its start so a mixed run can be spotted.
    """
    snapshot = os.environ.get("ROTATOR_BENCH_SOURCE")
    if snapshot:
        return snapshot
    import rotator

    root = Path(__file__).resolve().parent.parent
    src = Path(rotator.__file__).resolve().parent.parent
    if src != root / "src":
        return f"rotator imported from {src}"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted src/ changes" if dirty else "")


def _versions(*dists: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for d in dists:
        try:
            out.append(f"{d} {version(d)}")
        except PackageNotFoundError:
            out.append(f"{d} -")
    return ", ".join(out)


def machine_info() -> dict[str, str]:
    info = {
        "rotator source (git)": source_version(),
        "cpus (nproc)": str(os.cpu_count()),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "libraries": _versions("sqlalchemy", "psycopg", "cryptography"),
        "kernel": platform.release(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
                break
        info["load average (1/5/15 min)"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    return info


def print_machine_info() -> None:
    print_table("machine", ["item", "value"], list(machine_info().items()))


# ---------------------------------------------------------------------- SIGTERM -> exit


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks (server shutdown) run."""

    def _handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _handler)


# ------------------------------------------------------------------ throwaway PostgreSQL


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class PgError(RuntimeError):
    pass


class ThrowawayPostgres:
    """A private PostgreSQL 15 cluster in a temp dir on a free 127.0.0.1 port.

    initdb with trust auth; run as the ``postgres`` OS user (via ``runuser``) when we are
    root. With ``password``, TCP logins need a password instead (``--auth-host
    scram-sha-256``, superuser password from ``--pwfile``; the unix socket stays trust), as a
    rotation target that really checks passwords; ``dsn()`` and ``url()`` then carry it.

    Durability is PostgreSQL's default: ``fsync=on``, ``synchronous_commit=on``, so every
    commit waits for a WAL flush (unlike tests/conftest.py, which turns fsync off).
    ``extra_settings`` may override that. Use as a context manager; ``stop()`` is idempotent
    and deletes the temp dir.
    """

    def __init__(
        self, extra_settings: dict[str, str] | None = None, *, password: str | None = None
    ) -> None:
        self.extra_settings = extra_settings or {}
        self.password = password
        self.base: Path | None = None
        self.port = 0
        self.as_root = os.geteuid() == 0
        self._running = False

    # paths
    @property
    def data(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    @property
    def log(self) -> Path:
        assert self.base is not None
        return self.base / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        from urllib.parse import quote

        auth = PG_SUPERUSER + (f":{quote(self.password, safe='')}" if self.password else "")
        return f"postgresql+psycopg://{auth}@{LOOPBACK}:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        dsn = f"host={LOOPBACK} port={self.port} user={PG_SUPERUSER} dbname={dbname}"
        if self.password:
            from psycopg.conninfo import make_conninfo

            dsn = make_conninfo(dsn, password=self.password)
        return dsn

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        cmd = [str(PG_BIN_DIR / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", PG_SUPERUSER, "--", *cmd]
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(
            cmd, cwd=self.base, env=env, capture_output=True, text=True, timeout=timeout
        )

    def _tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> ThrowawayPostgres:
        missing = [b for b in ("initdb", "pg_ctl", "postgres") if not (PG_BIN_DIR / b).is_file()]
        if missing:
            raise PgError(f"PostgreSQL 15 binaries missing from {PG_BIN_DIR}: {missing}")
        self.base = Path(tempfile.mkdtemp(prefix="rotator-bench-pg-"))
        sockets = self.base / "sockets"
        sockets.mkdir()
        if self.as_root:
            for p in (self.base, sockets):
                shutil.chown(p, user=PG_SUPERUSER)
        auth = ["--auth", "trust"]
        if self.password:
            pwfile = self.base / "pwfile"
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            if self.as_root:
                shutil.chown(pwfile, user=PG_SUPERUSER)
            auth = ["--auth-local", "trust", "--auth-host", "scram-sha-256"]
            auth += ["--pwfile", str(pwfile)]
        proc = self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            PG_SUPERUSER,
            *auth,
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        if proc.returncode != 0:
            raise PgError(f"initdb failed: {proc.stdout}\n{proc.stderr}")
        for attempt in range(1, PG_START_ATTEMPTS + 1):
            self.port = free_port()
            settings = {
                "listen_addresses": f"'{LOOPBACK}'",
                "port": str(self.port),
                "unix_socket_directories": f"'{sockets}'",
                "log_min_messages": "warning",
                **self.extra_settings,
            }
            (self.data / "postgresql.auto.conf").write_text(
                "".join(f"{k} = {v}\n" for k, v in settings.items())
            )
            proc = self._run(
                "pg_ctl",
                "start",
                "--pgdata",
                str(self.data),
                "--log",
                str(self.log),
                "--wait",
                "--timeout",
                str(int(PG_READY_TIMEOUT_S)),
            )
            self._running = True
            if proc.returncode == 0 and self._wait_ready():
                return self
            self._pg_stop()
            if attempt == PG_START_ATTEMPTS:
                raise PgError(f"PostgreSQL did not start:\n{self._tail()}")
        return self

    def _wait_ready(self) -> bool:
        import psycopg

        deadline = time.monotonic() + PG_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def settings(self, *names: str) -> dict[str, str]:
        import psycopg

        out = {}
        with psycopg.connect(self.dsn()) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            out["server_version"] = str(version[0]) if version else "?"
            for n in names:
                row = conn.execute(f"SHOW {n}").fetchone()
                out[n] = str(row[0]) if row else "?"
        return out

    def _pg_stop(self) -> None:
        if self._running and (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "--pgdata", str(self.data), "-m", "fast", "--wait")
        self._running = False

    def stop(self) -> None:
        try:
            self._pg_stop()
        finally:
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def strip_flags(argv: list[str], flags: set[str]) -> list[str]:
    """Drop ``--flag value`` and ``--flag=value`` for the given flags."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        if a.split("=", 1)[0] in flags:
            continue
        out.append(a)
    return out


def proc_tree_cpu_s(root_pid: int | None) -> float:
    """CPU seconds of a process, its reaped children and its live children (Linux /proc).

    For the PostgreSQL postmaster that is the whole server: backends, WAL writer, etc.
    """
    if root_pid is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid, ppid = int(entry.name), int(fields[1])
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        if pid == root_pid:
            total += (utime + stime + cutime + cstime) / tick
        elif ppid == root_pid:
            total += (utime + stime) / tick
    return total


def run_per_database(module: str, argv: list[str], cwd: Path) -> dict[str, dict[str, Any]] | int:
    """Run ``python -m module ARGV --db KIND`` once per database, each in its own child process
    (so each gets its own peak RSS); returns each child's JSON output, or the first failing
    exit code."""
    passthrough = strip_flags(argv, {"--db", "--json"})
    found: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="rotator-bench-") as tmp:
        for kind in ("sqlite", "postgresql"):
            out = Path(tmp) / f"{kind}.json"
            cmd = [
                sys.executable,
                "-m",
                module,
                *passthrough,
                "--db",
                kind,
                "--json",
                str(out),
                "--no-machine",
            ]
            rc = subprocess.call(cmd, cwd=cwd)
            if rc != 0:
                print(f"{module} for {kind} failed (exit {rc})", file=sys.stderr)
                return rc
            found[kind] = json.loads(out.read_text())
    return found


# ------------------------------------------------------------- rotator's API, in one place
#
# Every benchmark reaches RotatorService, the Engine and the rotation use cases only through
# the functions below. Issue 8 turns the service's methods into coroutines (with a blocking
# facade for synchronous callers), puts a kernel under the service and builds the Engine from
# that kernel; porting the benchmarks is then a change here, not in each benchmark. The
# coroutines here are what callers in an event loop use; they call today's synchronous
# methods directly (or in a thread where today's method runs an event loop of its own).


@dataclass(frozen=True)
class CredSpec:
    """One credential to add: its first value is ``value``, or generated by the connector."""

    name: str
    connector: str
    settings: dict[str, str] | None = None
    tags: dict[str, str] | None = None
    value: str | bytes | None = None
    grace: str | None = None  # policy grace ("0s", "10m"); None: the default
    every: str | None = None  # rotation interval ("30d"); None: the default


class BenchService:
    """What the benches hold: the service's blocking facade (for code outside an event loop)
    and, per event loop, the async service over the same kernel (opened on first use in that
    loop), so async benches measure the coroutines themselves, not a thread hop."""

    def __init__(self, blocking: Any) -> None:
        self.blocking = blocking
        self.kernel = blocking.kernel
        self._service: Any = None
        self._loop: Any = None

    async def service(self) -> Any:
        from rotator.service import RotatorService

        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._service = await RotatorService(self.kernel).start()
            self._loop = loop
        return self._service


def open_service(home: Path, db_url: str | None = None, *, init: bool = True) -> BenchService:
    """A service on ``db_url`` (default: the SQLite file in ``home``) with a key-file master
    key in ``home``; ``init`` creates the store (idempotent), else it must exist."""
    from rotator.config import Settings
    from rotator.service import BlockingService

    settings = Settings(home=home, db_url=db_url or f"sqlite:///{home / 'rotator.db'}")
    if init:
        return BenchService(BlockingService.init(settings)[0])
    return BenchService(BlockingService.open(settings))


def close_service(svc: BenchService) -> None:
    svc.blocking.close()


def _value_input(s: CredSpec) -> Any:
    from rotator.domain.secret import Secret
    from rotator.service import ValueInput

    return ValueInput(generate=True) if s.value is None else ValueInput(value=Secret(s.value))


def _policy(s: CredSpec) -> Any:
    from rotator.service import PolicyInput

    return PolicyInput(grace=s.grace, every=s.every)


async def add_credentials(svc: BenchService, specs: Sequence[CredSpec]) -> None:
    """Add each credential through the service (validation, encryption, audit, a commit each)."""
    service = await svc.service()
    for s in specs:
        await service.add_credential(
            s.name,
            s.connector,
            settings=s.settings,
            tags=s.tags,
            policy=_policy(s),
            value=_value_input(s),
        )


async def get_value(svc: BenchService, name: str) -> Any:
    """The CURRENT value (a Secret); counted as one use and audited as ``value.read``."""
    return await (await svc.service()).get_value(name)


async def use_count(svc: BenchService, name: str) -> int:
    return int((await (await svc.service()).show(name)).use_count)


async def audit_actions(svc: BenchService, credential: str) -> list[str]:
    """The action of every audit entry about ``credential``, oldest first."""
    entries = await (await svc.service()).audit_entries(credential=credential)
    return [e.action for e in entries]


async def audit_chain_ok(svc: BenchService) -> bool:
    return bool((await (await svc.service()).audit_verify()).ok)


def sql_engine(svc: BenchService) -> Any:
    """The store's SQLAlchemy engine (to count the statements sent to the driver)."""
    return svc.kernel.db.engine


def store_dialect(svc: BenchService) -> str:
    return str(svc.kernel.db.dialect)


def sqlite_synchronous(svc: BenchService) -> str:
    with svc.kernel.db.read() as conn:
        sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    return {1: "NORMAL", 2: "FULL"}.get(int(sync or 0), str(sync))


def engine_options(concurrency: int, per_target: int | None = None) -> Any:
    from rotator.engine import EngineOptions

    return EngineOptions(concurrency=concurrency, per_target=per_target or concurrency)


def open_engine(svc: BenchService, options: Any) -> Any:
    """An Engine over the service's kernel; use as ``async with open_engine(...) as engine``."""
    from rotator.engine import Engine

    return Engine(svc.kernel, options)


def rotation_request(
    name: str, trigger: str = "manual", grace_s: int | None = None, interactive: bool = False
) -> Any:
    """A request to rotate ``name``; ``trigger`` is a Trigger value (manual, schedule,
    emergency, ...), which sets its priority; ``interactive``: a person waits for it."""
    from rotator.engine import RotationRequest, Trigger

    return RotationRequest(name, trigger=Trigger(trigger), grace_s=grace_s, interactive=interactive)


async def rotate_batch(engine: Any, requests: Sequence[Any]) -> Any:
    """``engine.rotate``: one batch, highest priority first, within the engine's limits.
    Returns the BatchResult (``.results``, each with ``.outcome``, ``.name``)."""
    return await engine.rotate(list(requests))


async def rotate_one(engine: Any, request: Any) -> Any:
    """One rotation on a running engine, next to whatever else it runs."""
    return await engine.rotate_one(request)


def writer_stats(engine: Any) -> tuple[int, int]:
    """(group commits, operations) of the engine's store writer so far."""
    return int(engine.writer.batches), int(engine.writer.operations)


def not_rotated(label: str, results: Sequence[Any], expected: int) -> None:
    """Raise unless there are ``expected`` results, all rotated."""
    bad = [r for r in results if str(r.outcome) != "rotated"]
    if bad or len(results) != expected:
        first = bad[0] if bad else None
        raise RuntimeError(
            f"{label}: {len(results) - len(bad)}/{expected} rotated; first failure: {first}"
        )


# Synchronous callers (bench.store_bench times single calls outside any event loop): the
# service's blocking facade.


def add_credential_blocking(svc: BenchService, spec: CredSpec) -> None:
    svc.blocking.add_credential(
        spec.name,
        spec.connector,
        settings=spec.settings,
        tags=spec.tags,
        policy=_policy(spec),
        value=_value_input(spec),
    )


def get_value_blocking(svc: BenchService, name: str) -> Any:
    return svc.blocking.get_value(name)


def show_blocking(svc: BenchService, name: str) -> Any:
    return svc.blocking.show(name)


def list_credentials_blocking(svc: BenchService, **filters: Any) -> list[Any]:
    """``tags={...}``, ``due=True`` or nothing (all)."""
    return list(svc.blocking.list_credentials(**filters))


def audit_verify_blocking(svc: BenchService) -> Any:
    """The whole chain's VerifyResult (``.ok``, ``.entries``, ...)."""
    return svc.blocking.audit_verify()


# The kernel, for store_bench's bulk fill, which writes rows straight into the tables.


def store_database(svc: BenchService) -> Any:
    """The store's Database (``.read()``, ``.write()`` connections)."""
    return svc.kernel.db


def master_keyring(svc: BenchService) -> Any:
    return svc.kernel.ring


def audit_keyring(svc: BenchService) -> Any:
    return svc.kernel.audit_keys


def restamp(svc: BenchService, conn: Any, credential_id: int) -> None:
    """Re-MAC a credential's stage map after writing its versions directly."""
    svc.kernel.restamp(conn, credential_id)


def stage_key(svc: BenchService, conn: Any, data_key_id: int) -> Any:
    """(tenant id, MAC key) of the stage maps under a data key."""
    from rotator.kernel import integrity

    return integrity.stage_key(svc.kernel, conn, data_key_id)


def create_token_blocking(svc: BenchService, principal: str, role: str, scope: str = "*") -> str:
    """A new service principal with ``role`` over ``scope`` and an API token for it."""
    svc.blocking.add_principal(principal, role, scope=scope, kind="service")
    token: str = svc.blocking.create_token(principal)[1]
    return token
