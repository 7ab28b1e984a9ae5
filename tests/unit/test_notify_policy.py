"""The pure webhook mapping (rotator.policy.notify): audit action -> event types, --event
parsing, payloads and the signature recipe."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from rotator.errors import InvalidInput
from rotator.policy import notify


@pytest.mark.parametrize(
    ("action", "details", "types"),
    [
        ("rotation.create", {"trigger": "manual"}, ("rotation.started",)),
        ("rotation.create", {"trigger": "schedule"}, ("rotation.started",)),
        ("rotation.create", {"trigger": "emergency"}, ("rotation.started", "emergency")),
        ("rotation.complete", {}, ("rotation.succeeded",)),
        ("rotation.failed", {"step": "set"}, ("rotation.failed",)),
        ("rotation.rollback", {}, ("rotation.rolled_back",)),
        ("credential.overdue", {}, ("credential.overdue",)),
        ("risk.reported", {"severity": "high"}, ("risk.event",)),
        ("audit.verification_failed", {}, ("audit.verification_failed",)),
        ("value.read", {}, ()),
        ("rotation.set", {}, ()),
        ("risk.decided", {}, ()),
        ("webhook.add", {}, ()),
    ],
)
def test_each_audit_action_maps_to_its_event_types(
    action: str, details: dict[str, str], types: tuple[str, ...]
) -> None:
    assert notify.event_types(action, details) == types


def test_every_event_type_comes_from_some_audit_action() -> None:
    made = {t for a in notify._BY_ACTION for t in notify.event_types(a, {"trigger": "emergency"})}
    assert made == set(notify.EVENT_TYPES)


def test_event_lists_are_parsed_deduplicated_in_a_fixed_order_and_all_means_every_type() -> None:
    got = notify.parse_event_types("rotation.failed, rotation.started,rotation.failed")
    assert got == ["rotation.started", "rotation.failed"]
    assert notify.parse_event_types("all") == list(notify.EVENT_TYPES)
    assert notify.parse_event_types("*") == list(notify.EVENT_TYPES)


@pytest.mark.parametrize("text", ["", " , ", "rotation.bogus", "rotation.started,nope", None])
def test_an_unknown_or_empty_event_list_is_refused_in_one_line(text: str | None) -> None:
    with pytest.raises(InvalidInput) as err:
        notify.parse_event_types(text)
    assert "\n" not in str(err.value)


def test_the_signature_is_an_hmac_over_timestamp_dot_body_and_expires_after_the_window() -> None:
    key, body, ts = b"k" * 32, b'{"a":1}', "1800000000"
    sig = notify.sign(key, ts, body)
    assert sig == "v1=" + hmac.new(key, b"1800000000." + body, hashlib.sha256).hexdigest()
    assert notify.verify(key, ts, body, sig, now=1800000000 + 299)
    assert not notify.verify(key, ts, body, sig, now=1800000000 + 301), "replayed too late"
    assert not notify.verify(key, ts, body + b" ", sig, now=1800000000)
    assert not notify.verify(b"other", ts, body, sig, now=1800000000)
    assert not notify.verify(key, "not-a-number", body, sig, now=1800000000)


def test_the_slack_text_is_one_line_naming_the_event() -> None:
    event = notify.payload(
        seq=7,
        event_type="rotation.failed",
        at="2026-11-28T00:00:00+00:00",
        tenant="t",
        credential="app/db",
        rotation_id="r1",
        details={"error": "refused\nby the target"},
    )
    assert event["id"] == "t:7"
    text = notify.slack_payload(event)["text"]
    assert "\n" not in text
    assert "rotation.failed" in text
    assert "app/db" in text
    assert "refused by the target" in text
