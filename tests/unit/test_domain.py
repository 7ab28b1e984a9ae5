"""Domain values: Secret, names, durations, policies, next rotation time. No clock, no I/O."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rotator.domain import names
from rotator.domain.policy import RotationPolicy, format_duration, parse_duration
from rotator.domain.secret import Secret
from rotator.errors import InvalidInput, PolicyError
from rotator.policy import next_rotation_at

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_secret_never_shows_itself() -> None:
    s = Secret("hunter2")
    for text in (repr(s), str(s), f"{s}", f"{s!r}", f"{s:>20}", repr([s]), repr({"k": s})):
        assert "hunter2" not in text
        assert "***" in text
    assert s.reveal() == b"hunter2"
    assert s.reveal_text() == "hunter2"


def test_secret_cannot_be_pickled_hashed_or_changed() -> None:
    s = Secret(b"v")
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        hash(s)
    with pytest.raises(AttributeError):
        s._value = b"x"  # type: ignore[misc]


def test_secret_equality() -> None:
    assert Secret("a") == Secret(b"a")
    assert Secret("a") != Secret("b")


@pytest.mark.parametrize("name", ["a", "prod/payments/db", "x.y_z-1", "0" * 200])
def test_valid_credential_names(name: str) -> None:
    assert names.check_credential_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "-a", "/a", "a b", "a\n", "é", "0" * 201, "a;drop"])
def test_invalid_credential_names(name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid credential name"):
        names.check_credential_name(name)


def test_parse_pairs() -> None:
    assert names.parse_pairs(["a=1", "b=", "c=x=y"], "--tag", names.TAG_KEY) == {
        "a": "1",
        "b": "",
        "c": "x=y",
    }
    for bad in (["novalue"], ["=x"], ["A=1"], ["a=1", "a=2"]):
        with pytest.raises(InvalidInput, match="--tag"):
            names.parse_pairs(bad, "--tag", names.TAG_KEY)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("2h30m", timedelta(hours=2, minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("500ms", timedelta(milliseconds=500)),
        ("1w", timedelta(weeks=1)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "30x", "abc", "d30", "1h 2x", "-5m"])
def test_malformed_durations(text: str) -> None:
    with pytest.raises(PolicyError, match="malformed"):
        parse_duration(text, "--every")


@given(st.integers(min_value=0, max_value=10**8))
def test_format_duration_round_trips(seconds: int) -> None:
    d = timedelta(seconds=seconds)
    assert parse_duration(format_duration(d)) == d


def test_policy_rules() -> None:
    with pytest.raises(PolicyError, match="exclude"):
        RotationPolicy(every=timedelta(days=1), cron="0 3 * * *")
    with pytest.raises(PolicyError, match="--window needs --cron"):
        RotationPolicy(window=timedelta(hours=1))
    with pytest.raises(PolicyError, match="malformed --cron"):
        RotationPolicy(cron="61 * * * *")
    with pytest.raises(PolicyError, match="--max-uses"):
        RotationPolicy(max_uses=0)
    with pytest.raises(PolicyError, match="--every"):
        RotationPolicy(every=timedelta(0))


def test_a_grace_of_part_of_a_second_is_refused_not_rounded_to_zero() -> None:
    # The engine keeps a grace in whole seconds: 500ms used to become 0 and revoke PREVIOUS
    # at once.
    with pytest.raises(PolicyError, match="--grace must be whole seconds"):
        RotationPolicy(grace=parse_duration("500ms"))
    with pytest.raises(PolicyError, match="--grace must be whole seconds"):
        RotationPolicy(grace=parse_duration("1s500ms"))
    assert RotationPolicy(grace=parse_duration("2s")).grace == timedelta(seconds=2)
    # A row stored before the refusal loads with the grace the engine applied.
    assert RotationPolicy.from_json({"grace": 1.5}).grace == timedelta(seconds=1)
    assert RotationPolicy.from_json({"grace": 0}).grace == timedelta(0)


@pytest.mark.parametrize(
    "cron",
    [
        "@daily",
        "@hourly",
        "@midnight",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
        "@reboot",
        "0 0 3 * * 0",  # a seconds field
        "0 3 * *",
    ],
)
def test_cron_other_than_five_fields_is_a_policy_error_naming_the_option(cron: str) -> None:
    with pytest.raises(PolicyError, match=r"^malformed --cron .*five fields"):
        RotationPolicy(cron=cron)


def test_policy_json_round_trip() -> None:
    p = RotationPolicy(
        cron="0 3 * * 0", window=timedelta(hours=2), grace=timedelta(minutes=10), max_uses=100
    )
    assert RotationPolicy.from_json(p.to_json()) == p


def test_next_rotation_interval_and_cron() -> None:
    assert next_rotation_at(RotationPolicy(every=timedelta(days=30)), T0) == T0 + timedelta(days=30)
    sunday_3am = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    assert next_rotation_at(RotationPolicy(cron="0 3 * * 0"), T0) == sunday_3am
    assert next_rotation_at(RotationPolicy(), T0) is None
