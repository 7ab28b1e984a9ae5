"""``rotator report evidence ROTATION_ID``: who/what/when, the test result, the revoke, the
rotation's audit entries and the proof that they verify against the keyed chain and a signed
checkpoint. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from tests.support import doubles
from tests.support.doubles import DoubleConfig

from rotator.config import Settings
from rotator.domain.principal import Grant, Principal, Role
from rotator.service import BlockingService, Outcome, PolicyInput, ValueInput
from rotator.service.rotation import Selection
from rotator.store.schema import audit_log, credentials, rotations

ROTATOR = str(Path(sys.executable).parent / "rotator")


@pytest.fixture(autouse=True)
def double_connector() -> Iterator[None]:
    doubles.install()
    doubles.CALLS.clear()
    doubles._RNG.clear()
    doubles._RUN.clear()
    yield
    doubles.MemoryTarget.valid.clear()


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")},
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
    }
    return subprocess.run(
        [ROTATOR, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def rotation_id(svc: BlockingService, name: str) -> str:
    ids = [e.rotation_id for e in svc.audit_entries(credential=name) if e.rotation_id]
    assert ids
    return ids[-1]


def test_evidence_of_a_finished_emergency_rotation_names_its_revoke_and_verifies(
    svc: BlockingService, settings: Settings
) -> None:
    svc.add_credential("prod/db", "local", value=ValueInput(generate=True))
    svc.rotate(Selection(names=["prod/db"]), emergency=True)
    rid = rotation_id(svc, "prod/db")
    svc.make_checkpoint()
    svc.close()

    r = cli(settings, "report", "evidence", rid, "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["rotation_id"] == rid
    assert ev["credential"] == "prod/db"
    assert ev["trigger"] == "emergency"
    assert ev["result"] == "finished"
    assert ev["test"] == "passed"
    assert (ev["previous_version"], ev["version"]) == (1, 2)
    actions = [e["action"] for e in ev["entries"]]
    assert actions[0] == "rotation.create"
    assert "rotation.test" in actions
    assert "rotation.complete" in actions
    assert actions[-1] == "rotation.revoke", "an emergency revokes the old value at once"
    assert ev["revoked_at"] == ev["entries"][-1]["ts"]
    assert ev["started_by"] == "engine"
    proof = ev["proof"]
    assert proof["ok"] is True
    assert proof["checkpoint"]["seq"] >= ev["entries"][-1]["seq"]
    assert "verifies" in proof["message"]

    text = cli(settings, "report", "evidence", rid)
    assert text.returncode == 0, text.stderr
    assert f"checkpoint {proof['checkpoint']['seq']}" in text.stdout


def test_evidence_of_a_rolled_back_rotation_says_its_test_failed(
    svc: BlockingService,
) -> None:
    cfg = {"fail_test": "true"}
    svc.add_credential(
        "prod/api",
        "double",
        settings=cfg,
        policy=PolicyInput(grace="5m"),
        value=ValueInput(generate=True),
    )
    doubles.target_add(
        DoubleConfig(fail_test=True), "prod/api", svc.get_value("prod/api").reveal_text()
    )
    result = svc.rotate(Selection(names=["prod/api"]))
    assert [r.outcome for r in result.results] == [Outcome.ROLLED_BACK]
    ev = svc.rotation_evidence(rotation_id(svc, "prod/api"))
    assert ev.result == "rolled_back"
    assert ev.test == "failed"
    assert ev.previous_version is None
    assert ev.revoked_at is None
    assert ev.revoke_due_at is None
    assert ev.error
    assert [e.action for e in ev.entries][-1] == "rotation.rollback"
    assert ev.proof is not None
    assert ev.proof.chain_ok


def test_evidence_not_yet_covered_by_a_checkpoint_says_how_to_make_one(
    svc: BlockingService, settings: Settings
) -> None:
    svc.add_credential("prod/cache", "local", value=ValueInput(generate=True))
    svc.rotate(Selection(names=["prod/cache"]))
    rid = rotation_id(svc, "prod/cache")
    ev = svc.rotation_evidence(rid)
    assert ev.result == "finished"
    assert ev.revoked_at is None
    assert ev.revoke_due_at is not None, "the old value is revoked when its grace ends"
    assert ev.proof is not None
    assert ev.proof.chain_ok
    assert ev.proof.checkpoint is None
    assert not ev.proof.ok
    assert "not covered by a signed checkpoint yet" in ev.proof.message
    assert "rotator audit checkpoint" in ev.proof.message
    svc.close()
    r = cli(settings, "report", "evidence", rid)
    assert r.returncode == 0, r.stderr
    assert "not covered" in r.stdout


def test_evidence_of_a_rotation_whose_entry_was_edited_fails_its_proof(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    svc.add_credential("prod/mq", "local", value=ValueInput(generate=True))
    svc.rotate(Selection(names=["prod/mq"]))
    rid = rotation_id(svc, "prod/mq")
    svc.make_checkpoint()
    svc.close()
    with raw_db.begin() as c:
        if c.dialect.name == "postgresql":
            c.exec_driver_sql("SET LOCAL session_replication_role = replica")
        c.execute(
            update(audit_log)
            .where(audit_log.c.rotation_id == rid, audit_log.c.action == "rotation.test")
            .values(details='{"forged": true}')
        )
    r = cli(settings, "report", "evidence", rid)
    assert r.returncode == 1
    assert "the keyed chain does not verify" in r.stderr.splitlines()[-1]


def test_evidence_fails_naming_each_field_where_the_rotations_row_disagrees_with_the_signed_log(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    """The rotations row is not protected by the keyed chain: a row edited to say the rotation
    was an emergency that rolled back shows the signed facts and fails the proof, exit 1."""
    svc.add_credential("prod/db", "local", value=ValueInput(generate=True))
    svc.rotate(Selection(names=["prod/db"]))
    rid = rotation_id(svc, "prod/db")
    svc.make_checkpoint()
    svc.close()
    with raw_db.begin() as c:
        c.execute(
            update(rotations)
            .where(rotations.c.id == rid)
            .values(step="rolled_back", error="forged failure", trigger="emergency")
        )
    r = cli(settings, "report", "evidence", rid, "--json")
    assert r.returncode == 1
    [line] = r.stderr.splitlines()
    assert "result: the rotations row says rolled_back, the signed log says finished" in line
    assert "trigger: the rotations row says emergency, the signed log says manual" in line
    assert "error: the rotations row says forged failure, the signed log says nothing" in line
    ev = json.loads(r.stdout)
    assert (ev["result"], ev["trigger"], ev["error"]) == ("finished", "manual", None)
    assert ev["proof"]["ok"] is False
    assert ev["proof"]["row_ok"] is False
    assert ev["proof"]["chain_ok"] is True


def test_evidence_fails_when_the_rotations_row_times_or_version_were_edited(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    svc.add_credential("prod/q", "local", value=ValueInput(generate=True))
    svc.rotate(Selection(names=["prod/q"]))
    rid = rotation_id(svc, "prod/q")
    before = svc.rotation_evidence(rid)
    assert before.proof is not None
    assert before.proof.row_ok
    svc.make_checkpoint()
    svc.close()
    with raw_db.begin() as c:
        row = c.execute(select(rotations).where(rotations.c.id == rid)).one()
        c.execute(
            update(rotations)
            .where(rotations.c.id == rid)
            .values(
                version=7,
                created_at=row.created_at - timedelta(days=3),
                finished_at=row.finished_at - timedelta(days=3),
            )
        )
    r = cli(settings, "report", "evidence", rid)
    assert r.returncode == 1
    [line] = r.stderr.splitlines()
    assert "version: the rotations row says 7, the signed log says 2" in line
    assert "started_at: the rotations row says" in line
    assert "finished_at: the rotations row says" in line
    assert f"at {before.started_at.isoformat()}" in r.stdout  # type: ignore[union-attr]


def test_evidence_names_who_requested_the_rotation_and_a_scheduled_one_says_scheduler(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    """Every rotation entry's actor is the engine; who asked is signed in rotation.create."""
    from rotator.scheduler.loop import Scheduler, SchedulerOptions

    alice = Principal("alice", "default", (Grant(Role.OPERATOR, "*"),))
    svc.add_credential("prod/api", "local", value=ValueInput(generate=True))
    svc.rotate(Selection(names=["prod/api"]), principal=alice)
    rid = rotation_id(svc, "prod/api")
    ev = svc.rotation_evidence(rid)
    assert (ev.requested_by, ev.started_by) == ("alice", "engine")
    [create] = [
        e for e in svc.audit_entries(credential="prod/api") if e.action == "rotation.create"
    ]
    assert create.details["requested_by"] == "alice"
    assert create.details["started_at"] == ev.started_at.isoformat()  # type: ignore[union-attr]

    svc.rotate(Selection(names=["prod/api"]), emergency=True)
    assert svc.rotation_evidence(rotation_id(svc, "prod/api")).requested_by == "local"

    svc.add_credential(
        "prod/cron", "local", policy=PolicyInput(every="1d"), value=ValueInput(generate=True)
    )
    t0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    svc.kernel.clock = lambda: t0
    with raw_db.begin() as c:
        c.execute(
            update(credentials)
            .where(credentials.c.name == "prod/cron")
            .values(next_rotation_at=t0 - timedelta(minutes=1))
        )
    sched = Scheduler(svc.service.engine, SchedulerOptions(lease_s=30, listen=False))

    async def tick() -> None:
        await sched._claim(1, t0)
        await asyncio.gather(*sched._tasks)

    svc.run(tick())
    ev = svc.rotation_evidence(rotation_id(svc, "prod/cron"))
    assert (ev.trigger, ev.requested_by, ev.result) == ("schedule", "scheduler", "finished")
    r = cli(settings, "report", "evidence", ev.rotation_id)
    assert "requested by scheduler" in r.stdout


def test_a_group_rotation_and_a_risk_event_record_the_principal_that_asked(
    svc: BlockingService,
) -> None:
    from rotator.domain.group import Group, parse_order
    from rotator.service import EventInput

    bob = Principal("bob", "default", (Grant(Role.OPERATOR, "*"),))
    for n in ("g/db", "g/app", "r/key"):
        svc.add_credential(n, "local", value=ValueInput(generate=True))
    svc.add_group(Group("stack", parse_order(["g/db", "g/app"], [])))
    assert svc.rotate_group("stack", principal=bob).ok
    report = svc.report_event(EventInput("scanner", "high", credential="r/key"), principal=bob)
    assert report.ok, report.to_json()
    for name in ("g/db", "g/app", "r/key"):
        ev = svc.rotation_evidence(rotation_id(svc, name))
        assert (ev.requested_by, ev.result) == ("bob", "finished"), name
        assert ev.proof is not None
        assert ev.proof.row_ok
