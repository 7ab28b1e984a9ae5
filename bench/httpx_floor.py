"""What httpx alone allows: the two calls of an ``http`` rotation, without rotator.

A bare loop in its own process (so its CPU is its own), against the same test server and the
same calls as ``bench.cli_bench --only rotate``: per "rotation" ``POST /keys`` with a new key
and the admin token, then ``GET /whoami`` with that key; the response body read and dropped as
the connector does. ``--concurrency`` workers share ``--clients`` ``httpx.AsyncClient``s (the
``http`` connector spreads calls over up to 8 per target); clients are made and one request
sent on each before the clock starts, so imports and start-up are outside the measured time.
Prints one JSON object: ``rotations``, ``wall_s`` and ``cpu_s`` (the process's, user + sys,
during the measured loop) and ``transport``.

``--transport`` picks the HTTP client under the loop: ``httpcore`` (httpx's own transport,
the default and what the connector uses), ``aiohttp`` (httpx's API over ``httpx-aiohttp``'s
``AiohttpTransport``, an aiohttp ``ClientSession`` per client) or ``aiohttp-direct`` (aiohttp's
``ClientSession`` alone, no httpx). The aiohttp ones need ``pip install httpx-aiohttp``, which
is not one of rotator's dependencies.

    python -m bench.httpx_floor --url http://127.0.0.1:PORT --admin TOKEN [--rotations 200]
        [--concurrency 32] [--clients 8] [--transport httpcore|aiohttp|aiohttp-direct]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


TRANSPORTS = ("httpcore", "aiohttp", "aiohttp-direct")
Send = Callable[[int, str, str, dict[str, str], "bytes | None"], Awaitable[int]]


def httpx_clients(url: str, clients: int, transport: str) -> tuple[list[Any], Send]:
    """``clients`` httpx clients over ``transport``, and a send that drains the body."""
    if transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        pool = [
            httpx.AsyncClient(base_url=url, follow_redirects=False, transport=AiohttpTransport())
            for _ in range(clients)
        ]
    else:
        pool = [httpx.AsyncClient(base_url=url, follow_redirects=False) for _ in range(clients)]

    async def send(
        shard: int, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> int:
        req = pool[shard].build_request(method, path, headers=headers, content=body)
        resp = await pool[shard].send(req, stream=True)
        try:
            async for _ in resp.aiter_raw():
                pass
        finally:
            await resp.aclose()
        return resp.status_code

    return pool, send


def aiohttp_clients(url: str, clients: int) -> tuple[list[Any], Send]:
    """``clients`` aiohttp sessions (no httpx), and a send that drains the body."""
    import aiohttp

    pool = [aiohttp.ClientSession(base_url=url) for _ in range(clients)]

    async def send(
        shard: int, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> int:
        async with pool[shard].request(
            method, path, headers=headers, data=body, allow_redirects=False
        ) as resp:
            async for _ in resp.content.iter_any():
                pass
            return resp.status

    return pool, send


async def run(
    url: str, admin: str, rotations: int, concurrency: int, clients: int, transport: str
) -> dict[str, Any]:
    if transport == "aiohttp-direct":
        pool, send = aiohttp_clients(url, clients)
    else:
        pool, send = httpx_clients(url, clients, transport)
    busy = [0] * clients
    try:
        for shard in range(clients):  # warm: imports, first connection
            await send(shard, "GET", "/", {}, None)
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
                return await send(shard, method, path, headers, body)
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
            await (c.close() if transport == "aiohttp-direct" else c.aclose())
    return {"rotations": rotations, "wall_s": wall, "cpu_s": cpu, "transport": transport}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--admin", required=True, help="an admin token of the test server")
    ap.add_argument("--rotations", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--transport", choices=TRANSPORTS, default="httpcore")
    args = ap.parse_args(argv)
    out = asyncio.run(
        run(args.url, args.admin, args.rotations, args.concurrency, args.clients, args.transport)
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
