"""The compliance report's pure figures (rotator.policy.compliance): no store, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rotator.domain.policy import RotationPolicy
from rotator.policy.compliance import (
    CredentialFacts,
    LastRotation,
    Reader,
    build,
    maximum,
    password_kind,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def pol(**kw: Any) -> dict[str, Any]:
    return RotationPolicy(**kw).to_json()


@pytest.mark.parametrize(
    ("policy", "value", "source"),
    [
        (pol(every=30 * DAY, max_age=45 * DAY), 45 * DAY, "max_age"),
        (pol(every=30 * DAY), 30 * DAY, "every"),
        (pol(cron="0 3 * * 0"), 7 * DAY, "cron"),
        (pol(cron="0 3 * * 0", window=timedelta(hours=2)), 7 * DAY + timedelta(hours=2), "cron"),
        # 1st and 15th: the longest gap is from a 31-day month's 15th to the next 1st.
        (pol(cron="0 3 1,15 * *"), 17 * DAY, "cron"),
        (pol(max_uses=10), None, None),
        (pol(), None, None),
    ],
)
def test_policy_maximum_is_max_age_else_every_else_the_longest_cron_gap(
    policy: dict[str, Any], value: timedelta | None, source: str | None
) -> None:
    m = maximum(policy)
    assert (m.value, m.source) == (value, source)


@pytest.mark.parametrize(
    ("connector", "config", "expected"),
    [
        ("local", {"generator": "password"}, True),
        ("local", {"generator": "token"}, True),
        ("local", {"generator": "ed25519"}, False),
        ("local", {"generator": "rsa"}, False),
        ("postgres", {}, True),
        ("http", {}, True),
        ("certificate", {}, False),
        ("jwks", {}, False),
    ],
)
def test_password_kind_excludes_key_pairs_and_certificates(
    connector: str, config: dict[str, Any], expected: bool
) -> None:
    assert password_kind(connector, config) is expected


def facts(name: str, **kw: Any) -> CredentialFacts:
    base: dict[str, Any] = {
        "name": name,
        "connector": "local",
        "config": {},
        "tags": {},
        "policy": pol(every=30 * DAY),
        "created_at": NOW - 10 * DAY,
        "current_created_at": NOW - 10 * DAY,
        "next_rotation_at": NOW + 20 * DAY,
        "finished_ever": 1,
        "period_results": {"finished": 1},
        "period_triggers": {"schedule": 1},
        "last": LastRotation(NOW - 10 * DAY, "schedule", "finished", NOW - 10 * DAY, None),
        "previous_revoked_at": NOW - 9 * DAY,
        "previous_revoke_due": None,
        "readers": (),
    }
    base.update(kw)
    return CredentialFacts(**base)


def test_a_kept_store_passes_every_control_and_counts_its_figures() -> None:
    r = build(
        [
            facts("b", readers=[Reader("app", 3, NOW - DAY), Reader("ops", 5, NOW - 2 * DAY)]),
            facts("a"),
        ],
        tenant="t",
        now=NOW,
        since=NOW - 90 * DAY,
        denied=0,
    )
    assert [c.name for c in r.credentials] == ["a", "b"]
    s = r.summary
    assert s["rotations"] == {"finished": 2, "failed": 0, "rolled_back": 0, "total": 2}
    assert s["success_rate"] == 1.0
    assert (s["overdue"], s["never_rotated"], s["older_than_policy"]) == (0, 0, 0)
    assert (s["reads"], s["readers"]) == (8, 2)
    b = r.credentials[1]
    assert [x.actor for x in b.readers] == ["ops", "app"]  # most reads first
    assert b.last_read_at == NOW - DAY
    assert {c.id: c.status for c in r.controls} == dict.fromkeys(
        ("8.3.9", "8.6.3", "ITGC access control", "IA-5(1)", "A.5.17"), "pass"
    )


def test_flags_overdue_by_schedule_older_than_policy_never_rotated_and_revoke_overdue() -> None:
    r = build(
        [
            # Its next time passed (a blackout, a dead worker) though its value is young.
            facts("late", next_rotation_at=NOW - DAY),
            # Older than its max age, and never rotated: the value it was added with.
            facts(
                "old",
                policy=pol(max_age=20 * DAY),
                current_created_at=NOW - 100 * DAY,
                finished_ever=0,
                period_results={"rolled_back": 1},
                last=LastRotation(NOW - DAY, "manual", "rolled_back", NOW - DAY, "x" * 900),
            ),
            # PREVIOUS still valid after its grace ended.
            facts("stale", previous_revoke_due=NOW - timedelta(minutes=1)),
        ],
        tenant="t",
        now=NOW,
        since=NOW - 90 * DAY,
        denied=2,
    )
    late, old, stale = r.credentials
    assert (late.overdue, late.older_than_policy) == (True, False)
    assert (old.overdue, old.older_than_policy, old.never_rotated) == (True, True, True)
    assert old.last is not None
    assert len(old.last.error or "") == 500
    assert stale.revoke_overdue
    s = r.summary
    assert s["success_rate"] == round(2 / 3, 4)
    assert s["password_kind_older_than_90d"] == 1
    status = {c.id: c.status for c in r.controls}
    assert status["8.3.9"] == "attention"
    assert status["ITGC access control"] == "attention"
    assert "denied: 2" in next(c.reason for c in r.controls if c.id == "ITGC access control")


def test_no_rotation_in_the_period_has_no_success_rate() -> None:
    r = build([facts("a", period_results={})], tenant="t", now=NOW, since=NOW - DAY, denied=0)
    assert r.summary["success_rate"] is None
    assert r.to_json()["summary"]["rotations"]["total"] == 0
