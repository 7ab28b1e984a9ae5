"""Credentials that reference others rotate in order (issue 7, item 14).

A PostgreSQL superuser's password is a credential that rotates itself (``mode=single``, no
``admin``); 20 role credentials use it as their ``admin``. Rotated together, the superuser
must not change its password while its dependants log in with it: the engine rotates what is
referenced first and the dependants after, reading its new value. Real target (password
checked with scram-sha-256), real CLI, both stores.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from psycopg import sql
from tests.integration.test_connector_postgres import admin_exec, can_login

from rotator.config import Settings
from rotator.connectors.postgres import parse_value
from rotator.domain.secret import Secret
from rotator.engine import Engine, EngineOptions, Outcome, RotationRequest
from rotator.service import BlockingService, PolicyInput, ValueInput, rotation
from rotator.store import rotations as store_rot

if TYPE_CHECKING:
    from tests.conftest import PgTarget

CLI = Path(sys.executable).parent / "rotator"
TIMEOUT_S = 300
DEPENDANTS = 20
FAST = EngineOptions(retry_attempts=2, retry_initial_s=0.01, retry_max_s=0.05)


@dataclass
class Roles:
    """The superuser and the dependant roles created on the target for one test."""

    superuser: str
    su_password: str
    roles: dict[str, str]  # role -> first password

    def all_names(self) -> list[str]:
        names = [self.superuser, *self.roles]
        return names + [f"{r}_clone" for r in self.roles]


@pytest.fixture
def roles(pg_target: PgTarget) -> Iterator[Roles]:
    tag = uuid.uuid4().hex[:8]
    made = Roles(f"su_{tag}", "su-" + uuid.uuid4().hex, {})
    admin_exec(
        pg_target,
        sql.SQL("CREATE ROLE {} SUPERUSER LOGIN PASSWORD {}").format(
            sql.Identifier(made.superuser), sql.Literal(made.su_password)
        ),
    )
    for i in range(DEPENDANTS):
        role, password = f"app{i:02d}_{tag}", "app-" + uuid.uuid4().hex
        admin_exec(
            pg_target,
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            ),
        )
        made.roles[role] = password
    yield made
    for name in made.all_names():
        admin_exec(pg_target, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def register(svc: BlockingService, target: PgTarget, roles: Roles) -> list[str]:
    """pg/admin (the superuser rotating itself) and pg/appNN using it as admin; their names."""
    where = {"host": target.host, "port": str(target.port)}
    svc.add_credential(
        "pg/admin",
        "postgres",
        settings={**where, "role": roles.superuser, "mode": "single"},
        value=ValueInput(value=Secret(roles.su_password)),
        verify=True,
    )
    names = []
    for i, (role, password) in enumerate(roles.roles.items()):
        name = f"pg/app{i:02d}"
        svc.add_credential(
            name,
            "postgres",
            settings={**where, "role": role, "admin": "pg/admin", "admin_user": roles.superuser},
            policy=PolicyInput(grace="1h"),
            value=ValueInput(value=Secret(password)),
        )
        names.append(name)
    return names


def cli(args: Sequence[str], settings: Settings) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env = {**base, "ROTATOR_HOME": str(settings.home), "ROTATOR_DB": settings.db_url}
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def login(svc: BlockingService, name: str) -> tuple[str, str]:
    cred = svc.show(name)
    value = parse_value(svc.get_value(name), cred.config["role"])
    return value.username, value.password


def test_rotate_all_rotates_an_admin_and_its_20_dependants_and_every_current_logs_in(
    svc: BlockingService, settings: Settings, pg_target: PgTarget, roles: Roles
) -> None:
    names = register(svc, pg_target, roles)

    plan = cli(["rotate", "--all", "--dry-run", "--json"], settings)
    assert plan.returncode == 0, plan.stderr
    steps = {s["name"]: s for s in json.loads(plan.stdout)["plan"]}
    assert steps["pg/admin"]["level"] == 1
    assert steps["pg/admin"]["order"] == 1
    for n in names:
        assert steps[n]["level"] == 2, steps[n]
        assert steps[n]["after"] == ["pg/admin"]
    table = cli(["rotate", "--all", "--dry-run"], settings)
    assert "LEVEL" in table.stdout
    assert "21 credential(s) would rotate" in table.stdout

    run = cli(["rotate", "--all", "--json"], settings)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    assert sorted(result["rotated"]) == sorted(["pg/admin", *names]), result["failed"]
    assert result["failed"] == []
    assert result["rolled_back"] == []

    su_user, su_password = login(svc, "pg/admin")
    assert su_user == roles.superuser
    assert su_password != roles.su_password
    assert can_login(pg_target, su_user, su_password), "the superuser's new CURRENT logs in"
    assert not can_login(pg_target, roles.superuser, roles.su_password), "single: old is gone"
    for n in names:
        user, password = login(svc, n)
        assert user.endswith("_clone"), "alternating: the new login is the clone"
        assert can_login(pg_target, user, password), f"{n}'s CURRENT logs in"
    entries = svc.audit_entries()
    su_done = max(
        e.seq for e in entries if e.credential == "pg/admin" and e.action == "rotation.complete"
    )
    first_dependant = min(
        e.seq for e in entries if e.credential in names and e.action == "rotation.create"
    )
    assert su_done < first_dependant, "dependants start after what they reference finished"
    verify = cli(["audit", "verify"], settings)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_dependant_whose_cached_admin_value_went_stale_rereads_it_once_and_succeeds(
    svc: BlockingService, pg_target: PgTarget, roles: Roles
) -> None:
    """Two engines stand for two processes: ``stale`` read the admin password, then
    ``other`` rotated it. ``stale``'s set is refused with the cached value; it re-reads the
    admin credential once and the rotation succeeds (today: refused, rolled back)."""
    register(svc, pg_target, roles)

    async def go() -> Any:
        async with Engine(svc.kernel, FAST) as stale, Engine(svc.kernel, FAST) as other:
            await stale.values.resolver("default").get("pg/admin")
            assert (await other.rotate([RotationRequest("pg/admin")])).ok
            return await stale.rotate([RotationRequest("pg/app00")])

    result = asyncio.run(go())
    assert [r.outcome for r in result.results] == [Outcome.ROTATED], result.to_json()
    user, password = login(svc, "pg/app00")
    assert can_login(pg_target, user, password)
    su_user, su_password = login(svc, "pg/admin")
    assert can_login(pg_target, su_user, su_password)
    rereads = [
        e
        for e in svc.audit_entries(credential="pg/app00")
        if e.action == "rotation.reread_reference"
    ]
    assert [e.details["reference"] for e in rereads] == ["pg/admin"]
    assert svc.audit_verify().ok


def test_a_dependant_waits_while_its_admin_is_mid_rotation_in_another_process(
    svc: BlockingService, settings: Settings, pg_target: PgTarget, roles: Roles
) -> None:
    """Another process holds pg/admin's rotation lock (a live owner, lease valid) and changes
    the superuser's password. `rotator rotate pg/app00` must not log in with the old admin
    password meanwhile: it waits for the lock, then reads the new value and succeeds."""
    register(svc, pg_target, roles)
    tenant = svc.tenant("default")
    admin = svc.show("pg/admin")
    rid = str(uuid.uuid4())
    fence = uuid.uuid4().hex
    now = svc.clock()
    with svc.db.write() as conn:
        assert store_rot.try_lock(conn, admin.id, rid, now) is None
        store_rot.insert_rotation(
            conn,
            id=rid,
            credential_id=admin.id,
            tenant_id=tenant.id,
            credential="pg/admin",
            batch_id=None,
            trigger="manual",
            priority=4,
            grace_s=0,
            owner=f"{socket.gethostname()}:{os.getpid()}:elsewhere",  # not dead: lease decides
            fence=fence,
            lease_expires_at=now + timedelta(hours=1),
            now=now,
        )
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env = {**base, "ROTATOR_HOME": str(settings.home), "ROTATOR_DB": settings.db_url}
    proc = subprocess.Popen(
        [str(CLI), "rotate", "pg/app00", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(
            e.action == "rotation.wait_reference" for e in svc.audit_entries(credential="pg/app00")
        ):
            assert proc.poll() is None, "rotated without waiting for pg/admin's rotation"
            assert time.monotonic() < deadline, "never waited for pg/admin's rotation"
            time.sleep(0.05)
        # The other process's rotation of pg/admin: new password on the target, then CURRENT.
        new_password = "su-new-" + uuid.uuid4().hex
        admin_exec(
            pg_target,
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(roles.superuser), sql.Literal(new_password)
            ),
        )
        svc.update_credential("pg/admin", value=ValueInput(value=Secret(new_password)))
        with svc.db.write() as conn:
            store_rot.set_step(conn, rid, "finished", svc.clock(), fence=fence)
            store_rot.release_lock(conn, admin.id, rid)
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    assert json.loads(out)["rotated"] == ["pg/app00"]
    user, password = login(svc, "pg/app00")
    assert can_login(pg_target, user, password)
    assert not can_login(pg_target, roles.superuser, roles.su_password)


def test_members_of_a_reference_cycle_are_refused_and_the_rest_of_the_batch_rotates(
    svc: BlockingService,
) -> None:
    """pg/a's admin is pg/b and pg/b's admin is pg/a: no order is safe, so neither rotates
    (one line naming the cycle, audited, nothing stored); an unrelated credential does."""
    for name, admin in (("pg/a", "pg/b"), ("pg/b", "pg/a")):
        svc.add_credential(
            name, "postgres", settings={"role": name.replace("/", "_"), "admin": admin}
        )
    svc.add_credential("plain", "local", value=ValueInput(generate=True))
    steps = {s["name"]: s for s in svc.plan(rotation.Selection(all=True))}
    assert steps["plain"]["level"] == 1
    assert steps["pg/a"]["level"] is None
    assert "reference cycle ('pg/a' -> 'pg/b' -> 'pg/a')" in steps["pg/a"]["refused"]

    with BlockingService.open(svc.settings, options=FAST) as fast:
        result = fast.rotate(rotation.Selection(all=True))
    data = result.to_json()
    assert data["rotated"] == ["plain"]
    errors = {f["name"]: f["error"] for f in data["failed"]}
    assert set(errors) == {"pg/a", "pg/b"}
    assert errors["pg/a"].startswith("refused: in a reference cycle ('pg/a' -> 'pg/b'")
    for name in ("pg/a", "pg/b"):
        assert svc.show(name).versions == ()
        assert [e.details["step"] for e in svc.audit_entries(credential=name)
                if e.action == "rotation.failed"] == ["order"]  # fmt: skip
