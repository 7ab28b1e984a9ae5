"""Issue 11's end-to-end must-show, against a real ``rotator serve`` process (SQLite and
PostgreSQL stores, ``db_url``) and a real PostgreSQL target (``pg_target``).

Everything a deployment would do goes over the wire: fifty ``postgres`` credentials
(alternating strategy, so the previous login keeps working during a rotation) are created
with ``POST /v1/credentials``; an application thread keeps querying the target through the
SDK's psycopg factory while ``POST /v1/rotations`` rotates all fifty by tag; the SDK's
``watch`` reports each new CURRENT once; ``/metrics`` counts the fifty rotations. At the end
the target agrees with the store: every CURRENT value logs in as its role (or its clone).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from tests.conftest import PgTarget
from tests.support.server import ServeProcess, serve_env

from rotator.client import Client
from rotator.config import Settings
from rotator.domain.change import Change
from rotator.domain.principal import Role
from rotator.service import BlockingService

N = 50
WAIT_S = 120.0
TAG = {"suite": "e2e"}


def until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """A bounded wait for ``check`` (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def pg_admin(target: PgTarget, *queries: sql.Composable) -> None:
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        for q in queries:
            conn.execute(q)


@pytest.fixture
def roles(pg_target: PgTarget) -> Iterator[list[tuple[str, str]]]:
    """N fresh login roles on the target: (role, initial password)."""
    made = [(f"e2e_{uuid.uuid4().hex[:10]}", "initial-" + uuid.uuid4().hex) for _ in range(N)]
    pg_admin(
        pg_target,
        *(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(r), sql.Literal(p))
            for r, p in made
        ),
    )
    yield made
    pg_admin(
        pg_target,
        *(
            sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role))
            for r, _ in made
            for role in (r, r + "_clone")
        ),
    )


@pytest.fixture
def admin_token(settings: Settings) -> str:
    svc, _ = BlockingService.init(settings)
    try:
        svc.add_principal("ops", Role.ADMIN, kind="service")
        return svc.create_token("ops")[1]
    finally:
        svc.close()


@pytest.fixture
def server(settings: Settings, admin_token: str) -> Iterator[ServeProcess]:
    env = serve_env(settings.home, settings.db_url, ROTATOR_API_RATE="100000/s")
    with ServeProcess(env, ("--no-scheduler", "--poll", "0.2")) as srv:
        yield srv


def rotations_total(http: httpx.Client) -> float:
    """Sum of ``rotator_rotations_total`` samples with ``result="rotated"`` (any trigger)."""
    resp = http.get("/metrics")
    assert resp.status_code == 200, resp.text
    return sum(
        s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
        if s.name == "rotator_rotations_total" and s.labels.get("result") == "rotated"
    )


class Queries:
    """An application thread: logs in through the SDK's factory (a fresh connection each
    time, round-robin over the credentials) and runs ``SELECT 1`` until stopped."""

    def __init__(self, connects: list[Callable[[], Any]]) -> None:
        self.connects = connects
        self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                with self.connects[i % len(self.connects)]() as conn:
                    assert conn.execute("SELECT 1").fetchone() == (1,)
                self.ok += 1
            except Exception as exc:  # counted and reported by the test
                self.failures.append(f"{type(exc).__name__}: {exc}")
            i += 1

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=WAIT_S)


def test_fifty_postgres_credentials_rotate_over_rest_with_no_failed_query(
    settings: Settings,
    server: ServeProcess,
    admin_token: str,
    pg_target: PgTarget,
    roles: list[tuple[str, str]],
) -> None:
    auth = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=server.base_url, headers=auth, timeout=60) as http:
        # The target's admin login, referenced by every postgres credential.
        made = http.post(
            "/v1/credentials",
            json={"name": "e2e/pg-admin", "connector": "local", "value": pg_target.password},
        )
        assert made.status_code == 201, made.text
        names = [f"e2e/app/{i:02d}" for i in range(N)]
        for name, (role, password) in zip(names, roles, strict=True):
            made = http.post(
                "/v1/credentials",
                json={
                    "name": name,
                    "connector": "postgres",
                    "settings": {
                        "host": pg_target.host,
                        "port": str(pg_target.port),
                        "role": role,
                        "admin": "e2e/pg-admin",
                        "mode": "alternating",
                    },
                    "tags": TAG,
                    "value": password,
                },
            )
            assert made.status_code == 201, made.text
            assert made.headers["location"] == f"/v1/credentials/{name}"
            assert password not in made.text
        before = rotations_total(http)
        head = http.get("/v1/audit/head")
        assert head.status_code == 200, head.text
        after_seq = int(head.json()["seq"])

        with Client(server.base_url, admin_token, cache_ttl=3600) as client:
            # The feed starts at the audit head taken before the rotation: nothing is missed
            # however late the watch connects.
            changes: list[Change] = []
            feed = client.watch(names, after=after_seq)

            def follow() -> None:
                for change in feed:
                    changes.append(change)
                    if len(changes) >= N:
                        return

            watcher = threading.Thread(target=follow, daemon=True)
            watcher.start()

            connects = [
                client.psycopg_factory(
                    name,
                    f"host={pg_target.host} port={pg_target.port} dbname=postgres "
                    f"user={role} connect_timeout=5",
                )
                for name, (role, _) in zip(names, roles, strict=True)
            ]
            app = Queries(connects)
            until(lambda: app.ok >= N or bool(app.failures), "a first round of queries")

            ok_at_start = app.ok
            accepted = http.post("/v1/rotations", json={"tags": TAG})
            assert accepted.status_code == 202, accepted.text
            job_href = accepted.json()["href"]
            assert accepted.headers["location"] == job_href

            job: dict[str, Any] = {}

            def done() -> bool:
                nonlocal job
                resp = http.get(job_href)
                assert resp.status_code == 200, resp.text
                job = resp.json()
                return job["status"] != "running"

            until(done, "the rotation job to finish")
            during = app.ok - ok_at_start
            # Keep the application querying a while on the new values.
            settled = app.ok
            until(lambda: app.ok >= settled + N or bool(app.failures), "queries after")
            app.finish()
            watcher.join(timeout=WAIT_S)
            assert not watcher.is_alive(), f"the watch saw {len(changes)} of {N} changes"

        assert job["status"] == "done", job
        result = job["result"]
        assert result["failed"] == [], result
        assert result["rolled_back"] == [], result
        assert sorted(result["rotated"]) == names
        assert job["total"] == N

        assert app.failures == []
        assert app.ok >= 2 * N
        assert during > 0, "no query ran while the rotation job ran"

        # One event per credential, version 2, each from its own rotation.
        assert sorted(c.name for c in changes) == sorted(result["rotated"])
        assert {c.version for c in changes} == {2}
        assert len({c.rotation_id for c in changes}) == N
        for c in changes:  # each event names the rotation that made it, as its evidence says
            ev = http.get(f"/v1/reports/evidence/{c.rotation_id}")
            assert ev.status_code == 200, ev.text
            record = ev.json()
            assert (record["credential"], record["version"]) == (c.name, 2)
            assert record["result"] == "finished"
            assert record["requested_by"] == "ops"
        cursors = [c.cursor for c in changes]
        assert cursors == sorted(cursors)
        assert len(set(cursors)) == N

        assert rotations_total(http) - before == N

        # The target agrees with the store: each CURRENT logs in (as the role or its clone).
        for name, (role, password) in zip(names, roles, strict=True):
            resp = http.get(f"/v1/credentials/{name}/value", params={"stage": "CURRENT"})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["version"] == 2
            doc = json.loads(body["value"])  # alternating: {"username", "password", ...}
            assert doc["password"] != password
            assert doc["username"] in (role, role + "_clone")
            dsn = pg_target.dsn(user=doc["username"], password=doc["password"])
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (doc["username"],)
    # Nothing secret in the server's log.
    assert pg_target.password not in server.stderr
    assert all(p not in server.stderr for _, p in roles)


def test_two_servers_on_one_postgresql_act_as_one_service(tmp_path: Path, pg_database: str) -> None:
    settings = Settings(home=tmp_path / "home", db_url=pg_database)
    svc, _ = BlockingService.init(settings)
    try:
        svc.add_principal("ops", Role.ADMIN, kind="service")
        token = svc.create_token("ops")[1]
    finally:
        svc.close()
    env = serve_env(settings.home, settings.db_url, ROTATOR_API_RATE="100000/s")
    auth = {"Authorization": f"Bearer {token}"}
    args = ("--no-scheduler", "--poll", "0.2")
    with (
        ServeProcess(env, args) as a,
        ServeProcess(env, args) as b,
        httpx.Client(base_url=a.base_url, headers=auth, timeout=30) as on_a,
        httpx.Client(base_url=b.base_url, headers=auth, timeout=30) as on_b,
    ):
        made = on_a.post(
            "/v1/credentials",
            json={"name": "shared/db", "connector": "local", "generate": True},
        )
        assert made.status_code == 201, made.text
        first = on_b.get("/v1/credentials/shared/db/value")
        assert first.status_code == 200, first.text
        assert first.json()["version"] == 1
        assert on_a.get("/v1/credentials/shared/db/value").json() == first.json()

        head = int(on_a.get("/v1/audit/head").json()["seq"])
        with Client(a.base_url, token, cache_ttl=0) as client:
            changes: list[Change] = []
            feed = client.watch("shared/db", after=head)
            watcher = threading.Thread(target=lambda: changes.append(next(feed)), daemon=True)
            watcher.start()

            accepted = on_b.post("/v1/credentials/shared/db/rotate")
            assert accepted.status_code == 202, accepted.text
            href = accepted.json()["href"]
            job: dict[str, Any] = {}

            def done() -> bool:
                nonlocal job
                resp = on_a.get(href)  # the job B runs, answered by A
                assert resp.status_code == 200, resp.text
                job = resp.json()
                return job["status"] != "running"

            until(done, "the rotation started on B to finish, as seen from A")
            watcher.join(timeout=WAIT_S)
            assert not watcher.is_alive(), "A's watch never reported B's rotation"
            # Seen from A, the client reads the value B's rotation made.
            new = client.get("shared/db")
        assert job["status"] == "done", job
        assert job["result"]["rotated"] == ["shared/db"]
        [change] = changes
        assert (change.name, change.version) == ("shared/db", 2)
        assert change.rotation_id
        current = on_b.get("/v1/credentials/shared/db/value").json()
        assert current["version"] == 2
        assert current["value"] == new != first.json()["value"]
        previous = on_a.get("/v1/credentials/shared/db/value", params={"stage": "PREVIOUS"})
        assert previous.json()["value"] == first.json()["value"]
