"""Every parser of user text, fuzzed in-process: a typed bad-input error or a valid result.

Each parser of the public contract (durations, blackout windows, zones, cron, risk rules,
rates, halt rules, names, ``KEY=VALUE`` pairs, whole policies, connector settings, the
environment's settings) gets hostile text: arbitrary Unicode, near-valid text with a hostile
piece spliced in (quotes, NUL, newlines, ANSI escapes, lone surrogates, Unicode digits and
superscripts, huge numbers, huge strings). The property is the CLI's contract one level
down: the parser returns a valid result or raises InvalidInput/ConfigError (the CLI's exit 2,
one line) — never another exception, which the CLI would report as an internal error — and
where a renderer exists, parsing what it renders gives the value back.

Examples kept with ``@example`` are bugs this fuzzing found (fixed in src/).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from tests.support.fuzz import fuzz_settings, hostile

from rotator.api.limits import MAX_BODY_ENV, RATE_ENV, Limits
from rotator.api.limits import parse_rate as parse_api_rate
from rotator.config import Settings
from rotator.connectors.base import parse_config
from rotator.connectors.http import ALLOW_HOSTS_ENV, host_refusal
from rotator.connectors.registry import get_connector
from rotator.domain import names
from rotator.domain.policy import (
    MAX_DURATION,
    Blackout,
    RotationPolicy,
    format_duration,
    parse_duration,
    zone,
)
from rotator.errors import ConfigError, InvalidInput
from rotator.policy.notify import parse_event_types
from rotator.policy.rate import Rate, parse_rate
from rotator.policy.risk import (
    RiskAction,
    Severity,
    format_risk_rules,
    parse_risk_rules,
    parse_severity,
)
from rotator.policy.rollout import HaltRule, parse_halt, parse_stagger
from rotator.service.events import EventInput
from rotator.service.forward_targets import check_webhook_url, parse_syslog_target
from rotator.service.inputs import PolicyInput
from rotator.service.jobs import check_job_id
from rotator.service.reports import check_format, parse_since
from rotator.service.rotation import Selection, parse_lease

BAD_INPUT = (InvalidInput, ConfigError)


def parses_or_refuses(parse: Any, text: Any, *args: Any, **kwargs: Any) -> Any:
    """``parse(text)``'s result, or None when it refused ``text`` as bad input; any other
    exception fails the test."""
    try:
        return parse(text, *args, **kwargs)
    except BAD_INPUT as exc:
        message = str(exc)
        assert message, "a refusal names the problem"
        assert "\n" not in message.replace(repr(text), ""), "one line (quotes aside)"
        return None


DURATION = r"\s*(\d{1,6}\s*(ms|s|m|h|d|w)){1,3}\s*"


# -------------------------------------------------------------------------------- durations


@fuzz_settings()
@given(hostile(DURATION))
@example("\u0661\u0662d")  # Unicode digits: int() reads them, the result must still be in range
@example("9" * 5000 + "d")  # past int()'s digit limit
def test_a_duration_parses_into_range_or_is_refused(text: str) -> None:
    got = parses_or_refuses(parse_duration, text, "--every")
    if got is not None:
        assert timedelta(0) <= got <= MAX_DURATION


@fuzz_settings()
@given(st.integers(0, int(MAX_DURATION.total_seconds())))
def test_a_rendered_duration_parses_back_to_itself(seconds: int) -> None:
    d = timedelta(seconds=seconds)
    assert parse_duration(format_duration(d)) == d


@fuzz_settings()
@given(hostile(DURATION))
def test_stagger_and_since_are_positive_durations_or_refused(text: str) -> None:
    for parse in (parse_stagger, parse_since):
        got = parses_or_refuses(parse, text)
        assert got is None or got > timedelta(0)


# ---------------------------------------------------------------- blackouts, zones, cron

BLACKOUT = (
    r"\s*(Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]{0,3} \d{1,2}:\d{2}\s*-"
    r"\s*(Mon|Fri)[a-z]* \d{1,2}:\d{2}\s*"
)


@fuzz_settings()
@given(hostile(BLACKOUT))
def test_a_blackout_parses_and_renders_back_or_is_refused(text: str) -> None:
    got = parses_or_refuses(Blackout.parse, text)
    if got is not None:
        assert 0 <= got.start < 7 * 1440
        assert 0 <= got.end < 7 * 1440
        assert Blackout.parse(str(got)) == got


@fuzz_settings()
@given(st.integers(0, 7 * 1440 - 1), st.integers(0, 7 * 1440 - 1))
def test_every_blackout_renders_to_text_that_parses_back(start: int, end: int) -> None:
    if start != end:
        assert Blackout.parse(str(Blackout(start, end))) == Blackout(start, end)


@fuzz_settings()
@given(hostile(r"(Europe|America|Asia|Etc)/[A-Z][a-z]{2,8}", r"UTC|GMT[+-]\d{1,2}"))
@example("../../../../etc/passwd")
@example("/etc/localtime")
def test_a_zone_is_found_or_refused(text: str) -> None:
    parses_or_refuses(zone, text)


CRON = r"(\*|\d{1,2}|\*/\d{1,2}|\d{1,2}-\d{1,2}|\d,\d)( (\*|\d{1,2}|\*/\d|[a-z]{3}|L|\?|#\d)){4}"


@fuzz_settings()
@given(hostile(CRON))
@example("0 0 31 2 *")  # valid fields, never fires
@example("0 0 * * 8")
def test_a_cron_policy_is_valid_or_refused(text: str) -> None:
    policy = parses_or_refuses(lambda t: RotationPolicy(cron=t), text)
    if policy is not None:
        assert RotationPolicy.from_json(policy.to_json()) == policy


# ---------------------------------------------------------------------- risk, rate, halt

RISK = (
    r"(low|medium|high|critical|LOW)\s*=\s*(rotate|emergency|notify)"
    r"(,(high|critical)=(rotate|notify)){0,2}"
)


@fuzz_settings()
@given(hostile(RISK))
def test_risk_rules_parse_and_render_back_or_are_refused(text: str) -> None:
    got = parses_or_refuses(parse_risk_rules, text)
    if got is not None:
        assert parse_risk_rules(format_risk_rules(got)) == got


@fuzz_settings()
@given(
    st.dictionaries(st.sampled_from(list(Severity)), st.sampled_from(list(RiskAction)), min_size=1)
)
def test_every_rule_set_renders_to_text_that_parses_back(rules: dict[Severity, RiskAction]) -> None:
    assert parse_risk_rules(format_risk_rules(rules)) == rules


@fuzz_settings()
@given(hostile(r"(low|medium|high|critical)", r"[a-z]{3,8}(,[a-z]{3,10}){0,3}"))
def test_severities_and_event_types_are_known_or_refused(text: str) -> None:
    parses_or_refuses(parse_severity, text)
    parses_or_refuses(parse_event_types, text)


RATE = r"\s*\d{1,9}\s*/\s*\d{0,6}\s*[smh]\s*"


@fuzz_settings()
@given(hostile(RATE))
@example("1/999999h")
@example("1/00h")  # a zero multiple spelt 00 divided by zero
def test_a_max_rate_parses_and_renders_back_or_is_refused(text: str) -> None:
    got = parses_or_refuses(parse_rate, text)
    if got is not None:
        assert got.count >= 1
        assert got.per_s > 0
        assert parse_rate(str(got)) == got


@fuzz_settings()
@given(st.integers(1, 10**6), st.integers(1, 999_999), st.sampled_from([1.0, 60.0, 3600.0]))
def test_every_accepted_rate_renders_to_text_that_parses_back(
    count: int, n: int, unit: float
) -> None:
    rate = Rate(count, n * unit)
    if rate.per_minute <= 1_000_000:
        assert parse_rate(str(rate)) == rate


HALT = r"\s*\d{1,3}\s*%\s*(/\s*\d{1,6}\s*)?"


@fuzz_settings()
@given(hostile(HALT))
def test_a_halt_rule_parses_and_renders_back_or_is_refused(text: str) -> None:
    got = parses_or_refuses(parse_halt, text)
    if got is not None:
        assert isinstance(got, HaltRule)
        assert 0 <= got.pct <= 100
        assert 1 <= got.window <= 10_000
        assert parse_halt(got.describe()) == got


# ------------------------------------------------------------------ names and KEY=VALUE


@fuzz_settings()
@given(hostile(r"[a-z0-9][a-z0-9._/-]{0,30}", r"[a-z0-9][a-z0-9._@-]{0,20}"))
@example("a" * 201)
@example("app/db\n")  # `$` would match before a final newline; fullmatch must not
def test_names_are_valid_exactly_when_they_match_the_contract(text: str) -> None:
    checks = [
        (names.check_credential_name, names.CREDENTIAL_NAME),
        (names.check_tenant_name, names.TENANT_NAME),
        (names.check_principal_name, names.PRINCIPAL_NAME),
        (names.check_scope, names.SCOPE_GLOB),
    ]
    for check, pattern in checks:
        got = parses_or_refuses(check, text)
        assert (got is not None) == bool(pattern.fullmatch(text))
        if got is not None:
            assert got == text
            assert text.isascii()
            assert "\n" not in text


PAIR = r"[a-z][a-z0-9_.-]{0,10}=[^,]{0,12}"


@fuzz_settings()
@given(st.lists(hostile(PAIR), max_size=4), st.sampled_from(["--set", "--tag"]))
def test_key_value_pairs_parse_or_are_refused(items: list[str], what: str) -> None:
    key_re = names.TAG_KEY if what == "--tag" else names.CONFIG_KEY
    got = parses_or_refuses(names.parse_pairs, items, what, key_re)
    if got is not None:
        assert len(got) == len(items)
        for key, value in got.items():
            assert key_re.fullmatch(key)
            assert "\x00" not in value, "PostgreSQL stores no NUL"
            assert f"{key}={value}" in [i.strip() for i in items] or any(
                i.partition("=")[0].strip() == key for i in items
            )


# ------------------------------------------------------------------------ whole policies

maybe = lambda s: st.none() | s  # noqa: E731


@fuzz_settings(weight=2)
@given(
    every=maybe(hostile(DURATION)),
    cron=maybe(hostile(CRON)),
    window=maybe(hostile(DURATION)),
    grace=maybe(hostile(DURATION)),
    max_uses=maybe(st.integers(-(2**64), 2**64)),
    jitter=maybe(hostile(DURATION)),
    blackout=maybe(st.lists(hostile(BLACKOUT), max_size=2).map(tuple)),
    tz=maybe(hostile(r"Europe/Berlin|UTC|America/New_York")),
    max_age=maybe(hostile(DURATION)),
    on_risk=maybe(hostile(RISK)),
    risk_cooldown=maybe(hostile(DURATION)),
)
def test_policy_options_make_a_policy_that_round_trips_or_are_refused(**options: Any) -> None:
    """What ``credential add/update`` and ``policy set`` do with their options."""
    policy_input = PolicyInput(**options)
    partial = parses_or_refuses(lambda _: policy_input.partial(), None)
    if partial is None:
        return
    policy = parses_or_refuses(policy_input.apply, None)
    if policy is not None:
        assert RotationPolicy.from_json(policy.to_json()) == policy
        assert policy.describe()


# ----------------------------------------------------------------- connector settings

SETTING_KEYS = {
    "local": ["generator", "length", "classes", "exclude", "prefix", "bits"],
    "postgres": [
        "host", "port", "dbname", "role", "mode", "clone", "admin", "admin_user", "sslmode",
        "sslrootcert", "require_auth", "connect_timeout_s", "password_length",
    ],
    "redis": ["host", "port", "username", "admin", "admin_user", "db", "timeout_s", "tls"],
    "http": [
        "base_url", "set_path", "test_path", "revoke_path", "set_body", "set_headers",
        "test_headers", "set_method", "revoke_expect", "allow_insecure_http", "timeout_s",
        "auth", "hmac_key", "prefix", "length", "verify_path",
    ],
    "jwks": ["alg", "publish", "publish_mode", "rsa_bits", "issuer", "audience"],
    "certificate": ["role", "common_name", "ca", "sans", "key_type", "validity", "publish"],
    "mariadb": [
        "host", "port", "user", "host_part", "mode", "clone", "admin", "admin_user",
        "ssl_mode", "ssl_ca", "connect_timeout_s", "password_length",
    ],
}  # fmt: skip
SETTING_VALUES = hostile(
    r"app|postgres|127\.0\.0\.1|5432|https://api\.example\.com",
    r"/keys/\$value|\{\"k\": \"\$value\"\}",
    r"\d{1,5}|true|false|[a-z_]{1,12}",
)


@fuzz_settings(weight=2)
@given(
    st.sampled_from(sorted(SETTING_KEYS)).flatmap(
        lambda kind: st.tuples(
            st.just(kind),
            st.dictionaries(
                st.sampled_from(SETTING_KEYS[kind])
                | st.from_regex(names.CONFIG_KEY, fullmatch=True),
                SETTING_VALUES,
                max_size=6,
            ),
        )
    )
)
@example(("http", {"base_url": "https://x.example", "set_path": "/k/$value", "test_path": "/w",
               "revoke_path": "/k/$value", "timeout_s": "nan"}))  # fmt: skip
def test_connector_settings_validate_or_are_refused_in_one_line(
    kind_settings: tuple[str, dict[str, str]],
) -> None:
    kind, settings = kind_settings
    parses_or_refuses(parse_config, get_connector(kind), settings)


# ------------------------------------------------------------------------ the environment


@fuzz_settings()
@given(hostile(r"\d{1,9}"))
@example("\u00b2")  # str.isdigit() says yes, int() says no
@example("9" * 5000)  # past int()'s digit limit
def test_api_max_body_is_a_byte_count_or_refused(text: str) -> None:
    got = parses_or_refuses(Limits.from_env, {MAX_BODY_ENV: text})
    if got is not None:
        assert got.max_body >= 1


@fuzz_settings()
@given(hostile(r"\d{1,4}(\.\d{1,2})?/[smh](:\d{1,4})?"))
def test_api_rate_is_a_rate_or_refused(text: str) -> None:
    got = parses_or_refuses(parse_api_rate, text)
    if got is not None:
        per_s, burst = got
        assert per_s > 0
        assert burst >= 1
    parses_or_refuses(Limits.from_env, {RATE_ENV: text})


@fuzz_settings()
@given(hostile(r"\d{1,5}(\.\d{1,3})?", r"[+-]?\d+e\d+"))
def test_lease_scrypt_and_checkpoint_settings_are_numbers_in_range_or_refused(
    text: str,
) -> None:
    lease = parses_or_refuses(parse_lease, text)
    assert lease is None or 0 < lease <= 86400
    home = Path("/nonexistent-rotator-fuzz-home")
    for var in ("ROTATOR_SCRYPT_N", "ROTATOR_AUDIT_CHECKPOINT_S", "ROTATOR_PASSPHRASE"):
        parses_or_refuses(Settings.from_env, {"ROTATOR_HOME": str(home), var: text})


URL = r"(https?|tcp|udp|ftp)://([a-z]{1,8}\.example|127\.0\.0\.1|\[::1\])(:\d{1,6})?(/[a-z]{0,5})?"


@fuzz_settings()
@given(hostile(URL))
@example("https://u:p@x.example/")  # a password in a URL is refused without being quoted
def test_webhook_and_syslog_urls_are_checked_or_refused(text: str) -> None:
    parses_or_refuses(check_webhook_url, text)
    parses_or_refuses(parse_syslog_target, text)


@fuzz_settings()
@given(
    hostile(
        r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", r"json|csv|html"
    )
)
def test_job_ids_and_report_formats_are_checked_or_refused(text: str) -> None:
    parses_or_refuses(check_job_id, text)
    parses_or_refuses(check_format, text)


# ------------------------------------------------------------------- the http allow-list

ALLOW = "api.example.com, *.example.net, 10.0.0.0/8, ::1, 192.0.2.7"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example.com/v1", True),
        ("https://API.Example.com./v1", True),  # case and a final dot are one name
        ("https://a.b.example.net", True),
        ("https://example.net", False),  # *.domain: names under it, not the name itself
        ("https://evilexample.net", False),
        ("https://api.example.com.evil.org", False),
        ("https://10.1.2.3:8443", True),
        ("https://11.0.0.1", False),
        ("https://[::1]:9000", True),
        ("https://[::2]", False),
        ("https://192.0.2.7", True),
        ("https://0xc0.0.2.7", False),  # names are compared as written, never resolved
        ("https://api.example.com@evil.org", False),
        # Only plain names match: text that a resolver or proxy may read as another host
        # does not pass "*.domain" by its suffix.
        ("https://evil\\.example.net", False),
        ("https://x%2f.example.net", False),
        ("https://a b.example.net", False),
        ("https://b\u00fccher.example.net", True),  # IDNA-encoded: xn--bcher-kva
    ],
)
def test_the_http_allow_list_admits_exactly_its_hosts(url: str, allowed: bool) -> None:
    refusal = host_refusal(url, {ALLOW_HOSTS_ENV: ALLOW})
    assert (refusal is None) is allowed, refusal
    if refusal is not None:
        assert ALLOW_HOSTS_ENV in refusal
    assert host_refusal(url, {}) is None, "no list: every host"


@fuzz_settings()
@given(hostile(URL), hostile(r"[a-z]{1,6}\.example|\*\.[a-z]{1,5}|10\.0\.0\.0/\d{1,2}|::1"))
@example("https://x.example", "10.0.0.0/99")  # a malformed entry refuses, it does not raise
def test_the_http_allow_list_answers_for_any_url_and_list(url: str, allow: str) -> None:
    refusal = host_refusal(url, {ALLOW_HOSTS_ENV: allow})
    assert refusal is None or (ALLOW_HOSTS_ENV in refusal and "\n" not in refusal)


@fuzz_settings()
@given(st.dictionaries(hostile(r"[a-z]{1,6}"), hostile(r"[a-z0-9]{0,6}"), max_size=3))
@example({"env": "a\x00b"})  # PostgreSQL stores no NUL: was a 500 on POST /v1/rotations
@example({"Env": "x"})
def test_a_tag_selector_is_checked_as_tag_options_are(tags: dict[str, str]) -> None:
    """``POST /v1/rotations`` and ``/v1/events`` select by tags without ``--tag``'s parser."""
    for check in (Selection(tags=tags).check, EventInput("leak", "low", None, tags).check):
        accepted = parses_or_refuses(lambda _, check=check: check() or True, None)
        if accepted:
            assert tags
            assert all(names.TAG_KEY.fullmatch(k) for k in tags)
            assert not any("\x00" in v for v in tags.values())
