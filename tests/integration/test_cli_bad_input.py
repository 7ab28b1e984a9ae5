"""Bad input to the real ``rotator`` command: exit 2, one line naming the problem, nothing changed.

The public contract (docs: DESIGN.md, "Public contract") says bad input exits 2 with a one-line
message naming the problem and never a traceback. Every case here runs the installed console
script in a subprocess against a store on SQLite and on PostgreSQL and then checks that the store
is exactly as it was: the JSON of ``rotator credential list --json``, every row of every table
(audit log included) and every file in ``ROTATOR_HOME``.

One initialized store per database is shared by all cases of this module (``rotator init`` plus
one ``--generate``d credential); the unchanged-store check is still made around every case.
Each CLI process costs about a second of imports, so the ``list --json`` snapshot around each
case runs the same CLI entry point (``rotator.cli.main.main``) in-process; the store fixture
checks once, by subprocess, that it prints the same JSON, and the last test of the module checks
again by subprocess that the listing still equals the one taken at setup.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from conftest import PgServer

CLI = Path(sys.executable).parent / "rotator"
TIMEOUT_S = 60
SEEDED = "app/db"  # the one credential of the shared store (--generate, no schedule)
MAX_VALUE_BYTES = 64 * 1024  # rotator.service.credentials.MAX_VALUE_BYTES


# ------------------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def describe(self) -> str:
        return (
            f"$ rotator {shlex.join(self.args)}\nexit {self.code}\n"
            f"--- stdout ---\n{self.out}--- stderr ---\n{self.err}"
        )


def base_env() -> dict[str, str]:
    """The test process's environment without any ROTATOR_* variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}


def run_cli(
    args: Sequence[str], env: Mapping[str, str] | Mapping[bytes, bytes], stdin: bytes = b""
) -> Run:
    """Run the installed console script; bounded, output decoded as UTF-8. ``env`` may be
    bytes, to pass what is not UTF-8."""
    proc = subprocess.run(
        [str(CLI), *args],
        env=dict(env),
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    return Run(
        tuple(args),
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def run_ok(args: Sequence[str], env: Mapping[str, str], stdin: bytes = b"") -> Run:
    result = run_cli(args, env, stdin)
    assert result.code == 0, result.describe()
    return result


def sa_url(url: str) -> str:
    """A URL SQLAlchemy opens with psycopg 3 (what rotator itself uses)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def assert_bad_input(result: Run, *expected: str) -> str:
    """Exit 2, stdout empty, stderr one ``rotator: error:`` line containing every ``expected``."""
    assert "Traceback" not in result.out + result.err, result.describe()
    assert result.code == 2, result.describe()
    assert result.out == "", result.describe()
    lines = result.err.splitlines()
    one_line = "stderr must be exactly one line\n" + result.describe()
    assert len(lines) == 1, one_line
    assert result.err.endswith("\n"), one_line
    line = lines[0]
    assert line.startswith("rotator: error: "), result.describe()
    for text in expected:
        assert text in line, f"{text!r} not named in the error line\n{result.describe()}"
    return line


def dump_tables(engine: sa.Engine) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every table (reflected, so new tables are covered), as sorted reprs."""
    md = sa.MetaData()
    md.reflect(engine)
    out: dict[str, list[tuple[str, ...]]] = {}
    with engine.connect() as conn:
        for name, table in sorted(md.tables.items()):
            rows = conn.execute(sa.select(table)).all()
            out[name] = sorted(tuple(repr(v) for v in row) for row in rows)
    return out


def dump_home(home: Path) -> dict[str, tuple[int, str]]:
    """Relative path -> (mode, sha256) of every file under ``home``."""
    return {
        str(p.relative_to(home)): (p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(home.rglob("*"))
        if p.is_file()
    }


def listing_in_process(env: Mapping[str, str]) -> Any:
    """``rotator credential list --json`` through the CLI's own ``main`` in this process."""
    from rotator.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, dict(env), clear=True),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = main(["credential", "list", "--json"])
    assert code == 0, f"credential list --json failed: {err.getvalue()}"
    return json.loads(out.getvalue())


@dataclass(frozen=True)
class Snapshot:
    listing: Any
    tables: dict[str, list[tuple[str, ...]]]
    home: dict[str, tuple[int, str]]


@dataclass
class Store:
    """An initialized store: its home, database and the environment that opens it."""

    backend: str
    home: Path
    db_url: str
    env: dict[str, str]
    engine: sa.Engine
    baseline: Snapshot | None = None

    @property
    def key_file(self) -> Path:
        return self.home / "master.key"

    def snapshot(self) -> Snapshot:
        return Snapshot(
            listing=listing_in_process(self.env),
            tables=dump_tables(self.engine),
            home=dump_home(self.home),
        )

    def assert_unchanged(self, before: Snapshot) -> None:
        after = self.snapshot()
        counts_before = {t: len(rows) for t, rows in before.tables.items()}
        counts_after = {t: len(rows) for t, rows in after.tables.items()}
        assert counts_after == counts_before, "row counts changed"
        assert after.tables["audit_log"] == before.tables["audit_log"], "audit log changed"
        for table in before.tables:
            assert after.tables[table] == before.tables[table], f"table {table} changed"
        assert after.tables == before.tables, "tables changed"
        assert after.listing == before.listing, "`credential list --json` changed"
        assert after.home == before.home, "files in ROTATOR_HOME changed"


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ],
)
def new_db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], str]]:
    """Module-scoped twin of conftest's ``db_url``: makes fresh empty databases for one backend.

    ``db_url`` is function-scoped; the shared stores of this module need databases that live
    for the module. SQLite: a file outside any ROTATOR_HOME; PostgreSQL: a new database on the
    session's ``pg_server``, dropped WITH (FORCE) at module end.
    """
    created: list[str] = []
    server: PgServer | None = None
    if request.param == "postgresql":
        server = request.getfixturevalue("pg_server")

    def make() -> str:
        if server is None:
            return f"sqlite:///{tmp_path_factory.mktemp('db')}/rotator.db"
        name = f"test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return server.url(name)

    yield make
    if server is not None:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            for name in created:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def _make_store(
    new_db_url: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
    **extra_env: str,
) -> Store:
    url = new_db_url()
    home = tmp_path_factory.mktemp("home")
    env = {**base_env(), "ROTATOR_HOME": str(home), "ROTATOR_DB": url, **extra_env}
    run_ok(["init"], env)
    run_ok(["credential", "add", SEEDED, "--connector", "local", "--generate"], env)
    engine = sa.create_engine(sa_url(url), poolclass=NullPool)
    backend = engine.dialect.name
    store = Store(backend=backend, home=home, db_url=url, env=env, engine=engine)
    store.baseline = store.snapshot()
    # The in-process listing is the subprocess one (so the per-case check means the real CLI).
    listed = json.loads(run_ok(["credential", "list", "--json"], env).out)
    assert listed == store.baseline.listing
    assert [c["name"] for c in listed] == [SEEDED]
    assert listed[0]["current_version"] == 1
    return store


@pytest.fixture(scope="module")
def store(
    new_db_url: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """A key-file store with one generated credential, shared by the module's cases."""
    s = _make_store(new_db_url, tmp_path_factory)
    yield s
    s.engine.dispose()


PASSPHRASE = f"right-passphrase-{uuid.uuid4().hex}"
WRONG_PASSPHRASE = f"wrong-passphrase-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def passphrase_store(
    new_db_url: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """A store initialized with ROTATOR_PASSPHRASE instead of a key file."""
    s = _make_store(new_db_url, tmp_path_factory, ROTATOR_PASSPHRASE=PASSPHRASE)
    assert not s.key_file.exists()
    yield s
    s.engine.dispose()


@pytest.fixture(scope="module")
def foreign_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid master key file of another store (second ``rotator init``, SQLite in its home)."""
    home = tmp_path_factory.mktemp("other-home")
    run_ok(["init"], {**base_env(), "ROTATOR_HOME": str(home)})
    return home / "master.key"


# ----------------------------------------------------------------- bad arguments and stdin


def case(
    case_id: str,
    args: str | Sequence[str],
    *expected: str,
    stdin: bytes = b"",
    bug: str | None = None,
) -> Any:
    """One table row: CLI args (a shell-like string or a list), the texts the error must name.

    ``bug``: a known defect in src/ that makes this case fail today (strict xfail).
    """
    argv = tuple(shlex.split(args)) if isinstance(args, str) else tuple(args)
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(argv, expected, stdin, id=case_id, marks=marks)


ADD = "credential add new/one --connector local"
LONG_NAME = "a" * 201

BAD_INPUT = [
    # credential names: [a-z0-9][a-z0-9._/-]{0,199}
    case("name-bad-chars", "credential add 'Bad Name!' -c local --generate", "'Bad Name!'"),
    case("name-uppercase", "credential add App/DB -c local --generate", "'App/DB'"),
    case("name-leading-dash", "credential add -c local --generate -- -app", "'-app'"),
    case(
        "name-201-chars",
        ["credential", "add", LONG_NAME, "-c", "local", "--generate"],
        "invalid credential name",
        LONG_NAME,
    ),
    case("name-empty", ["credential", "add", "", "-c", "local", "--generate"], "''"),
    case("show-bad-name", "credential show 'Bad Name!'", "'Bad Name!'"),
    # existing / unknown things
    case("duplicate-generate", f"credential add {SEEDED} -c local --generate", f"'{SEEDED}'"),
    case(
        "duplicate-value-stdin",
        f"credential add {SEEDED} -c local --value-stdin",
        f"'{SEEDED}'",
        "exists",
        stdin=b"some-value\n",
    ),
    case("unknown-connector", "credential add new/one -c nosuch --generate", "'nosuch'"),
    case("update-unknown-connector", f"credential update {SEEDED} -c nosuch", "'nosuch'"),
    # --set / --tag
    case("set-no-equals", f"{ADD} --set novalue", "--set", "'novalue'"),
    case("set-empty-key", f"{ADD} --set =x", "--set", "'=x'"),
    case("tag-no-equals", f"{ADD} --tag novalue", "--tag", "'novalue'"),
    case("list-tag-malformed", "credential list --tag novalue", "--tag", "'novalue'"),
    case("set-unknown-setting", f"{ADD} --set bogus=1 --generate", "'local'", "'bogus'"),
    case("update-unknown-setting", f"credential update {SEEDED} --set bogus=1", "'bogus'"),
    case("set-length-too-small", f"{ADD} --set length=3 --generate", "'local'", "'length'"),
    # policy
    case("every-bad-unit", f"{ADD} --every 30x", "--every", "'30x'"),
    case("every-not-duration", f"{ADD} --every abc", "--every", "'abc'"),
    case("every-zero", f"{ADD} --every 0s", "--every", "zero"),
    case("every-and-cron", f"{ADD} --every 30d --cron '0 3 * * 0'", "--every", "--cron"),
    case("cron-minute-61", f"{ADD} --cron '61 * * * *'", "--cron", "'61 * * * *'"),
    case("cron-not-cron", f"{ADD} --cron 'not a cron'", "--cron", "'not a cron'"),
    case("window-without-cron", f"{ADD} --window 2h", "--window", "--cron"),
    case("update-window-without-cron", f"credential update {SEEDED} --window 2h", "--window"),
    case("window-zero", f"{ADD} --cron '0 3 * * 0' --window 0s", "--window", "zero"),
    case("grace-negative", f"{ADD} --grace -5m", "--grace", "'-5m'"),
    case("grace-part-of-a-second", f"{ADD} --grace 500ms", "--grace must be whole seconds"),
    case("update-grace-1s500ms", f"credential update {SEEDED} --grace 1s500ms", "whole seconds"),
    case(
        "every-too-big-for-timedelta",
        f"{ADD} --every 9999999999d",
        "--every",
    ),
    case(
        "every-5000-digits",
        f"{ADD} --every {'9' * 5000}d",
        "--every",
    ),
    case(
        "every-too-big-for-a-date",
        f"{ADD} --every 999999999d",
        "--every",
    ),
    case(
        "update-grace-too-big-for-a-date",
        f"credential update {SEEDED} --grace 999999999d --generate",
        "--grace",
    ),
    case(
        "cron-never-fires",
        f"{ADD} --cron '0 0 31 2 *'",
        "--cron",
        "'0 0 31 2 *'",
    ),
    case("cron-macro", f"{ADD} --cron @daily", "--cron", "'@daily'", "five fields"),
    case(
        "policy-set-cron-macro",
        "policy set --tag env=prod --cron @daily",
        "--cron",
        "'@daily'",
        "five fields",
    ),
    case(
        "cron-window-always-blacked-out",
        [
            *shlex.split(ADD),
            *("--cron", "0 3 * * 6", "--window", "2h", "--blackout", "Fri 18:00-Mon 06:00"),
        ],
        "every --window of --cron falls in a --blackout",
    ),
    case(
        "policy-set-cron-window-always-blacked-out",
        [
            *("policy", "set", "--tag", "env=prod", "--cron", "0 3 * * 6", "--window", "2h"),
            *("--blackout", "Fri 18:00-Mon 06:00"),
        ],
        "every --window of --cron falls in a --blackout",
    ),
    case(
        "policy-set-window-without-cron-for-no-credential",
        "policy set --tag env=qa --window 2h",
        "tag env=qa",
        "--window needs --cron",
    ),
    case("update-every-zero", f"credential update {SEEDED} --every 0s", "--every"),
    case("max-uses-zero", f"{ADD} --max-uses 0", "--max-uses"),
    case("max-uses-negative", f"{ADD} --max-uses -1", "--max-uses"),
    case("max-uses-not-int", f"{ADD} --max-uses abc", "--max-uses"),
    # policy options of issue 9: jitter, blackout, tz, max age (add, update, policy set)
    case("jitter-bad", f"{ADD} --every 30d --jitter 10x", "--jitter", "'10x'"),
    case("jitter-zero", f"{ADD} --every 30d --jitter 0s", "--jitter", "zero"),
    case("update-jitter-bad", f"credential update {SEEDED} --jitter soon", "--jitter", "'soon'"),
    case("blackout-malformed", f"{ADD} --blackout 'Fri 18:00'", "--blackout", "'Fri 18:00'"),
    case("blackout-bad-day", f"{ADD} --blackout 'Fry 18:00-Mon 06:00'", "--blackout", "Fry"),
    case("blackout-bad-hour", f"{ADD} --blackout 'Fri 25:00-Mon 06:00'", "--blackout", "25:00"),
    case("blackout-empty", f"{ADD} --blackout 'Fri 18:00-Fri 18:00'", "--blackout", "empty"),
    case("tz-unknown", f"{ADD} --cron '0 3 * * *' --tz Mars/Olympus", "--tz", "Mars/Olympus"),
    case("tz-path", f"{ADD} --cron '0 3 * * *' --tz ../../etc/passwd", "unknown --tz"),
    case("max-age-bad", f"{ADD} --max-age 90", "--max-age", "'90'"),
    case("max-age-zero", f"{ADD} --max-age 0d", "--max-age", "zero"),
    case("update-max-age-zero", f"credential update {SEEDED} --max-age 0s", "--max-age", "zero"),
    # credential used (usage an application reports)
    case("used-count-zero", f"credential used {SEEDED} --count 0", "--count"),
    case("used-count-negative", f"credential used {SEEDED} --count -3", "--count"),
    case("used-count-huge", f"credential used {SEEDED} --count 99999999999", "--count"),
    case("used-count-not-int", f"credential used {SEEDED} --count many", "--count"),
    case("used-missing", "credential used no/such", "'no/such'"),
    case("used-bad-name", "credential used 'Bad Name!'", "'Bad Name!'"),
    # policy defaults
    case("policy-set-no-scope", "policy set --every 30d", "--tag", "--tenant"),
    case(
        "policy-set-both-scopes",
        "policy set --tag env=prod --tenant default --every 30d",
        "--tag",
        "--tenant",
    ),
    case("policy-set-no-option", "policy set --tag env=prod", "policy option"),
    case("policy-set-tag-malformed", "policy set --tag envprod --every 1d", "--tag"),
    case("policy-set-every-bad", "policy set --tag env=prod --every 1x", "--every", "'1x'"),
    case("policy-set-jitter-zero", "policy set --tag env=prod --jitter 0s", "--jitter"),
    case("policy-set-blackout-bad", "policy set --tag env=prod --blackout never", "--blackout"),
    case("policy-set-tz-unknown", "policy set --tag env=prod --tz Nowhere/X", "--tz"),
    case("policy-set-max-uses-zero", "policy set --tag env=prod --max-uses 0", "--max-uses"),
    case("policy-set-other-tenant", "policy set --tenant acme --every 1d", "'acme'"),
    case(
        "policy-set-breaks-a-credential",
        "policy set --tenant default --window 2h",
        "--window",
        f"'{SEEDED}'",
    ),
    case("policy-remove-missing", "policy remove --tag env=none", "env=none"),
    case("policy-remove-no-scope", "policy remove", "--tag", "--tenant"),
    # where the value comes from
    case(
        "value-stdin-and-generate",
        f"{ADD} --value-stdin --generate",
        "--value-stdin",
        "--generate",
        stdin=b"some-value\n",
    ),
    case("value-stdin-empty", f"{ADD} --value-stdin", "empty", stdin=b""),
    case(
        "update-value-stdin-empty", f"credential update {SEEDED} --value-stdin", "empty", stdin=b""
    ),
    case(
        "value-stdin-too-long",
        f"{ADD} --value-stdin",
        "longer than",
        stdin=b"x" * (MAX_VALUE_BYTES + 1),
    ),
    # the command line itself
    case("unknown-flag", f"{ADD} --generate --bogus", "--bogus"),
    case("missing-connector", "credential add new/one --generate", "--connector"),
    # reading and removing what is not there
    case("get-missing", "credential get no/such", "'no/such'"),
    case("get-stage-bogus", f"credential get {SEEDED} --stage BOGUS", "--stage", "BOGUS"),
    case("get-no-previous", f"credential get {SEEDED} --stage PREVIOUS", f"'{SEEDED}'", "PREVIOUS"),
    case("show-missing", "credential show no/such", "'no/such'"),
    case("remove-missing", "credential remove no/such", "'no/such'"),
    case("update-missing", "credential update no/such --every 1d", "'no/such'"),
]


@pytest.mark.parametrize(("args", "expected", "stdin"), BAD_INPUT)
def test_bad_input_exits_2_naming_the_problem_and_changes_nothing(
    store: Store, args: tuple[str, ...], expected: tuple[str, ...], stdin: bytes
) -> None:
    before = store.snapshot()
    result = run_cli(args, store.env, stdin)
    assert_bad_input(result, *expected)
    store.assert_unchanged(before)


# ---------------------------------------------------------------------- master key problems


def _key_missing(key: Path, foreign: Path) -> None:
    key.unlink()


def _key_mode_0644(key: Path, foreign: Path) -> None:
    key.chmod(0o644)


def _key_of_another_store(key: Path, foreign: Path) -> None:
    key.unlink()
    shutil.copy2(foreign, key)  # keeps 0600: only the key itself is wrong


KEY_PROBLEMS: dict[str, tuple[Callable[[Path, Path], None], tuple[str, ...]]] = {
    "missing": (_key_missing, ("missing",)),
    "mode-0644": (_key_mode_0644, ("0644", "0600")),
    "wrong-key": (_key_of_another_store, ("does not open this store",)),
}
KEY_COMMANDS = {
    "get": ("credential", "get", SEEDED),
    "list": ("credential", "list"),
    "add-generate": ("credential", "add", "new/one", "-c", "local", "--generate"),
    "rotate-master": ("keys", "rotate-master"),
    "init": ("init",),
}
KEY_CASES = [
    pytest.param(problem, command, id=f"{problem}-{command}")
    for problem, commands in {
        "missing": ("get", "add-generate", "rotate-master", "init"),
        "mode-0644": ("list", "rotate-master"),
        "wrong-key": ("get", "rotate-master", "init"),
    }.items()
    for command in commands
]


@pytest.mark.parametrize(("problem", "command"), KEY_CASES)
def test_unusable_key_file_exits_2_naming_it_and_changes_nothing(
    store: Store, foreign_key_file: Path, problem: str, command: str
) -> None:
    """Also: `init` must not make a new key and `rotate-master` must not start a rotation."""
    break_key, expected = KEY_PROBLEMS[problem]
    before = store.snapshot()
    original, mode = store.key_file.read_bytes(), store.key_file.stat().st_mode
    break_key(store.key_file, foreign_key_file)
    broken = dump_home(store.home)
    try:
        result = run_cli(KEY_COMMANDS[command], store.env)
        assert dump_home(store.home) == broken, "the command changed files in ROTATOR_HOME"
    finally:
        store.key_file.unlink(missing_ok=True)
        store.key_file.write_bytes(original)
        store.key_file.chmod(mode)
    assert_bad_input(result, str(store.key_file), *expected)
    store.assert_unchanged(before)


PASSPHRASE_CASES = [
    pytest.param(WRONG_PASSPHRASE, ("credential", "get", SEEDED), id="wrong-get"),
    pytest.param(WRONG_PASSPHRASE, ("keys", "rotate-master"), id="wrong-rotate-master"),
    pytest.param(None, ("credential", "get", SEEDED), id="unset-get"),
]


@pytest.mark.parametrize(("passphrase", "args"), PASSPHRASE_CASES)
def test_wrong_or_missing_passphrase_exits_2_naming_it_and_changes_nothing(
    passphrase_store: Store, passphrase: str | None, args: tuple[str, ...]
) -> None:
    env = {k: v for k, v in passphrase_store.env.items() if k != "ROTATOR_PASSPHRASE"}
    if passphrase is not None:
        env["ROTATOR_PASSPHRASE"] = passphrase
    env["ROTATOR_NEW_PASSPHRASE"] = f"new-passphrase-{uuid.uuid4().hex}"
    before = passphrase_store.snapshot()
    result = run_cli(args, env)
    line = assert_bad_input(result, "ROTATOR_PASSPHRASE")
    if passphrase is not None:
        assert "does not open this store" in line, result.describe()
    for secret in (PASSPHRASE, WRONG_PASSPHRASE, env["ROTATOR_NEW_PASSPHRASE"]):
        assert secret not in result.out + result.err
    passphrase_store.assert_unchanged(before)


# ------------------------------------------------------------------------- ROTATOR_DB problems

DB_CASES = [
    pytest.param(
        "postgresql://postgres@127.0.0.1:1/nope",
        ("credential", "list"),
        ("database", "127.0.0.1:1/nope"),
        id="unreachable-list",
    ),
    pytest.param(
        "postgresql://u:hunter2@127.0.0.1:1/x",
        ("credential", "get", SEEDED),
        ("database", "127.0.0.1:1/x"),
        id="unreachable-with-password-get",
    ),
    pytest.param(
        "postgresql://u:hunter2@127.0.0.1:1/x",
        ("init",),
        ("database", "127.0.0.1:1/x"),
        id="unreachable-with-password-init",
    ),
    pytest.param("garbage", ("credential", "list"), ("ROTATOR_DB", "'garbage'"), id="garbage-list"),
    pytest.param(
        "mysql://u:hunter2@127.0.0.1:1/x",
        ("credential", "list"),
        ("ROTATOR_DB", "'mysql'"),
        id="unsupported-with-password-list",
    ),
]


@pytest.mark.parametrize(("url", "args", "expected"), DB_CASES)
def test_unusable_database_url_exits_2_naming_it_without_password(
    store: Store, url: str, args: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    """ROTATOR_DB points elsewhere; the home's own store and files must stay as they are."""
    before = store.snapshot()
    result = run_cli(args, {**store.env, "ROTATOR_DB": url})
    assert_bad_input(result, *expected)
    assert "hunter2" not in result.out + result.err, result.describe()
    store.assert_unchanged(before)


# ------------------------------------------------------------------------ never initialized

UNINITIALIZED_COMMANDS = [
    pytest.param(("credential", "list"), id="list"),
    pytest.param(("credential", "get", SEEDED), id="get"),
    pytest.param(("credential", "add", "new/one", "-c", "local", "--generate"), id="add"),
]


@pytest.mark.parametrize("args", UNINITIALIZED_COMMANDS)
def test_command_on_never_initialized_store_asks_for_init(
    db_url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    home = tmp_path / "never-initialized"
    home.mkdir()
    env = {**base_env(), "ROTATOR_HOME": str(home), "ROTATOR_DB": db_url}
    result = run_cli(args, env)
    assert_bad_input(result, "rotator init")
    assert list(home.iterdir()) == [], "a failed command wrote into ROTATOR_HOME"
    engine = sa.create_engine(sa_url(db_url), poolclass=NullPool)
    try:
        assert sa.inspect(engine).get_table_names() == [], "a failed command created tables"
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- final check


def test_shared_store_still_lists_as_at_setup_via_subprocess(store: Store) -> None:
    """Runs last for each backend: the real CLI process still sees the store of the setup."""
    assert store.baseline is not None
    listed = json.loads(run_ok(["credential", "list", "--json"], store.env).out)
    assert listed == store.baseline.listing
    assert dump_tables(store.engine) == store.baseline.tables
    assert dump_home(store.home) == store.baseline.home
