"""CEF:0 export lines: a header of 7 fields split on unescaped pipes, then key=value pairs;
pipes and backslashes escaped in the header, backslashes, equals signs and line breaks in
values; one entry is always one line; severity ranks denials and failures above routine."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.support.cef import parse_cef

from rotator.audit.chain import AuditEntry
from rotator.audit.formats import severity, to_cef


def entry(**changes: object) -> AuditEntry:
    fields: dict[str, object] = {
        "seq": 7,
        "ts": "2026-11-28T10:00:00.000000Z",
        "tenant": "default",
        "actor": "local",
        "action": "credential.add",
        "credential": "prod/db",
        "rotation_id": None,
        "details": {},
        "prev_hash": "a" * 64,
        "hash": "b" * 64,
        "key_id": "k",
    }
    fields.update(changes)
    return AuditEntry(**fields)  # type: ignore[arg-type]


def test_a_cef_line_has_seven_header_fields_and_the_entry_in_its_extension() -> None:
    header, ext = parse_cef(to_cef(entry()))
    assert header[0] == "CEF:0"
    assert header[1:3] == ["rotator", "rotator"]
    assert header[4] == "credential.add"
    assert len(header) == 7
    assert ext["act"] == "credential.add"
    assert ext["suser"] == "local"
    assert ext["externalId"] == "7"
    assert ext["cs2"] == "prod/db"
    assert ext["cs5"] == "b" * 64
    assert ext["rt"] == str(int(datetime(2026, 11, 28, 10, tzinfo=UTC).timestamp()) * 1000)


def test_pipes_backslashes_equals_and_newlines_are_escaped_and_round_trip() -> None:
    nasty = "a|b\\c=d\ne\rf"
    line = to_cef(
        entry(action="x|y\\z", actor=nasty, credential="c=1", details={"why": "l1\nl2 k=v"})
    )
    assert "\n" not in line
    assert "\r" not in line
    header, ext = parse_cef(line)
    assert len(header) == 7
    assert header[4] == "x|y\\z"
    assert "x\\|y\\\\z" in line
    assert ext["suser"] == nasty
    assert ext["cs2"] == "c=1"
    assert ext["cs4"] == '{"why":"l1\\nl2 k=v"}'  # the details' JSON, as one value
    assert "suser=a|b\\\\c\\=d\\ne\\rf " in line


def test_denials_and_failures_rank_above_reads_and_routine_steps() -> None:
    assert severity("access.denied") > severity("value.read") > severity("credential.add")
    assert severity("rotation.failed") > severity("rotation.complete")
    assert severity("rotation.rollback") > severity("rotation.set")
    assert severity("rotation.revoke_failed") > severity("rotation.revoke")
    assert all(0 <= severity(a) <= 10 for a in ("access.denied", "x", "store.init"))
