"""The log redaction processor (rotator.telemetry.logs): nothing that could be a value
survives into a rendered log line, whatever key or nesting it arrives under."""

from __future__ import annotations

import io
import json
import logging
import string
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog  # noqa: F401  (imported at the first record otherwise: not in a deadline)
from hypothesis import given
from hypothesis import strategies as st

from rotator.domain.secret import Secret
from rotator.telemetry import logs
from rotator.telemetry.logs import REDACTED, redact

WORDS = ("value", "secret", "password", "token", "passphrase", "key")
B32 = string.ascii_lowercase + "234567"
URLSAFE = string.ascii_letters + string.digits + "-_"

tokens = st.builds(
    lambda i, s: f"rtr_{i}_{s}",
    st.text(B32, min_size=12, max_size=12),
    st.text(URLSAFE, min_size=43, max_size=43),
)
affixes = st.text(string.ascii_letters + "_.", max_size=6)
json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
secrets = st.text(string.ascii_letters + string.digits, min_size=16, max_size=40)


@contextmanager
def captured(level: str = "debug") -> Iterator[io.StringIO]:
    """Logging configured as the CLI does (JSON), into a buffer; undone after."""
    out = io.StringIO()
    logs.configure(level, "json", stream=out)
    try:
        yield out
    finally:
        logs.reset()


def nest(depth: int, key: str, leaf: Any) -> Any:
    """``leaf`` under ``key``, ``depth`` levels down dicts and lists."""
    node: Any = leaf
    for i in range(depth):
        node = {key: node} if i % 2 == 0 else [node]
    return node


@given(
    prefix=affixes,
    word=st.sampled_from(WORDS),
    upper=st.booleans(),
    suffix=affixes,
    value=json_values,
)
def test_an_entry_whose_key_names_a_value_is_redacted_whatever_it_holds(
    prefix: str, word: str, upper: bool, suffix: str, value: Any
) -> None:
    key = prefix + (word.upper() if upper else word) + suffix
    assert redact(None, "info", {"event": "e", key: value})[key] == REDACTED


@given(token=tokens, depth=st.integers(0, 4), where=st.sampled_from(["message", "extra"]))
def test_no_generated_token_survives_a_rendered_log_line(
    token: str, depth: int, where: str
) -> None:
    with captured() as out:
        log = logging.getLogger("rotator.test")
        if where == "message":
            log.warning("authenticated with %s today", token)
        else:
            log.warning("calling", extra={"detail": nest(depth, "headers", f"Bearer {token}")})
    line = out.getvalue()
    assert line.count("\n") == 1
    json.loads(line)  # one JSON object
    assert token not in line
    assert token[4:] not in line  # not even the part after the prefix
    assert REDACTED in line


@given(
    secret=secrets,
    key=st.sampled_from(["detail", "data", "changes", "result"]),
    depth=st.integers(0, 4),
)
def test_a_secret_object_is_redacted_under_any_key_at_any_depth(
    secret: str, key: str, depth: int
) -> None:
    with captured() as out:
        logging.getLogger("rotator.test").warning(
            "stored", extra={key: nest(depth, "item", Secret(secret))}
        )
    line = out.getvalue()
    assert secret not in line
    assert REDACTED in line


@given(secret=secrets)
def test_raw_bytes_are_redacted(secret: str) -> None:
    with captured() as out:
        logging.getLogger("rotator.test").warning("read", extra={"body": secret.encode()})
    assert secret not in out.getvalue()


@given(
    credential=st.from_regex(r"[a-z0-9][a-z0-9._/-]{0,30}", fullmatch=True),
    duration=st.floats(0, 1e6, allow_nan=False),
    count=st.integers(0, 10**9),
)
def test_an_entry_that_cannot_be_a_value_passes_unchanged(
    credential: str, duration: float, count: int
) -> None:
    entry = {
        "event": "rotation ended",
        "credential": credential,
        "tenant": "default",
        "result": "rotated",
        "duration_s": duration,
        "attempts": [count],
    }
    assert redact(None, "info", dict(entry)) == entry


def test_levels_below_the_chosen_one_are_dropped_and_others_libraries_debug_is_never_shown() -> (
    None
):
    with captured("info") as out:
        logging.getLogger("rotator.test").debug("not shown")
        logging.getLogger("rotator.test").info("shown")
        logging.getLogger("hpack.hpack").info("a third-party info line")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["event"], r["level"], r["logger"]) for r in lines] == [
        ("shown", "info", "rotator.test")
    ]


def test_reset_leaves_logging_as_it_found_it() -> None:
    root, ours = logging.getLogger(), logging.getLogger("rotator")
    before = (root.level, ours.level, list(root.handlers))
    with captured("debug"):
        assert ours.level == logging.DEBUG
    assert (root.level, ours.level, list(root.handlers)) == before


# Finding 6: what reached a log line in clear before the pre-format step and the text rules.

URL_PASSWORD_CHARS = string.ascii_letters + string.digits + "-._~%!$*+@"
schemes = st.sampled_from(["postgresql", "postgresql+psycopg", "redis", "https", "amqp", "s3"])
users = st.text(string.ascii_lowercase + string.digits + "._-", max_size=10)
# Long enough, and from letters and digits, that it appears in a line only if it leaked.
url_passwords = st.builds(
    lambda head, tail: head + tail,
    secrets,
    st.text(URL_PASSWORD_CHARS, max_size=10),
)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z]{2,5})?(:[0-9]{2,5})?", fullmatch=True)
secret_keys = st.sampled_from(
    ["password", "PGPASSWORD", "db_password", "client_secret", "secret", "passphrase", "passwd"]
)


def one_line(out: io.StringIO) -> str:
    line = out.getvalue()
    assert line.count("\n") == 1
    json.loads(line)
    return line


@given(secret=secrets, shape=st.sampled_from(["bytes", "secret", "dict", "tuple", "list"]))
def test_positional_arguments_are_scrubbed_before_the_message_is_formatted(
    secret: str, shape: str
) -> None:
    arg: Any = {
        "bytes": secret.encode(),
        "secret": Secret(secret),
        "dict": {"password": secret, "user": "ops"},
        "tuple": (b"x" + secret.encode(), {"api_key": secret}),
        "list": [Secret(secret), {"nested": {"token": secret}}],
    }[shape]
    with captured() as out:
        logging.getLogger("rotator.test").warning("positional %s and %d", arg, 7)
    line = one_line(out)
    assert secret not in line
    assert REDACTED in line
    assert " and 7" in line  # the other arguments are formatted as they were


@given(secret=secrets)
def test_a_mapping_argument_of_named_formatting_is_scrubbed_entry_by_entry(secret: str) -> None:
    with captured() as out:
        logging.getLogger("rotator.test").warning(
            "user %(user)s with %(password)s", {"user": "ops", "password": secret}
        )
    line = one_line(out)
    assert secret not in line
    assert "user ops with [redacted]" in line


@given(
    scheme=schemes,
    user=users,
    password=url_passwords,
    host=hosts,
    where=st.sampled_from(["argument", "message", "extra", "exception"]),
)
def test_a_url_password_is_redacted_wherever_the_url_appears(
    scheme: str, user: str, password: str, host: str, where: str
) -> None:
    url = f"{scheme}://{user}:{password}@{host}/db"
    log = logging.getLogger("rotator.test")
    with captured() as out:
        if where == "argument":
            log.warning("connecting to %s", url)
        elif where == "message":
            log.warning(f"connecting to {url} now")
        elif where == "extra":
            log.warning("connecting", extra={"dsn": url})
        else:
            try:
                raise ConnectionError(f"cannot reach {url}: refused")
            except ConnectionError:
                log.exception("connect failed")
    line = one_line(out)
    assert password not in line
    assert password[:16] not in line  # no part of it either
    assert f"{scheme}://{user}:{REDACTED}@{host}/db" in line


@given(
    key=secret_keys,
    value=secrets,
    quoted=st.sampled_from(["", "'", '"']),
    where=st.sampled_from(["argument", "extra", "exception"]),
)
def test_a_key_value_pair_whose_key_names_a_secret_keeps_its_key_and_loses_its_value(
    key: str, value: str, quoted: str, where: str
) -> None:
    # A quoted value may hold spaces (libpq conninfo): all of it goes.
    text = f"host=db {key}={quoted}{value}{' ' + value[::-1] if quoted else ''}{quoted} port=5432"
    log = logging.getLogger("rotator.test")
    with captured() as out:
        if where == "argument":
            log.warning("conninfo %s", text)
        elif where == "extra":
            log.warning("conninfo", extra={"conn": text})
        else:
            try:
                raise RuntimeError(f"connection failed for {text}")
            except RuntimeError:
                log.exception("connect failed")
    line = one_line(out)
    assert value not in line
    assert value[::-1] not in line
    assert f"host=db {key}={REDACTED} port=5432" in line


@given(secret=secrets, token=tokens)
def test_a_rendered_exception_gets_the_text_rules(secret: str, token: str) -> None:
    with captured() as out:
        try:
            raise ValueError(f"auth with {token} password={secret}")
        except ValueError:
            logging.getLogger("rotator.test").exception("failed")
    line = one_line(out)
    record = json.loads(line)
    assert "ValueError" in record["exception"]  # the traceback is still there
    assert secret not in line
    assert token not in line


@given(
    text=st.text(
        st.characters(blacklist_characters="=:", blacklist_categories=("Cs",)), max_size=60
    ).filter(lambda t: "rtr_" not in t)
)
def test_text_that_matches_no_rule_passes_unchanged(text: str) -> None:
    # Documented limit: a value in free text that matches no rule is not caught.
    assert logs.scrub_text(text) == text
    assert logs.scrub_text(f"see https://example.com/a?b=1 and user=ops {text}") == (
        f"see https://example.com/a?b=1 and user=ops {text}"
    )


@given(secret=secrets)
def test_a_message_another_handler_formatted_first_is_not_carried_into_the_line(
    secret: str,
) -> None:
    # A plain handler nearer the logger formats the raw record first, caching the raw
    # message (and exception text) on it; that rendering must not come along as a field.
    log = logging.getLogger("rotator.test.other")
    other = logging.StreamHandler(io.StringIO())
    log.addHandler(other)
    try:
        with captured() as out:
            try:
                raise ValueError(f"password={secret}")
            except ValueError:
                log.exception("read %s", secret.encode())
    finally:
        log.removeHandler(other)
    line = one_line(out)
    assert secret not in line
    assert "message" not in json.loads(line)
