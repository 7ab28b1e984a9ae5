"""The ``mariadb`` connector against a real MariaDB: rotator ``mode=single`` set+verify
rotations/s next to a raw loop's, measured side by side in one run.

A throwaway MariaDB (tests/support/mariadb_server.py: ``mariadb-install-db`` into a temp dir,
``mariadbd`` on a free loopback port) gets ``--accounts`` accounts ``bench_NNNN``@``%`` with
random passwords. Then, in one process:

1. **raw loop**: what a skilled engineer would write without rotator: asyncio + aiomysql
   (the connector's driver), C workers each holding one admin connection opened before the
   clock starts (a pool of C), per account ``ALTER USER ... IDENTIFIED WITH
   mysql_native_password AS '<hash>'`` (the hash made client-side, as the connector does)
   on the worker's admin connection, then a fresh login as the account with the new
   password (proving it is the point of a rotation).
2. **rotator single**: a fresh SQLite store, ``mdb/admin`` (``local``, root's password) and
   ``mdb/bNNNN`` (``mariadb``, ``mode=single``, ``admin=mdb/admin``), rotated by one
   ``Engine.rotate`` call at ``concurrency = per_target = C``: create, intent, set, test (a
   fresh login), finish, audit, each step durable in the store.

Both run at each C in ``--sweep`` (default 1,2,4,8,16,32) on ``--sweep-accounts`` accounts;
each keeps its best C for the final, where all accounts are rotated ``--rounds`` times,
alternating raw and rotator so background load hits both alike. Printed: rotations/s of
each and the ratio rotator/raw.

    python -m bench.mariadb_bench [--accounts 200] [--sweep 1,2,4,8,16,32]
                                  [--sweep-accounts 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiomysql
from tests.support.mariadb_server import MariadbServer

from bench.common import (
    CredSpec,
    add_credentials,
    close_service,
    engine_options,
    exit_on_sigterm,
    not_rotated,
    open_engine,
    open_service,
    print_machine_info,
    print_table,
    rotate_batch,
    rotation_request,
)
from rotator.connectors.mariadb import PASSWORD_ALPHABET, native_hash


def _password() -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(32))


async def raw_loop(server: MariadbServer, users: list[str], concurrency: int) -> float:
    """Rotations/s of the raw loop over ``users`` at ``concurrency``."""
    admins = [
        await aiomysql.connect(
            host=server.host,
            port=server.port,
            user=server.admin_user,
            password=server.password,
            autocommit=True,
        )
        for _ in range(concurrency)
    ]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for user in users:
        queue.put_nowait(user)

    async def worker(admin: aiomysql.Connection) -> None:
        while not queue.empty():
            user = queue.get_nowait()
            password = _password()
            async with admin.cursor() as cur:
                await cur.execute(
                    "ALTER USER %s@'%%' IDENTIFIED WITH mysql_native_password AS %s",
                    (user, native_hash(password)),
                )
            conn = await aiomysql.connect(
                host=server.host, port=server.port, user=user, password=password
            )
            await conn.ensure_closed()

    started = time.perf_counter()
    await asyncio.gather(*(worker(a) for a in admins))
    elapsed = time.perf_counter() - started
    for admin in admins:
        await admin.ensure_closed()
    return len(users) / elapsed


async def rotator_single(svc: object, names: list[str], concurrency: int) -> float:
    """Rotations/s of one Engine.rotate batch over ``names`` at ``concurrency``."""
    async with open_engine(svc, engine_options(concurrency)) as engine:  # type: ignore[arg-type]
        started = time.perf_counter()
        result = await rotate_batch(engine, [rotation_request(n) for n in names])
        elapsed = time.perf_counter() - started
    not_rotated(f"rotator single at {concurrency}", result.results, len(names))
    return len(names) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mariadb_bench")
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--sweep", default="1,2,4,8,16,32")
    parser.add_argument("--sweep-accounts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    sweep = [int(c) for c in args.sweep.split(",")]
    print_machine_info()
    server = MariadbServer().start()
    home = Path(tempfile.mkdtemp(prefix="rotator-mdb-bench-"))
    try:
        version = server.execute("SELECT VERSION()")[0][0]
        print(f"target: MariaDB {version} on {server.host}:{server.port}")
        users = [f"bench_{i:04d}" for i in range(args.accounts)]
        first = {}
        for user in users:
            first[user] = _password()
            server.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, first[user]))
        svc = open_service(home)
        specs = [CredSpec("mdb/admin", "local", value=server.password)]
        specs += [
            CredSpec(
                f"mdb/{u}",
                "mariadb",
                settings={
                    "host": server.host,
                    "port": str(server.port),
                    "user": u,
                    "mode": "single",
                    "admin": "mdb/admin",
                },
                value=first[u],
            )
            for u in users
        ]
        asyncio.run(add_credentials(svc, specs))
        names = [f"mdb/{u}" for u in users]

        sweep_rows = []
        best = {"raw": (0.0, 1), "rotator": (0.0, 1)}
        n = min(args.sweep_accounts, len(users))
        for c in sweep:
            raw = asyncio.run(raw_loop(server, users[:n], c))
            rot = asyncio.run(rotator_single(svc, names[:n], c))
            sweep_rows.append([str(c), f"{raw:,.0f}", f"{rot:,.0f}", f"{rot / raw:.2f}"])
            best["raw"] = max(best["raw"], (raw, c))
            best["rotator"] = max(best["rotator"], (rot, c))
        print_table(
            f"sweep on {n} accounts: rotations/s",
            ["concurrency", "raw loop", "rotator single", "ratio"],
            sweep_rows,
        )
        raw_rates, rot_rates = [], []
        for _ in range(args.rounds):
            raw_rates.append(asyncio.run(raw_loop(server, users, best["raw"][1])))
            rot_rates.append(asyncio.run(rotator_single(svc, names, best["rotator"][1])))
        raw_best, rot_best = max(raw_rates), max(rot_rates)
        print_table(
            f"final: {len(users)} accounts x {args.rounds} rounds, each at its best concurrency"
            " (best round)",
            ["", "concurrency", "rotations/s"],
            [
                ["raw loop (aiomysql, admin pool)", str(best["raw"][1]), f"{raw_best:,.0f}"],
                ["rotator single", str(best["rotator"][1]), f"{rot_best:,.0f}"],
            ],
        )
        print(f"ratio rotator/raw: {rot_best / raw_best:.2f}")
        close_service(svc)
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
