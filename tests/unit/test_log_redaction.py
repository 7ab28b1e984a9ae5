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
