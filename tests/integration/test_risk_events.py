"""Risk events (``rotator event report|list``) and emergency by selector, against real targets.

Rotations run against Redis ACL users on the throwaway Redis server (a refused AUTH proves an
old value is gone); the revoke-fails case uses the file-backed test double with
``fail_revoke`` (its target keeps the old value, as a target that refused the revoke would).
Every test runs on SQLite and PostgreSQL (``db_url``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, func, insert, select
from tests.conftest import RedisServer
from tests.integration.test_connector_redis import (
    Acl,
    add_admin,
    app_settings,
    can_auth,
    stages,
)
from tests.support.doubles import DoubleConfig, install, target_add, target_values

from rotator.config import Settings
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.kernel import utcnow
from rotator.service import BlockingService, EventInput, PolicyInput, ValueInput
from rotator.service.rotation import Selection
from rotator.store.schema import credentials, revocations, risk_decisions, risk_events

ROOT = Path(__file__).resolve().parents[2]
RUN_CLI = ROOT / "tests" / "support" / "run_cli.py"
PROD = {"env": "prod"}


@pytest.fixture
def acl(redis_server: RedisServer) -> Iterator[Acl]:
    """ACL users made by the test on the shared Redis server, deleted afterwards."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=True)
    helper = Acl(redis_server, client)
    yield helper
    if helper.made:
        client.execute_command("ACL", "DELUSER", *helper.made)
    client.close()


def actions(svc: BlockingService, action: str) -> list[dict[str, object]]:
    return [
        {"credential": e.credential, **e.details} for e in svc.audit_entries() if e.action == action
    ]


def redis_creds(svc: BlockingService, acl: Acl, grace: str = "1h") -> dict[str, str]:
    """redis/admin, three credentials tagged env=prod and one env=dev, each an ACL user with
    a generated first value published on Redis. Returns {credential: ACL user}."""
    admin = add_admin(svc, acl)
    users = {}
    for name, env in [("prod/a", "prod"), ("prod/b", "prod"), ("prod/c", "prod"), ("dev/d", "dev")]:
        user = acl.name("app")
        svc.add_credential(
            name,
            "redis",
            settings=app_settings(acl.server, user, admin),
            tags={"env": env},
            policy=PolicyInput(grace=grace),
            value=ValueInput(generate=True),
        )
        users[name] = user
    return users


# -------------------------------------------------------------------------- event report


@pytest.mark.redis
def test_critical_event_by_tag_emergency_rotates_the_three_matches_and_not_the_other(
    svc: BlockingService, acl: Acl
) -> None:
    users = redis_creds(svc, acl)
    old = {n: svc.get_value(n) for n in users}
    report = svc.report_event(EventInput("leak.github", "critical", tags=PROD, detail="in a gist"))
    assert report.ok, report.to_json()
    assert [(d.name, d.action.value, d.outcome) for d in report.decisions] == [
        (n, "emergency", "rotated") for n in ("prod/a", "prod/b", "prod/c")
    ]
    assert report.still_valid == []
    for name in ("prod/a", "prod/b", "prod/c"):
        new = svc.get_value(name)
        assert not can_auth(acl.server, users[name], old[name]), "old value refused at once"
        assert can_auth(acl.server, users[name], new)
        assert stages(svc, name) == {1: Stage.RETIRED, 2: Stage.CURRENT}
    assert stages(svc, "dev/d") == {1: Stage.CURRENT}
    assert can_auth(acl.server, users["dev/d"], old["dev/d"])
    [reported] = actions(svc, "risk.reported")
    assert reported["kind"] == "leak.github"
    assert reported["matched"] == 3
    decided = actions(svc, "risk.decided")
    assert sorted(str(d["credential"]) for d in decided) == ["prod/a", "prod/b", "prod/c"]
    assert {d["action"] for d in decided} == {"emergency"}
    emergencies = [e for e in svc.audit_entries() if e.action == "rotation.complete"]
    assert {e.details.get("trigger") for e in emergencies} == {"emergency"}


@pytest.mark.redis
def test_high_event_rotates_for_risk_and_keeps_the_old_value_for_its_grace(
    svc: BlockingService, acl: Acl
) -> None:
    users = redis_creds(svc, acl, grace="1h")
    old = svc.get_value("prod/a")
    report = svc.report_event(EventInput("scanner", "high", credential="prod/a"))
    assert report.ok, report.to_json()
    [d] = report.decisions
    assert (d.name, d.action.value, d.outcome, d.version) == ("prod/a", "rotate", "rotated", 2)
    assert can_auth(acl.server, users["prod/a"], svc.get_value("prod/a"))
    assert can_auth(acl.server, users["prod/a"], old), "a normal rotation keeps its grace"
    assert stages(svc, "prod/a") == {1: Stage.PREVIOUS, 2: Stage.CURRENT}
    assert stages(svc, "prod/b") == {1: Stage.CURRENT}
    starts = [e for e in svc.audit_entries() if e.action == "rotation.complete"]
    assert [e.details.get("trigger") for e in starts] == ["risk"]


@pytest.mark.redis
def test_low_event_is_audited_and_rotates_nothing(svc: BlockingService, acl: Acl) -> None:
    redis_creds(svc, acl)
    report = svc.report_event(EventInput("odd-login", "low", tags=PROD))
    assert report.ok
    assert {(d.action.value, d.outcome) for d in report.decisions} == {("notify", None)}
    for name in ("prod/a", "prod/b", "prod/c", "dev/d"):
        assert stages(svc, name) == {1: Stage.CURRENT}
    assert [d["action"] for d in actions(svc, "risk.decided")] == ["notify"] * 3
    assert not [e for e in svc.audit_entries() if e.action.startswith("rotation.")]


@pytest.mark.redis
def test_repeat_within_the_cooldown_does_not_rotate_again_and_after_it_does(
    svc: BlockingService, acl: Acl, settings: Settings
) -> None:
    users = redis_creds(svc, acl)
    assert svc.report_event(EventInput("leak", "high", credential="prod/a")).ok
    again = svc.report_event(EventInput("leak", "high", credential="prod/a"))
    [d] = again.decisions
    assert (d.action.value, d.outcome, d.duplicate_of) == ("notify", None, 1)
    assert d.reason.startswith("duplicate of event 1")
    other = svc.report_event(EventInput("scanner", "high", credential="prod/a"))
    [d] = other.decisions
    assert d.action.value == "notify"
    assert d.reason.startswith("cooldown: rotated for a risk")
    assert max(v.number for v in svc.show("prod/a").versions) == 2
    reasons = [str(x["reason"]) for x in actions(svc, "risk.decided")]
    assert [r.split(" ")[0] for r in reasons] == ["default", "duplicate", "cooldown:"]

    # Past the (default, 1h) cooldown the same report rotates again.
    later = BlockingService.open(settings, clock=shifted(timedelta(hours=1, minutes=1)))
    try:
        third = later.report_event(EventInput("leak", "high", credential="prod/a"))
    finally:
        later.close()
    assert third.ok, third.to_json()
    assert [(d.action.value, d.outcome, d.version) for d in third.decisions] == [
        ("rotate", "rotated", 3)
    ]
    assert can_auth(acl.server, users["prod/a"], svc.get_value("prod/a"))


def shifted(by: timedelta) -> Callable[[], datetime]:
    return lambda: utcnow() + by


# ------------------------------------------------------------ CLI: revoke fails, bad input


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, with the test-double connector installed."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")},
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
    }
    return subprocess.run(
        [sys.executable, str(RUN_CLI), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def double_creds(svc: BlockingService, tmp_path: Path) -> dict[str, DoubleConfig]:
    """prod/ok1, prod/ok2 and prod/stuck (whose target refuses every revoke) tagged env=prod,
    dev/x tagged env=dev; each target holds its first value. Returns their configs."""
    install()
    cfgs = {}
    for name, env, extra in [
        ("prod/ok1", "prod", {}),
        ("prod/ok2", "prod", {}),
        ("prod/stuck", "prod", {"fail_revoke": "true"}),
        ("dev/x", "dev", {}),
    ]:
        settings = {"state": str(tmp_path / "target.json"), **extra}
        svc.add_credential(
            name,
            "double",
            settings=settings,
            tags={"env": env},
            value=ValueInput(value=Secret(f"first-{name}")),
        )
        cfg = DoubleConfig(**settings)  # type: ignore[arg-type]
        target_add(cfg, name, f"first-{name}")
        cfgs[name] = cfg
    return cfgs


def test_emergency_by_tag_reports_the_old_value_whose_revoke_failed_and_exits_1(
    svc: BlockingService, settings: Settings, tmp_path: Path
) -> None:
    cfgs = double_creds(svc, tmp_path)
    run = cli(settings, "rotate", "--emergency", "--tag", "env=prod", "--json")
    assert run.returncode == 1, run.stderr
    data = json.loads(run.stdout)
    assert data["still_valid"] == [
        {"name": "prod/stuck", "version": 1, "error": "revoke: permission denied by the target"}
    ]
    assert sorted(data["rotated"]) == ["prod/ok1", "prod/ok2"]
    for name in ("prod/ok1", "prod/ok2"):
        assert target_values(cfgs[name], name) == {svc.get_value(name).reveal_text()}
    stuck = target_values(cfgs["prod/stuck"], "prod/stuck")
    assert "first-prod/stuck" in stuck, "the target still accepts the old value"
    assert svc.get_value("prod/stuck").reveal_text() in stuck
    assert target_values(cfgs["dev/x"], "dev/x") == {"first-dev/x"}
    assert "first-" not in run.stdout + run.stderr  # no value printed

    human = cli(settings, "rotate", "--emergency", "--tag", "env=prod")
    assert human.returncode == 1
    assert "still valid prod/stuck version 1: revocation failed" in human.stdout


def test_critical_event_reports_the_still_valid_old_value_and_exits_1_then_lists_it(
    svc: BlockingService, settings: Settings, tmp_path: Path
) -> None:
    double_creds(svc, tmp_path)
    run = cli(
        settings, "event", "report", "--kind", "leak", "--severity", "critical",
        "--tag", "env=prod", "--json",
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    data = json.loads(run.stdout)
    assert [(d["name"], d["action"]) for d in data["decisions"]] == [
        ("prod/ok1", "emergency"),
        ("prod/ok2", "emergency"),
        ("prod/stuck", "emergency"),
    ]
    assert [v["name"] for v in data["still_valid"]] == ["prod/stuck"]
    listed = cli(settings, "event", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [event] = json.loads(listed.stdout)
    assert event["kind"] == "leak"
    assert event["selector"] == {"tags": {"env": "prod"}}
    outcomes = {d["name"]: d["outcome"] for d in event["decisions"]}
    assert outcomes["prod/ok1"] == "rotated"
    # The engine reports a rotation whose revoke failed as failed (the new value is CURRENT).
    assert outcomes["prod/stuck"] == "failed"


BAD = [
    (["--kind", "leak", "--severity", "huge", "--tag", "env=prod"], "unknown severity"),
    (["--kind", "has space", "--severity", "high", "--tag", "env=prod"], "--kind must be"),
    (["--kind", "k" * 65, "--severity", "high", "--tag", "env=prod"], "--kind must be"),
    (["--kind", "leak", "--severity", "high"], "name the credential with --credential"),
    (
        ["--kind", "leak", "--severity", "high", "--credential", "prod/ok1", "--tag", "env=prod"],
        "name the credential with --credential",
    ),
    (["--kind", "leak", "--severity", "high", "--credential", "no/such"], "no credential"),
    (["--kind", "leak", "--severity", "high", "--tag", "env"], "--tag"),
    (
        ["--kind", "leak", "--severity", "high", "--tag", "env=prod", "--detail", "s3cr3t" * 200],
        "--detail is longer than 1000 characters",
    ),
]


def test_bad_event_input_exits_2_with_one_line_and_stores_nothing(
    svc: BlockingService, settings: Settings, tmp_path: Path, raw_db: Engine
) -> None:
    double_creds(svc, tmp_path)
    audit_before = len(svc.audit_entries())
    for args, message in BAD:
        run = cli(settings, "event", "report", *args)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, (args, run.stderr)
        assert message in lines[0], (args, run.stderr)
        assert "Traceback" not in run.stderr
        assert "s3cr3t" not in run.stderr
    with raw_db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(risk_events)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(risk_decisions)).scalar_one() == 0
    assert len(svc.audit_entries()) == audit_before
    for name in ("prod/ok1", "prod/ok2", "prod/stuck", "dev/x"):
        assert stages(svc, name) == {1: Stage.CURRENT}


# ----------------------------------------- repeats while the first runs; emergency that joins


def paused_credential(svc: BlockingService, tmp_path: Path) -> tuple[DoubleConfig, Path]:
    """prod/a on the file-backed double (grace 1h), whose rotations stop after ``set`` until
    ``<barrier>/release`` exists. Returns its config and the barrier directory."""
    install()
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    settings = {
        "state": str(tmp_path / "target.json"),
        "barrier": str(barrier),
        "barrier_after": "set",
    }
    svc.add_credential(
        "prod/a",
        "double",
        settings=settings,
        policy=PolicyInput(grace="1h"),
        value=ValueInput(value=Secret("first-prod/a")),
    )
    cfg = DoubleConfig(**settings)  # type: ignore[arg-type]
    target_add(cfg, "prod/a", "first-prod/a")
    return cfg, barrier


def start_cli(settings: Settings, *args: str) -> subprocess.Popen[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")},
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
    }
    return subprocess.Popen(
        [sys.executable, str(RUN_CLI), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def wait_for_file(path: Path, proc: subprocess.Popen[str]) -> None:
    """Poll until ``path`` exists (the other process reached its barrier)."""
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


@contextlib.contextmanager
def release_when_joined(svc: BlockingService, barrier: Path) -> Iterator[list[str]]:
    """While inside: a rotation of ``svc`` that joins one under way in another process
    releases that process's barrier (so it can finish) and is recorded in the list."""
    recovery = svc.service.engine.recovery
    real = recovery.wait_for
    joined: list[str] = []

    async def spy(rotation_id: str, ctx: Any) -> Any:
        joined.append(rotation_id)
        (barrier / "release").touch()
        return await real(rotation_id, ctx)

    recovery.wait_for = spy  # type: ignore[method-assign]
    try:
        yield joined
    finally:
        recovery.wait_for = real  # type: ignore[method-assign]


def test_repeat_while_the_first_rotation_is_still_running_notifies_and_does_not_rotate_again(
    svc: BlockingService, settings: Settings, tmp_path: Path
) -> None:
    _, barrier = paused_credential(svc, tmp_path)
    first = start_cli(settings, "event", "report", "--kind", "leak", "--severity", "high",
                      "--credential", "prod/a", "--json")  # fmt: skip
    try:
        wait_for_file(barrier / "set.prod_a.reached", first)  # rotating; no outcome yet
        with release_when_joined(svc, barrier) as joined:
            again = svc.report_event(EventInput("leak", "high", credential="prod/a"))
            other = svc.report_event(EventInput("scanner", "high", credential="prod/a"))
        (barrier / "release").touch()
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    [d1] = json.loads(out)["decisions"]
    assert (d1["action"], d1["outcome"], d1["version"]) == ("rotate", "rotated", 2)
    [d] = again.decisions
    assert (d.action.value, d.outcome, d.duplicate_of) == ("notify", None, 1), d.to_json()
    [d] = other.decisions
    assert (d.action.value, d.outcome) == ("notify", None), d.to_json()
    assert d.reason.startswith("cooldown: rotated for a risk")
    assert joined == [], "no second rotation was started (not even one that joined)"
    assert stages(svc, "prod/a") == {1: Stage.PREVIOUS, 2: Stage.CURRENT}


def test_two_simultaneous_reports_serialize_on_the_credential_and_the_second_notifies(
    svc: BlockingService, db_url: str, raw_db: Engine
) -> None:
    """PostgreSQL: a report holding the credential's row (here a raw transaction that also
    writes the first report's decision) makes a second report wait, then see that decision."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serializes writers (BEGIN IMMEDIATE)")
    svc.add_credential("prod/a", "local", policy=PolicyInput(grace="1h"),
                       value=ValueInput(generate=True))  # fmt: skip
    cid = svc.show("prod/a").id
    tid = svc.tenant("default").id
    now = utcnow()
    with raw_db.connect() as conn:
        conn.execute(select(credentials.c.id).where(credentials.c.id == cid).with_for_update())
        event_id = conn.execute(
            insert(risk_events).values(
                tenant_id=tid,
                kind="leak",
                severity="high",
                selector={"credential": "prod/a"},
                detail=None,
                reporter="other",
                created_at=now,
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        conn.execute(
            insert(risk_decisions).values(
                event_id=event_id,
                credential_id=cid,
                credential="prod/a",
                kind="leak",
                action="rotate",
                reason="default",
                created_at=now,
            )
        )
        result: list[Any] = []
        t = threading.Thread(
            target=lambda: result.append(
                svc.report_event(EventInput("leak", "high", credential="prod/a"))
            )
        )
        t.start()
        deadline = time.monotonic() + 60
        with raw_db.connect() as probe:
            while (
                t.is_alive()
                and not probe.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                ).scalar()
            ):
                assert time.monotonic() < deadline, "the report neither waited nor ended"
                time.sleep(0.05)
        conn.commit()
    t.join(60)
    [report] = result
    [d] = report.decisions
    assert (d.action.value, d.duplicate_of) == ("notify", event_id), d.to_json()
    assert max(v.number for v in svc.show("prod/a").versions) == 1


def test_emergency_joining_a_normal_rotation_under_way_revokes_the_old_value_at_once(
    svc: BlockingService, settings: Settings, tmp_path: Path
) -> None:
    cfg, barrier = paused_credential(svc, tmp_path)
    normal = start_cli(settings, "rotate", "prod/a", "--json")
    try:
        wait_for_file(barrier / "set.prod_a.reached", normal)
        with release_when_joined(svc, barrier) as joined:
            report = svc.report_event(EventInput("leak", "critical", credential="prod/a"))
        _, err = normal.communicate(timeout=120)
    finally:
        if normal.poll() is None:
            normal.kill()
    assert normal.returncode == 0, err
    assert len(joined) == 1, "the emergency joined the normal rotation"
    [d] = report.decisions
    assert (d.action.value, d.outcome, d.version) == ("emergency", "rotated", 2), d.to_json()
    assert report.ok, report.to_json()
    assert report.still_valid == []
    assert target_values(cfg, "prod/a") == {svc.get_value("prod/a").reveal_text()}
    assert stages(svc, "prod/a") == {1: Stage.RETIRED, 2: Stage.CURRENT}


def test_repeated_critical_event_retries_the_failed_revoke_instead_of_a_third_value(
    svc: BlockingService, settings: Settings, tmp_path: Path, raw_db: Engine
) -> None:
    cfgs = double_creds(svc, tmp_path)
    args = ("event", "report", "--kind", "leak", "--severity", "critical", "--tag", "env=prod")
    first = cli(settings, *args, "--json")
    assert first.returncode == 1, first.stderr
    again = cli(settings, *args, "--json")
    assert again.returncode == 1, again.stderr
    data = json.loads(again.stdout)
    assert {(d["name"], d["action"], d["duplicate_of"]) for d in data["decisions"]} == {
        (n, "notify", 1) for n in ("prod/ok1", "prod/ok2", "prod/stuck")
    }
    assert data["still_valid"] == [
        {"name": "prod/stuck", "version": 1, "error": "revoke: permission denied by the target"}
    ]
    assert stages(svc, "prod/stuck") == {1: Stage.PREVIOUS, 2: Stage.CURRENT}, "no third value"
    with raw_db.connect() as conn:
        attempts = conn.execute(select(revocations.c.attempts)).scalars().all()
    assert attempts == [2], "the repeat retried the revoke"
    assert "first-prod/stuck" in target_values(cfgs["prod/stuck"], "prod/stuck")
    human = cli(settings, *args)
    assert human.returncode == 1
    assert "still valid prod/stuck version 1: revocation failed" in human.stdout


def test_rotate_emergency_joining_a_normal_rotation_under_way_revokes_the_old_value_at_once(
    svc: BlockingService, settings: Settings, tmp_path: Path
) -> None:
    cfg, barrier = paused_credential(svc, tmp_path)
    normal = start_cli(settings, "rotate", "prod/a", "--json")
    try:
        wait_for_file(barrier / "set.prod_a.reached", normal)
        with release_when_joined(svc, barrier) as joined:
            result = svc.rotate(Selection(names=["prod/a"]), emergency=True)
        _, err = normal.communicate(timeout=120)
    finally:
        if normal.poll() is None:
            normal.kill()
    assert normal.returncode == 0, err
    assert len(joined) == 1, "the emergency joined the normal rotation"
    assert [(r.outcome, r.joined) for r in result.results] == [("rotated", True)]
    assert result.ok, result.to_json()
    assert target_values(cfg, "prod/a") == {svc.get_value("prod/a").reveal_text()}
    assert stages(svc, "prod/a") == {1: Stage.RETIRED, 2: Stage.CURRENT}


@pytest.mark.redis
def test_risk_rules_set_as_a_tag_default_decide_for_the_credentials_with_that_tag(
    svc: BlockingService, acl: Acl, settings: Settings
) -> None:
    """`policy set --tag env=prod --on-risk high=emergency`: a high event now emergency-
    rotates the env=prod credentials (grace 0, old value refused at once), while env=dev keeps
    the built-in rule (high: rotate)."""
    users = redis_creds(svc, acl)
    old_a = svc.get_value("prod/a").reveal().decode()
    env = {**os.environ, "ROTATOR_HOME": str(settings.home), "ROTATOR_DB": settings.db_url}
    set_default = subprocess.run(
        [sys.executable, str(RUN_CLI), "policy", "set", "--tag", "env=prod",
         "--on-risk", "high=emergency", "--risk-cooldown", "30m"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert set_default.returncode == 0, set_default.stderr
    report = svc.report_event(EventInput("leak.scan", "high", credential="prod/a"))
    assert [(d.name, d.action.value) for d in report.decisions] == [("prod/a", "emergency")]
    assert stages(svc, "prod/a") == {1: Stage.RETIRED, 2: Stage.CURRENT}
    assert not can_auth(acl.server, users["prod/a"], old_a)
    dev = svc.report_event(EventInput("leak.scan", "high", credential="dev/d"))
    assert [(d.name, d.action.value) for d in dev.decisions] == [("dev/d", "rotate")]
