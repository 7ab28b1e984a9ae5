"""Stateful fuzzing of the live REST API (schemathesis v4): sequences, not single requests.

A real ``rotator serve`` with an admin token gets scenarios of linked calls: create a
credential, then read, patch, rotate, delete it by the name the creation answered; start a
rotation, then read the job by the id its 202 answered. The links come from schemathesis'
own inference over /openapi.json (rotator's document declares none); the first test checks
that the inferred links are the ones these scenarios need, so a change of the document that
loses them fails here instead of silently fuzzing single calls.

Every response must be no 5xx, conform to the documented status, media type and schema, and
every 4xx must be application/problem+json; a 4xx must store nothing (every table, the audit
log among them, compared before and after the call); after the run the audit chain verifies.

Bounded: a few scenarios on SQLite in the suite (``ci`` profile); PostgreSQL too under the
``long`` profile (docs/testing.md). tests/integration/test_api_schema.py covers the same
operations one request at a time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.pool import NullPool
from tests.support.fuzz import fuzz_settings, is_long
from tests.support.server import ServeProcess, serve_env

from rotator.config import Settings
from rotator.domain.principal import Role
from rotator.domain.secret import Secret
from rotator.service import BlockingService, ValueInput
from rotator.store import normalize_url

PROBLEM = "application/problem+json"
EXCLUDED = r"^/v1/watch$"  # an endless event stream: no whole response to check
STEPS = 6  # calls per scenario (the long profile takes more)
JOB_TIMEOUT_S = 60

# PostgreSQL only in the long run: the suite's budget buys one backend here, and
# test_api_schema already fuzzes every operation on both.
BACKENDS = ["sqlite", *(["postgresql"] if is_long() else [])]


@dataclass
class Live:
    base_url: str
    token: str
    engine: sa.Engine
    metadata: sa.MetaData

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def tables(self) -> dict[str, list[tuple[str, ...]]]:
        """Every row of every table, but a token's ``last_used_at``: authenticating a call
        records it whatever the call then answers."""
        out: dict[str, list[tuple[str, ...]]] = {}
        with self.engine.connect() as conn:
            for name, table in sorted(self.metadata.tables.items()):
                columns = [c for c in table.c if (name, c.name) != ("tokens", "last_used_at")]
                rows = conn.execute(sa.select(*columns)).all()
                out[name] = sorted(tuple(repr(v) for v in row) for row in rows)
        return out


@pytest.fixture(params=BACKENDS)
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Live]:
    if request.param == "sqlite":
        db_url = f"sqlite:///{tmp_path}/rotator.db"
    else:
        db_url = request.getfixturevalue("pg_database")
    home = tmp_path / "home"
    svc, _ = BlockingService.init(Settings(home=home, db_url=db_url))
    try:
        svc.add_principal("admin", Role.ADMIN, kind="service")
        token = svc.create_token("admin")[1]
        for name in ("prod/db", "dev/x"):
            svc.add_credential(name, "local", value=ValueInput(value=Secret("v-" + name)))
    finally:
        svc.close()
    engine = sa.create_engine(normalize_url(db_url), poolclass=NullPool)
    metadata = sa.MetaData()
    metadata.reflect(engine)
    env = serve_env(home, db_url, ROTATOR_API_RATE="100000/s")
    try:
        with ServeProcess(env) as srv:
            yield Live(srv.base_url, token, engine, metadata)
            assert "Traceback" not in srv.stderr, srv.stderr
    finally:
        engine.dispose()


def problem_json_for_4xx(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx answers application/problem+json with its status and a detail."""
    if 400 <= response.status_code < 500:
        media = response.headers.get("content-type", [""])
        media = media[0] if isinstance(media, list) else media
        assert media.startswith(PROBLEM), f"{response.status_code} as {media!r}"
        body = response.json()
        assert body["status"] == response.status_code
        assert body["detail"]
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    problem_json_for_4xx,
]

# (source operation, status) -> target operations the scenarios need linked.
NEEDED_LINKS = {
    ("POST", "/v1/credentials", "201"): {
        "/v1/credentials/{name}/get",
        "/v1/credentials/{name}/patch",
        "/v1/credentials/{name}/delete",
        "/v1/credentials/{name}/rotate/post",
    },
    ("POST", "/v1/credentials/{name}/rotate", "202"): {"/v1/rotations/{job_id}/get"},
}


def inferred_targets(raw: dict[str, Any], method: str, path: str, status: str) -> set[str]:
    links = raw["paths"][path][method.lower()]["responses"][status].get("links", {})
    return {
        link["operationRef"].removeprefix("#/paths/").replace("~1", "/") for link in links.values()
    }


def test_stateful_workflows_keep_the_contract_store_nothing_on_4xx_and_the_chain_verifies(
    live: Live,
) -> None:
    schema = schemathesis.openapi.from_url(f"{live.base_url}/openapi.json").exclude(
        path_regex=EXCLUDED
    )
    machine = schema.as_state_machine()  # infers the links into the schema
    for (method, path, status), needed in NEEDED_LINKS.items():
        got = inferred_targets(schema.raw_schema, method, path, status)
        assert needed <= got, f"links of {method} {path} {status}: {sorted(got)}"

    calls: list[tuple[str, int]] = []

    class Workflow(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": live.auth}

        def before_call(self, case: Any) -> None:
            self._before = live.tables()

        def after_call(self, response: Any, case: Any) -> None:
            calls.append((f"{case.method} {case.path}", response.status_code))
            if response.status_code == 202:
                # A rotation runs on after its 202: let it end so that the next call's
                # before/after comparison sees only that call.
                href = response.json().get("href")
                if href:
                    wait_for_job(live, href)

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs or None)
            if 400 <= response.status_code < 500:
                assert live.tables() == self._before, (
                    f"{case.method} {case.path} answered {response.status_code} but changed "
                    "the store"
                )

    steps = STEPS * (10 if is_long() else 1)
    Workflow.run(settings=settings(fuzz_settings(weight=0.1), stateful_step_count=steps))

    assert calls, "no scenario ran"
    with httpx.Client(base_url=live.base_url, headers=live.auth, timeout=30) as http:
        answer = http.post("/v1/audit/verify")
        assert answer.status_code == 200, answer.text
        assert answer.json()["ok"] is True, answer.json()


def wait_for_job(live: Live, href: str) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    with httpx.Client(base_url=live.base_url, headers=live.auth, timeout=30) as http:
        while http.get(href).json().get("status") == "running":
            assert time.monotonic() < deadline, f"rotation job {href} did not end"
            time.sleep(0.02)
