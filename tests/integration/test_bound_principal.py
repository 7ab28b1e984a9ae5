"""``BlockingService.bind``: the one place that makes every use case called through a facade
act as the CLI's principal, unless the call names one. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from rotator.domain.principal import Principal, Role
from rotator.domain.secret import Secret
from rotator.errors import PermissionDenied
from rotator.service import BlockingService, ValueInput


def owner_in(tenant: str) -> Principal:
    return Principal(owner=True).with_tenant(tenant)


def test_a_bound_principal_reaches_every_use_case_unless_the_call_names_one(
    svc: BlockingService,
) -> None:
    svc.add_tenant("team-a")
    svc.add_credential("only/in/default", "local", value=ValueInput(value=Secret("d")))
    svc.add_credential(
        "only/in/a", "local", value=ValueInput(value=Secret("a")), principal=owner_in("team-a")
    )
    svc.add_principal("alice", Role.ADMIN, tenant="team-a")
    _, token = svc.create_token("alice", principal=owner_in("team-a"))
    alice = svc.authenticate(token)

    svc.bind(alice)
    # Keyword-only and positional-or-keyword ``principal`` parameters alike get the bound one.
    assert [c.name for c in svc.list_credentials()] == ["only/in/a"]
    assert svc.show("only/in/a").name == "only/in/a"
    added = svc.add_principal("bob", Role.READER)
    assert (added.tenant, added.created_by) == ("team-a", "alice")
    assert [p.name for p in svc.list_principals()] == ["alice", "bob"]
    with pytest.raises(PermissionDenied):
        svc.list_tenants()
    # A principal the call names wins, by keyword or by position.
    assert [c.name for c in svc.list_credentials(principal=owner_in("default"))] == [
        "only/in/default"
    ]
    assert svc.show("only/in/default", owner_in("default")).name == "only/in/default"

    svc.bind(None)  # unbound: each use case's own default, the owner in the default tenant
    assert [c.name for c in svc.list_credentials()] == ["only/in/default"]
    assert [t.name for t in svc.list_tenants()] == ["default", "team-a"]
