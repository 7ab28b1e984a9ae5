"""The REST API's rotations, events, audit and reports, against real ``rotator serve``
processes (``--port 0``) on SQLite and PostgreSQL.

A rotation request is a job: 202 at once, then polled to its end; its state is in the store,
so any server on the same database answers for it, and a server killed mid-job leaves it
``interrupted`` (not ``running`` forever) while the engine's recovery leaves one working
CURRENT value.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from tests.support import doubles
from tests.support.doubles import DoubleConfig

from rotator.config import Settings
from rotator.domain.principal import Role
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.store.schema import audit_log

RUN_CLI = Path(__file__).resolve().parents[1] / "support" / "run_cli.py"
READY = "rotator: serving on "
WAIT_S = 60.0


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )


def _start(settings: Settings, log: Path, *args: str, **env: str) -> Server:
    """``rotator serve --port 0`` (with the test-double connector) in a subprocess; returns
    once it printed the line with its URL."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(RUN_CLI), "serve", "--port", "0", "--poll", "0.2", *args],
            env={
                **os.environ,
                "ROTATOR_HOME": str(settings.home),
                "ROTATOR_DB": settings.db_url,
                **env,
            },
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + WAIT_S
    while True:
        text = log.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith(READY):
                return Server(proc, line[len(READY) :].strip(), log)
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"rotator serve did not start: rc={proc.returncode}\n{text}")
        time.sleep(0.05)


def _stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture
def serve(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers on the test's store; every one is stopped after the test."""
    started: list[Server] = []

    def start(*args: str, **env: str) -> Server:
        server = _start(settings, tmp_path / f"serve-{len(started)}.log", *args, **env)
        started.append(server)
        return server

    yield start
    for s in started:
        _stop(s)


def _token(svc: BlockingService, name: str, role: Role, scope: str = "*") -> str:
    svc.add_principal(name, role, scope=scope)
    return svc.create_token(name)[1]


def _add_local(svc: BlockingService, name: str, tags: dict[str, str] | None = None) -> None:
    svc.add_credential(
        name,
        "local",
        tags=tags or {},
        policy=PolicyInput(grace="0s"),
        value=ValueInput(generate=True),
    )


def _poll(
    client: httpx.Client, job: str, until: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        r = client.get(f"/v1/rotations/{job}")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        if until(doc):
            return doc
        assert time.monotonic() < deadline, f"job never reached the state: {doc}"
        time.sleep(0.1)


def _done(doc: dict[str, Any]) -> bool:
    return doc["status"] != "running"


def _pages(client: httpx.Client, path: str, limit: int, **params: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        q: dict[str, Any] = {**params, "limit": limit}
        if cursor is not None:
            q["cursor"] = cursor
        r = client.get(path, params=q)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


# ------------------------------------------------------------------------------ the tests


def test_a_rotation_is_accepted_at_once_and_its_job_ends_done_with_the_rotate_json_result(
    svc: BlockingService, serve: Callable[..., Server]
) -> None:
    _add_local(svc, "app/db")
    token = _token(svc, "ops", Role.OPERATOR)
    svc.close()
    server = serve()
    with server.client(token) as c:
        r = c.post("/v1/credentials/app/db/rotate", json={"emergency": False})
        assert r.status_code == 202, r.text
        accepted = r.json()
        assert accepted["status"] == "running"
        assert accepted["href"] == f"/v1/rotations/{accepted['id']}"
        assert r.headers["location"] == accepted["href"]
        job = _poll(c, accepted["id"], _done)
        assert job["status"] == "done"
        assert job["requested_by"] == "ops"
        assert job["total"] == 1
        assert job["created_at"].endswith("Z")
        assert job["finished_at"].endswith("Z")
        result = job["result"]
        assert (result["rotated"], result["failed"], result["rolled_back"]) == (["app/db"], [], [])
        assert isinstance(result["duration_s"], float)
        view = c.get("/v1/credentials/app/db").json()
        assert view["current_version"] == 2
        # No body at all is the same as {"emergency": false}.
        r = c.post("/v1/credentials/app/db/rotate")
        assert r.status_code == 202, r.text
        assert _poll(c, r.json()["id"], _done)["result"]["rotated"] == ["app/db"]
        listed = _pages(c, "/v1/rotations", 1)
        assert [j["id"] for j in listed] == [accepted["id"], r.json()["id"]]


def test_a_batch_by_tag_of_twenty_rotates_every_tagged_credential_and_nothing_else(
    svc: BlockingService, serve: Callable[..., Server], raw_db: Engine
) -> None:
    names = [f"fleet/c{i:02d}" for i in range(20)]
    for n in names:
        _add_local(svc, n, {"team": "fleet"})
    _add_local(svc, "other/untouched", {"team": "other"})
    token = _token(svc, "ops", Role.OPERATOR)
    svc.close()
    server = serve()
    with server.client(token) as c:
        plan = c.post("/v1/rotations", json={"tags": {"team": "fleet"}, "dry_run": True})
        assert plan.status_code == 200, plan.text
        assert sorted(p["name"] for p in plan.json()["plan"]) == names
        r = c.post("/v1/rotations", json={"tags": {"team": "fleet"}})
        assert r.status_code == 202, r.text
        job = _poll(c, r.json()["id"], _done)
        assert job["status"] == "done", job
        assert job["total"] == 20
        assert sorted(job["result"]["rotated"]) == names
        assert job["result"]["failed"] == []
        assert c.get("/v1/credentials/other/untouched").json()["current_version"] == 1
    with raw_db.connect() as conn:
        [requested] = conn.execute(
            select(audit_log.c.actor, audit_log.c.details).where(
                audit_log.c.action == "rotation.requested"
            )
        ).all()
    details = json.loads(requested.details)
    assert requested.actor == "ops"
    assert details["job"] == job["id"]
    assert details["selector"] == {"names": [], "tags": {"team": "fleet"}, "all": False}
    assert details["credentials"] == 20


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_job_accepted_by_one_server_is_answered_by_another_on_the_same_postgresql(
    svc: BlockingService, serve: Callable[..., Server]
) -> None:
    _add_local(svc, "app/db")
    token = _token(svc, "ops", Role.OPERATOR)
    svc.close()
    a = serve()
    b = serve("--no-scheduler")
    with a.client(token) as ca, b.client(token) as cb:
        r = ca.post("/v1/credentials/app/db/rotate")
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        from_b = _poll(cb, job_id, _done)
        assert from_b["status"] == "done"
        assert from_b["result"]["rotated"] == ["app/db"]
        assert ca.get(f"/v1/rotations/{job_id}").json() == from_b


def test_an_auditor_may_not_start_a_rotation_and_the_refusal_is_audited(
    svc: BlockingService, serve: Callable[..., Server], raw_db: Engine
) -> None:
    _add_local(svc, "app/db")
    auditor = _token(svc, "aud", Role.AUDITOR)
    reader = _token(svc, "rdr", Role.READER)
    svc.close()
    server = serve()
    for token in (auditor, reader):
        with server.client(token) as c:
            for path, body in (
                ("/v1/credentials/app/db/rotate", None),
                ("/v1/rotations", {"names": ["app/db"]}),
            ):
                r = c.post(path, json=body)
                assert r.status_code == 403, r.text
                assert r.headers["content-type"] == "application/problem+json"
                assert r.json()["status"] == 403
    with raw_db.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.actor, audit_log.c.action, audit_log.c.credential).where(
                audit_log.c.action.in_(["access.denied", "rotation.requested"])
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("aud", "access.denied", "app/db"),
        ("aud", "access.denied", "app/db"),
        ("rdr", "access.denied", "app/db"),
        ("rdr", "access.denied", "app/db"),
    ], "each refusal audited, no job requested"


def test_a_job_reaching_outside_the_callers_scope_reads_as_a_missing_one(
    svc: BlockingService, serve: Callable[..., Server]
) -> None:
    _add_local(svc, "prod/payments/db")
    _add_local(svc, "dev/other/db")
    admin = _token(svc, "boss", Role.ADMIN)
    narrow = _token(svc, "narrow-ops", Role.OPERATOR, "prod/payments/*")
    svc.close()
    server = serve()
    with server.client(admin) as c:
        r = c.post("/v1/credentials/dev/other/db/rotate")
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        _poll(c, job_id, _done)
    missing = job_id[:-1] + ("1" if job_id[-1] == "0" else "0")
    with server.client(narrow) as c:
        seen = c.get(f"/v1/rotations/{job_id}")
        unknown = c.get(f"/v1/rotations/{missing}")
        assert seen.status_code == unknown.status_code == 404
        assert seen.json() == {
            **unknown.json(),
            "detail": unknown.json()["detail"].replace(missing, job_id),
        }
        # Rotating a name outside the scope is refused before any job exists.
        r = c.post("/v1/credentials/dev/other/db/rotate")
        assert r.status_code == 403, r.text
        # A malformed id or cursor is bad input, never a 5xx.
        assert c.get("/v1/rotations/not-a-job").status_code == 400
        assert c.get("/v1/rotations", params={"cursor": "%%%"}).status_code in (400, 403)


def test_a_server_killed_mid_job_leaves_the_job_interrupted_and_one_working_current(
    svc: BlockingService, serve: Callable[..., Server], tmp_path: Path
) -> None:
    doubles.install()
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    cfg = {"state": str(tmp_path / "target.json"), "barrier": str(barrier), "barrier_after": "set"}
    svc.add_credential(
        "app/db", "double", settings=cfg, policy=PolicyInput(grace="1h"),
        value=ValueInput(generate=True),
    )  # fmt: skip
    first = svc.get_value("app/db").reveal_text()
    doubles.target_add(DoubleConfig(**cfg), "app/db", first)
    token = _token(svc, "boss", Role.ADMIN)
    svc.close()
    short = {"ROTATOR_LEASE_SECONDS": "1"}
    a = serve("--no-scheduler", **short)
    with a.client(token) as c:
        r = c.post("/v1/credentials/app/db/rotate")
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + WAIT_S
        while not list(barrier.glob("set.*.reached")):
            assert time.monotonic() < deadline, "the rotation never reached its barrier"
            assert c.get(f"/v1/rotations/{job_id}").json()["status"] == "running"
            time.sleep(0.05)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(timeout=30)
    (barrier / "release").touch()
    b = serve(**short)  # its scheduler runs the engine's recovery
    with b.client(token) as c:
        job = _poll(c, job_id, _done)
        assert job["status"] == "interrupted"
        assert job["result"] is None
        assert "stopped" in job["error"]
        deadline = time.monotonic() + WAIT_S
        while True:
            view = c.get("/v1/credentials/app/db").json()
            stages = [v["stage"] for v in view["versions"]]
            if "PENDING" not in stages:
                break
            assert time.monotonic() < deadline, f"never recovered: {stages}"
            time.sleep(0.1)
        assert stages.count("CURRENT") == 1
        value = c.get("/v1/credentials/app/db/value").json()["value"]
        assert value in doubles.target_values(DoubleConfig(**cfg), "app/db")
        # Listing settles and shows it the same way.
        [listed] = _pages(c, "/v1/rotations", 10)
        assert listed["status"] == "interrupted"


def test_a_server_stopped_mid_job_records_the_job_interrupted_before_it_exits(
    svc: BlockingService, serve: Callable[..., Server], tmp_path: Path
) -> None:
    """SIGTERM: the job ends recorded at once, not when its (default, 30 s) lease runs out."""
    doubles.install()
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    cfg = {"state": str(tmp_path / "target.json"), "barrier": str(barrier), "barrier_after": "set"}
    svc.add_credential("app/db", "double", settings=cfg, value=ValueInput(generate=True))
    doubles.target_add(DoubleConfig(**cfg), "app/db", svc.get_value("app/db").reveal_text())
    token = _token(svc, "boss", Role.ADMIN)
    svc.close()
    a = serve("--no-scheduler")
    with a.client(token) as c:
        job_id = c.post("/v1/credentials/app/db/rotate").json()["id"]
        deadline = time.monotonic() + WAIT_S
        while not list(barrier.glob("set.*.reached")):
            assert time.monotonic() < deadline, "the rotation never reached its barrier"
            time.sleep(0.05)
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(timeout=WAIT_S) == 0, a.log.read_text()
    (barrier / "release").touch()
    b = serve("--no-scheduler")
    with b.client(token) as c:
        job = c.get(f"/v1/rotations/{job_id}").json()
        assert job["status"] == "interrupted"
        assert job["error"] == "the process running the job was stopped before it ended"
        assert job["finished_at"] is not None


def test_events_audit_pages_verify_compliance_and_evidence_over_http(
    svc: BlockingService, serve: Callable[..., Server], raw_db: Engine
) -> None:
    _add_local(svc, "app/db")
    _add_local(svc, "app/cache")
    admin = _token(svc, "boss", Role.ADMIN)
    svc.close()
    server = serve()
    with server.client(admin) as c:
        job = _poll(c, c.post("/v1/credentials/app/db/rotate").json()["id"], _done)
        assert job["result"]["rotated"] == ["app/db"]
        for cred in ("app/db", "app/cache", "app/db"):
            r = c.post(
                "/v1/events",
                json={"kind": "leak", "severity": "low", "credential": cred, "detail": "x"},
            )
            assert r.status_code == 202, r.text
            assert r.json()["kind"] == "leak"
            assert r.json()["severity"] == "low"
        events = _pages(c, "/v1/events", 2)
        assert len(events) == 3
        assert [e["id"] for e in events] == sorted((e["id"] for e in events), reverse=True)
        assert [e["selector"]["credential"] for e in events] == ["app/db", "app/cache", "app/db"]

        entries = _pages(c, "/v1/audit", 7)
        seqs = [e["seq"] for e in entries]
        assert len(entries) > 7
        head = c.get("/v1/audit/head").json()
        with raw_db.connect() as conn:
            stored = list(
                conn.execute(
                    select(audit_log.c.seq)
                    .where(audit_log.c.tenant == entries[0]["tenant"])
                    .where(audit_log.c.seq <= seqs[-1])
                    .order_by(audit_log.c.seq)
                ).scalars()
            )
        assert seqs == stored, "every entry of the tenant once, in order"
        assert seqs[-1] <= head["seq"]
        assert {e["action"] for e in entries} >= {"rotation.requested", "risk.reported"}
        only_db = _pages(c, "/v1/audit", 3, credential="app/db")
        assert only_db
        assert {e["credential"] for e in only_db} == {"app/db"}
        bad = c.get("/v1/audit", params={"cursor": "not*a*cursor"})
        assert bad.status_code == 400
        assert bad.headers["content-type"] == "application/problem+json"

        ok = c.post("/v1/audit/verify", json={"expect_head": f"{head['seq']}:{head['hash']}"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["ok"] is True
        assert ok.json()["entries"] >= head["seq"]
        wrong = c.post("/v1/audit/verify", json={"expect_head": f"{head['seq']}:{'0' * 64}"})
        assert wrong.json()["ok"] is False
        assert c.post("/v1/audit/verify", json={"expect_head": "nope"}).status_code == 400

        as_json = c.get("/v1/reports/compliance", params={"format": "json"})
        assert as_json.headers["content-type"].startswith("application/json")
        assert {x["name"] for x in as_json.json()["credentials"]} == {"app/db", "app/cache"}
        as_csv = c.get("/v1/reports/compliance", params={"format": "csv"})
        assert as_csv.headers["content-type"].startswith("text/csv")
        assert len(as_csv.text.strip().splitlines()) == 3
        as_html = c.get("/v1/reports/compliance", params={"format": "html"})
        assert as_html.headers["content-type"].startswith("text/html")
        assert "app/cache" in as_html.text
        assert c.get("/v1/reports/compliance", params={"format": "pdf"}).status_code == 422

        rotation_id = next(e["rotation_id"] for e in only_db if e["action"] == "rotation.complete")
        ev = c.get(f"/v1/reports/evidence/{rotation_id}")
        assert ev.status_code == 200, ev.text
        assert (ev.json()["credential"], ev.json()["rotation_id"]) == ("app/db", rotation_id)
        assert ev.json()["result"] is not None
