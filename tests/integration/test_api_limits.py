"""Request limits of the API (api/limits.py): body size and per-caller rate.

Against a real ``rotator serve`` subprocess on SQLite and PostgreSQL (``db_url``), and the
middleware alone with a clock the test drives (refill without sleeping).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from tests.support.server import ROTATOR, ServeProcess, serve_env

from rotator.api.limits import Limits, LimitsMiddleware
from rotator.config import Settings
from rotator.domain.principal import Role
from rotator.service import BlockingService
from rotator.store.schema import audit_log, credentials

PROBLEM = "application/problem+json"
VALUE = "v4lue-that-must-not-leak"


@pytest.fixture
def store(tmp_path: Path, db_url: str) -> Iterator[tuple[Path, str, dict[str, str]]]:
    """(home, db url, tokens of two admins)."""
    home = tmp_path / "home"
    svc, _ = BlockingService.init(Settings(home=home, db_url=db_url))
    try:
        tokens = {}
        for name in ("one", "two"):
            svc.add_principal(name, Role.ADMIN, kind="service")
            tokens[name] = svc.create_token(name)[1]
    finally:
        svc.close()
    return home, db_url, tokens


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_body_over_the_limit_is_413_declared_or_chunked_and_nothing_is_stored(
    store: tuple[Path, str, dict[str, str]], raw_db: Engine
) -> None:
    home, db_url, tokens = store
    with raw_db.connect() as conn:
        audited = conn.scalar(select(func.count()).select_from(audit_log))
    body = (
        '{"name": "prod/big", "connector": "local", "value": "' + VALUE + "x" * 5000 + '"}'
    ).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    env = serve_env(home, db_url, ROTATOR_API_MAX_BODY="4096")
    with ServeProcess(env) as srv, httpx.Client(base_url=srv.base_url, timeout=30) as c:
        for content in (body, chunks()):
            r = c.post(
                "/v1/credentials",
                content=content,
                headers={**_auth(tokens["one"]), "Content-Type": "application/json"},
            )
            assert r.status_code == 413, r.text
            assert r.headers["content-type"].startswith(PROBLEM)
            assert "4096" in r.json()["detail"]
            assert VALUE not in r.text
        # Under the limit the same route works: the limit, not the route, refused.
        small = c.post(
            "/v1/credentials",
            json={"name": "prod/small", "connector": "local", "value": VALUE},
            headers=_auth(tokens["one"]),
        )
        assert small.status_code == 201, small.text
    assert VALUE not in srv.stderr
    with raw_db.connect() as conn:
        assert [n for (n,) in conn.execute(select(credentials.c.name))] == ["prod/small"]
        actions = [
            a
            for (a,) in conn.execute(
                select(audit_log.c.action).order_by(audit_log.c.seq).offset(audited)
            )
        ]
    assert "credential.add" in actions
    assert actions.count("credential.add") == 1


def test_a_caller_over_its_rate_gets_429_with_retry_after_and_others_still_pass(
    store: tuple[Path, str, dict[str, str]],
) -> None:
    home, db_url, tokens = store
    env = serve_env(home, db_url, ROTATOR_API_RATE="1/m:3")
    with ServeProcess(env) as srv, httpx.Client(base_url=srv.base_url, timeout=30) as c:
        for _ in range(3):
            assert c.get("/v1/credentials", headers=_auth(tokens["one"])).status_code == 200
        r = c.get("/v1/credentials", headers=_auth(tokens["one"]))
        assert r.status_code == 429, r.text
        assert r.headers["content-type"].startswith(PROBLEM)
        # One request a minute refills: the next passes in (about) 60 s.
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # Another token has its own bucket; health probes are never limited.
        assert c.get("/v1/credentials", headers=_auth(tokens["two"])).status_code == 200
        for _ in range(5):
            assert c.get("/healthz").status_code == 200
        # The bucket is the token's, wherever it calls from (another loopback address).
        with _client_from("127.0.0.4", srv.base_url) as elsewhere:
            r = elsewhere.get("/v1/credentials", headers=_auth(tokens["one"]))
            assert r.status_code == 429, r.text
        # So is MCP's: one limiter for the whole API.
        r = c.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={**_auth(tokens["one"]), "Accept": "application/json, text/event-stream"},
        )
        assert r.status_code == 429, r.text


def _client_from(address: str, base_url: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any of 127.0.0.0/8 on Linux)."""
    return httpx.Client(
        base_url=base_url, timeout=30, transport=httpx.HTTPTransport(local_address=address)
    )


def _denied(raw_db: Engine) -> int:
    with raw_db.connect() as conn:
        return int(
            conn.scalar(
                select(func.count())
                .select_from(audit_log)
                .where(audit_log.c.action == "auth.denied")
            )
            or 0
        )


def test_unauthenticated_requests_are_limited_per_address_whatever_token_id_or_xff_they_claim(
    store: tuple[Path, str, dict[str, str]], raw_db: Engine
) -> None:
    home, db_url, tokens = store
    victim_id = tokens["one"][len("rtr_") : len("rtr_") + 12]
    before = _denied(raw_db)
    env = serve_env(home, db_url, ROTATOR_API_RATE="1/m:3")
    with ServeProcess(env) as srv:
        with _client_from("127.0.0.2", srv.base_url) as attacker:
            # The victim's token id with wrong secrets, then made-up ids, each request with
            # its own X-Forwarded-For: all one caller, the attacker's address.
            statuses = []
            for i in range(10):
                token_id = victim_id if i < 5 else "zzzzzzzzzzz" + "abcde"[i - 5]
                forged = f"rtr_{token_id}_" + "A" * 43
                r = attacker.get(
                    "/v1/credentials",
                    headers={**_auth(forged), "X-Forwarded-For": f"203.0.113.{i}"},
                )
                statuses.append(r.status_code)
            assert statuses == [401] * 3 + [429] * 7, statuses
        with _client_from("127.0.0.3", srv.base_url) as anonymous:
            statuses = [
                anonymous.get(
                    "/v1/credentials", headers={"X-Forwarded-For": f"198.51.100.{i}"}
                ).status_code
                for i in range(6)
            ]
            assert statuses == [401] * 3 + [429] * 3, statuses
        # The victim, from its own address, still has its whole burst.
        with httpx.Client(base_url=srv.base_url, timeout=30) as victim:
            for _ in range(3):
                r = victim.get("/v1/credentials", headers=_auth(tokens["one"]))
                assert r.status_code == 200, r.text
    # Only the attacker's requests that got through were audited as refused (a request
    # without a token is refused before the service): no flood of entries.
    assert _denied(raw_db) - before == 3


def test_the_bucket_refills_with_the_clock() -> None:
    now = [100.0]

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = LimitsMiddleware(
        Starlette(routes=[Route("/v1/x", ok)]),
        Limits(rate=2.0, burst=2.0),
        clock=lambda: now[0],
    )
    with TestClient(app) as c:
        assert [c.get("/v1/x").status_code for _ in range(2)] == [200, 200]
        refused = c.get("/v1/x")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"  # 0.5 s, rounded up
        now[0] += 0.5  # one request's worth
        assert c.get("/v1/x").status_code == 200
        assert c.get("/v1/x").status_code == 429
        now[0] += 60  # refills to the burst, no more
        assert [c.get("/v1/x").status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize(
    ("var", "value"),
    [("ROTATOR_API_RATE", "fast"), ("ROTATOR_API_MAX_BODY", "-1")],
)
def test_a_bad_limit_setting_stops_serve_with_one_line(
    store: tuple[Path, str, dict[str, str]], var: str, value: str
) -> None:
    home, db_url, _ = store
    proc = subprocess.run(
        [ROTATOR, "serve", "--port", "0", "--no-scheduler"],
        env=serve_env(home, db_url, **{var: value}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert var in lines[0]
