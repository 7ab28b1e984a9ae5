"""Hostile connector settings through ``credential add --set``, against real targets.

- PostgreSQL role names drawn from hostile text (quotes, ``;``, ``--``, NUL, newlines,
  Unicode, names at and past PostgreSQL's 63-byte identifier limit): ``credential add`` either
  refuses the name as bad input (exit 2, one line, nothing stored) or, for a name that is legal
  but weird, the credential rotates on the real target (pg_target) and the role logs in with
  the new password. tests/integration/test_connector_postgres.py covers quotes, spaces and
  Unicode through the connector alone; tests/integration/test_connector_redis.py covers odd
  and refused Redis usernames end to end; this adds the CLI path and the names in between.
- The http connector pointed at a host outside the operator's ``ROTATOR_HTTP_ALLOW_HOSTS``:
  refused at ``credential add`` (exit 2, one line, nothing stored) and, for a credential
  added before the list was narrowed, at rotation (exit 1, the old value stays CURRENT);
  in both cases the target (a local receiver that records every request) gets nothing.

Everything runs through ``rotator.cli.main.main`` in this process (tests.support.fuzz).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import example, given
from psycopg import sql
from sqlalchemy.pool import NullPool
from tests.integration.test_cli_bad_input import Run, base_env, dump_home, dump_tables, sa_url
from tests.support.api_server import ApiServer, running
from tests.support.fuzz import fuzz_settings, hostile, run_in_process

from rotator.connectors.http import ALLOW_HOSTS_ENV

if TYPE_CHECKING:
    from tests.conftest import PgTarget

ACCOUNT = "acme"
ADMIN_TOKEN = "admin-token-0123456789abcdef"


class Home:
    """An initialized store (``db_url``'s backend) driven through the in-process CLI."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.home = tmp_path / "home"
        self.env = {**base_env(), "ROTATOR_HOME": str(self.home), "ROTATOR_DB": db_url}
        self.engine = sa.create_engine(sa_url(db_url), poolclass=NullPool)
        self.ok(["init"])

    def run(self, argv: list[str], stdin: bytes = b"", **env: str) -> Run:
        return run_in_process(argv, {**self.env, **env}, stdin)

    def ok(self, argv: list[str], stdin: bytes = b"", **env: str) -> Run:
        result = self.run(argv, stdin, **env)
        assert result.code == 0, result.describe()
        return result

    def snapshot(self) -> object:
        return dump_tables(self.engine), dump_home(self.home)

    def assert_bad_input(self, result: Run, *named: str) -> None:
        assert result.code == 2, result.describe()
        assert result.out == "", result.describe()
        assert len(result.err.splitlines()) == 1, result.describe()
        assert result.err.startswith("rotator: error: "), result.describe()
        for text in named:
            assert text in result.err, result.describe()


@pytest.fixture
def home(tmp_path: Path, db_url: str) -> Iterator[Home]:
    h = Home(tmp_path, db_url)
    yield h
    h.engine.dispose()


# ------------------------------------------------------------------ PostgreSQL role names


def create_role(target: PgTarget, name: str, password: str) -> bool:
    """CREATE ROLE on the target; False if PostgreSQL (or libpq) refuses the name."""
    try:
        with psycopg.connect(target.dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
        return True
    except (psycopg.Error, ValueError):
        return False


def drop_role(target: PgTarget, name: str) -> None:
    try:
        with psycopg.connect(target.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    except (psycopg.Error, ValueError):
        pass


def can_login(target: PgTarget, user: str, password: str) -> bool:
    try:
        with psycopg.connect(target.dsn(user=user, password=password)) as conn:
            conn.execute("SELECT 1")
        return True
    except (psycopg.Error, ValueError):
        return False


ROLE_NAMES = hostile(r"[a-z][a-z0-9_]{0,10}", r"[a-z]{1,5}[ ;'\"-]{1,3}[a-z]{1,5}")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the target is what varies
def test_hostile_postgres_role_names_are_refused_in_one_line_or_rotate_on_the_real_target(
    home: Home, pg_target: PgTarget
) -> None:
    home.ok(
        ["credential", "add", "pg/admin", "-c", "local", "--value-stdin"],
        pg_target.password.encode(),
    )
    made: list[str] = []

    @fuzz_settings(weight=0.05)
    @given(name=ROLE_NAMES)
    @example(name="app; DROP ROLE postgres; --")
    @example(name="nul\x00inside")
    @example(name="quo\"te's -- x")
    @example(name="\u00e9" * 40)  # 40 characters, 80 bytes: past PostgreSQL's 63-byte limit
    @example(name="r" * 63)
    def attempt(name: str) -> None:
        credential = f"pg/r{len(made)}"
        made.append(name)
        first = "first-" + uuid.uuid4().hex
        created = create_role(pg_target, name, first)
        before = home.snapshot()
        added = home.run(
            [
                "credential", "add", credential, "-c", "postgres",
                "--set", f"host={pg_target.host}", "--set", f"port={pg_target.port}",
                "--set", f"role={name}", "--set", "admin=pg/admin", "--set", "mode=single",
                "--value-stdin",
            ],
            first.encode(),
        )  # fmt: skip
        assert "Traceback" not in added.err, added.describe()
        assert first not in added.out + added.err
        if added.code == 2 or not created:
            home.assert_bad_input(added)
            assert home.snapshot() == before, "a refused add stored something"
            return
        assert added.code == 0, added.describe()
        rotated = home.run(["rotate", credential, "--json"])
        assert rotated.code == 0, rotated.describe()
        assert json.loads(rotated.out)["rotated"] == [credential], rotated.describe()
        value = home.ok(["credential", "get", credential]).out.rstrip("\n")
        password = json.loads(value)["password"] if value.startswith("{") else value
        assert password != first
        assert can_login(pg_target, name, password), f"{name!r} cannot log in after rotation"
        assert not can_login(pg_target, name, first)

    try:
        attempt()
    finally:
        for name in made:
            drop_role(pg_target, name)
    assert can_login(pg_target, "postgres", pg_target.password), "the superuser is untouched"


# ------------------------------------------------------------------- the http allow-list


def add_http(home: Home, api: ApiServer, name: str, **env: str) -> Run:
    settings = {
        "base_url": api.url,
        "allow_insecure_http": "true",  # the receiver speaks plain HTTP on loopback
        "auth": "api/admin",
        "set_path": "/keys",
        "set_body": '{"key": "$value"}',
        "test_path": "/whoami",
        "revoke_path": "/keys/$value",
    }
    argv = ["credential", "add", name, "-c", "http", "--value-stdin"]
    for key, value in settings.items():
        argv += ["--set", f"{key}={value}"]
    api.add_key(ACCOUNT, "first-key-" + name)
    return home.run(argv, ("first-key-" + name).encode(), **env)


def test_http_connector_outside_the_allow_list_is_refused_at_add_and_rotation_sending_nothing(
    home: Home,
) -> None:
    home.ok(
        ["credential", "add", "api/admin", "-c", "local", "--value-stdin"], ADMIN_TOKEN.encode()
    )
    elsewhere = {ALLOW_HOSTS_ENV: "api.example.com, *.example.net, 10.0.0.0/8, ::1"}
    with running() as api:
        api.add_account(ACCOUNT, ADMIN_TOKEN)

        before = home.snapshot()
        refused = add_http(home, api, "svc/api", **elsewhere)
        home.assert_bad_input(refused, ALLOW_HOSTS_ENV, "'127.0.0.1'", "base_url")
        assert home.snapshot() == before, "a refused add stored something"
        assert api.requests == [], "nothing may reach a host outside the list"

        # Added while the list allowed it (by address), then the list was narrowed.
        home.ok(["credential", "list"])  # the store is still usable
        added = add_http(home, api, "svc/api", **{ALLOW_HOSTS_ENV: "api.example.com,127.0.0.0/8"})
        assert added.code == 0, added.describe()
        sent = len(api.requests)
        rotated = home.run(["rotate", "svc/api", "--json"], **elsewhere)
        assert rotated.code == 1, rotated.describe()
        failed = json.loads(rotated.out)["failed"]
        assert [f["name"] for f in failed] == ["svc/api"], rotated.describe()
        assert ALLOW_HOSTS_ENV in failed[0]["error"], rotated.describe()
        assert len(api.requests) == sent, "the rotation sent a request outside the list"
        current = home.ok(["credential", "get", "svc/api"]).out
        assert current == "first-key-svc/api\n", "the old value stays CURRENT"

        # The same rotation with the host on the list goes through: the list was the reason.
        rotated = home.run(["rotate", "svc/api", "--json"], **{ALLOW_HOSTS_ENV: "127.0.0.1"})
        assert rotated.code == 0, rotated.describe()
        assert len(api.requests) > sent
