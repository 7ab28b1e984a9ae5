"""Risk rules and decisions (rotator.policy.risk), and the risk fields of RotationPolicy.
Pure: ``now`` is passed in, no clock, no store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rotator.domain.policy import RotationPolicy
from rotator.errors import PolicyError
from rotator.policy.risk import (
    DEFAULT_COOLDOWN,
    DEFAULT_RULES,
    PriorDecision,
    RiskAction,
    Severity,
    action_for,
    decide,
    format_risk_rules,
    parse_risk_rules,
)
from rotator.service.inputs import PolicyInput

NOW = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)
N, R, E = RiskAction.NOTIFY, RiskAction.ROTATE, RiskAction.EMERGENCY


def test_rules_text_parses_to_a_severity_action_map_in_any_order_and_case() -> None:
    rules = parse_risk_rules(" Critical=emergency , high=ROTATE")
    assert rules == {Severity.CRITICAL: E, Severity.HIGH: R}
    assert format_risk_rules(rules) == "high=rotate,critical=emergency"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "empty"),
        ("high", "'high'"),
        ("high=rotate,", "''"),
        ("huge=rotate", "'huge'"),
        ("high=explode", "'explode'"),
        ("high=rotate,high=notify", "twice"),
        ("high=rotate;critical=emergency", "malformed"),
        ("x" * 500, "longer than 200"),
    ],
)
def test_bad_rules_text_is_one_line_policy_error_naming_the_problem(text: str, names: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_risk_rules(text)
    msg = str(exc.value)
    assert names in msg
    assert "\n" not in msg
    assert len(msg) < 200


def test_default_rules_notify_low_and_medium_rotate_high_and_emergency_critical() -> None:
    assert dict(DEFAULT_RULES) == {
        Severity.LOW: N,
        Severity.MEDIUM: N,
        Severity.HIGH: R,
        Severity.CRITICAL: E,
    }
    assert DEFAULT_COOLDOWN == HOUR
    assert [action_for(None, s) for s in Severity] == [N, N, R, E]


def test_a_credentials_rules_replace_the_defaults_only_for_the_severities_they_name() -> None:
    rules = parse_risk_rules("medium=rotate,critical=notify")
    assert [action_for(rules, s) for s in Severity] == [N, R, R, N]


def test_first_event_does_what_the_rule_says() -> None:
    for sev, want in zip(Severity, [N, N, R, E], strict=True):
        d = decide(None, sev, now=NOW, last_risk_action_at=None, cooldown=HOUR, duplicate_of=None)
        assert d.action is want
        assert d.duplicate_of is None
        assert f"default rule {sev.value}={want.value}" == d.reason


def test_same_kind_again_within_the_cooldown_is_a_duplicate_that_only_notifies() -> None:
    d = decide(
        None,
        Severity.HIGH,
        now=NOW,
        last_risk_action_at=NOW - timedelta(minutes=5),
        cooldown=HOUR,
        duplicate_of=PriorDecision(7, R),
    )
    assert d.action is N
    assert d.duplicate_of == 7
    assert d.reason.startswith("duplicate of event 7")


def test_duplicate_that_escalates_to_emergency_acts() -> None:
    d = decide(
        None,
        Severity.CRITICAL,
        now=NOW,
        last_risk_action_at=NOW - timedelta(minutes=5),
        cooldown=HOUR,
        duplicate_of=PriorDecision(7, R),
    )
    assert d.action is E
    assert d.duplicate_of is None


def test_duplicate_of_an_event_whose_rotation_failed_rotates_again() -> None:
    # The service passes achieved=notify for a decision whose rotation did not succeed.
    d = decide(
        None,
        Severity.HIGH,
        now=NOW,
        last_risk_action_at=None,
        cooldown=HOUR,
        duplicate_of=PriorDecision(7, N),
    )
    assert d.action is R


def test_rotate_within_the_cooldown_of_a_risk_rotation_only_notifies() -> None:
    last = NOW - timedelta(minutes=59, seconds=59)
    d = decide(
        None, Severity.HIGH, now=NOW, last_risk_action_at=last, cooldown=HOUR, duplicate_of=None
    )
    assert d.action is N
    assert d.reason.startswith("cooldown: rotated for a risk at 2026-03-29T00:30:01+00:00")


def test_rotate_once_the_cooldown_has_passed_acts() -> None:
    d = decide(
        None,
        Severity.HIGH,
        now=NOW,
        last_risk_action_at=NOW - HOUR,
        cooldown=HOUR,
        duplicate_of=None,
    )
    assert d.action is R


def test_emergency_is_never_held_back_by_the_cooldown() -> None:
    d = decide(
        None,
        Severity.CRITICAL,
        now=NOW,
        last_risk_action_at=NOW - timedelta(seconds=1),
        cooldown=HOUR,
        duplicate_of=None,
    )
    assert d.action is E


def test_zero_cooldown_never_holds_back() -> None:
    d = decide(
        None,
        Severity.HIGH,
        now=NOW,
        last_risk_action_at=NOW,
        cooldown=timedelta(0),
        duplicate_of=None,
    )
    assert d.action is R


def test_notify_rule_is_a_notify_with_or_without_history() -> None:
    d = decide(
        None, Severity.LOW, now=NOW, last_risk_action_at=NOW, cooldown=HOUR, duplicate_of=None
    )
    assert d.action is N
    assert d.reason == "default rule low=notify"


def test_policy_risk_fields_round_trip_through_json_and_describe() -> None:
    p = RotationPolicy(on_risk="critical=emergency,high=rotate", risk_cooldown=2 * HOUR)
    assert p.on_risk == "high=rotate,critical=emergency"  # canonical
    assert RotationPolicy.from_json(p.to_json()) == p
    assert p.describe().endswith("on risk high=rotate,critical=emergency, risk cooldown 2h")
    assert p.risk_rules == {Severity.HIGH: R, Severity.CRITICAL: E}
    # A policy stored before these fields existed reads as "not set".
    old = {"every": None, "cron": None, "window": None, "grace": 300.0, "max_uses": None}
    assert RotationPolicy.from_json(old).on_risk is None
    assert RotationPolicy.from_json(old).risk_cooldown is None


def test_policy_refuses_bad_risk_rules_and_a_negative_cooldown() -> None:
    with pytest.raises(PolicyError, match="unknown --on-risk action"):
        RotationPolicy(on_risk="high=panic")
    with pytest.raises(PolicyError, match="--risk-cooldown cannot be negative"):
        RotationPolicy(risk_cooldown=-HOUR)


def test_policy_input_sets_and_keeps_risk_options_on_update() -> None:
    base = PolicyInput(on_risk="high=emergency", risk_cooldown="30m").apply(None)
    assert base.on_risk == "high=emergency"
    assert base.risk_cooldown == timedelta(minutes=30)
    kept = PolicyInput(grace="1m").apply(base)
    assert kept.on_risk == "high=emergency"
    assert kept.risk_cooldown == timedelta(minutes=30)
    changed = PolicyInput(on_risk="high=notify").apply(base)
    assert changed.on_risk == "high=notify"
    with pytest.raises(PolicyError, match="malformed --risk-cooldown"):
        PolicyInput(risk_cooldown="soon").apply(None)
