"""What httpx alone allows: the two calls of an ``http`` rotation, without rotator.

A bare loop in its own process (so its CPU is its own), against the same test server and the
same calls as ``bench.cli_bench --only rotate``: per "rotation" ``POST /keys`` with a new key
and the admin token, then ``GET /whoami`` with that key; the response body read and dropped as
the connector does. ``--concurrency`` workers share ``--clients`` ``httpx.AsyncClient``s (the
``http`` connector spreads calls over up to 8 per target); clients are made and one request
sent on each before the clock starts, so imports and start-up are outside the measured time.
Prints one JSON object: ``rotations``, ``wall_s`` and ``cpu_s`` (the process's, user + sys,
during the measured loop).

    python -m bench.httpx_floor --url http://127.0.0.1:PORT --admin TOKEN [--rotations 200]
        [--concurrency 32] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import time

import httpx


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def run(url: str, admin: str, rotations: int, concurrency: int, clients: int) -> dict:
    pool = [httpx.AsyncClient(base_url=url, follow_redirects=False) for _ in range(clients)]
    busy = [0] * clients
    try:
        for c in pool:  # warm: imports, first connection
            r = await c.get("/")
            await r.aread()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(rotations):
            queue.put_nowait(i)

        async def call(method: str, path: str, token: str, body: bytes | None) -> int:
            shard = busy.index(min(busy))  # least busy, as the connector does
            busy[shard] += 1
            try:
                headers = {"Authorization": f"Bearer {token}"}
                if body is not None:
                    headers["Content-Type"] = "application/json"
                req = pool[shard].build_request(method, path, headers=headers, content=body)
                resp = await pool[shard].send(req, stream=True)
                try:
                    async for _ in resp.aiter_raw():
                        pass
                finally:
                    await resp.aclose()
                return resp.status_code
            finally:
                busy[shard] -= 1

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                key = "floor-" + secrets.token_hex(16)
                body = json.dumps({"key": key}).encode()
                s1 = await call("POST", "/keys", admin, body)
                s2 = await call("GET", "/whoami", key, None)
                if s1 != 201 or s2 != 200:
                    raise RuntimeError(f"unexpected statuses {s1} {s2}")

        c0, t0 = cpu_s(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    finally:
        for c in pool:
            await c.aclose()
    return {"rotations": rotations, "wall_s": wall, "cpu_s": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--admin", required=True, help="an admin token of the test server")
    ap.add_argument("--rotations", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args(argv)
    out = asyncio.run(run(args.url, args.admin, args.rotations, args.concurrency, args.clients))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
