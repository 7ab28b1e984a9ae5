"""The real ``rotator`` console script acting as principals: ``principal``, ``token`` and
``tenant`` commands, ``ROTATOR_TOKEN`` and ``ROTATOR_TENANT``. Every test runs on SQLite and
PostgreSQL (``db_url``).

The store is made through the service in-process where the test is about something else
(a CLI process costs about a second); ``test_the_owner_sets_up_tenants_principals_and_tokens``
does the whole set-up through the CLI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from rotator.config import Settings
from rotator.domain.principal import Principal, Role
from rotator.domain.secret import Secret
from rotator.service import BlockingService, ValueInput
from rotator.store.schema import audit_log, credentials, principals, tenants, tokens

ROTATOR = str(Path(sys.executable).parent / "rotator")
TOKEN_RE = re.compile(r"rtr_[a-z2-7]{12}_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out}--- stderr ---\n{self.err}"


def cli(
    settings: Settings,
    *args: str,
    token: str | None = None,
    tenant: str | None = None,
    stdin: str = "",
) -> Run:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")},
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
    }
    if token is not None:
        env["ROTATOR_TOKEN"] = token
    if tenant is not None:
        env["ROTATOR_TENANT"] = tenant
    proc = subprocess.run(
        [ROTATOR, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def one_line_error(run: Run, text: str) -> None:
    """Exit 2, nothing on stdout, exactly one stderr line containing ``text``."""
    assert run.code == 2, run
    assert run.out == "", run
    assert run.err.count("\n") == 1, run
    assert run.err.startswith("rotator: error: "), run
    assert text in run.err, run
    assert "Traceback" not in run.err


def count(raw_db: Engine, table: object) -> int:
    with raw_db.connect() as c:
        return int(c.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def audit_actions(raw_db: Engine) -> list[tuple[str, str, str, dict[str, object]]]:
    with raw_db.connect() as c:
        rows = c.execute(select(audit_log).order_by(audit_log.c.seq)).all()
    return [(r.tenant, r.actor, r.action, json.loads(r.details)) for r in rows]


def owner_in(tenant: str) -> Principal:
    return Principal(owner=True).with_tenant(tenant)


@dataclass(frozen=True)
class World:
    settings: Settings
    tokens: dict[str, str]  # principal name -> token


@pytest.fixture
def world(svc: BlockingService, settings: Settings) -> World:
    """Tenants team-a and team-b; in team-a the credentials prod/payments/db and staging/db
    and the principals reader (prod/*), operator, admin; in team-b admin-b. One token each."""
    svc.add_tenant("team-a")
    svc.add_tenant("team-b")
    a = owner_in("team-a")
    for name, value in (("prod/payments/db", "prod-value-7f3"), ("staging/db", "stage-value-9c1")):
        svc.add_credential(name, "local", value=ValueInput(value=Secret(value)), principal=a)
    svc.add_principal("reader", Role.READER, scope="prod/*", kind="service", tenant="team-a")
    svc.add_principal("operator", Role.OPERATOR, tenant="team-a")
    svc.add_principal("admin", Role.ADMIN, tenant="team-a")
    svc.add_principal("admin-b", Role.ADMIN, tenant="team-b")
    made = {n: svc.create_token(n, principal=a)[1] for n in ("reader", "operator", "admin")}
    made["admin-b"] = svc.create_token("admin-b", principal=owner_in("team-b"))[1]
    return World(settings, made)


def test_the_owner_sets_up_tenants_principals_and_tokens(
    settings: Settings, raw_db: Engine
) -> None:
    assert cli(settings, "init").code == 0
    for t in ("team-a", "team-b"):
        run = cli(settings, "tenant", "add", t)
        assert run.code == 0, run
    listed = cli(settings, "tenant", "list", "--json")
    assert [t["name"] for t in json.loads(listed.out)] == ["default", "team-a", "team-b"]

    run = cli(
        settings, "principal", "add", "ci@deploy", "--role", "reader", "--tenant", "team-a",
        "--scope", "prod/*", "--kind", "service", "--json",
    )  # fmt: skip
    assert run.code == 0, run
    assert json.loads(run.out)["grants"] == [{"role": "reader", "scope": "prod/*"}]
    listed = cli(settings, "principal", "list", "--json", tenant="team-a")
    assert [(p["name"], p["kind"]) for p in json.loads(listed.out)] == [("ci@deploy", "service")]
    assert json.loads(cli(settings, "principal", "list", "--json").out) == []  # default tenant

    plain = cli(settings, "token", "create", "ci@deploy", tenant="team-a")
    assert plain.code == 0, plain
    assert TOKEN_RE.fullmatch(plain.out.removesuffix("\n")), plain  # the token alone
    made = cli(
        settings, "token", "create", "ci@deploy", "--expires", "90d", "--json", tenant="team-a"
    )
    assert made.code == 0, made
    doc = json.loads(made.out)
    assert set(doc) == {"id", "token", "expires_at"}
    assert doc["token"].startswith(f"rtr_{doc['id']}_")
    assert doc["expires_at"] is not None

    listed = cli(settings, "token", "list", "--json", tenant="team-a")
    assert listed.code == 0, listed
    with raw_db.connect() as c:
        digests = list(c.execute(select(tokens.c.digest)).scalars())
    views = json.loads(listed.out)
    assert len(views) == 2
    assert {v["state"] for v in views} == {"active"}
    for secret in (plain.out.strip(), doc["token"], *digests):
        assert secret not in listed.out
        assert secret[17:] not in listed.out

    revoked = cli(settings, "token", "revoke", doc["id"], tenant="team-a")
    assert revoked.code == 0, revoked
    refused = cli(settings, "principal", "list", token=doc["token"])
    one_line_error(refused, f"token {doc['id']} was revoked")

    actions = [a for _, _, a, _ in audit_actions(raw_db)]
    for action in ("tenant.add", "principal.add", "token.create", "token.revoke", "auth.denied"):
        assert action in actions
    dump = json.dumps(audit_actions(raw_db))
    assert plain.out.strip()[17:] not in dump
    assert doc["token"][17:] not in dump


def test_a_reader_gets_a_value_in_its_scope(world: World, raw_db: Engine) -> None:
    run = cli(world.settings, "credential", "get", "prod/payments/db", token=world.tokens["reader"])
    assert run.code == 0, run
    assert run.out == "prod-value-7f3\n"
    (read,) = [a for a in audit_actions(raw_db) if a[2] == "value.read"]
    assert read[:2] == ("team-a", "reader")


def test_a_reader_is_refused_a_value_out_of_its_scope(world: World, raw_db: Engine) -> None:
    run = cli(world.settings, "credential", "get", "staging/db", token=world.tokens["reader"])
    one_line_error(run, "permission denied")
    assert "stage-value" not in run.err
    denied = [a for a in audit_actions(raw_db) if a[2] == "access.denied"]
    assert [(t, who) for t, who, _, _ in denied] == [("team-a", "reader")]


def test_an_operator_cannot_get_a_value(world: World, raw_db: Engine) -> None:
    run = cli(
        world.settings, "credential", "get", "prod/payments/db", token=world.tokens["operator"]
    )
    one_line_error(run, "permission denied")
    assert "prod-value" not in run.err
    assert [a[:2] for a in audit_actions(raw_db) if a[2] == "access.denied"] == [
        ("team-a", "operator")
    ]


def test_an_admin_of_one_tenant_cannot_add_a_principal_in_another(
    world: World, raw_db: Engine
) -> None:
    before = count(raw_db, principals)
    run = cli(
        world.settings, "principal", "add", "mole", "--role", "admin", "--tenant", "team-b",
        token=world.tokens["admin"],
    )  # fmt: skip
    one_line_error(run, "permission denied: 'admin' may not principal.write in tenant 'team-b'")
    assert count(raw_db, principals) == before
    denied = [a for a in audit_actions(raw_db) if a[2] == "access.denied"]
    assert [(t, who, d["tenant"]) for t, who, _, d in denied] == [("team-a", "admin", "team-b")]
    # In its own tenant it may.
    ok = cli(
        world.settings,
        "principal",
        "add",
        "ops2",
        "--role",
        "operator",
        token=world.tokens["admin"],
    )
    assert ok.code == 0, ok
    assert "tenant team-a" in ok.out


def test_a_token_may_not_act_in_another_tenant(world: World, raw_db: Engine) -> None:
    before = audit_actions(raw_db)
    run = cli(world.settings, "principal", "list", token=world.tokens["admin"], tenant="team-b")
    one_line_error(run, "permission denied: 'admin' may not act in tenant 'team-b'")
    token_id = world.tokens["admin"][4:16]  # rtr_<id>_<secret>
    denied = {"permission": None, "token": token_id, "tenant": "team-b"}
    assert audit_actions(raw_db) == [*before, ("team-a", "admin", "access.denied", denied)]


@pytest.mark.parametrize("shape", ["wrong secret", "garbage"])
def test_a_bad_token_exits_2_with_one_line_and_runs_nothing(
    world: World, raw_db: Engine, shape: str
) -> None:
    good = world.tokens["admin"]
    bad = good[:-1] + ("A" if good[-1] != "A" else "B") if shape == "wrong secret" else "hunter2"
    creds = count(raw_db, credentials)
    run = cli(
        world.settings, "credential", "add", "new/one", "-c", "local", "--value-stdin",
        token=bad, stdin="v",
    )  # fmt: skip
    one_line_error(run, "rotator: error: invalid token")
    assert bad not in run.err
    assert count(raw_db, credentials) == creds
    (denied,) = [a for a in audit_actions(raw_db) if a[2] == "auth.denied"]
    assert denied[1] == "anonymous"
    assert denied[3]["reason"] == ("wrong secret" if shape == "wrong secret" else "malformed")


def test_only_the_owner_adds_or_lists_tenants_or_runs_init(world: World, raw_db: Engine) -> None:
    tenants_before = count(raw_db, tenants)
    one_line_error(
        cli(world.settings, "tenant", "add", "team-c", token=world.tokens["admin"]),
        "may not store.admin",
    )
    one_line_error(
        cli(world.settings, "tenant", "list", token=world.tokens["admin"]), "may not store.admin"
    )
    one_line_error(
        cli(world.settings, "init", token=world.tokens["admin"]),
        "rotator init is the store owner's: unset ROTATOR_TOKEN",
    )
    assert count(raw_db, tenants) == tenants_before
    listed = cli(world.settings, "tenant", "list", "--json")
    assert [t["name"] for t in json.loads(listed.out)] == ["default", "team-a", "team-b"]


def test_listing_credentials_of_a_missing_tenant_as_the_owner_creates_no_tenant(
    world: World, raw_db: Engine
) -> None:
    before = count(raw_db, tenants)
    run = cli(world.settings, "credential", "list", "--json", tenant="ghost")
    one_line_error(run, "no tenant 'ghost': add it with `rotator tenant add ghost`")
    assert count(raw_db, tenants) == before
    # The owner names an existing tenant the same way.
    listed = cli(world.settings, "credential", "list", "--json", tenant="team-a")
    assert [c["name"] for c in json.loads(listed.out)] == ["prod/payments/db", "staging/db"]


@pytest.mark.parametrize(
    "args",
    [("worker",), ("recover",), ("keys", "rotate-master")],
    ids=["worker", "recover", "rotate-master"],
)
def test_a_token_never_runs_the_owners_commands(
    world: World, raw_db: Engine, args: tuple[str, ...]
) -> None:
    """Even an admin's token: the worker loop, recovery and the master key are the owner's
    (``serve`` is not a plain use case: it takes the bound principal too)."""
    run = cli(world.settings, *args, token=world.tokens["admin"])
    one_line_error(run, "may not store.admin")
    denied = [a for a in audit_actions(raw_db) if a[2] == "access.denied"]
    assert [(t, who, d["permission"]) for t, who, _, d in denied] == [
        ("team-a", "admin", "store.admin")
    ]


def test_forward_run_acts_as_the_token_principal(world: World, raw_db: Engine) -> None:
    """``audit forward run`` is not a plain use case either: an operator's token is refused."""
    run = cli(world.settings, "audit", "forward", "run", "--once", token=world.tokens["operator"])
    one_line_error(run, "may not audit.forward")
    denied = [a for a in audit_actions(raw_db) if a[2] == "access.denied"]
    assert [(t, who, d["permission"]) for t, who, _, d in denied] == [
        ("team-a", "operator", "audit.forward")
    ]
