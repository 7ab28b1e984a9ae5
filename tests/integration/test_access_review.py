"""Access holes a review found, closed: what decides where a value (or a referenced secret)
goes needs a grant that may read it; a non-owner's rotate sweeps only what it acts on; an
empty ``ROTATOR_TOKEN`` is refused; every refusal is audited with the token id; ``token
revoke`` never echoes a pasted token. Every test runs on SQLite and PostgreSQL (``db_url``);
the CLI ones run the real ``rotator`` console script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from rotator.config import Settings
from rotator.domain.group import Group, parse_order
from rotator.domain.model import Stage
from rotator.domain.principal import Grant, Principal, Role
from rotator.domain.secret import Secret
from rotator.errors import InvalidInput, PermissionDenied
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.service.rotation import Selection
from rotator.store import rotations as store_rot
from rotator.store.schema import audit_log, rotations

ROTATOR = str(Path(sys.executable).parent / "rotator")
TOKEN_ID = "abcdefghijk2"  # the id a test principal claims to have authenticated with


def owner_in(tenant: str) -> Principal:
    return Principal(owner=True).with_tenant(tenant)


def operator(tenant: str = "default", scope: str = "*") -> Principal:
    return Principal("op", tenant, (Grant(Role.OPERATOR, scope),), token_id=TOKEN_ID)


def audit_rows(raw_db: Engine) -> list[tuple[str, str, str | None, dict[str, object]]]:
    with raw_db.connect() as c:
        rows = c.execute(select(audit_log).order_by(audit_log.c.seq)).all()
    return [(r.tenant, r.action, r.credential, json.loads(r.details)) for r in rows]


def denials(raw_db: Engine) -> list[tuple[str, str | None, dict[str, object]]]:
    return [(t, c, d) for t, a, c, d in audit_rows(raw_db) if a == "access.denied"]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


# -- 1. sinks, settings and references decide where a value goes ------------------------------


def test_an_operator_may_not_add_a_sink_to_a_credential_it_may_not_read(
    svc: BlockingService, raw_db: Engine, tmp_path: Path
) -> None:
    svc.add_credential("prod/db", "local", value=ValueInput(generate=True))
    leak = tmp_path / "leak"
    with pytest.raises(PermissionDenied, match=r"value\.read on 'prod/db'"):
        svc.update_credential("prod/db", sinks=[f"file:path={leak}"], principal=operator())
    assert list(svc.show("prod/db").sinks) == []
    svc.rotate(Selection(names=["prod/db"]), principal=operator())  # rotating stays allowed
    assert not leak.exists()
    assert denials(raw_db) == [
        ("default", "prod/db", {"permission": "value.read", "token": TOKEN_ID})
    ]


def test_an_operator_may_not_add_a_credential_with_a_sink_over_a_file(
    svc: BlockingService, raw_db: Engine, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    with pytest.raises(PermissionDenied, match=r"value\.read on 'app/key'"):
        svc.add_credential(
            "app/key",
            "local",
            value=ValueInput(generate=True),
            sinks=[f"file:path={victim}"],
            principal=operator(),
        )
    assert svc.list_credentials() == []
    assert victim.read_text() == "keep me"
    assert [d["permission"] for _, _, d in denials(raw_db)] == ["value.read"]


def test_only_the_owner_may_make_rotator_run_a_command_or_write_a_file_on_its_host(
    svc: BlockingService, raw_db: Engine, tmp_path: Path
) -> None:
    # A tenant admin may read every value of its tenant, but a file written by rotator (a file
    # sink, a published JWK set or certificate) or a hook it runs acts with rotator's own OS
    # privileges: a file under /etc/cron.d or a hook reading the master key would let a tenant
    # grant holder out of its tenant. Those settings need the store's owner.
    admin = Principal("adm", "default", (Grant(Role.ADMIN, "*"),), token_id=TOKEN_ID)
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    victim = tmp_path / "victim"
    attempts = [
        dict(connector="local", sinks=[f"file:path={victim}"]),
        dict(connector="local", sinks=[f"exec:command={hook}"]),
        dict(connector="exec", settings={"command": str(hook), "mode": "dual"}),
        dict(connector="jwks", settings={"publish": str(victim)}),
    ]
    for i, kw in enumerate(attempts):
        with pytest.raises(PermissionDenied, match=r"only the store's owner may set"):
            svc.add_credential(
                f"app/k{i}",
                kw["connector"],  # type: ignore[arg-type]
                settings=kw.get("settings"),  # type: ignore[arg-type]
                value=ValueInput(generate=True),
                sinks=kw.get("sinks", ()),  # type: ignore[arg-type]
                principal=admin,
            )
    assert svc.list_credentials() == []
    assert not victim.exists()
    # Changing a credential into one that does so is refused too; tags and rotations are not.
    svc.add_credential("app/db", "local", value=ValueInput(generate=True), principal=admin)
    with pytest.raises(PermissionDenied, match=r"only the store's owner may set"):
        svc.update_credential("app/db", sinks=[f"file:path={victim}"], principal=admin)
    with pytest.raises(PermissionDenied, match=r"only the store's owner may set"):
        svc.update_credential(
            "app/db", connector="exec", settings={"command": str(hook)}, principal=admin
        )
    svc.update_credential("app/db", tags={"team": "a"}, principal=admin)
    assert list(svc.show("app/db").sinks) == []
    assert svc.show("app/db").connector == "local"
    assert [d["permission"] for _, _, d in denials(raw_db)] == ["store.admin"] * 6
    # The owner may; then a tenant admin may still rotate it and change its tags.
    svc.update_credential("app/db", sinks=[f"file:path={victim}"])
    svc.update_credential("app/db", tags={"team": "b"}, principal=admin)
    svc.rotate(Selection(names=["app/db"]), principal=admin)
    assert victim.exists()


def test_an_operator_may_not_change_the_settings_or_connector_of_a_credential_with_a_value(
    svc: BlockingService, raw_db: Engine
) -> None:
    svc.add_credential("prod/db", "local", value=ValueInput(generate=True))
    svc.add_credential("prod/empty", "local")  # no value yet: nothing to send anywhere
    before = svc.show("prod/db")
    with pytest.raises(PermissionDenied, match=r"value\.read on 'prod/db'"):
        svc.update_credential("prod/db", settings={"length": "40"}, principal=operator())
    with pytest.raises(PermissionDenied, match=r"value\.read on 'prod/db'"):
        svc.update_credential("prod/db", connector="local", principal=operator())
    after = svc.show("prod/db")
    assert (after.connector, after.config, after.updated_at) == (
        before.connector,
        before.config,
        before.updated_at,
    )
    # Tags, policy, and the settings of a credential without a value stay the operator's.
    svc.update_credential("prod/db", tags={"team": "core"}, principal=operator())
    svc.update_credential("prod/empty", settings={"length": "40"}, principal=operator())
    # A grant that may read the value may point it elsewhere.
    admin = Principal("adm", "default", (Grant(Role.ADMIN, "*"),), token_id=TOKEN_ID)
    svc.update_credential("prod/db", settings={"length": "40"}, principal=admin)
    assert svc.show("prod/db").config == {"length": 40}
    assert len(denials(raw_db)) == 2


HTTP_SETTINGS = {
    "base_url": "https://attacker.invalid",
    "set_path": "/keys",
    "set_body": '{"key": "$value"}',
    "test_path": "/me",
    "revoke_path": "/keys/$value",
}


def test_referencing_a_credential_needs_a_grant_that_may_read_it(
    svc: BlockingService, raw_db: Engine
) -> None:
    svc.add_credential("prod/admin", "local", value=ValueInput(value=Secret("admin-secret-4q")))
    with pytest.raises(PermissionDenied, match=r"value\.read on 'prod/admin'"):
        svc.add_credential(
            "prod/api",
            "http",
            settings={**HTTP_SETTINGS, "auth": "prod/admin"},
            principal=operator(),
        )
    assert [c.name for c in svc.list_credentials()] == ["prod/admin"]
    svc.add_credential("prod/api", "http", settings=HTTP_SETTINGS, principal=operator())
    with pytest.raises(PermissionDenied, match=r"value\.read on 'prod/admin'"):
        svc.update_credential(
            "prod/api", settings={**HTTP_SETTINGS, "auth": "prod/admin"}, principal=operator()
        )
    assert svc.show("prod/api").config.get("auth") is None
    # A reader of prod/* (and the admin secret) may reference it.
    both = Principal(
        "ops", "default", (Grant(Role.OPERATOR, "*"), Grant(Role.READER, "prod/admin"))
    )
    svc.update_credential(
        "prod/api", settings={**HTTP_SETTINGS, "auth": "prod/admin"}, principal=both
    )
    assert svc.show("prod/api").config["auth"] == "prod/admin"
    assert [c for _, c, _ in denials(raw_db)] == ["prod/admin", "prod/admin"]


# -- 2. a non-owner's rotate sweeps only what it rotates ---------------------------------------


@pytest.fixture
def clocked(settings: Settings) -> Iterator[tuple[BlockingService, Clock]]:
    clock = Clock()
    init, created = BlockingService.init(settings)
    assert created
    init.close()
    service = BlockingService.open(settings, clock=clock)
    yield service, clock
    service.close()


@pytest.mark.parametrize("how", ["rotate", "group rotate", "rollout run"])
def test_a_tenants_operator_rotating_its_credential_leaves_other_tenants_rotations_alone(
    clocked: tuple[BlockingService, Clock], raw_db: Engine, how: str
) -> None:
    svc, clock = clocked
    svc.add_tenant("team-a")
    svc.add_tenant("team-b")
    a, b = owner_in("team-a"), owner_in("team-b")
    for name in ("a/db", "a/api"):
        svc.add_credential(name, "local", value=ValueInput(generate=True), principal=a)
    for name in ("b/db", "b/stuck"):
        svc.add_credential(
            name,
            "local",
            value=ValueInput(generate=True),
            policy=PolicyInput(grace="1h"),
            principal=b,
        )
    # team-b: a rotation whose old value's grace ends in an hour ...
    svc.rotate(Selection(names=["b/db"]), principal=b)
    # ... and one whose owner died (its lease ran out).
    stuck = svc.show("b/stuck", principal=b)
    with svc.db.write() as c:
        store_rot.insert_rotation(
            c,
            id="dead-rotation",
            credential_id=stuck.id,
            tenant_id=svc.tenant("team-b").id,
            credential="b/stuck",
            batch_id=None,
            trigger="manual",
            priority=0,
            grace_s=0,
            owner="a-dead-process",
            fence="f" * 32,
            lease_expires_at=clock.now - timedelta(minutes=1),
            now=clock.now - timedelta(minutes=2),
        )
    clock.now += timedelta(hours=2)

    op = operator("team-a")
    if how == "rotate":
        result = svc.rotate(Selection(names=["a/db"]), principal=op)
        assert [r.name for r in result.results] == ["a/db"]
    elif how == "group rotate":
        svc.add_group(Group("g", parse_order(["a/db", "a/api"], [])), principal=op)
        result = svc.rotate_group("g", principal=op)
        assert sorted(r.name for r in result.results) == ["a/api", "a/db"]
    else:
        view = svc.create_rollout(
            Selection(names=["a/db"]), stagger=timedelta(minutes=1), max_per_minute=60,
            principal=op,
        )  # fmt: skip
        assert svc.run_rollout(view.id, principal=op).ok
    assert [v.number for v in svc.show("a/db", principal=a).versions][-1] == 2

    # team-b's due revocation and dead rotation are left to the worker or the owner.
    stages = {v.number: v.stage for v in svc.show("b/db", principal=b).versions}
    with raw_db.connect() as c:
        step = c.execute(
            select(rotations.c.step).where(rotations.c.id == "dead-rotation")
        ).scalar_one()
    assert (stages, step) == ({1: Stage.PREVIOUS, 2: Stage.CURRENT}, "claimed")

    # The owner's rotate still sweeps the whole store.
    svc.rotate(Selection(names=["a/db"]), principal=a)
    stages = {v.number: v.stage for v in svc.show("b/db", principal=b).versions}
    assert stages[1] is not Stage.PREVIOUS
    with raw_db.connect() as c:
        step = c.execute(
            select(rotations.c.step).where(rotations.c.id == "dead-rotation")
        ).scalar_one()
    assert step != "claimed"


# -- 4. refusals across tenants, audited with the token id ------------------------------------


def test_policy_defaults_for_another_tenant_are_refused_and_audited_with_the_token(
    svc: BlockingService, raw_db: Engine
) -> None:
    svc.add_tenant("team-a")
    svc.add_tenant("team-b")
    op = operator("team-a")
    with pytest.raises(PermissionDenied, match="in tenant 'team-b'"):
        svc.set_policy_default(policy=PolicyInput(every="30d"), tenant="team-b", principal=op)
    with pytest.raises(PermissionDenied, match="in tenant 'team-b'"):
        svc.remove_policy_default(tenant="team-b", principal=op)
    assert (
        denials(raw_db)
        == [
            (
                "team-a",
                None,
                {"permission": "policy.write", "token": TOKEN_ID, "tenant": "team-b"},
            )
        ]
        * 2
    )
    assert svc.list_policy_defaults(principal=owner_in("team-b")) == []
    # The owner naming another tenant than the one it acts in is still bad input.
    with pytest.raises(InvalidInput, match="acts in tenant 'team-a'"):
        svc.set_policy_default(
            policy=PolicyInput(every="30d"), tenant="team-b", principal=owner_in("team-a")
        )


def test_a_compliance_report_of_another_tenant_is_refused_and_audited_with_the_token(
    svc: BlockingService, raw_db: Engine
) -> None:
    svc.add_tenant("team-a")
    svc.add_tenant("team-b")
    auditor = Principal("aud", "team-a", (Grant(Role.AUDITOR, "*"),), token_id=TOKEN_ID)
    with pytest.raises(PermissionDenied, match=r"report\.read in tenant 'team-b'"):
        svc.compliance_report(tenant="team-b", principal=auditor)
    assert denials(raw_db) == [
        ("team-a", None, {"permission": "report.read", "token": TOKEN_ID, "tenant": "team-b"})
    ]


# -- CLI: ROTATOR_TOKEN, ROTATOR_TENANT, token revoke ------------------------------------------


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out}--- stderr ---\n{self.err}"


def cli(settings: Settings, *args: str, **env_extra: str) -> Run:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")},
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
        **env_extra,
    }
    proc = subprocess.run(
        [ROTATOR, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def one_line_error(run: Run, text: str) -> None:
    assert run.code == 2, run
    assert run.out == "", run
    assert run.err.count("\n") == 1, run
    assert run.err.startswith("rotator: error: "), run
    assert text in run.err, run
    assert "Traceback" not in run.err


@pytest.mark.parametrize("empty", ["", "   "])
def test_an_empty_rotator_token_is_refused_not_taken_for_the_owner(
    svc: BlockingService, settings: Settings, raw_db: Engine, empty: str
) -> None:
    svc.add_credential("prod/db", "local", value=ValueInput(value=Secret("owner-only-7c2")))
    before = audit_rows(raw_db)
    run = cli(settings, "credential", "get", "prod/db", ROTATOR_TOKEN=empty)
    one_line_error(run, "ROTATOR_TOKEN is set but empty: unset it to act as the store's owner")
    assert "owner-only-7c2" not in run.out + run.err
    assert audit_rows(raw_db) == before  # nothing ran


def test_rotator_tenant_other_than_the_tokens_is_refused_and_audited_with_the_token(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    svc.add_tenant("team-a")
    svc.add_tenant("team-b")
    svc.add_principal("ops", Role.OPERATOR, tenant="team-a")
    info, token = svc.create_token("ops", principal=owner_in("team-a"))
    run = cli(settings, "credential", "list", ROTATOR_TOKEN=token, ROTATOR_TENANT="team-b")
    one_line_error(run, "permission denied: 'ops' may not act in tenant 'team-b'")
    assert denials(raw_db) == [
        ("team-a", None, {"permission": None, "token": info.id, "tenant": "team-b"})
    ]


def test_token_revoke_refuses_a_whole_token_without_echoing_it(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    svc.add_principal("ci", Role.APP)
    info, token = svc.create_token("ci")
    secret_part = token.rsplit("_", 1)[1]
    run = cli(settings, "token", "revoke", token)
    one_line_error(run, "token revoke takes a token's ID, not the token itself")
    assert secret_part not in run.err
    assert all(secret_part not in json.dumps(d) for _, _, _, d in audit_rows(raw_db))
    assert svc.authenticate(token).name == "ci", "refused, not revoked"
    run = cli(settings, "token", "revoke", "NOT-AN-ID")
    one_line_error(run, "not a token ID")
    assert "NOT-AN-ID" not in run.err
    run = cli(settings, "token", "revoke", info.id)
    assert run.code == 0, run


def test_an_operators_cli_sink_is_refused_and_its_rotate_writes_no_file(
    svc: BlockingService, settings: Settings, raw_db: Engine, tmp_path: Path
) -> None:
    svc.add_credential("prod/db", "local", value=ValueInput(generate=True))
    svc.add_principal("ops", Role.OPERATOR)
    info, token = svc.create_token("ops")
    leak = tmp_path / "x" / "leak"
    leak.parent.mkdir()
    run = cli(
        settings, "credential", "update", "prod/db", "--sink", f"file:path={leak}",
        ROTATOR_TOKEN=token,
    )  # fmt: skip
    one_line_error(run, "permission denied: 'ops' may not value.read on 'prod/db'")
    run = cli(settings, "rotate", "prod/db", ROTATOR_TOKEN=token)
    assert run.code == 0, run
    assert not leak.exists()
    assert list(svc.show("prod/db").sinks) == []
    assert [(c, d) for _, c, d in denials(raw_db)] == [
        ("prod/db", {"permission": "value.read", "token": info.id})
    ]
