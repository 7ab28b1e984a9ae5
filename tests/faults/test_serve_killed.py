"""Fault: ``rotator serve`` is SIGKILLed while a REST batch rotation is in flight.

A real server rotates a batch (POST /v1/rotations by tag) of slow double credentials and a few
Redis ones on a real server; it is killed with SIGKILL once part of the batch has finished and
part is mid-way. A new ``rotator serve`` on the same store runs the engine's recovery: the job
reads ``interrupted`` there, no rotation is left unfinished, and the invariants hold
(tests/faults/invariants.py). The operator then runs the batch again and every credential of
it is reported rotated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from rotator.config import Settings
from rotator.domain.principal import Role
from rotator.service import BlockingService
from rotator.store.schema import rotation_jobs
from tests.conftest import RedisServer
from tests.faults.invariants import check_recovered, snapshot, unfinished_rotations
from tests.faults.process_rig import (
    RUN_CLI,
    TAG,
    redis_acl_cleanup,
    rotation_steps,
    rotator_env,
    seed_batch,
    wait_for,
)

READY = "rotator: serving on "


class Serve:
    """``rotator serve --port 0`` with the double connector (tests/support/run_cli.py)."""

    def __init__(self, settings: Settings, log: Path, *args: str, **env: str) -> None:
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(RUN_CLI), "serve", "--port", "0", "--poll", "0.2", *args],
                env=rotator_env(settings, **env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.log = log

        def ready() -> str | None:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith(READY):
                    return line[len(READY) :].strip()
            assert self.proc.poll() is None, f"serve ended: {log.read_text()}"
            return None

        self.url = wait_for("rotator serve to be ready", ready)

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(home=tmp_path / "home", db_url=db_url)


@pytest.fixture
def svc(settings: Settings) -> Iterator[BlockingService]:
    service, created = BlockingService.init(settings)
    assert created
    yield service
    service.close()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Serve]]:
    servers: list[Serve] = []
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture
def redis_users(redis_server: RedisServer) -> Iterator[list[str]]:
    with redis_acl_cleanup(redis_server) as made:
        yield made


def _job_row(db_url: str, job_id: str) -> dict[str, Any]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(rotation_jobs).where(rotation_jobs.c.id == job_id)).one()
    finally:
        engine.dispose()
    return dict(row._mapping)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # the shared-store case
def test_serve_sigkilled_mid_rest_batch_recovers_on_restart_with_job_interrupted_and_invariants(
    settings: Settings,
    svc: BlockingService,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_users: list[str],
    started: list[Serve],
) -> None:
    batch = seed_batch(
        svc, settings, tmp_path, n_doubles=14, latency_ms=(50, 600),
        redis_server=redis_server, redis_users=redis_users, n_redis=3,
    )  # fmt: skip
    svc.add_principal("ops", Role.OPERATOR)
    token = svc.create_token("ops")[1]
    svc.close()
    before = snapshot(settings.db_url)
    short = {"ROTATOR_LEASE_SECONDS": "2"}

    a = Serve(settings, tmp_path / "serve-a.log", **short)
    started.append(a)
    with a.client(token) as c:
        r = c.post("/v1/rotations", json={"tags": TAG})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        # Mid-batch: some rotations finished, others still in a step (the double is slow).
        wait_for(
            "part of the batch to finish while the rest is in flight",
            lambda: (
                (s := rotation_steps(settings.db_url)).get("finished", 0) >= 3
                and sum(n for k, n in s.items() if k not in {"finished", "rolled_back", "failed"})
            ),
        )
    os.kill(a.proc.pid, signal.SIGKILL)
    assert a.proc.wait(timeout=30) == -signal.SIGKILL
    in_flight = unfinished_rotations(settings.db_url)
    assert in_flight, "the kill landed after the batch ended: nothing was in flight"
    assert _job_row(settings.db_url, job_id)["status"] == "running"

    # The operator's recovery: start the server again (its scheduler runs the recovery).
    b = Serve(settings, tmp_path / "serve-b.log", **short)
    started.append(b)
    wait_for("the new server to resume or roll back every rotation",
             lambda: not unfinished_rotations(settings.db_url))  # fmt: skip
    with b.client(token) as c:
        job = wait_for(
            "the job to read interrupted",
            lambda: (d := c.get(f"/v1/rotations/{job_id}").json())["status"] != "running" and d,
        )
        assert job["status"] == "interrupted", job
        assert job["result"] is None
        assert job["total"] == len(batch.names)
        # Every credential of the batch is at a CURRENT that works (resumed or rolled back).
        for name in batch.names:
            view = c.get(f"/v1/credentials/{name}").json()
            stages = [v["stage"] for v in view["versions"]]
            assert stages.count("CURRENT") == 1, (name, stages)
            assert "PENDING" not in stages, (name, stages)
    check_recovered(settings, before, batch.probe)

    # The operator runs the batch again: every credential is reported, all rotated.
    middle = snapshot(settings.db_url)
    with b.client(token) as c:
        r = c.post("/v1/rotations", json={"tags": TAG})
        assert r.status_code == 202, r.text
        again = wait_for(
            "the second batch to end",
            lambda: (
                (d := c.get(f"/v1/rotations/{r.json()['id']}").json())["status"] != "running" and d
            ),
        )
    assert again["status"] == "done", again
    assert sorted(again["result"]["rotated"]) == batch.names
    assert again["result"]["failed"] == []
    assert again["result"]["rolled_back"] == []
    check_recovered(settings, middle, batch.probe)
    b.stop()
    for s in (a, b):
        assert "Traceback" not in s.log.read_text(), s.log.read_text()
