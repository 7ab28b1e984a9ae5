"""Hostile input to the real ``rotator`` command: still exit 2 with one line, no traceback, no
echoed secret, nothing changed; and the last-resort handler for what nobody foresaw.

Uses the shared stores of test_cli_bad_input (one per backend, SQLite and PostgreSQL), and
the same checks: one ``rotator: error:`` line on stderr, nothing on stdout, every table, the
listing and every file in ROTATOR_HOME unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest
from test_cli_bad_input import (  # fixtures are used by name below
    SEEDED,
    TIMEOUT_S,
    Run,
    Store,
    assert_bad_input,
    base_env,
    new_db_url,
    passphrase_store,
    run_cli,
    run_ok,
    store,
)

__all__ = ["new_db_url", "passphrase_store", "store"]  # fixtures, imported for pytest

SECRET_TAIL = "value-tail-" + uuid.uuid4().hex  # readable part of a non-UTF-8 value


def env_bytes(env: Mapping[str, str]) -> dict[bytes, bytes]:
    return {os.fsencode(k): os.fsencode(v) for k, v in env.items()}


# ------------------------------------------------------------------- arguments and values


def test_audit_list_limit_beyond_any_integer_is_bad_input(store: Store) -> None:
    before = store.snapshot()
    result = run_cli(["audit", "list", "--limit", "99999999999999999999999999"], store.env)
    assert_bad_input(result, "--limit")
    store.assert_unchanged(before)


def test_non_utf8_value_for_a_postgres_credential_is_refused_without_quoting_it(
    store: Store,
) -> None:
    before = store.snapshot()
    value = b"\xff\xfe\x80" + SECRET_TAIL.encode()
    result = run_cli(
        ["credential", "add", "new/pg", "-c", "postgres", "--set", "role=app", "--value-stdin"],
        store.env,
        stdin=value + b"\n",
    )
    line = assert_bad_input(result, "'postgres'", "not UTF-8")
    assert SECRET_TAIL not in line
    assert "\ufffd" not in line, "no byte of the value may show"
    assert "\\x" not in line, "no byte of the value may show"
    store.assert_unchanged(before)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\xff\xfe\x80" + SECRET_TAIL.encode(), id="not-utf8"),
        pytest.param(
            b'{"username": "postgres", "password": "' + SECRET_TAIL.encode() + b'"}',
            id="names-the-superuser",
        ),
    ],
)
def test_unusable_value_that_reached_a_postgres_credential_fails_its_rotation_cleanly(
    db_url: str, tmp_path: Path, value: bytes
) -> None:
    """Stored under another connector, then switched to postgres: the rotation fails (exit 1,
    an operation failure) with a message naming the problem, no traceback, nothing of the
    value, before any login (the target port is closed: a login attempt would say so)."""
    env = {**base_env(), "ROTATOR_HOME": str(tmp_path / "home"), "ROTATOR_DB": db_url}
    run_ok(["init"], env)
    run_ok(["credential", "add", "pg/app", "-c", "local", "--value-stdin"], env, stdin=value)
    run_ok(
        [
            "credential", "update", "pg/app", "-c", "postgres",
            "--set", "role=app", "--set", "host=127.0.0.1", "--set", "port=1",
        ],
        env,
    )  # fmt: skip
    result = run_cli(["rotate", "pg/app", "--emergency"], env)
    assert result.code == 1, result.describe()
    assert "Traceback" not in result.out + result.err, result.describe()
    assert "failed pg/app" in result.out, result.describe()
    assert "cannot reach" not in result.out, "refused before any login"
    assert SECRET_TAIL not in result.out + result.err
    assert "\ufffd" not in result.out + result.err


@pytest.mark.parametrize("command", ["add", "update"])
def test_sink_onto_rotator_home_is_bad_input(store: Store, command: str) -> None:
    before = store.snapshot()
    sink = f"file:path={store.home}/master.key,format=raw"
    args = (
        ["credential", "add", "new/one", "-c", "local", "--generate", "--sink", sink]
        if command == "add"
        else ["credential", "update", SEEDED, "--sink", sink]
    )
    result = run_cli(args, store.env)
    assert_bad_input(result, "--sink", "master.key", "inside rotator's own")
    store.assert_unchanged(before)


@pytest.mark.parametrize("mode", ["0666", "0620", "0602", "u+rw"])
def test_sink_mode_that_others_may_write_is_bad_input(
    store: Store, tmp_path: Path, mode: str
) -> None:
    before = store.snapshot()
    sink = f"file:path={tmp_path}/app.env,format=dotenv,mode={mode}"
    result = run_cli(["credential", "update", SEEDED, "--sink", sink], store.env)
    assert_bad_input(result, "mode")
    store.assert_unchanged(before)


# ------------------------------------------------------------------------------ environment


@pytest.mark.parametrize("lease", ["nan", "inf", "-inf", "0", "-1", "1e400", "abc"])
def test_lease_seconds_that_is_no_usable_duration_is_bad_input(store: Store, lease: str) -> None:
    before = store.snapshot()
    result = run_cli(["rotate", SEEDED], {**store.env, "ROTATOR_LEASE_SECONDS": lease})
    assert_bad_input(result, "ROTATOR_LEASE_SECONDS")
    store.assert_unchanged(before)


@pytest.mark.parametrize("command", [("credential", "get", SEEDED), ("init",)])
def test_non_utf8_passphrase_is_bad_input_and_not_echoed(
    passphrase_store: Store, command: tuple[str, ...]
) -> None:
    before = passphrase_store.snapshot()
    env = env_bytes(passphrase_store.env)
    env[b"ROTATOR_PASSPHRASE"] = b"\xff\xfe" + SECRET_TAIL.encode()
    result = run_cli(command, env)
    line = assert_bad_input(result, "ROTATOR_PASSPHRASE", "UTF-8")
    assert SECRET_TAIL not in line
    assert "\ufffd" not in line
    passphrase_store.assert_unchanged(before)


@pytest.mark.parametrize(
    "command", [("init",), ("credential", "list"), ("credential", "get", SEEDED)]
)
def test_rotator_home_pointing_at_a_file_is_bad_input(
    store: Store, tmp_path: Path, command: tuple[str, ...]
) -> None:
    before = store.snapshot()
    not_a_dir = tmp_path / "home-file"
    not_a_dir.write_text("a file\n")
    result = run_cli(command, {**store.env, "ROTATOR_HOME": str(not_a_dir)})
    assert_bad_input(result, "ROTATOR_HOME", str(not_a_dir), "not a directory")
    assert not_a_dir.read_text() == "a file\n"
    store.assert_unchanged(before)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:hunter2@localhost:notaport/db",
        "postgresql://u:hun@ter2@localhost:99999999999999999999/db",
        "sqlite://u:hunter2@:x/db",
    ],
)
def test_database_url_with_a_malformed_port_is_bad_input_without_its_password(
    store: Store, url: str
) -> None:
    before = store.snapshot()
    result = run_cli(["credential", "list"], {**store.env, "ROTATOR_DB": url})
    assert_bad_input(result, "ROTATOR_DB")
    assert "hunter2" not in result.err, result.describe()
    assert "ter2" not in result.err, result.describe()
    store.assert_unchanged(before)


# ----------------------------------------------------------------- the last-resort handler

CRASHING_CLI = textwrap.dedent(
    """
    import sys
    from rotator.cli.main import main
    from rotator.service import BlockingService

    def crash(*args, **kwargs):
        raise RuntimeError("message-with-a-secret-" + sys.argv[1])

    BlockingService.list_credentials = crash
    sys.exit(main(sys.argv[2:]))
    """
)


def run_crashing_cli(store: Store, extra_env: Mapping[str, str]) -> Run:
    args = ("credential", "list")
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_CLI, SECRET_TAIL, *args],
        env={**store.env, **extra_env},
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
        text=True,
    )
    return Run(args, proc.returncode, proc.stdout, proc.stderr)


def test_unexpected_exception_prints_one_line_and_exits_1(store: Store) -> None:
    before = store.snapshot()
    result = run_crashing_cli(store, {})
    assert result.code == 1, result.describe()
    assert "Traceback" not in result.err, result.describe()
    assert result.err.splitlines() == [
        "rotator: error: internal error (RuntimeError); details in the debug log "
        "(set ROTATOR_DEBUG=1)"
    ], result.describe()
    assert SECRET_TAIL not in result.out + result.err
    store.assert_unchanged(before)


def test_debug_log_holds_the_stack_of_an_unexpected_exception_but_not_its_message(
    store: Store,
) -> None:
    result = run_crashing_cli(store, {"ROTATOR_DEBUG": "1"})
    assert result.code == 1, result.describe()
    assert result.err.splitlines()[0].startswith("rotator: error: internal error (RuntimeError)")
    assert "rotator: debug:" in result.err, result.describe()
    assert "builtins.RuntimeError (message withheld)" in result.err
    assert "in crash" in result.err, result.describe()
    assert "credential_list" in result.err, result.describe()
    assert SECRET_TAIL not in result.out + result.err
