"""Hostile argument lists for the commands that write, through the CLI's own entry point.

Hypothesis draws argument lists for ``credential add``, ``credential update``, ``policy set``,
``rotate``, ``event report``, ``principal add`` and ``token create``: each option present or
not, its value valid or hostile (quotes, NUL, newlines, ANSI escapes, huge strings, lone
surrogates as ``surrogateescape`` makes of bytes that are not UTF-8), a stray extra argument,
and a value on standard input that holds a secret marker. Each list runs through
``rotator.cli.main.main`` in this process (a CLI process costs a second of imports), with
standard streams that encode as a real process's do (stdout strict UTF-8, stderr with
backslash escapes). Every outcome must be:

- an exit code the command may give (0, or 2 for bad input; 1 only where an operation can
  fail), never the last-resort "internal error" nor a traceback;
- on exit 2: nothing on stdout, exactly one ``rotator: error:`` line on stderr, and nothing
  stored changed (every row of every table, the audit log among them, and every file in
  ROTATOR_HOME);
- never the marker, on stdout or stderr.

Runs against one store per backend (SQLite and PostgreSQL) shared by the module's examples.
A few real subprocess runs check that arguments which are not UTF-8 reach the CLI as a real
shell passes them and are refused in the same way.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy.pool import NullPool
from tests.integration.test_cli_bad_input import (
    CLI,
    TIMEOUT_S,
    Run,
    base_env,
    new_db_url,
    sa_url,
)
from tests.support.fuzz import fuzz_settings, hostile, run_in_process

__all__ = ["new_db_url"]  # a fixture, imported for pytest

SEEDED = "app/db"
PRINCIPAL = "ops"
MARKER = "marker-" + uuid.uuid4().hex  # inside every value given on stdin; never printed


# ------------------------------------------------------------------------- the store


@dataclass
class FuzzStore:
    home: Path
    env: dict[str, str]
    engine: sa.Engine
    metadata: sa.MetaData

    def snapshot(self) -> tuple[Any, Any]:
        """Every row of every table (sorted reprs) and every file in ROTATOR_HOME."""
        tables: dict[str, list[tuple[str, ...]]] = {}
        with self.engine.connect() as conn:
            for name, table in sorted(self.metadata.tables.items()):
                rows = conn.execute(sa.select(table)).all()
                tables[name] = sorted(tuple(repr(v) for v in row) for row in rows)
        files = {
            str(p.relative_to(self.home)): (
                p.stat().st_mode,
                hashlib.sha256(p.read_bytes()).digest(),
            )
            for p in sorted(self.home.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))
        }
        return tables, files


@pytest.fixture(scope="module")
def fuzz_store(
    new_db_url: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzStore]:
    """An initialized store with one generated credential and one principal."""
    url = new_db_url()
    home = tmp_path_factory.mktemp("fuzz-home")
    env = {**base_env(), "ROTATOR_HOME": str(home), "ROTATOR_DB": url}
    for argv in (
        ["init"],
        ["credential", "add", SEEDED, "--connector", "local", "--generate"],
        ["principal", "add", PRINCIPAL, "--role", "operator"],
    ):
        result = run_in_process(argv, env, b"")
        assert result.code == 0, result.describe()
    engine = sa.create_engine(sa_url(url), poolclass=NullPool)
    metadata = sa.MetaData()
    metadata.reflect(engine)
    yield FuzzStore(home, env, engine, metadata)
    engine.dispose()


def check(store: FuzzStore, argv: Sequence[str], stdin: bytes, codes: set[int]) -> Run:
    """Run ``argv`` and check the contract (module docstring); the run, for more checks."""
    before = store.snapshot()
    result = run_in_process(argv, store.env, stdin)
    shown = result.out + result.err
    assert "Traceback" not in shown, result.describe()
    assert "internal error" not in result.err, result.describe()
    assert MARKER not in shown, "the value on stdin was printed\n" + result.describe()
    assert result.code in codes, result.describe()
    if result.code == 2:
        assert result.out == "", result.describe()
        lines = result.err.splitlines()
        assert len(lines) == 1, "bad input: exactly one stderr line\n" + result.describe()
        assert lines[0].startswith("rotator: error: "), result.describe()
        assert store.snapshot() == before, "bad input changed the store\n" + result.describe()
    return result


# ---------------------------------------------------------------------- argument lists

DURATION = r"\d{1,4}(s|m|h|d)"
NAME = r"fz/[a-z0-9]{1,8}"
PAIR = r"[a-z]{1,6}=[a-z0-9]{0,6}"
POLICY_OPTIONS = {
    "--every": hostile(DURATION),
    "--cron": hostile(r"\d{1,2} \d \* \* [0-6]"),
    "--window": hostile(DURATION),
    "--grace": hostile(DURATION),
    "--max-uses": hostile(r"\d{1,4}"),
    "--jitter": hostile(DURATION),
    "--blackout": hostile(r"(Fri|Sat) 1\d:00-Mon 0\d:00"),
    "--tz": hostile(r"UTC|Europe/Berlin"),
    "--max-age": hostile(DURATION),
    "--on-risk": hostile(r"(high|critical)=(rotate|notify)"),
    "--risk-cooldown": hostile(DURATION),
}


@st.composite
def options(
    draw: st.DrawFn, table: Mapping[str, st.SearchStrategy[str]], most: int = 3
) -> list[str]:
    """Up to ``most`` options of ``table``, each with a drawn value."""
    chosen = draw(st.lists(st.sampled_from(sorted(table)), max_size=most, unique=True))
    out: list[str] = []
    for flag in chosen:
        out += [flag, draw(table[flag])]
    return out


def name_or(valid: st.SearchStrategy[str], *patterns: str) -> st.SearchStrategy[str]:
    return st.one_of(valid, hostile(*patterns))


stray = st.lists(hostile(r"[a-z]{1,5}", r"--[a-z-]{1,8}"), max_size=1)

# A value on stdin: the marker with hostile bytes around it, sometimes not UTF-8, empty,
# or over the 64 KiB limit.
stdin_values = st.one_of(
    st.binary(max_size=40).map(lambda b: b + MARKER.encode() + b"\n"),
    st.just(b"\xff\xfe" + MARKER.encode()),
    st.just(b""),
    st.just(MARKER.encode() * 2000),
)


@st.composite
def credential_add(draw: st.DrawFn) -> list[str]:
    argv = ["credential", "add", draw(name_or(st.from_regex(NAME, fullmatch=True), NAME))]
    argv += ["-c", draw(st.one_of(st.just("local"), hostile(r"local|postgres|http")))]
    table = {
        **POLICY_OPTIONS,
        "--set": hostile(r"(length|prefix|generator)=[a-z0-9]{0,4}"),
        "--tag": hostile(PAIR),
        "--sink": hostile(r"file:path=/tmp/[a-z]{1,5},format=dotenv"),
    }
    argv += draw(options(table))
    argv += draw(
        st.sampled_from([["--generate"], ["--value-stdin"], [], ["--generate", "--value-stdin"]])
    )
    return argv + draw(stray)


@st.composite
def credential_update(draw: st.DrawFn) -> list[str]:
    argv = ["credential", "update", draw(name_or(st.just(SEEDED), NAME))]
    table = {**POLICY_OPTIONS, "--tag": hostile(PAIR), "-c": hostile("local")}
    argv += draw(options(table))
    argv += draw(st.sampled_from([["--generate"], ["--value-stdin"], []]))
    return argv + draw(stray)


@st.composite
def policy_set(draw: st.DrawFn) -> list[str]:
    argv = ["policy", "set"]
    argv += draw(
        st.sampled_from(["--tag", "--tenant"]).flatmap(
            lambda f: hostile(PAIR if f == "--tag" else "default").map(lambda v: [f, v])
        )
    )
    argv += draw(options(POLICY_OPTIONS))
    return argv + draw(stray)


@st.composite
def rotate(draw: st.DrawFn) -> list[str]:
    argv = ["rotate", *draw(st.lists(name_or(st.just(SEEDED), NAME), max_size=2))]
    table = {
        "--tag": hostile(PAIR),
        "--concurrency": hostile(r"\d{1,3}"),
        "--per-target": hostile(r"\d{1,3}"),
        "--group": hostile(r"[a-z]{1,6}"),
    }
    argv += draw(options(table, most=2))
    if draw(st.booleans()):
        # A staggered rollout is only created (--detach): a worker would run it for days.
        stagger = {
            "--stagger": hostile(DURATION),
            "--max-rate": hostile(r"\d{1,3}/\d{0,2}[smh]"),
            "--halt-at": hostile(r"\d{1,3}%(/\d{1,4})?"),
        }
        argv += [*draw(options(stagger)), "--detach"]
    argv += draw(st.sampled_from([[], ["--dry-run"], ["--all"], ["--json"]]))
    return argv + draw(stray)


@st.composite
def event_report(draw: st.DrawFn) -> list[str]:
    argv = ["event", "report", "--kind", draw(hostile(r"leak\.[a-z]{1,6}"))]
    argv += ["--severity", draw(hostile(r"low|medium"))]
    table = {
        "--credential": name_or(st.just(SEEDED), NAME),
        "--tag": hostile(PAIR),
        "--detail": hostile(r"[a-z ]{0,20}"),
    }
    return argv + draw(options(table, most=2)) + draw(stray)


@st.composite
def principal_add(draw: st.DrawFn) -> list[str]:
    argv = ["principal", "add", draw(hostile(r"[a-z][a-z0-9.@-]{0,10}"))]
    argv += ["--role", draw(hostile(r"reader|auditor|app"))]
    table = {
        "--tenant": hostile("default|[a-z]{1,6}"),
        "--scope": hostile(r"[a-z/*]{1,8}"),
        "--kind": hostile("person|service"),
    }
    return argv + draw(options(table, most=2)) + draw(stray)


@st.composite
def token_create(draw: st.DrawFn) -> list[str]:
    argv = ["token", "create", draw(name_or(st.just(PRINCIPAL), r"[a-z]{1,8}"))]
    argv += draw(options({"--expires": hostile(DURATION)}))
    return argv + draw(stray)


COMMANDS: dict[str, tuple[Callable[[], st.SearchStrategy[list[str]]], set[int]]] = {
    "credential-add": (credential_add, {0, 2}),
    "credential-update": (credential_update, {0, 2}),
    "policy-set": (policy_set, {0, 2}),
    # rotate and event report start rotations: a rotation may fail (exit 1) without the
    # input being bad.
    "rotate": (rotate, {0, 1, 2}),
    "event-report": (event_report, {0, 1, 2}),
    "principal-add": (principal_add, {0, 2}),
    "token-create": (token_create, {0, 2}),
}


@fuzz_settings(weight=0.5)
@given(
    case=st.sampled_from(sorted(COMMANDS)).flatmap(
        lambda name: st.tuples(COMMANDS[name][0](), st.just(COMMANDS[name][1]))
    ),
    stdin=stdin_values,
)
@example(
    case=(["credential", "add", "fz/x", "-c", "local", "--value-stdin"], {0, 2}),
    stdin=b"\xff" + MARKER.encode(),
)
# NUL in text that reaches the store: PostgreSQL refuses it in text and JSON (SQLite takes it).
@example(
    case=(
        ["credential", "add", "fz/nul", "-c", "local", "--generate", "--tag", "env=a\x00b"],
        {0, 2},
    ),
    stdin=b"",
)
@example(case=(["credential", "update", SEEDED, "--set", "length=1\x00"], {0, 2}), stdin=b"")
@example(case=(["rotate", "--tag", "env=a\x00b"], {0, 1, 2}), stdin=b"")
# Bytes that are not UTF-8 (as the command line decodes them: lone surrogates) in a tag value.
@example(case=(["rotate", "--tag", "env=a\udcff"], {2}), stdin=b"")
@example(
    case=(
        [
            "event",
            "report",
            "--kind",
            "leak",
            "--severity",
            "low",
            "--credential",
            SEEDED,
            "--detail",
            "a\x00b",
        ],
        {0, 1, 2},
    ),
    stdin=b"",
)
def test_hostile_arguments_get_exit_2_with_one_line_and_change_nothing(
    fuzz_store: FuzzStore, case: tuple[list[str], set[int]], stdin: bytes
) -> None:
    argv, codes = case
    check(fuzz_store, argv, stdin, codes)


NOT_UTF8_TAG = "env=a\udcff"  # the byte 0xff after surrogateescape


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["rotate", "--tag", NOT_UTF8_TAG], id="rotate"),
        pytest.param(
            ["credential", "add", "fz/t", "-c", "local", "--generate", "--tag", NOT_UTF8_TAG],
            id="credential-add",
        ),
        pytest.param(
            ["event", "report", "--kind", "leak", "--severity", "low", "--tag", NOT_UTF8_TAG],
            id="event-report",
        ),
        pytest.param(["credential", "list", "--tag", NOT_UTF8_TAG], id="credential-list"),
    ],
)
def test_a_tag_value_that_is_not_utf8_is_bad_input_in_one_line_that_does_not_echo_it(
    fuzz_store: FuzzStore, argv: list[str]
) -> None:
    result = check(fuzz_store, argv, b"", {2})
    assert "not valid UTF-8" in result.err, result.describe()
    assert "\udcff" not in result.err, result.describe()
    assert "\\udcff" not in result.err, result.describe()  # nor its repr


# ------------------------------------------------------------------- a real process


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(
            [b"credential", b"add", b"fz/\xff\xfe", b"-c", b"local", b"--every", b"\x1b[31m5m"],
            id="name",
        ),
    ],
)
def test_arguments_that_are_not_utf8_are_refused_in_one_line_by_the_real_command(
    fuzz_store: FuzzStore, argv: list[bytes]
) -> None:
    before = fuzz_store.snapshot()
    proc = subprocess.run(
        [os.fsencode(CLI), *argv],
        env={os.fsencode(k): os.fsencode(v) for k, v in fuzz_store.env.items()},
        input=MARKER.encode(),
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    result = Run(
        tuple(os.fsdecode(a) for a in argv),
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )
    assert result.code == 2, result.describe()
    assert result.out == "", result.describe()
    assert len(result.err.splitlines()) == 1, result.describe()
    assert result.err.startswith("rotator: error: "), result.describe()
    assert "Traceback" not in result.err
    assert fuzz_store.snapshot() == before
