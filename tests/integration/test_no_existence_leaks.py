"""No existence oracle in evidence, groups and forwarders: a target the caller may not see
answers exactly like one that does not exist (same error, same text), the refusal of an
existing one is audited for the tenant's own auditors, and forwarder names are unique per
tenant so a clash says nothing across tenants. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support import doubles

from rotator.domain.group import Group, GroupMember
from rotator.domain.principal import LOCAL_PRINCIPAL, Grant, Principal, Role
from rotator.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied
from rotator.service import BlockingService, ValueInput
from rotator.service.rotation import Selection

OWNER_A = LOCAL_PRINCIPAL.with_tenant("a")
OWNER_B = LOCAL_PRINCIPAL.with_tenant("b")
SYSLOG = "udp://127.0.0.1:9"


@pytest.fixture(autouse=True)
def double_connector() -> Iterator[None]:
    doubles.install()
    yield
    doubles.MemoryTarget.valid.clear()


def _narrow(role: Role, tenant: str = "a") -> Principal:
    return Principal(name=f"{role.value}-narrow", tenant=tenant, grants=(Grant(role, "prod/*"),))


def _denials(svc: BlockingService, tenant: str = "a") -> list[dict[str, object]]:
    p = LOCAL_PRINCIPAL.with_tenant(tenant)
    return [
        {"actor": e.actor, "credential": e.credential, **e.details}
        for e in svc.audit_entries(principal=p)
        if e.action == "access.denied"
    ]


def _error(fn: object, *args: object, **kw: object) -> tuple[type[Exception], str]:
    assert callable(fn)
    with pytest.raises((NotFound, PermissionDenied, AlreadyExists)) as info:
        fn(*args, **kw)
    return type(info.value), str(info.value)


def _rotation_of(svc: BlockingService, name: str) -> str:
    svc.rotate(Selection(names=[name]), principal=OWNER_A)
    ids = [e.rotation_id for e in svc.audit_entries(credential=name, principal=OWNER_A)]
    found = [i for i in ids if i]
    assert found
    return found[-1]


def test_evidence_of_a_rotation_outside_the_scope_reads_like_an_unknown_id_and_is_audited(
    svc: BlockingService,
) -> None:
    svc.add_tenant("a")
    svc.add_credential("dev/x", "local", value=ValueInput(generate=True), principal=OWNER_A)
    rid = _rotation_of(svc, "dev/x")
    auditor = _narrow(Role.AUDITOR)

    hidden = _error(svc.rotation_evidence, rid, principal=auditor)
    unknown = _error(svc.rotation_evidence, "0" * 8 + rid[8:], principal=auditor)
    assert hidden[0] is NotFound
    assert hidden[1] == unknown[1].replace("0" * 8 + rid[8:], rid)
    assert "dev/x" not in hidden[1]
    assert _denials(svc) == [
        {
            "actor": auditor.name,
            "credential": "dev/x",
            "permission": "report.read",
            "token": None,
            "rotation": rid,
        }
    ]
    # The owner (and a wide auditor) still get the record.
    wide = Principal(name="aud", tenant="a", grants=(Grant(Role.AUDITOR),))
    assert svc.rotation_evidence(rid, principal=wide).credential == "dev/x"


def test_evidence_refuses_a_role_without_report_read_before_reading_and_names_no_credential(
    svc: BlockingService,
) -> None:
    svc.add_tenant("a")
    svc.add_credential("dev/x", "local", value=ValueInput(generate=True), principal=OWNER_A)
    rid = _rotation_of(svc, "dev/x")
    operator = Principal(name="op", tenant="a", grants=(Grant(Role.OPERATOR),))

    existing = _error(svc.rotation_evidence, rid, principal=operator)
    missing = _error(svc.rotation_evidence, "no-such-rotation", principal=operator)
    assert existing[0] is PermissionDenied
    assert existing == missing, "the refusal does not depend on the rotation"
    assert "dev/x" not in existing[1]
    assert [d["credential"] for d in _denials(svc)] == [None, None]


@pytest.mark.parametrize("use", ["get_group", "remove_group", "rotate_group", "plan_group"])
def test_a_group_with_a_member_outside_the_scope_reads_like_an_unknown_group_and_is_audited(
    svc: BlockingService, use: str
) -> None:
    svc.add_tenant("a")
    for n in ("prod/a", "dev/secret"):
        svc.add_credential(n, "local", value=ValueInput(generate=True), principal=OWNER_A)
    svc.add_group(
        Group("secretgrp", (GroupMember("prod/a"), GroupMember("dev/secret"))), principal=OWNER_A
    )
    operator = _narrow(Role.OPERATOR)
    fn = getattr(svc, use)

    hidden = _error(fn, "secretgrp", principal=operator)
    unknown = _error(fn, "nogrp", principal=operator)
    assert hidden[0] is NotFound
    assert hidden[1] == unknown[1].replace("nogrp", "secretgrp")
    assert "dev/secret" not in hidden[1]
    [denial] = _denials(svc)
    assert (denial["actor"], denial["credential"], denial["group"]) == (
        operator.name,
        "dev/secret",
        "secretgrp",
    )
    assert svc.get_group("secretgrp", principal=OWNER_A).name == "secretgrp", "untouched"


def test_adding_a_group_checks_the_members_scope_before_the_name_clash(
    svc: BlockingService,
) -> None:
    svc.add_tenant("a")
    for n in ("prod/a", "prod/b", "dev/secret"):
        svc.add_credential(n, "local", value=ValueInput(generate=True), principal=OWNER_A)
    svc.add_group(
        Group("secretgrp", (GroupMember("prod/a"), GroupMember("dev/secret"))), principal=OWNER_A
    )
    operator = _narrow(Role.OPERATOR)
    out = Group("secretgrp", (GroupMember("prod/b"), GroupMember("dev/secret")))
    fresh = Group("freshgrp", (GroupMember("prod/b"), GroupMember("dev/secret")))
    # Members out of scope: the same refusal whether the name is taken or not.
    taken, free = (_error(svc.add_group, g, principal=operator) for g in (out, fresh))
    assert taken[0] is free[0] is PermissionDenied
    assert taken[1] == free[1].replace("freshgrp", "secretgrp")


def test_forwarder_names_are_per_tenant_so_a_clash_reveals_nothing_across_tenants(
    svc: BlockingService,
) -> None:
    svc.add_tenant("a")
    svc.add_tenant("b")
    admin_a = Principal(name="a-admin", tenant="a", grants=(Grant(Role.ADMIN),))
    admin_b = Principal(name="b-admin", tenant="b", grants=(Grant(Role.ADMIN),))
    svc.add_forwarder("b-siem", syslog=SYSLOG, principal=admin_b)

    # a's admin may take the name b uses: names are unique per tenant.
    view = svc.add_forwarder("b-siem", syslog=SYSLOG, principal=admin_a)
    assert (view.name, view.tenant) == ("b-siem", "a")
    with pytest.raises(AlreadyExists):
        svc.add_forwarder("b-siem", syslog=SYSLOG, principal=admin_a)
    # The owner's every-tenant forwarders have their own namespace too.
    assert svc.add_forwarder("b-siem", syslog=SYSLOG).tenant is None
    assert [(v.name, v.tenant) for v in svc.list_forwarders(principal=admin_b)] == [("b-siem", "b")]

    # a's admin removes its own, never b's; then b's name reads as unknown, like any other.
    svc.remove_forwarder("b-siem", principal=admin_a)
    gone = _error(svc.remove_forwarder, "b-siem", principal=admin_a)
    none = _error(svc.remove_forwarder, "nothing", principal=admin_a)
    assert gone[0] is none[0] is NotFound
    assert gone[1] == none[1].replace("nothing", "b-siem")
    # Naming another tenant is refused before any lookup: the same for a name that exists there.
    cross = _error(svc.remove_forwarder, "b-siem", principal=admin_a, tenant="b")
    assert cross[0] is PermissionDenied
    assert cross == _error(svc.remove_forwarder, "nothing", principal=admin_a, tenant="b")
    assert [v.tenant for v in svc.list_forwarders(principal=admin_b)] == ["b"]

    # The owner names the namespace when a name is in several.
    with pytest.raises(InvalidInput) as ambiguous:
        svc.remove_forwarder("b-siem")
    assert "--tenant" in str(ambiguous.value)
    svc.remove_forwarder("b-siem", tenant="*")
    svc.remove_forwarder("b-siem")  # now only b's is left
    assert svc.list_forwarders() == []
    assert [d["permission"] for d in _denials(svc)] == ["audit.forward", "audit.forward"]
