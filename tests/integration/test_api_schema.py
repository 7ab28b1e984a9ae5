"""Property-based checks of the live API against its own /openapi.json (schemathesis v4).

For every operation but the SSE watch, a real ``rotator serve`` (SQLite and PostgreSQL,
``db_url``) with an admin token, a few credentials, one finished rotation job and one event
gets a bounded number of generated requests (valid and invalid); every response must be no 5xx,
conform to the documented schema (status, media type, headers, body), reject invalid input
with a 4xx, and every 4xx must be application/problem+json.

Not checked: a method an operation does not have (schemathesis' ``unsupported_method``).
Credential names contain ``/``, so ``PATCH /v1/credentials/x/rotate`` is the PATCH of a
credential named ``x/rotate`` (422 for a rotate body), not a 405 (REST.md's routing).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.support.server import ServeProcess, serve_env

from rotator.config import Settings
from rotator.domain.principal import Role
from rotator.domain.secret import Secret
from rotator.service import BlockingService, ValueInput

PROBLEM = "application/problem+json"
# Every operation but the watch: GET /v1/watch is an endless text/event-stream (a heartbeat
# every 15 s, events forever), so a generated request would never get a whole response to
# check; tests/integration/test_watch.py covers it.
EXCLUDED = r"^/v1/watch$"


@pytest.fixture
def live(tmp_path: Path, db_url: str) -> Iterator[tuple[str, str]]:
    """(base URL, admin token) of a serving process with three credentials."""
    home = tmp_path / "home"
    svc, _ = BlockingService.init(Settings(home=home, db_url=db_url))
    try:
        svc.add_principal("admin", Role.ADMIN, kind="service")
        token = svc.create_token("admin")[1]
        for name in ("prod/db", "prod/api/key", "dev/x"):
            svc.add_credential(name, "local", value=ValueInput(value=Secret("v-" + name)))
    finally:
        svc.close()
    # A high rate: generated requests must meet the routes, not the limiter.
    env = serve_env(home, db_url, ROTATOR_API_RATE="100000/s")
    with ServeProcess(env) as srv:
        # One finished rotation job and one event, so the lists hold real items to check.
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=srv.base_url, headers=auth, timeout=30) as http:
            event = {"kind": "leak", "severity": "low", "credential": "dev/x"}
            assert http.post("/v1/events", json=event).status_code == 202
            href = http.post("/v1/rotations", json={"all": True}).json()["href"]
            deadline = time.monotonic() + 60
            while http.get(href).json()["status"] == "running":
                assert time.monotonic() < deadline, "the setup rotation did not finish"
                time.sleep(0.05)
        yield srv.base_url, token


@pytest.fixture
def api_schema(live: tuple[str, str]) -> Any:
    base_url, _ = live
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


# Filters go on the lazy schema: schemathesis 4.32 replaces the fixture schema's own filter
# set with this one, so an ``exclude`` inside the fixture would be silently dropped.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex=EXCLUDED)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's lazy schema reads ``node._nodeid``, which pytest 9 no longer has
    # (it keeps the id elsewhere, behind ``nodeid``); give it the attribute it expects.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def problem_json_for_4xx(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx answers application/problem+json with status and detail."""
    if 400 <= response.status_code < 500:
        media = response.headers.get("content-type", [""])
        media = media[0] if isinstance(media, list) else media
        assert media.startswith(PROBLEM), f"{response.status_code} as {media!r}"
        body = response.json()
        assert body["status"] == response.status_code
        assert body["detail"]
    return None


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_keeps_its_documented_contract(case: Any, live: tuple[str, str]) -> None:
    _, token = live
    case.call_and_validate(
        headers={"Authorization": f"Bearer {token}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            problem_json_for_4xx,
            negative_data_rejection,
            response_headers_conformance,
            missing_required_header,
        ],
    )
