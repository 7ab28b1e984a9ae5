"""The API's hottest routes (GET value, POST usage) stay on the event loop, and ``rotator
serve``'s service loop can be uvloop: the two costs issue 11's throughput goal measured
(docs/benchmarks.md, "Issue 11: the REST API").

The app is the real one (api.app.create_app) over a real service and store, served in
process through httpx's ASGI transport on the service's own loop (no HTTP socket: what is
under test is where the app runs its code, not the transport).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest

from rotator.api.app import create_app
from rotator.api.limits import Limits
from rotator.config import Settings
from rotator.domain.principal import Role
from rotator.domain.secret import Secret
from rotator.service import BlockingService, ValueInput

VALUE = "hot-path-value-51d0"


@pytest.fixture
def svc(tmp_path: Path, db_url: str) -> Iterator[BlockingService]:
    svc, created = BlockingService.init(Settings(home=tmp_path / "home", db_url=db_url))
    assert created
    try:
        svc.add_credential("prod/app/db", "local", value=ValueInput(value=Secret(VALUE)))
        yield svc
    finally:
        svc.close()


def _requests(svc: BlockingService, token: str, n: int) -> list[httpx.Response]:
    app = create_app(svc.service, limits=Limits(rate=1e6, burst=1e6))

    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        out = []
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=headers
        ) as client:
            for _ in range(n):
                out.append(await client.get("/v1/credentials/prod/app/db/value"))
                out.append(await client.post("/v1/credentials/prod/app/db/usage", json={}))
        return out

    return svc.run(send())


def test_value_reads_and_usage_reports_run_no_code_in_worker_threads(
    svc: BlockingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every hop of Starlette/FastAPI into a worker thread goes through anyio.to_thread:
    # record them (and still run them, so a hop shows up here, not as a broken request).
    hops: list[str] = []
    real = anyio.to_thread.run_sync

    async def recording(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__qualname__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", recording)
    svc.add_principal("app", Role.APP, scope="prod/app/*", kind="service")
    token = svc.create_token("app")[1]

    answers = _requests(svc, token, 3)

    for r in answers:
        assert r.status_code == 200, r.text
    values = [r for r in answers if r.request.method == "GET"]
    assert [r.json() for r in values] == [
        {"name": "prod/app/db", "version": 1, "stage": "CURRENT", "value": VALUE}
    ] * 3
    assert all(r.headers["cache-control"] == "no-store" for r in values)
    assert all(r.headers["content-type"] == "application/json" for r in answers)
    assert [r.json() for r in answers if r.request.method == "POST"] == [
        {"name": "prod/app/db", "use_count": n} for n in (2, 4, 6)
    ]
    assert hops == []  # before: one per request (the sync `Service` dependency)
    # Still counted: 3 reads + 3 reported uses.
    assert svc.show("prod/app/db").use_count == 6


def test_a_service_opened_with_fast_loop_runs_on_uvloop(tmp_path: Path, db_url: str) -> None:
    uvloop = pytest.importorskip("uvloop")  # uvicorn[standard] installs it
    settings = Settings(home=tmp_path / "home", db_url=db_url)
    BlockingService.init(settings)[0].close()

    async def loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    with BlockingService.open(settings, fast_loop=True) as fast:
        assert isinstance(fast.run(loop()), uvloop.Loop)
        assert fast.list_credentials() == []  # the facade works as usual on it
    with BlockingService.open(settings) as plain:
        assert not isinstance(plain.run(loop()), uvloop.Loop)
