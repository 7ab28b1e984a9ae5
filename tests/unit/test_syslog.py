"""audit/syslog.py: RFC 5424 messages and RFC 6587 octet counting, by the letter."""

from __future__ import annotations

import pytest

from rotator.audit.chain import AuditEntry
from rotator.audit.syslog import escape_param, format_entry, frame, severity


def entry(action: str = "rotation.finished", **kw: object) -> AuditEntry:
    fields: dict[str, object] = {
        "seq": 7,
        "ts": "2026-11-28T10:00:00.123456Z",
        "tenant": "default",
        "actor": "local",
        "action": action,
        "credential": "prod/db",
        "rotation_id": "r-1",
        "details": {"b": 1, "a": "x"},
        "hash": "ab" * 32,
        "key_id": "k1",
    }
    fields.update(kw)
    return AuditEntry(**fields)  # type: ignore[arg-type]


def test_a_message_has_pri_version_timestamp_host_app_msgid_sd_and_json_details() -> None:
    msg = format_entry(entry(), hostname="h1")
    assert msg == (
        b"<110>1 2026-11-28T10:00:00.123456Z h1 rotator - rotation.finished "
        b'[rotator@32473 seq="7" tenant="default" actor="local" credential="prod/db" '
        b'rotation="r-1" key="k1" hash="' + b"ab" * 32 + b'"] {"a":"x","b":1}'
    )


@pytest.mark.parametrize(
    ("action", "sev"),
    [
        ("access.denied", 4),
        ("auth.failed", 3),
        ("rotation.failed", 3),
        ("rotation.rolled_back", 3),
        ("rotation.emergency", 5),
        ("value.read", 6),
    ],
)
def test_severity_follows_the_action_denials_warn_failures_error(action: str, sev: int) -> None:
    assert severity(action) == sev
    msg = format_entry(entry(action), hostname="h", facility=1)
    assert msg.startswith(f"<{8 + sev}>1 ".encode())


def test_sd_param_values_escape_quote_backslash_and_bracket() -> None:
    assert escape_param('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    msg = format_entry(entry(actor='x"]\\'), hostname="h")
    assert b'actor="x\\"\\]\\\\"' in msg


def test_header_fields_never_hold_spaces_and_an_empty_host_is_a_dash() -> None:
    msg = format_entry(entry("odd action"), hostname="")
    assert msg.split(b" ")[2:6] == [b"-", b"rotator", b"-", b"odd_action"]


def test_octet_counting_prefixes_the_byte_length() -> None:
    assert frame("é".encode()) == b"2 \xc3\xa9"


def test_a_facility_outside_0_to_23_is_refused() -> None:
    with pytest.raises(ValueError, match="facility"):
        format_entry(entry(), hostname="h", facility=24)


def test_a_cef_body_carries_the_whole_entry_as_one_cef_line_after_the_sd() -> None:
    msg = format_entry(entry(), hostname="h1", body="cef").decode()
    head, _, cef = msg.partition('"] ')
    assert head.startswith("<110>1 2026-11-28T10:00:00.123456Z h1 rotator - rotation.finished [")
    assert cef.startswith("CEF:0|rotator|rotator|")
    assert "\n" not in cef
    assert "suser=local" in cef
    assert "act=rotation.finished" in cef
