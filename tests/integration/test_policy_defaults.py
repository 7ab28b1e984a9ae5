"""Policy defaults by tag and tenant, and max uses acting, against a real store (SQLite and
PostgreSQL through ``db_url``): in process through the service with a clock passed in, and
through the real ``rotator`` command with a real ``rotator worker`` process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from rotator.config import Settings
from rotator.domain.model import Stage
from rotator.scheduler import loop as scheduler
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.service.rotation import Selection
from rotator.store import Database
from rotator.store.db import MIGRATIONS

CLI = Path(sys.executable).parent / "rotator"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 5, 6, 12, tzinfo=UTC)  # a Wednesday

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(svc: BlockingService) -> Clock:
    c = Clock()
    svc.kernel.clock = c
    return c


def test_policy_set_by_tag_recomputes_next_rotation_of_matching_credentials_only(
    svc: BlockingService, clock: Clock
) -> None:
    now = clock.now
    svc.add_credential("prod/a", "local", tags={"env": "prod"}, value=ValueInput(generate=True))
    svc.add_credential("prod/b", "local", tags={"env": "prod"}, policy=PolicyInput(every="7d"))
    svc.add_credential("dev/c", "local", tags={"env": "dev"})
    assert svc.show("prod/a").next_rotation_at is None

    d = svc.set_policy_default(tag=("env", "prod"), policy=PolicyInput(every="30d", grace="10m"))
    assert d.affected == 2
    a, b, c = svc.show("prod/a"), svc.show("prod/b"), svc.show("dev/c")
    assert a.next_rotation_at == now + timedelta(days=30)
    assert a.next_rotation_rule == "every 30d from tag env=prod"
    assert a.policy.grace == timedelta(minutes=10)  # the engine's grace is the effective one
    assert b.next_rotation_at == now + timedelta(days=7)  # its own --every wins
    assert b.next_rotation_rule == "every 7d"
    assert b.policy.grace == timedelta(minutes=10)  # ...but it inherits the grace
    assert c.next_rotation_at is None
    assert c.next_rotation_rule == "on demand"

    # A tenant default reaches the rest; a credential added later with the tag inherits too.
    svc.set_policy_default(tenant="default", policy=PolicyInput(every="90d"))
    assert svc.show("dev/c").next_rotation_rule == "every 90d from tenant default"
    svc.add_credential("prod/d", "local", tags={"env": "prod"})
    assert svc.show("prod/d").next_rotation_rule == "every 30d from tag env=prod"

    # Removing the tag default falls back to the tenant default, in the same call.
    svc.remove_policy_default(tag=("env", "prod"))
    a = svc.show("prod/a")
    assert a.next_rotation_at == now + timedelta(days=90)
    assert a.next_rotation_rule == "every 90d from tenant default"
    assert a.policy.grace == timedelta(minutes=5)
    assert [x.scope for x in svc.list_policy_defaults()] == ["tenant default"]
    actions = [
        (e.action, e.details["scope"])
        for e in svc.audit_entries()
        if e.action.startswith("policy.")
    ]
    assert actions == [
        ("policy.set", "tag env=prod"),
        ("policy.set", "tenant default"),
        ("policy.remove", "tag env=prod"),
    ]


def test_two_matching_tag_defaults_pick_by_key_and_the_rule_says_which(
    svc: BlockingService, clock: Clock
) -> None:
    svc.add_credential("x", "local", tags={"team": "pay", "env": "prod"})
    svc.set_policy_default(tag=("team", "pay"), policy=PolicyInput(every="7d"))
    svc.set_policy_default(tag=("env", "prod"), policy=PolicyInput(every="30d"))
    x = svc.show("x")
    assert x.next_rotation_at == clock.now + timedelta(days=30)
    assert x.next_rotation_rule == "every 30d from tag env=prod over tag team=pay"


def test_credential_update_overrides_one_field_and_keeps_inheriting_the_others(
    svc: BlockingService, clock: Clock
) -> None:
    svc.add_credential("x", "local", tags={"env": "prod"})
    svc.set_policy_default(tag=("env", "prod"), policy=PolicyInput(cron="0 3 * * 0", grace="1h"))
    svc.update_credential("x", policy=PolicyInput(max_age="2d"))
    x = svc.show("x")
    assert x.policy.cron == "0 3 * * 0"
    assert x.policy.grace == timedelta(hours=1)
    assert x.next_rotation_at == clock.now + timedelta(days=2)  # before Sunday 03:00
    assert x.next_rotation_rule == "max age 2d"
    svc.update_credential("x", policy=PolicyInput(every="1d"))  # own interval replaces cron
    x = svc.show("x")
    assert (x.policy.every, x.policy.cron) == (timedelta(days=1), None)
    assert x.next_rotation_rule == "every 1d"


def test_rows_from_before_defaults_inherit_the_fields_left_at_the_built_in_default(
    svc: BlockingService, clock: Clock, raw_db: sa.Engine
) -> None:
    svc.add_credential("old", "local", tags={"env": "prod"}, policy=PolicyInput(every="1d"))
    svc.add_credential("plain", "local", tags={"env": "prod"})
    with raw_db.begin() as conn:  # as migration 0007 leaves a row written before it
        conn.execute(sa.text("UPDATE credentials SET policy_own = NULL"))
    d = svc.set_policy_default(tag=("env", "prod"), policy=PolicyInput(every="30d", grace="1h"))
    assert d.affected == 2
    old, plain = svc.show("old"), svc.show("plain")
    assert old.policy.every == timedelta(days=1)  # set on the credential: its own
    assert old.policy.grace == timedelta(hours=1)  # at the built-in default: inherited
    assert old.next_rotation_rule == "every 1d"
    assert plain.policy.every == timedelta(days=30)
    assert plain.next_rotation_at == clock.now + timedelta(days=30)
    assert plain.next_rotation_rule == "every 30d from tag env=prod"


def test_store_upgraded_from_0006_keeps_set_fields_as_own_and_inherits_the_rest(
    settings: Settings, raw_db: sa.Engine
) -> None:
    svc, _ = BlockingService.init(settings)
    svc.add_credential(
        "old",
        "local",
        tags={"env": "prod"},
        policy=PolicyInput(every="1d"),
        value=ValueInput(generate=True),
    )
    svc.add_credential("plain", "local", tags={"env": "prod"})
    value = svc.get_value("old").reveal()
    svc.close()
    db = Database(settings.db_url)  # rotator's own connections (SQLite foreign keys on)
    with db.write() as conn:  # back to the schema before migration 0007
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    db.dispose()
    with raw_db.connect() as conn:
        assert "policy_defaults" not in sa.inspect(conn).get_table_names()

    svc = BlockingService.open(settings)  # upgrades to 0007 on open
    try:
        svc.set_policy_default(tag=("env", "prod"), policy=PolicyInput(every="30d", grace="1h"))
        old = svc.show("old")
        assert old.policy.every == timedelta(days=1)
        assert old.policy.grace == timedelta(hours=1)
        assert old.next_rotation_rule == "every 1d"
        assert svc.show("plain").next_rotation_rule == "every 30d from tag env=prod"
        assert svc.get_value("old").reveal() == value  # the downgrade kept its versions
        svc.add_credential("new", "local", tags={"env": "prod"})
        assert svc.show("new").next_rotation_rule == "every 30d from tag env=prod"
    finally:
        svc.close()


def _scheduler_pass(svc: BlockingService) -> None:
    """One pass of today's scheduler loop (rotator.scheduler.run) over the service's engine."""

    async def go() -> None:
        stop = asyncio.Event()
        await scheduler.run(svc.service.engine, stop, poll_s=0.05, on_batch=lambda _: stop.set())

    svc.run(go())


def test_reported_uses_reaching_max_uses_make_it_due_and_a_scheduler_pass_rotates_it(
    svc: BlockingService, clock: Clock
) -> None:
    svc.add_credential(
        "app/key",
        "local",
        policy=PolicyInput(every="30d", max_uses=3),
        value=ValueInput(generate=True),
    )
    svc.report_usage("app/key", 2)
    assert svc.show("app/key").next_rotation_at == clock.now + timedelta(days=30)
    clock.now += timedelta(hours=1)
    cred = svc.report_usage("app/key", 1)
    assert cred.use_count == 3
    assert cred.next_rotation_at == clock.now
    assert cred.next_rotation_rule == "3 uses reached"
    assert [e.action for e in svc.audit_entries("app/key")][-2:] == ["credential.used"] * 2

    _scheduler_pass(svc)
    after = svc.show("app/key")
    cur = after.version_in(Stage.CURRENT)
    assert cur is not None
    assert cur.number == 2
    assert after.use_count == 0
    assert after.next_rotation_at == clock.now + timedelta(days=30)
    assert after.next_rotation_rule == "every 30d"


def test_a_finished_rotation_records_its_time_and_zero_uses_and_counts_the_next_from_it(
    svc: BlockingService, clock: Clock
) -> None:
    svc.add_credential(
        "app/key", "local", policy=PolicyInput(every="30d"), value=ValueInput(generate=True)
    )
    svc.report_usage("app/key", 2)
    clock.now += timedelta(days=3)
    batch = svc.rotate(Selection(names=["app/key"]))
    assert [r.outcome.value for r in batch.results] == ["rotated"]
    after = svc.show("app/key")
    assert after.last_rotated_at == clock.now
    assert after.updated_at == clock.now
    assert after.use_count == 0
    assert after.next_rotation_at == clock.now + timedelta(days=30)
    assert after.next_rotation_rule == "every 30d"


# -- through the real command and a real worker ------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    e.update(ROTATOR_HOME=str(tmp_path / "home"), ROTATOR_DB=db_url)
    rotator(e, "init")
    return e


def rotator(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"rotator {args}: exit {proc.returncode}\n{proc.stderr}"
    return proc.stdout


def show(env: dict[str, str], name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(rotator(env, "credential", "show", name, "--json"))
    return out


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    """A running ``rotator worker``, stopped (SIGTERM, by its pid) after the test."""
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen([str(CLI), "worker", "--poll", "0.2"], env=env, stdout=log, stderr=log)
    yield
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.mark.parametrize("uses", ["read-3-times", "used-count-3"])
def test_credential_with_max_uses_3_used_3_times_is_rotated_by_a_running_worker(
    env: dict[str, str], uses: str, worker: None
) -> None:
    name = "app/token"
    rotator(
        env,
        "credential",
        "add",
        name,
        "-c",
        "local",
        "--generate",
        "--every",
        "30d",
        "--max-uses",
        "3",
    )
    if uses == "read-3-times":
        for _ in range(2):
            rotator(env, "credential", "get", name)
        assert show(env, name)["next_rotation_rule"] == "every 30d"  # two uses: not yet
        rotator(env, "credential", "get", name)
    else:
        rotator(env, "credential", "used", name, "--count", "3")
    deadline = time.monotonic() + 60
    seen = show(env, name)
    while seen["current_version"] != 2 and time.monotonic() < deadline:
        # Due at once: the rule says why (unless the worker already rotated it).
        assert seen["next_rotation_rule"] in ("3 uses reached", "every 30d"), seen
        time.sleep(0.2)
        seen = show(env, name)
    assert seen["current_version"] == 2, seen
    assert seen["use_count"] == 0
    assert seen["next_rotation_rule"] == "every 30d"
    text = rotator(env, "credential", "show", name)
    assert "next_rotation_rule" in text
    assert "every 30d" in text


def test_credential_show_prints_the_rule_and_policy_list_shows_defaults(
    env: dict[str, str],
) -> None:
    rotator(env, "credential", "add", "db/x", "-c", "local", "--tag", "env=prod")
    out = rotator(env, "policy", "set", "--tag", "env=prod", "--every", "30d", "--grace", "10m")
    assert "1 credential(s)" in out
    assert show(env, "db/x")["next_rotation_rule"] == "every 30d from tag env=prod"
    assert "every 30d from tag env=prod" in rotator(env, "credential", "show", "db/x")
    listed = json.loads(rotator(env, "policy", "list", "--json"))
    assert listed == [
        {
            "scope": "tag env=prod",
            "policy": {"every": "30d", "cron": None, "window": None, "grace": "10m"},
        }
    ]
    rotator(env, "policy", "remove", "--tag", "env=prod")
    assert show(env, "db/x")["next_rotation_rule"] == "on demand"
    assert json.loads(rotator(env, "policy", "list", "--json")) == []
