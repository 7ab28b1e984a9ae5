"""``rotator --log-level/--log-format`` (issue 11, item 5): structured logs on stderr, apart
from stdout and from the one-line error messages, and no value or token in them even at
debug level. The real console script runs in a subprocess on the test's store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rotator.config import Settings

ROTATOR = str(Path(sys.executable).parent / "rotator")
FIRST = "logging-first-value-0b7c9e"


def cli(
    settings: Settings, *args: str, stdin: str = "", token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")},
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
    }
    if token is not None:
        env["ROTATOR_TOKEN"] = token
    return subprocess.run(
        [ROTATOR, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def store(settings: Settings) -> Settings:
    """An initialized store holding ``app/db`` (local, value FIRST)."""
    assert cli(settings, "init").returncode == 0
    added = cli(
        settings,
        "credential",
        "add",
        "app/db",
        "--connector",
        "local",
        "--value-stdin",
        stdin=FIRST,
    )
    assert added.returncode == 0, added.stderr
    return settings


def json_lines(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines()]


def test_debug_logs_are_json_lines_on_stderr_and_stdout_stays_as_it_was(store: Settings) -> None:
    quiet = cli(store, "rotate", "app/db", "--json")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""  # warning (the default): a run that goes well logs nothing

    loud = cli(store, "--log-level", "debug", "rotate", "app/db", "--json")

    assert loud.returncode == 0, loud.stderr
    assert json.loads(loud.stdout)["rotated"] == ["app/db"]  # stdout: the command's output only
    records = json_lines(loud.stderr)
    ended = [r for r in records if r["event"] == "rotation ended"]
    assert len(ended) == 1
    assert ended[0]["level"] == "debug"
    assert ended[0]["credential"] == "app/db"
    assert ended[0]["result"] == "rotated"
    assert ended[0]["connector"] == "local"
    assert {"timestamp", "logger"} <= set(ended[0])


def test_a_debug_run_logs_neither_a_value_nor_the_token(store: Settings) -> None:
    assert cli(store, "principal", "add", "ops", "--role", "admin").returncode == 0
    made = cli(store, "token", "create", "ops", "--json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]

    runs = [
        cli(store, "--log-level", "debug", "rotate", "app/db", "--json", token=token),
        cli(store, "--log-level", "debug", "credential", "get", "app/db", token=token),
        cli(store, "--log-level", "debug", "credential", "get", "app/db", "--stage", "PREVIOUS"),
        cli(store, "--log-level", "debug", "--log-format", "console", "rotate", "app/db"),
    ]

    assert [r.returncode for r in runs] == [0, 0, 0, 0], [r.stderr for r in runs]
    new = runs[1].stdout.strip()
    assert runs[2].stdout.strip() == FIRST
    stderr = "".join(r.stderr for r in runs)
    assert "rotation ended" in stderr  # the check below looked at real log lines
    for secret in (FIRST, new, token, token.rsplit("_", 1)[1]):
        assert secret not in stderr


def test_an_unknown_log_level_is_bad_input_in_one_line(store: Settings) -> None:
    r = cli(store, "--log-level", "verbose", "rotate", "app/db")

    assert r.returncode == 2
    assert r.stdout == ""
    [line] = r.stderr.splitlines()
    assert line.startswith("rotator: error: ")
    assert "--log-level" in line
    assert "verbose" in line


def test_error_messages_stay_one_plain_line_whatever_the_log_settings(store: Settings) -> None:
    plain = cli(store, "credential", "get", "app/nothere")
    for args in (["--log-level", "debug"], ["--log-level", "error", "--log-format", "console"]):
        r = cli(store, *args, "credential", "get", "app/nothere")
        assert r.returncode == plain.returncode == 2
        assert r.stderr == plain.stderr == "rotator: error: no credential 'app/nothere'\n"
