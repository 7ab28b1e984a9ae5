"""The SDK's server-sent events parser, on the stream format's own examples."""

from __future__ import annotations

from rotator.client._sse import Event, parse


def test_events_are_dispatched_at_blank_lines_with_the_last_id() -> None:
    lines = [
        ": ping - 2026-01-01",
        "id: 7",
        "event: ready",
        "data: {}",
        "",
        "id: 9",
        "event: current",
        'data: {"name": "a"}',
        "",
        "data:first",
        "data: second",
        "",
    ]
    assert list(parse(lines)) == [
        Event("ready", "{}", "7"),
        Event("current", '{"name": "a"}', "9"),
        Event("message", "first\nsecond", "9"),
    ]


def test_comments_unknown_fields_and_an_unfinished_event_are_not_dispatched() -> None:
    assert list(parse([": only a comment", "", "retry: 100", "", "data: cut"])) == []


def test_an_id_with_a_nul_is_ignored() -> None:
    assert list(parse(["id: 3", "data: a", "", "id: 4\0", "data: b", ""])) == [
        Event("message", "a", "3"),
        Event("message", "b", "3"),
    ]
