"""The console script's fast path for ``credential get`` (rotator.cli.fast) behaves as the
parser's path: same output, same one-line errors, same exit codes, and every read counted and
audited the same way.

Each command line runs twice in a subprocess against one store: through the console script
(``rotator``, whose ``run()`` takes the fast path for the plain form) and through
``rotator.cli.main.main()``, which always parses with typer. A command line the fast path does
not take (a bad name, an unknown option) goes to the parser in both, and must still agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rotator.cli.fast import parse
from rotator.config import Settings

ROTATOR = str(Path(sys.executable).parent / "rotator")
PARSER = [sys.executable, "-c", "import sys; from rotator.cli.main import main; sys.exit(main())"]
NAME = "app/db"
VALUE = "fast-get-value-7c2e"


def run(
    cmd: list[str], settings: Settings, *args: str, stdin: str = "", **env: str
) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    proc = subprocess.run(
        [*cmd, *args],
        env={**base, "ROTATOR_HOME": str(settings.home), "ROTATOR_DB": settings.db_url, **env},
        input=stdin.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    # Bytes decoded as they are (no newline translation): "\r\n" and "\n" differ here.
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def both(settings: Settings, *args: str, **env: str) -> tuple[int, str, str]:
    """The result of ``args`` on the fast path; asserts the parser's path gives the same."""
    fast = run([ROTATOR], settings, *args, **env)
    parsed = run(PARSER, settings, *args, **env)
    assert fast == parsed, args
    return fast


def assert_one_line_error(got: tuple[int, str, str], code: int) -> None:
    assert got[0] == code, got
    assert got[1] == ""
    assert got[2].startswith("rotator: error: "), got[2]
    assert got[2].count("\n") == 1, got[2]


@pytest.fixture
def store(settings: Settings) -> Settings:
    assert run([ROTATOR], settings, "init")[0] == 0
    code, _, err = run(
        [ROTATOR], settings, "credential", "add", NAME, "--connector", "local",
        "--value-stdin", stdin=VALUE,
    )  # fmt: skip
    assert code == 0, err
    return settings


def use_count(settings: Settings) -> int:
    code, out, err = run([ROTATOR], settings, "credential", "show", NAME, "--json")
    assert code == 0, err
    return int(json.loads(out)["use_count"])


def reads(settings: Settings) -> list[dict[str, object]]:
    """The ``value.read`` audit entries, without what differs between any two entries."""
    code, out, err = run([ROTATOR], settings, "audit", "list", "--json")
    assert code == 0, err
    volatile = {"seq", "ts", "prev_hash", "hash"}
    return [
        {k: v for k, v in e.items() if k not in volatile}
        for e in json.loads(out)
        if e["action"] == "value.read"
    ]


def test_a_read_prints_the_value_and_is_counted_and_audited_as_on_the_parsers_path(
    store: Settings,
) -> None:
    assert use_count(store) == 0
    fast = run([ROTATOR], store, "credential", "get", NAME)
    assert fast == (0, VALUE + "\n", "")
    assert use_count(store) == 1
    parsed = run(PARSER, store, "credential", "get", NAME)
    assert parsed == fast
    assert use_count(store) == 2
    first, second = reads(store)
    assert first == second
    assert first["actor"] == "local"
    assert first["credential"] == NAME
    # The option's other spellings and places.
    assert both(store, "credential", "get", "--stage", "current", NAME) == fast
    assert both(store, "credential", "get", NAME, "--stage=CURRENT") == fast
    assert use_count(store) == 6
    assert len(reads(store)) == 6


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("credential", "get", "no/such"), 2, "rotator: error: no credential 'no/such'\n"),
        (
            ("credential", "get", NAME, "--stage", "PREVIOUS"),
            2,
            "rotator: error: credential 'app/db' has no PREVIOUS version\n",
        ),
        (
            ("credential", "get", NAME, "--stage", "bogus"),
            2,
            "rotator: error: --stage must be CURRENT, PREVIOUS or PENDING, not 'bogus'\n",
        ),
        # Not taken by the fast path: the parser reports them, the same way in both.
        (("credential", "get", "Bad Name!"), 2, None),
        (("credential", "get", NAME, "--json"), 2, None),
        (("credential", "get", NAME, "extra"), 2, None),
        (("credential", "get"), 2, None),
    ],
)
def test_errors_are_the_parsers_errors(
    store: Settings, args: tuple[str, ...], code: int, message: str | None
) -> None:
    before = use_count(store)
    got = both(store, *args)
    assert_one_line_error(got, code)
    if message is not None:
        assert got[2] == message
    assert use_count(store) == before  # a refused read is not counted


@pytest.mark.parametrize(
    ("env", "code"),
    [
        ({"ROTATOR_TOKEN": ""}, 2),  # set but empty: never the owner
        ({"ROTATOR_TOKEN": "rot_not-a-token"}, 2),  # AuthenticationFailed
        ({"ROTATOR_TENANT": "Bad Tenant"}, 2),  # InvalidInput
        ({"ROTATOR_TENANT": "other"}, 2),  # NotFound naming `rotator tenant add`
    ],
)
def test_the_caller_is_the_parsers_caller(store: Settings, env: dict[str, str], code: int) -> None:
    assert_one_line_error(both(store, "credential", "get", NAME, **env), code)


def test_a_store_never_initialized_is_bad_input_on_both_paths(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "empty", db_url=f"sqlite:///{tmp_path}/empty.db")
    assert_one_line_error(both(settings, "credential", "get", NAME), 2)


def test_only_the_plain_form_is_taken() -> None:
    assert parse(["credential", "get", "a/b"]) == ("a/b", "CURRENT")
    assert parse(["credential", "get", "--stage", "previous", "a/b"]) == ("a/b", "previous")
    assert parse(["credential", "get", "a/b", "--stage=PENDING"]) == ("a/b", "PENDING")
    for argv in (
        ["credential", "get"],
        ["credential", "get", "a/b", "c/d"],
        ["credential", "get", "a/b", "--stage"],
        ["credential", "get", "a/b", "--stage", "--help"],
        ["credential", "get", "a/b", "--stage", "x", "--stage", "y"],
        ["credential", "get", "a/b", "--help"],
        ["credential", "get", "--", "a/b"],
        ["credential", "get", "A/B"],
        ["credential", "get", "a/b", "--stage", "cürrent"],
        ["--log-level", "debug", "credential", "get", "a/b"],
        ["credential", "show", "a/b"],
    ):
        assert parse(argv) is None, argv
