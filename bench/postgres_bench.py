"""The ``postgres`` connector against a real PostgreSQL 15 that checks passwords (scram-sha-256):
rotator's rotations/s next to a raw psycopg loop doing the same target work.

A throwaway PostgreSQL 15 (bench.common.ThrowawayPostgres with a superuser password, so TCP
logins go through SCRAM-SHA-256; ``max_connections=400``; default durability) gets
``--roles`` login roles ``bench_role_0000``... with random passwords. Then, in one run:

1. **raw**: an asyncio + psycopg loop doing, per role, the work rotator's ``single`` mode must
   do on the target: a fresh admin connection, ``ALTER ROLE r PASSWORD <verifier>`` (SCRAM
   verifier made client-side by libpq, ``PGconn.encrypt_password``, in the
   event loop as the connector does), then a fresh login as ``r`` with the new password and
   ``SELECT 1``.
2. **raw, same statements**: the raw loop plus what the connector's ``set`` adds: first a
   login attempt with the new password (its idempotency check; refused on a fresh rotation)
   and ``SELECT 1 FROM pg_roles WHERE rolname = r`` on the admin connection.
3. **rotator**: a fresh store (SQLite in a temp dir), credential ``pg/admin`` (``local``,
   the superuser password) and ``pg/r0000``... (``postgres``, ``mode=single``,
   ``admin=pg/admin``; first value the role's password), all rotated with one
   ``Engine.rotate`` call at ``EngineOptions(concurrency=C, per_target=C)``. Every result must
   be ``rotated``; ``--spot-check`` new CURRENT values must log in.

**Sweep**: each concurrency in ``--sweep`` (plus ``--concurrency``) runs all three on the
first ``--sweep-roles`` roles (a quarter of that at concurrency 1); each variant keeps the
concurrency of its best rate. **Final**: all ``--roles`` roles per variant, each at its best
concurrency, split into ``--rounds`` rounds that run raw, raw-same and rotator in turn, so that
background load on the machine hits all three alike. Then the first ``alternating`` rotation
of ``--alt-roles`` roles (0: skip) at rotator's best concurrency: creates
``bench_role_NNNN_clone`` and GRANTs the role to it. Reported: rotations/s, process CPU
(getrusage: user+sys, all threads) and PostgreSQL's CPU (postmaster and backends, /proc) per
rotation, and sequential medians of the pieces (PBKDF2 verifier, a login, a refused login,
admin login + ALTER ROLE). Runtime: ``--roles 400`` took ~5 min on 2 cores shared with
other work (load average ~7); the final phase grows linearly with ``--roles``.

    python -m bench.postgres_bench [--roles 1000] [--concurrency 32] [--sweep 1,8,16,32,64]
                                   [--sweep-roles 128] [--rounds 4] [--alt-roles 250]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from bench.common import (
    LOOPBACK,
    Result,
    ThrowawayPostgres,
    exit_on_sigterm,
    peak_rss_mib,
    print_machine_info,
    print_results,
    print_table,
    proc_tree_cpu_s,
    source_version,
    timed,
)
from rotator.config import Settings
from rotator.connectors.postgres import PASSWORD_ALPHABET, parse_value
from rotator.domain.secret import Secret
from rotator.engine import Engine, EngineOptions, Outcome, RotationRequest
from rotator.service import RotatorService, ValueInput

GOAL_RATIO = 0.8
RAW = "raw psycopg"
RAW_SAME = "raw psycopg, same statements"
ROTATOR = "rotator (single)"
ALTERNATING = "rotator (alternating, 1st)"
VARIANTS = (RAW, RAW_SAME, ROTATOR)
ROLE_FMT = "bench_role_{:04d}"
PASSWORD_LENGTH = 32  # PostgresConfig.password_length's default
# The connector's connection parameters (PostgresConfig defaults), used by the raw loop too.
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

    async def connect(self, user: str, password: str) -> psycopg.AsyncConnection[object]:
        """Exactly the connector's ``_connect`` parameters."""
        return await psycopg.AsyncConnection.connect(
            host=self.host,
            port=self.port,
            dbname=DBNAME,
            user=user,
            password=password,
            sslmode=SSLMODE,
            connect_timeout=CONNECT_TIMEOUT_S,
            autocommit=True,
        )

    async def can_login(self, user: str, password: str) -> bool:
        try:
            conn = await self.connect(user, password)
        except psycopg.OperationalError:
            return False
        await conn.close()
        return True


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

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def result(self, label: str = "") -> Result:
        return Result(
            label or f"{self.variant} @ {self.concurrency}",
            self.count,
            self.seconds,
            unit="rot",
            note=f"concurrency {self.concurrency}; CPU/rotation: process "
            f"{self.cpu_s / self.count * 1000:.2f} ms, server "
            f"{self.server_cpu_s / self.count * 1000:.2f} ms",
        )


async def measured(
    variant: str, conc: int, count: int, target: Target, body: Callable[[], Awaitable[None]]
) -> Run:
    srv0 = proc_tree_cpu_s(target.postmaster)
    cpu0 = cpu_s()
    with timed() as t:
        await body()
    cpu = cpu_s() - cpu0
    srv = proc_tree_cpu_s(target.postmaster) - srv0
    return Run(variant, conc, count, t.seconds, cpu, srv)


async def workers(conc: int, items: Sequence[str], one: Callable[[str], Awaitable[None]]) -> None:
    queue = list(reversed(items))

    async def worker() -> None:
        while queue:
            await one(queue.pop())

    await asyncio.gather(*(worker() for _ in range(max(1, min(conc, len(items))))))


async def raw_rotate(
    target: Target, passwords: dict[str, str], roles: Sequence[str], conc: int, same: bool
) -> Run:
    """The raw loop; ``same``: also the connector's pre-set login attempt and role check.

    Updates ``passwords`` with the new ones (after checking the last login worked).
    """

    async def one(role: str) -> None:
        pw = new_password()
        if same and await target.can_login(role, pw):
            raise RuntimeError(f"raw: {role} accepted a password never set")
        async with await target.connect("postgres", target.admin_password) as admin:
            if same:
                cur = await admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                if not await cur.fetchall():
                    raise RuntimeError(f"raw: no role {role}")
            await admin.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(scram_verifier(admin, role, pw))
                )
            )
        async with await target.connect(role, pw) as conn:
            cur = await conn.execute("SELECT 1")
            await cur.fetchall()
        passwords[role] = pw

    variant = RAW_SAME if same else RAW
    return await measured(variant, conc, len(roles), target, lambda: workers(conc, roles, one))


async def rotator_rotate(
    svc: RotatorService, target: Target, names: Sequence[str], conc: int, variant: str
) -> Run:
    reqs = [RotationRequest(n) for n in names]
    async with Engine(svc, EngineOptions(concurrency=conc, per_target=conc)) as engine:
        holder: list[object] = []

        async def body() -> None:
            holder.append(await engine.rotate(reqs))

        run = await measured(variant, conc, len(names), target, body)
    res = holder[0]
    results = res.results  # type: ignore[attr-defined]
    bad = [r for r in results if r.outcome is not Outcome.ROTATED]
    if bad or len(results) != len(names):
        raise RuntimeError(
            f"{variant} @ {conc}: {len(results) - len(bad)}/{len(names)} rotated; "
            f"first failure: {bad[0] if bad else None}"
        )
    return run


async def spot_check(
    svc: RotatorService, target: Target, names: Sequence[str], roles: dict[str, str], k: int
) -> None:
    """The new CURRENT values of ``k`` random credentials log in (as the JSON's username)."""
    for name in random.sample(list(names), min(k, len(names))):
        login = parse_value(svc.get_value(name), roles[name])
        if not await target.can_login(login.username, login.password):
            raise RuntimeError(f"spot check: CURRENT of {name} does not log in")


# ------------------------------------------------------------------------- breakdown


def scram_verifier(conn: psycopg.AsyncConnection[object], role: str, password: str) -> str:
    """The verifier the connector makes: libpq's own (PQencryptPasswordConn), in the loop."""
    return conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


async def breakdown(target: Target, role: str, password: str, samples: int) -> list[Result]:
    """Sequential medians of the pieces a rotation is made of (no concurrency)."""

    def med(xs: list[float]) -> float:
        return statistics.median(xs) * 1000

    verifier, login, refused, alter = [], [], [], []
    for _ in range(samples):
        async with await target.connect("postgres", target.admin_password) as admin:
            t0 = time.perf_counter()
            v = scram_verifier(admin, role, password)
            verifier.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert await target.can_login(role, password)
        login.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert not await target.can_login(role, password + "x")
        refused.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        async with await target.connect("postgres", target.admin_password) as admin:
            await admin.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(v))
            )
        alter.append(time.perf_counter() - t0)
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
    ]


# ------------------------------------------------------------------------------- main


def fill_store(
    svc: RotatorService, target: Target, passwords: dict[str, str], prefix: str, mode: str
) -> dict[str, str]:
    """Credentials ``pg/<prefix>NNNN`` for every role; returns name -> role."""
    if not svc.list_credentials(tags={"kind": "pg-admin"}):
        svc.add_credential(
            "pg/admin",
            "local",
            tags={"kind": "pg-admin"},
            value=ValueInput(value=Secret(target.admin_password)),
        )
    names: dict[str, str] = {}
    for i, (role, pw) in enumerate(passwords.items()):
        name = f"pg/{prefix}{i:04d}"
        svc.add_credential(
            name,
            "postgres",
            settings={
                "host": target.host,
                "port": str(target.port),
                "role": role,
                "admin": "pg/admin",
                "mode": mode,
            },
            value=ValueInput(value=Secret(pw)),
        )
        names[name] = role
    return names


def combine(runs: Sequence[Run]) -> Run:
    """Several runs of one variant (the rounds) as one."""
    return Run(
        runs[0].variant,
        runs[0].concurrency,
        sum(r.count for r in runs),
        sum(r.seconds for r in runs),
        sum(r.cpu_s for r in runs),
        sum(r.server_cpu_s for r in runs),
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
    }
    print(f"creating {args.roles:,} roles ...", flush=True)
    with timed() as t:
        passwords = create_roles(pg, args.roles)
        probe = create_roles(pg, 1, "bench_probe_{:d}")  # for the breakdown only
    info["create roles"] = f"{args.roles:,} in {t.seconds:.1f} s"
    roles = list(passwords)

    svc, _ = RotatorService.init(Settings(home=home, db_url=f"sqlite:///{home / 'rotator.db'}"))
    try:
        print("filling the store ...", flush=True)
        with timed() as t:
            # add_credential may run connector code with asyncio.run(): not in this loop
            single = await asyncio.to_thread(fill_store, svc, target, passwords, "r", "single")
        info["store fill (add_credential, single)"] = f"{len(single):,} in {t.seconds:.1f} s"
        names = list(single)

        async def one_of_each(variants: dict[str, int], k0: int, k1: int) -> list[Run]:
            """raw, raw-same and rotator, each at its concurrency, on roles[k0:k1]."""
            out = []
            for variant, conc in variants.items():
                if variant == ROTATOR:
                    r = await rotator_rotate(svc, target, names[k0:k1], conc, ROTATOR)
                    await spot_check(svc, target, names[k0:k1], single, args.spot_check)
                else:
                    sub = roles[k0:k1]
                    r = await raw_rotate(target, passwords, sub, conc, variant == RAW_SAME)
                    if not await target.can_login(sub[-1], passwords[sub[-1]]):
                        raise RuntimeError("raw: the last new password does not log in")
                print(f"  {r.variant:30} @ {conc:3}: {r.rate:7.1f} rot/s", flush=True)
                out.append(r)
            return out

        # 1. sweep: every variant at every concurrency, on a subset of the roles
        sweep = sorted(set(args.sweep) | {args.concurrency})
        sweep_runs: list[Run] = []
        for conc in sweep:
            k = min(len(roles), args.sweep_roles if conc > 1 else max(1, args.sweep_roles // 4))
            print(f"sweep, concurrency {conc}: {k:,} rotations per variant", flush=True)
            sweep_runs += await one_of_each(dict.fromkeys(VARIANTS, conc), 0, k)
        best_conc = {
            v: max((r for r in sweep_runs if r.variant == v), key=lambda r: r.rate).concurrency
            for v in VARIANTS
        }

        # 2. final: all roles at each variant's best concurrency, in interleaved rounds
        rounds = max(1, min(args.rounds, len(roles)))
        cuts = [len(roles) * i // rounds for i in range(rounds + 1)]
        print(
            f"final: {len(roles):,} rotations per variant in {rounds} interleaved rounds "
            f"({', '.join(f'{v} @ {c}' for v, c in best_conc.items())})",
            flush=True,
        )
        final_runs: list[Run] = []
        for i in range(rounds):
            final_runs += await one_of_each(best_conc, cuts[i], cuts[i + 1])
        final = {v: combine([r for r in final_runs if r.variant == v]) for v in VARIANTS}

        # 3. alternating: the first rotation (clone role + GRANT) of --alt-roles roles
        alt: Run | None = None
        if args.alt_roles > 0:
            k = min(args.alt_roles, len(roles))
            first_k = dict(list(passwords.items())[:k])
            alt_map = await asyncio.to_thread(fill_store, svc, target, first_k, "a", "alternating")
            conc = best_conc[ROTATOR]
            print(f"alternating, first rotation: {k:,} at concurrency {conc}", flush=True)
            alt = await rotator_rotate(svc, target, list(alt_map), conc, ALTERNATING)
            await spot_check(svc, target, list(alt_map), alt_map, args.spot_check)

        print("breakdown (sequential) ...", flush=True)
        probe_role, probe_pw = next(iter(probe.items()))
        parts = await breakdown(target, probe_role, probe_pw, args.breakdown_samples)
    finally:
        svc.close()

    print_table("postgres bench: settings", ["item", "value"], list(info.items()))
    print_results(
        "postgres bench: concurrency sweep (rotations/s; CPU per rotation)",
        [r.result() for r in sweep_runs],
    )
    raw, same, rot = final[RAW], final[RAW_SAME], final[ROTATOR]
    ratio = rot.rate / raw.rate
    verdict = "meets" if ratio >= GOAL_RATIO else "MISSES"
    cpu_ratio = cpu_per_rotation_ms(raw) / cpu_per_rotation_ms(rot)
    summary = [
        raw.result(f"raw psycopg (conc {raw.concurrency})"),
        same.result(f"raw + set's pre-login & role check (conc {same.concurrency})"),
        rot.result(f"rotator, single mode (conc {rot.concurrency})"),
        Result("rotator / raw", value=ratio, unit="x", note=f"{verdict} goal >= {GOAL_RATIO:g}x"),
        Result(
            "rotator / raw with the same statements",
            value=rot.rate / same.rate,
            unit="x",
            note="what is left is the engine: store, audit, encryption, scheduling",
        ),
        Result(
            "CPU per rotation, client + server: raw / rotator",
            value=cpu_ratio,
            unit="x",
            note=f"raw {cpu_per_rotation_ms(raw):.1f} ms, raw-same "
            f"{cpu_per_rotation_ms(same):.1f} ms, rotator {cpu_per_rotation_ms(rot):.1f} ms; "
            "the ratio a CPU-bound, otherwise idle machine would show",
        ),
    ]
    if alt is not None:
        summary.append(alt.result(f"rotator, alternating, 1st rotation (conc {alt.concurrency})"))
    summary.append(Result("peak RSS", value=peak_rss_mib(), unit="MiB", note="bench process"))
    print_results(
        f"postgres bench: {len(roles):,} rotations each, best concurrency, "
        f"{rounds} interleaved rounds",
        summary,
    )
    print_results("postgres bench: the pieces of a rotation (sequential, median)", parts)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--roles", type=int, default=1000, help="roles = final rotations/variant")
    ap.add_argument(
        "--concurrency", type=int, default=32, help="a concurrency to try (added to --sweep)"
    )
    ap.add_argument(
        "--sweep",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[1, 8, 16, 32, 64],
        help="comma-separated concurrencies to try; each variant keeps its best",
    )
    ap.add_argument(
        "--sweep-roles", type=int, default=128, help="rotations per sweep run (1/4 at conc 1)"
    )
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds of the final")
    ap.add_argument("--alt-roles", type=int, default=250, help="alternating rotations; 0: skip")
    ap.add_argument("--spot-check", type=int, default=10, help="CURRENT logins checked per run")
    ap.add_argument("--breakdown-samples", type=int, default=20)
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
