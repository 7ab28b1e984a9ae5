"""Tenant isolation: a name present in tenants ``a`` and ``b`` is two unrelated credentials.

Everything a principal of ``a`` does (list, show, get, rotate, update, remove, usage, groups,
policy defaults, audit, events, rollouts) looks things up in ``a`` only: ``b``'s credential of
the same name is never read, changed, rotated or shown, and ``b``'s rollouts, groups and
policy defaults are "not found" to ``a``. Reading creates no tenant. On SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from rotator.domain.group import Group, GroupMember
from rotator.domain.model import Credential, Stage
from rotator.domain.principal import LOCAL_PRINCIPAL, Grant, Principal, Role
from rotator.engine import Outcome
from rotator.errors import NotFound
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.service.events import EventInput
from rotator.service.rotation import Selection
from rotator.store.schema import tenants

SHARED, OTHER = "prod/shared/db", "prod/shared/cache"
OWNER_A = LOCAL_PRINCIPAL.with_tenant("a")
OWNER_B = LOCAL_PRINCIPAL.with_tenant("b")
ALICE = Principal("alice", "a", (Grant(Role.ADMIN, "*"),))  # an admin of a, not the owner
BOB = Principal("bob", "b", (Grant(Role.ADMIN, "*"),))


def make_tenant(svc: BlockingService, name: str) -> None:
    """Tenants are explicit: only ``init`` and ``add_tenant`` make one."""
    svc.add_tenant(name)


@dataclass(frozen=True)
class B:
    """What tenant b holds before a acts, to compare with after."""

    credential: Credential
    value: str


def b_state(svc: BlockingService) -> B:
    # Read as the store's owner in b: a raw look that a's principals cannot take.
    return B(svc.show(SHARED, principal=OWNER_B), _value(svc, OWNER_B))


def _value(svc: BlockingService, p: Principal) -> str:
    return svc.get_value(SHARED, principal=p).reveal_text()


def assert_b_untouched(svc: BlockingService, before: B) -> None:
    after = svc.show(SHARED, principal=OWNER_B)
    b = before.credential
    assert (after.id, after.tags, after.policy, after.updated_at, after.last_rotated_at) == (
        b.id,
        b.tags,
        b.policy,
        b.updated_at,
        b.last_rotated_at,
    )
    assert [(v.number, v.stage) for v in after.versions] == [
        (v.number, v.stage) for v in b.versions
    ]
    # The value read by b_state counted one use; nothing of a's counted on b's.
    assert after.use_count == b.use_count + 1
    assert _value(svc, OWNER_B) == before.value


@pytest.fixture
def two(svc: BlockingService) -> BlockingService:
    """Tenants a and b, each with its own SHARED (and OTHER, for groups), tagged env=prod."""
    make_tenant(svc, "a")
    make_tenant(svc, "b")
    for owner in (OWNER_A, OWNER_B):
        for n in (SHARED, OTHER):
            svc.add_credential(
                n,
                "local",
                tags={"env": "prod"},
                policy=PolicyInput(grace="0s", on_risk="critical=emergency"),
                value=ValueInput(generate=True),
                principal=owner,
            )
    return svc


def test_a_name_in_both_tenants_is_two_credentials_each_tenant_sees_only_its_own(
    two: BlockingService,
) -> None:
    svc = two
    a = svc.show(SHARED, principal=ALICE)
    b = svc.show(SHARED, principal=BOB)
    assert a.id != b.id
    assert (a.tenant, b.tenant) == ("a", "b")
    listed = svc.list_credentials(principal=ALICE)
    assert sorted((c.tenant, c.name, c.id) for c in listed) == sorted(
        [("a", SHARED, a.id), ("a", OTHER, svc.show(OTHER, principal=ALICE).id)]
    )
    assert _value(svc, ALICE) != _value(svc, BOB), "each tenant generated its own value"


def test_reading_a_value_in_a_counts_and_audits_in_a_only(two: BlockingService) -> None:
    svc = two
    before = b_state(svc)
    used_before = svc.show(SHARED, principal=ALICE).use_count
    svc.get_value(SHARED, principal=ALICE)
    svc.report_usage(SHARED, 5, principal=ALICE)
    assert svc.show(SHARED, principal=ALICE).use_count == used_before + 6
    assert_b_untouched(svc, before)
    reads = [e for e in svc.audit_entries(credential=SHARED, principal=BOB)]
    assert {e.tenant for e in reads} == {"b"}
    assert "alice" not in {e.actor for e in reads}


def test_rotating_in_a_leaves_bs_value_and_versions_unchanged(two: BlockingService) -> None:
    svc = two
    before = b_state(svc)
    a_value = _value(svc, ALICE)
    for sel in (Selection(names=[SHARED]), Selection(tags={"env": "prod"}), Selection(all=True)):
        result = svc.rotate(sel, principal=ALICE)
        assert {r.outcome for r in result.results} == {Outcome.ROTATED}
    result = svc.rotate(Selection(names=[SHARED]), emergency=True, principal=ALICE)
    assert result.ok
    a = svc.show(SHARED, principal=ALICE)
    current = a.version_in(Stage.CURRENT)
    assert current is not None
    assert current.number == 5
    assert _value(svc, ALICE) != a_value
    assert_b_untouched(svc, before)


def test_updating_and_removing_in_a_leave_b_as_it_was(two: BlockingService) -> None:
    svc = two
    before = b_state(svc)
    svc.update_credential(
        SHARED,
        tags={"env": "dev"},
        policy=PolicyInput(grace="9m"),
        value=ValueInput(generate=True),
        principal=ALICE,
    )
    assert svc.show(SHARED, principal=ALICE).tags == {"env": "dev"}
    svc.remove_credential(SHARED, principal=ALICE)
    with pytest.raises(NotFound):
        svc.show(SHARED, principal=ALICE)
    with pytest.raises(NotFound):
        svc.get_value(SHARED, principal=ALICE)
    assert_b_untouched(svc, before)


def test_groups_and_policy_defaults_of_b_are_not_found_in_a(two: BlockingService) -> None:
    svc = two
    svc.add_group(Group("pair", (GroupMember(SHARED), GroupMember(OTHER))), principal=BOB)
    svc.set_policy_default(policy=PolicyInput(every="50d"), tag=("env", "prod"), principal=BOB)
    before = b_state(svc)
    with pytest.raises(NotFound):
        svc.get_group("pair", principal=ALICE)
    with pytest.raises(NotFound):
        svc.rotate_group("pair", principal=ALICE)
    with pytest.raises(NotFound):
        svc.remove_group("pair", principal=ALICE)
    with pytest.raises(NotFound):
        svc.remove_policy_default(tag=("env", "prod"), principal=ALICE)
    assert svc.list_groups(principal=ALICE) == []
    assert svc.list_policy_defaults(principal=ALICE) == []
    # a's own group and default of the same names are a's alone.
    svc.add_group(Group("pair", (GroupMember(SHARED), GroupMember(OTHER))), principal=ALICE)
    svc.set_policy_default(policy=PolicyInput(every="40d"), tag=("env", "prod"), principal=ALICE)
    assert svc.rotate_group("pair", principal=ALICE).ok
    assert svc.show(SHARED, principal=ALICE).policy.every == timedelta(days=40)
    assert svc.show(SHARED, principal=BOB).policy.every == timedelta(days=50)
    assert_b_untouched(svc, before)


def test_audit_of_a_never_shows_bs_entries(two: BlockingService) -> None:
    svc = two
    svc.get_value(SHARED, principal=BOB)
    entries = svc.audit_entries(principal=ALICE)
    named = svc.audit_entries(credential=SHARED, principal=ALICE)
    assert entries
    assert named
    assert {e.tenant for e in entries + named} == {"a"}
    assert "bob" not in {e.actor for e in entries + named}


def test_a_risk_event_in_a_decides_and_rotates_for_as_credential_only(
    two: BlockingService,
) -> None:
    svc = two
    before = b_state(svc)
    report = svc.report_event(EventInput("leak", "critical", credential=SHARED), principal=ALICE)
    assert [(d.name, d.outcome) for d in report.decisions] == [(SHARED, Outcome.ROTATED)]
    by_tag = svc.report_event(EventInput("scan", "low", tags={"env": "prod"}), principal=ALICE)
    assert sorted(d.name for d in by_tag.decisions) == [OTHER, SHARED]
    assert svc.list_events(principal=BOB) == []
    assert {e.id for e in svc.list_events(principal=ALICE)} == {
        report.event_id,
        by_tag.event_id,
    }
    assert_b_untouched(svc, before)


def test_rollouts_of_a_rotate_as_credentials_and_are_not_found_in_b(
    two: BlockingService,
) -> None:
    svc = two
    before = b_state(svc)
    view = svc.create_rollout(
        Selection(names=[SHARED]), stagger=timedelta(0), max_per_minute=600, principal=ALICE
    )
    assert svc.list_rollouts(principal=BOB) == []
    for call in (svc.rollout_status, svc.resume_rollout, svc.abort_rollout, svc.run_rollout):
        with pytest.raises(NotFound):
            call(view.id, principal=BOB)
    done = svc.run_rollout(view.id, poll_s=0.05, principal=ALICE)
    assert (done.status, done.counts["rotated"]) == ("done", 1)
    current = svc.show(SHARED, principal=ALICE).version_in(Stage.CURRENT)
    assert current is not None
    assert current.number == 2
    assert_b_untouched(svc, before)


def test_reading_never_creates_a_tenant(svc: BlockingService, raw_db: Engine) -> None:
    carol = Principal("carol", "c", (Grant(Role.ADMIN, "*"),))

    def tenant_names() -> set[str]:
        with raw_db.connect() as conn:
            return set(conn.execute(select(tenants.c.name)).scalars())

    before = tenant_names()
    assert svc.list_credentials(principal=carol) == []
    assert svc.list_groups(principal=carol) == []
    assert svc.list_policy_defaults(principal=carol) == []
    assert svc.list_events(principal=carol) == []
    assert svc.list_rollouts(principal=carol) == []
    assert [e for e in svc.audit_entries(principal=carol) if e.tenant == "c"] == []
    with pytest.raises(NotFound):
        svc.show(SHARED, principal=carol)
    with pytest.raises(NotFound):
        svc.get_value(SHARED, principal=carol)
    with pytest.raises(NotFound):
        svc.rollout_status("no-such-rollout", principal=carol)
    assert tenant_names() == before
    assert "c" not in before
