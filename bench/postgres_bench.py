"""The ``postgres`` connector against a real PostgreSQL 15 that checks passwords (scram-sha-256):
rotator's rotations/s next to the physical floor, measured side by side in one run.

A throwaway PostgreSQL 15 (bench.common.ThrowawayPostgres with a superuser password, so TCP
logins go through SCRAM-SHA-256; ``max_connections=400``; default durability) gets
``--roles`` login roles ``bench_role_0000``... with random passwords. Then, in one process:

1. **floor**: what a skilled engineer would write without rotator: an asyncio + psycopg 3
   loop with a ``psycopg_pool.AsyncConnectionPool`` of admin connections (opened and filled
   before the clock starts, ``min_size = max_size = concurrency``), per role ``ALTER ROLE r
   PASSWORD <verifier>`` on a pooled connection (the SCRAM verifier made client-side by
   libpq, ``PGconn.encrypt_password``, as the connector does), then a fresh login as ``r``
   with the new password and ``SELECT 1`` (proving the new password is the point of it).
2. **rotator single**: a fresh store (SQLite in a temp dir), credential ``pg/admin``
   (``local``, the superuser password) and ``pg/r0000``... (``postgres``, ``mode=single``,
   ``admin=pg/admin``; first value the role's password), rotated by one ``Engine.rotate``
   call at ``concurrency = per_target = C``. Every result must be ``rotated``;
   ``--spot-check`` new CURRENT values must log in. Each run's engine is first warmed by
   one unmeasured batch of C single-mode rotations (the last C credentials), so its admin
   pool is open before the clock starts, as the floor's pool is (``--cold-engine``: no
   warm-up; the pool's admin logins then fall inside rotator's clock and, at high C, bias
   the sweep against rotator).
3. **rotator alternating, steady state**: ``--alt-roles`` more roles ``bench_alt_NNNN`` as
   ``mode=alternating`` credentials; their first rotation (creates ``..._clone`` and GRANTs
   the role to it) runs once before the final and is reported apart; in the final each
   round rotates its share twice (once the role, once the clone: both halves of the
   cycle), with grace 0, so every rotation also revokes the account it replaced, as each
   steady-state rotation eventually does.

**Sweep**: floor and rotator single at each concurrency in ``--sweep`` (default 1,2,4,8,16,32,64)
on the first ``--sweep-roles`` roles (a quarter of that at concurrency 1); each keeps the
concurrency of its best rate. **Final**: all ``--roles`` roles for floor and single, each at
its best concurrency, and the alternating roles at single's best, split into ``--rounds``
rounds that run floor, single, alternating in turn, so background load on the machine hits
all alike. Reported: rotations/s, rotator/floor ratios (goal: single >= 0.8x), process CPU
(getrusage: user+sys, all threads) and PostgreSQL's CPU (postmaster and backends, /proc) per
rotation, and sequential medians of the pieces (verifier, a login, a refused login, admin
login + ALTER ROLE, ALTER ROLE on a pooled connection). ``--fresh-admin`` adds the floor
with a fresh admin login per rotation instead of the pool (rotator's way today).

**Connector steps** (``--connector-roles``, 0 to skip): the connector's ``set`` and ``set`` +
``test`` called directly (no engine, no store) against the floor's ``ALTER ROLE`` on a pooled
admin connection and its fresh login, sequentially, in interleaved rounds: client and server
CPU per step, i.e. what the connector itself adds to the floor's work.

    python -m bench.postgres_bench [--roles 1000] [--sweep 1,2,4,8,16,32,64]
                                   [--sweep-roles 128] [--rounds 4] [--alt-roles 250]
                                   [--fresh-admin] [--cold-engine]

Every use of rotator's service and engine goes through the adapters at the end of
bench/common.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import resource
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from bench.common import (
    LOOPBACK,
    CredSpec,
    Result,
    ThrowawayPostgres,
    add_credentials,
    close_service,
    engine_options,
    exit_on_sigterm,
    get_value,
    not_rotated,
    open_engine,
    open_service,
    peak_rss_mib,
    print_machine_info,
    print_results,
    print_table,
    proc_tree_cpu_s,
    rotate_batch,
    rotation_request,
    source_version,
    timed,
)
from rotator.connectors import base as cb
from rotator.connectors.postgres import PASSWORD_ALPHABET, PostgresConnector, parse_value
from rotator.domain.secret import Secret

GOAL_RATIO = 0.8
FLOOR = "floor (pooled admin)"
FRESH = "floor, fresh admin login"
ROTATOR = "rotator single"
ALTERNATING = "rotator alternating (steady)"
ALT_FIRST = "rotator alternating (1st)"
ROLE_FMT = "bench_role_{:04d}"
ALT_FMT = "bench_alt_{:04d}"
PASSWORD_LENGTH = 32  # PostgresConfig.password_length's default
# The connector's connection parameters (PostgresConfig defaults), used by the floor too.
SSLMODE = "prefer"
CONNECT_TIMEOUT_S = 5
DBNAME = "postgres"


def new_password() -> str:
    """As ``PostgresConnector.create`` makes one."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def postmaster_pid(pg: ThrowawayPostgres) -> int | None:
    try:
        return int((pg.data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


# ------------------------------------------------------------------------------ target


@dataclass
class Target:
    host: str
    port: int
    admin_password: str
    postmaster: int | None

    def conninfo(self, user: str, password: str) -> dict[str, Any]:
        """Exactly the connector's ``_connect`` parameters."""
        return {
            "host": self.host,
            "port": self.port,
            "dbname": DBNAME,
            "user": user,
            "password": password,
            "sslmode": SSLMODE,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "autocommit": True,
        }

    async def connect(self, user: str, password: str) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(**self.conninfo(user, password))

    async def can_login(self, user: str, password: str) -> bool:
        try:
            conn = await self.connect(user, password)
        except psycopg.OperationalError:
            return False
        await conn.close()
        return True

    async def admin_pool(self, size: int) -> AsyncConnectionPool[Any]:
        """``size`` admin connections, all open before this returns."""
        kw = self.conninfo("postgres", self.admin_password)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            "", kwargs=kw, min_size=size, max_size=size, open=False
        )
        await pool.open(wait=True, timeout=60)
        return pool


def create_roles(pg: ThrowawayPostgres, n: int, fmt: str = ROLE_FMT) -> dict[str, str]:
    """``n`` login roles with random passwords (hashed by the server), in one transaction."""
    passwords = {fmt.format(i): new_password() for i in range(n)}
    with psycopg.connect(pg.dsn()) as conn, conn.cursor() as cur:
        for role, pw in passwords.items():
            cur.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(pw)
                )
            )
    return passwords


# ------------------------------------------------------------------------------ runs


@dataclass
class Run:
    variant: str
    concurrency: int
    count: int
    seconds: float
    cpu_s: float
    server_cpu_s: float
    threads: dict[str, float] = field(default_factory=dict)  # CPU s by thread name

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def result(self, label: str = "") -> Result:
        by_thread = ", ".join(
            f"{name} {cpu / self.count * 1000:.2f}"
            for name, cpu in sorted(self.threads.items(), key=lambda kv: -kv[1])
            if cpu / self.count >= 0.00005
        )
        return Result(
            label or f"{self.variant} @ {self.concurrency}",
            self.count,
            self.seconds,
            unit="rot",
            note=f"concurrency {self.concurrency}; CPU/rotation: process "
            f"{self.cpu_s / self.count * 1000:.2f} ms, server "
            f"{self.server_cpu_s / self.count * 1000:.2f} ms"
            + (f" (by thread, ms: {by_thread})" if by_thread else ""),
        )


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of this process's live threads (Linux /proc), by thread name with a
    trailing ``_N`` dropped (``rotator-db_0``.. as ``rotator-db``). A thread that ends between
    two calls takes its CPU with it: compare only runs whose threads outlive them."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        name = re.sub(r"_\d+$", "", names.get(int(tid), "other"))
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


async def measured(
    variant: str, conc: int, count: int, target: Target, body: Callable[[], Awaitable[None]]
) -> Run:
    srv0 = proc_tree_cpu_s(target.postmaster)
    threads0 = thread_cpu_s()
    cpu0 = cpu_s()
    with timed() as t:
        await body()
    cpu = cpu_s() - cpu0
    threads = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu_s().items()}
    srv = proc_tree_cpu_s(target.postmaster) - srv0
    return Run(variant, conc, count, t.seconds, cpu, srv, threads)


async def workers(conc: int, items: Sequence[str], one: Callable[[str], Awaitable[None]]) -> None:
    queue = list(reversed(items))

    async def worker() -> None:
        while queue:
            await one(queue.pop())

    await asyncio.gather(*(worker() for _ in range(max(1, min(conc, len(items))))))


async def floor_rotate(
    target: Target, passwords: dict[str, str], roles: Sequence[str], conc: int, pooled: bool
) -> Run:
    """The floor loop: ALTER ROLE on a pooled admin connection (``pooled``; else on a fresh
    admin login each time), then a fresh login as the role. Updates ``passwords``."""
    pool = await target.admin_pool(conc) if pooled else None

    async def alter(admin: psycopg.AsyncConnection[Any], role: str, pw: str) -> None:
        await admin.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(scram_verifier(admin, role, pw))
            )
        )

    async def one(role: str) -> None:
        pw = new_password()
        if pool is not None:
            async with pool.connection() as admin:
                await alter(admin, role, pw)
        else:
            async with await target.connect("postgres", target.admin_password) as admin:
                await alter(admin, role, pw)
        async with await target.connect(role, pw) as conn:
            cur = await conn.execute("SELECT 1")
            await cur.fetchall()
        passwords[role] = pw

    variant = FLOOR if pooled else FRESH
    try:
        return await measured(variant, conc, len(roles), target, lambda: workers(conc, roles, one))
    finally:
        if pool is not None:
            await pool.close()


async def rotator_rotate(
    svc: Any,
    target: Target,
    names: Sequence[str],
    conc: int,
    variant: str,
    *,
    times: int = 1,
    grace_s: int | None = None,
    warm: Sequence[str] = (),
) -> Run:
    """``times`` batches of ``names`` back to back on one engine, timed together. ``warm``:
    credentials rotated once on the same engine before the clock starts (not counted), so
    the connector's admin pool is open, as the floor's pool is before its clock."""
    reqs = [rotation_request(n, grace_s=grace_s) for n in names]
    async with open_engine(svc, engine_options(conc)) as engine:
        if warm:
            res = await rotate_batch(engine, [rotation_request(n) for n in warm])
            not_rotated(f"{variant} @ {conc}, warm-up", res.results, len(warm))
        holder: list[Any] = []

        async def body() -> None:
            for _ in range(times):
                holder.append(await rotate_batch(engine, reqs))

        run = await measured(variant, conc, len(names) * times, target, body)
    for res in holder:
        not_rotated(f"{variant} @ {conc}", res.results, len(names))
    return run


async def spot_check(
    svc: Any, target: Target, names: Sequence[str], roles: dict[str, str], k: int
) -> None:
    """The new CURRENT values of ``k`` random credentials log in (as the JSON's username)."""
    for name in random.sample(list(names), min(k, len(names))):
        login = parse_value(await get_value(svc, name), roles[name])
        if not await target.can_login(login.username, login.password):
            raise RuntimeError(f"spot check: CURRENT of {name} does not log in")


# ------------------------------------------------------------------------- breakdown


def scram_verifier(conn: psycopg.AsyncConnection[Any], role: str, password: str) -> str:
    """The verifier the connector makes: libpq's own (PQencryptPasswordConn), in the loop."""
    return conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


async def breakdown(target: Target, role: str, password: str, samples: int) -> list[Result]:
    """Sequential medians of the pieces a rotation is made of (no concurrency)."""

    def med(xs: list[float]) -> float:
        return statistics.median(xs) * 1000

    verifier, login, refused, alter, pooled = [], [], [], [], []
    async with await target.connect("postgres", target.admin_password) as kept:
        for _ in range(samples):
            t0 = time.perf_counter()
            v = scram_verifier(kept, role, password)
            verifier.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert await target.can_login(role, password)
            login.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert not await target.can_login(role, password + "x")
            refused.append(time.perf_counter() - t0)
            q = sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(v))
            t0 = time.perf_counter()
            async with await target.connect("postgres", target.admin_password) as admin:
                await admin.execute(q)
            alter.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await kept.execute(q)
            pooled.append(time.perf_counter() - t0)
    n = f"median of {samples}, sequential"
    return [
        Result(
            "SCRAM verifier, libpq encrypt_password (PBKDF2-SHA-256, 4096 it.)",
            value=med(verifier),
            unit="ms",
            note=f"{n}; client CPU, in the event loop",
        ),
        Result(
            "login + close (SCRAM)",
            value=med(login),
            unit="ms",
            note=f"{n}; libpq PBKDF2 on the client + a backend fork",
        ),
        Result(
            "refused login (wrong password)",
            value=med(refused),
            unit="ms",
            note=f"{n}; the same client and server work as a login",
        ),
        Result(
            "admin login + ALTER ROLE .. PASSWORD <verifier>",
            value=med(alter),
            unit="ms",
            note=f"{n}; verifier precomputed; includes the commit's WAL flush",
        ),
        Result(
            "ALTER ROLE .. PASSWORD <verifier> on a kept admin connection",
            value=med(pooled),
            unit="ms",
            note=f"{n}; what the pool saves is the line above minus this",
        ),
    ]


async def connector_steps(
    target: Target, passwords: dict[str, str], roles: Sequence[str], rounds: int
) -> list[Result]:
    """The connector's ``set`` (and ``set`` + ``test``) called directly against the floor's
    statements, sequentially, on ``roles``, in ``rounds`` interleaved rounds: CPU per step."""
    admin = Secret(target.admin_password)

    class Admin:
        async def get(self, name: str) -> Secret:
            return admin

    resolver, connector = Admin(), PostgresConnector()
    settings = {"host": target.host, "port": str(target.port), "mode": "single", "admin": "a"}
    cfgs = {r: cb.parse_config(connector, {**settings, "role": r}) for r in roles}
    pool = await target.admin_pool(1)

    async def floor_set(role: str) -> str:
        pw = new_password()
        async with pool.connection() as conn:
            await conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(scram_verifier(conn, role, pw))
                )
            )
        return pw

    async def floor_both(role: str) -> None:
        pw = await floor_set(role)
        async with await target.connect(role, pw) as conn:
            await (await conn.execute("SELECT 1")).fetchall()
        passwords[role] = pw

    async def connector_set(role: str) -> str:
        pw = new_password()
        await connector.set(cb.SetRequest("pg/b", 2, cfgs[role], Secret(pw), None, resolver))
        return pw

    async def connector_both(role: str) -> None:
        pw = await connector_set(role)
        await connector.test(cb.TestRequest("pg/b", 2, cfgs[role], Secret(pw), resolver))
        passwords[role] = pw

    variants: dict[str, Callable[[str], Awaitable[Any]]] = {
        "floor: ALTER ROLE on a pooled session": floor_set,
        "connector: set": connector_set,
        "floor: ALTER ROLE + fresh login": floor_both,
        "connector: set + test": connector_both,
    }
    cpu = {v: [0.0, 0.0] for v in variants}
    try:
        await floor_both(roles[0])
        await connector_both(roles[0])  # the connector's admin pool logs in before the clock
        for _ in range(rounds):
            for variant, step in variants.items():
                srv0, cpu0 = proc_tree_cpu_s(target.postmaster), cpu_s()
                for role in roles:
                    await step(role)
                cpu[variant][0] += cpu_s() - cpu0
                cpu[variant][1] += proc_tree_cpu_s(target.postmaster) - srv0
    finally:
        await pool.close()
        await connector.aclose()
    n = len(roles) * rounds
    return [
        Result(
            v,
            value=(c + s) / n * 1000,
            unit="ms",
            note=f"CPU per step: client {c / n * 1000:.3f} ms, server {s / n * 1000:.3f} ms; "
            f"{n} sequential in {rounds} interleaved rounds",
        )
        for v, (c, s) in cpu.items()
    ]


# ------------------------------------------------------------------------------- main


def specs_for(
    target: Target, passwords: dict[str, str], prefix: str, mode: str
) -> tuple[list[CredSpec], dict[str, str]]:
    """Credentials ``pg/<prefix>NNNN`` for every role; and name -> role."""
    specs: list[CredSpec] = []
    names: dict[str, str] = {}
    for i, (role, pw) in enumerate(passwords.items()):
        name = f"pg/{prefix}{i:04d}"
        settings = {
            "host": target.host,
            "port": str(target.port),
            "role": role,
            "admin": "pg/admin",
            "mode": mode,
        }
        specs.append(CredSpec(name, "postgres", settings, value=pw))
        names[name] = role
    return specs, names


def combine(runs: Sequence[Run]) -> Run:
    """Several runs of one variant (the rounds) as one."""
    return Run(
        runs[0].variant,
        runs[0].concurrency,
        sum(r.count for r in runs),
        sum(r.seconds for r in runs),
        sum(r.cpu_s for r in runs),
        sum(r.server_cpu_s for r in runs),
        {k: sum(r.threads.get(k, 0.0) for r in runs) for r in runs for k in r.threads},
    )


def cpu_per_rotation_ms(r: Run) -> float:
    return (r.cpu_s + r.server_cpu_s) / r.count * 1000


async def run(args: argparse.Namespace, pg: ThrowawayPostgres, home: Path) -> int:
    target = Target(LOOPBACK, pg.port, pg.password or "", postmaster_pid(pg))
    info: dict[str, str] = {
        "rotator source": source_version(),
        **pg.settings("max_connections", "password_encryption", "fsync", "synchronous_commit"),
        "host auth": "scram-sha-256 (TCP to 127.0.0.1, sslmode=prefer, server without SSL)",
        "store": "SQLite file in a temp dir",
        "rotator engine": "one per run, "
        + (
            "cold (admin pool filled inside the clock)"
            if args.cold_engine
            else "warmed by one unmeasured batch of <concurrency> single rotations"
        ),
    }
    print(f"creating {args.roles:,} + {args.alt_roles:,} roles ...", flush=True)
    with timed() as t:
        passwords = create_roles(pg, args.roles)
        alt_passwords = create_roles(pg, args.alt_roles, ALT_FMT)
        probe = create_roles(pg, 1, "bench_probe_{:d}")  # for the breakdown only
    info["create roles"] = f"{args.roles + args.alt_roles:,} in {t.seconds:.1f} s"
    roles = list(passwords)
    floors = [FLOOR, FRESH] if args.fresh_admin else [FLOOR]
    swept = [*floors, ROTATOR]

    svc = open_service(home)
    try:
        print("filling the store ...", flush=True)
        with timed() as t:
            single_specs, single = specs_for(target, passwords, "r", "single")
            alt_specs, alt_map = specs_for(target, alt_passwords, "a", "alternating")
            admin = CredSpec("pg/admin", "local", value=target.admin_password)
            await add_credentials(svc, [admin, *single_specs, *alt_specs])
        info["store fill (add_credential)"] = (
            f"{len(single):,} single + {len(alt_map):,} alternating in {t.seconds:.1f} s"
        )
        names = list(single)
        alt_names = list(alt_map)

        def warm(conc: int) -> list[str]:
            """Single-mode credentials for a warm-up batch at ``conc`` (the last ones: the
            sweep rotates the first); none with ``--cold-engine``."""
            return [] if args.cold_engine else names[-min(conc, len(names)) :]

        async def one(variant: str, conc: int, k0: int, k1: int) -> Run:
            if variant == ROTATOR:
                sub = names[k0:k1]
                r = await rotator_rotate(svc, target, sub, conc, ROTATOR, warm=warm(conc))
                await spot_check(svc, target, sub, single, args.spot_check)
            elif variant == ALTERNATING:
                sub = alt_names[k0:k1]
                r = await rotator_rotate(
                    svc, target, sub, conc, ALTERNATING, times=2, grace_s=0, warm=warm(conc)
                )
                await spot_check(svc, target, sub, alt_map, args.spot_check)
            else:
                sub = roles[k0:k1]
                r = await floor_rotate(target, passwords, sub, conc, variant == FLOOR)
                if not await target.can_login(sub[-1], passwords[sub[-1]]):
                    raise RuntimeError("floor: the last new password does not log in")
            print(f"  {r.variant:30} @ {conc:3}: {r.rate:7.1f} rot/s", flush=True)
            return r

        # 1. sweep: floor(s) and rotator single at every concurrency, on a subset of roles
        sweep_runs: list[Run] = []
        for conc in sorted(set(args.sweep)):
            k = min(len(roles), args.sweep_roles if conc > 1 else max(1, args.sweep_roles // 4))
            print(f"sweep, concurrency {conc}: {k:,} rotations per variant", flush=True)
            for variant in swept:
                sweep_runs.append(await one(variant, conc, 0, k))
        best_conc = {
            v: max((r for r in sweep_runs if r.variant == v), key=lambda r: r.rate).concurrency
            for v in swept
        }

        # 2. alternating, first rotation (clone role + GRANT), at rotator's best concurrency
        alt_first: Run | None = None
        if alt_names:
            best_conc[ALTERNATING] = best_conc[ROTATOR]
            conc = best_conc[ROTATOR]
            print(f"alternating, first rotation: {len(alt_names):,} at {conc}", flush=True)
            alt_first = await rotator_rotate(
                svc, target, alt_names, conc, ALT_FIRST, grace_s=0, warm=warm(conc)
            )

        # 3. final: everything at its best concurrency, in interleaved rounds
        rounds = max(1, min(args.rounds, len(roles)))
        cuts = [len(roles) * i // rounds for i in range(rounds + 1)]
        alt_cuts = [len(alt_names) * i // rounds for i in range(rounds + 1)]
        print(
            f"final: {len(roles):,} rotations per variant ({2 * len(alt_names):,} alternating) "
            f"in {rounds} interleaved rounds "
            f"({', '.join(f'{v} @ {c}' for v, c in best_conc.items())})",
            flush=True,
        )
        final_runs: list[Run] = []
        for i in range(rounds):
            for variant, conc in best_conc.items():
                if variant == ALTERNATING:
                    if alt_cuts[i] < alt_cuts[i + 1]:
                        final_runs.append(await one(variant, conc, alt_cuts[i], alt_cuts[i + 1]))
                else:
                    final_runs.append(await one(variant, conc, cuts[i], cuts[i + 1]))
        final = {
            v: combine([r for r in final_runs if r.variant == v])
            for v in best_conc
            if any(r.variant == v for r in final_runs)
        }

        print("breakdown (sequential) ...", flush=True)
        probe_role, probe_pw = next(iter(probe.items()))
        parts = await breakdown(target, probe_role, probe_pw, args.breakdown_samples)
        steps: list[Result] = []
        if args.connector_roles > 0:
            print("connector steps (sequential) ...", flush=True)
            subset = roles[: args.connector_roles]
            steps = await connector_steps(target, passwords, subset, max(2, args.rounds))
    finally:
        close_service(svc)

    print_table("postgres bench: settings", ["item", "value"], list(info.items()))
    print_results(
        "postgres bench: concurrency sweep (rotations/s; CPU per rotation)",
        [r.result() for r in sweep_runs],
    )
    floor, rot = final[FLOOR], final[ROTATOR]
    ratio = rot.rate / floor.rate
    verdict = "meets" if ratio >= GOAL_RATIO else "MISSES"
    summary = [
        floor.result(f"floor: pooled admin + fresh login (best conc {floor.concurrency})"),
    ]
    if FRESH in final:
        summary.append(
            final[FRESH].result(f"floor, fresh admin login (best conc {final[FRESH].concurrency})")
        )
    summary += [
        rot.result(f"rotator, single mode (best conc {rot.concurrency})"),
        Result(
            "rotator single / floor",
            value=ratio,
            unit="x",
            note=f"{verdict} goal >= {GOAL_RATIO:g}x",
        ),
    ]
    if ALTERNATING in final:
        alt = final[ALTERNATING]
        summary += [
            alt.result(f"rotator, alternating steady state (conc {alt.concurrency})"),
            Result(
                "rotator alternating / floor",
                value=alt.rate / floor.rate,
                unit="x",
                note="each steady rotation: set + test + revoke of the replaced account",
            ),
        ]
    if alt_first is not None:
        summary.append(
            alt_first.result(f"rotator, alternating, 1st rotation (conc {alt_first.concurrency})")
        )
    summary += [
        Result(
            "CPU per rotation, client + server: floor / rotator single",
            value=cpu_per_rotation_ms(floor) / cpu_per_rotation_ms(rot),
            unit="x",
            note=f"floor {cpu_per_rotation_ms(floor):.1f} ms, rotator "
            f"{cpu_per_rotation_ms(rot):.1f} ms; the ratio a CPU-bound, otherwise idle machine "
            "would show",
        ),
        Result("peak RSS", value=peak_rss_mib(), unit="MiB", note="bench process"),
    ]
    print_results(
        f"postgres bench: {len(roles):,} rotations each (alternating {2 * len(alt_names):,}), "
        f"best concurrency, {rounds} interleaved rounds",
        summary,
    )
    print_results("postgres bench: the pieces of a rotation (sequential, median)", parts)
    if steps:
        print_results("postgres bench: the connector's steps against the floor's", steps)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--roles", type=int, default=1000, help="roles = final rotations/variant")
    ap.add_argument(
        "--sweep",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[1, 2, 4, 8, 16, 32, 64],
        help="comma-separated concurrencies to try; each variant keeps its best",
    )
    ap.add_argument(
        "--sweep-roles", type=int, default=128, help="rotations per sweep run (1/4 at conc 1)"
    )
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds of the final")
    ap.add_argument(
        "--alt-roles", type=int, default=250, help="alternating credentials (each rotated 2x)"
    )
    ap.add_argument(
        "--fresh-admin", action="store_true", help="also the floor with a fresh admin login"
    )
    ap.add_argument(
        "--cold-engine",
        action="store_true",
        help="no warm-up batch: rotator's admin logins fall inside its clock (before 2026-11-29)",
    )
    ap.add_argument("--spot-check", type=int, default=10, help="CURRENT logins checked per run")
    ap.add_argument("--breakdown-samples", type=int, default=20)
    ap.add_argument(
        "--connector-roles",
        type=int,
        default=200,
        help="roles for the connector-steps comparison (0: skip)",
    )
    ap.add_argument("--no-machine", action="store_true", help="do not print machine info")
    args = ap.parse_args(argv)
    exit_on_sigterm()
    if not args.no_machine:
        print_machine_info()
    home = Path(tempfile.mkdtemp(prefix="rotator-bench-pg-store-"))
    pg = ThrowawayPostgres({"max_connections": "400"}, password="bench-" + secrets.token_hex(16))
    try:
        with timed() as total:
            pg.start()
            rc = asyncio.run(run(args, pg, home))
        print(f"\npostgres bench finished in {total.seconds:.0f} s")
        return rc
    finally:
        pg.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
