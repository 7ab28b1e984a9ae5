"""Tenants are explicit: only ``init`` (the default tenant) and ``add_tenant`` make one, each
with its own data key; every other use case naming a tenant that does not exist says so and
creates nothing. Every test runs on SQLite and PostgreSQL (``db_url``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from rotator.domain.group import Group, GroupMember
from rotator.domain.principal import Principal, Role
from rotator.domain.secret import Secret
from rotator.errors import AlreadyExists, InvalidInput, NotFound
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.store.schema import audit_log, credentials, data_keys, tenants, versions


def owner_in(tenant: str) -> Principal:
    return Principal(owner=True).with_tenant(tenant)


def counts(raw_db: Engine) -> dict[str, int]:
    with raw_db.connect() as c:
        return {
            t.name: c.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (tenants, data_keys, credentials, audit_log)
        }


def test_tenant_add_makes_a_tenant_with_its_own_data_key_and_audits_it(
    svc: BlockingService, raw_db: Engine
) -> None:
    made = svc.add_tenant("team-a")
    assert made.name == "team-a"
    assert [t.name for t in svc.list_tenants()] == ["default", "team-a"]
    svc.add_credential(
        "db", "local", value=ValueInput(value=Secret("a-value")), principal=owner_in("team-a")
    )
    svc.add_credential(
        "db", "local", value=ValueInput(value=Secret("d-value")), principal=owner_in("default")
    )
    with raw_db.connect() as c:
        keys = dict(
            c.execute(
                select(tenants.c.name, data_keys.c.id).join(
                    data_keys, data_keys.c.tenant_id == tenants.c.id
                )
            ).all()
        )
        sealed_under = dict(
            c.execute(
                select(tenants.c.name, versions.c.data_key_id)
                .join(credentials, credentials.c.id == versions.c.credential_id)
                .join(tenants, tenants.c.id == credentials.c.tenant_id)
            ).all()
        )
        (entry,) = c.execute(select(audit_log).where(audit_log.c.action == "tenant.add")).all()
    assert set(keys) == {"default", "team-a"}
    assert keys["default"] != keys["team-a"]
    assert sealed_under == keys  # each tenant's value under its own data key
    assert (entry.tenant, entry.actor, json.loads(entry.details)) == ("team-a", "local", {})
    assert svc.get_value("db", principal=owner_in("team-a")).reveal_text() == "a-value"

    before = counts(raw_db)
    with pytest.raises(AlreadyExists, match="tenant 'team-a' exists already"):
        svc.add_tenant("team-a")
    assert counts(raw_db) == before


@pytest.mark.parametrize("name", ["Team", "", "-x", "a" * 64, "a/b", "a.b"])
def test_a_bad_tenant_name_is_refused_and_nothing_is_stored(
    svc: BlockingService, raw_db: Engine, name: str
) -> None:
    before = counts(raw_db)
    with pytest.raises(InvalidInput, match="invalid tenant name"):
        svc.add_tenant(name)
    assert counts(raw_db) == before


def _ghost_calls(svc: BlockingService) -> dict[str, Callable[[], Any]]:
    ghost = owner_in("ghost")
    return {
        "list_credentials": lambda: svc.list_credentials(principal=ghost),
        "show": lambda: svc.show("db", principal=ghost),
        "report_usage": lambda: svc.report_usage("db", principal=ghost),
        "list_groups": lambda: svc.list_groups(principal=ghost),
        "get_group": lambda: svc.get_group("g", principal=ghost),
        "list_policy_defaults": lambda: svc.list_policy_defaults(principal=ghost),
        "list_events": lambda: svc.list_events(principal=ghost),
        "list_rollouts": lambda: svc.list_rollouts(principal=ghost),
        "list_principals": lambda: svc.list_principals(principal=ghost),
        "list_tokens": lambda: svc.list_tokens(principal=ghost),
        "add_credential": lambda: svc.add_credential(
            "db", "local", value=ValueInput(value=Secret("v")), principal=ghost
        ),
        "add_group": lambda: svc.add_group(
            Group("g", (GroupMember("db"), GroupMember("db2"))),
            principal=ghost,
        ),
        "set_policy_default": lambda: svc.set_policy_default(
            policy=PolicyInput(every="30d"), tenant="ghost", principal=ghost
        ),
        "add_principal": lambda: svc.add_principal("p", Role.READER, tenant="ghost"),
        "create_token": lambda: svc.create_token("p", principal=ghost),
    }


def test_naming_a_tenant_that_does_not_exist_creates_nothing_and_says_how_to_add_it(
    svc: BlockingService, raw_db: Engine
) -> None:
    svc.add_credential("db", "local", value=ValueInput(value=Secret("v")))
    before = counts(raw_db)
    for name, fn in _ghost_calls(svc).items():
        with pytest.raises(NotFound) as err:
            fn()
        assert str(err.value) == "no tenant 'ghost': add it with `rotator tenant add ghost`", name
        assert counts(raw_db) == before, name
    # A value read in a missing tenant finds no credential, and creates no tenant either.
    with pytest.raises(NotFound, match="no credential 'db'"):
        svc.get_value("db", principal=owner_in("ghost"))
    assert counts(raw_db) == before
