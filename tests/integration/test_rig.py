"""Self-tests for the test rig in tests/conftest.py, against the real servers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis
import sqlalchemy as sa

if TYPE_CHECKING:
    from conftest import PgServer, RedisServer


@pytest.mark.postgres
def test_pg_server_is_postgresql_15(pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.dsn()) as conn:
        row = conn.execute("SELECT version()").fetchone()
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('fsync', 'max_connections', 'listen_addresses', 'port')"
        ).fetchall()
    settings: dict[str, str] = {str(name): str(value) for name, value in rows}
    assert row is not None
    assert row[0].startswith("PostgreSQL 15.")
    assert settings == {
        "fsync": "off",
        "max_connections": "300",
        "listen_addresses": "127.0.0.1",
        "port": str(pg_server.port),
    }
    assert pg_server.host == "127.0.0.1"
    assert pg_server.url("x") == f"postgresql+psycopg://postgres@127.0.0.1:{pg_server.port}/x"


@pytest.fixture
def other_database(pg_server: PgServer) -> Iterator[str]:
    """A second database on the same server, created and dropped by hand."""
    name = f"test_other_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_server.url(name)
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_pg_database_is_isolated(pg_database: str, other_database: str) -> None:
    first, second = sa.create_engine(pg_database), sa.create_engine(other_database)
    try:
        with first.begin() as conn:
            conn.execute(sa.text("CREATE TABLE only_in_first (id int)"))
        assert sa.inspect(first).has_table("only_in_first")
        assert not sa.inspect(second).has_table("only_in_first")
    finally:
        first.dispose()
        second.dispose()


_seen_databases: list[str] = []
_open_connections: list[psycopg.Connection[tuple[object, ...]]] = []


@pytest.mark.postgres
@pytest.mark.parametrize("run", [1, 2])
def test_pg_database_fresh_per_test(run: int, pg_database: str, pg_server: PgServer) -> None:
    """Each test gets a new, empty database, dropped afterwards even if still in use."""
    assert pg_database not in _seen_databases
    engine = sa.create_engine(pg_database)
    try:
        # run 1 leaves a table behind; run 2 must not see it
        assert not sa.inspect(engine).has_table("leftover")
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE leftover (id int)"))
    finally:
        engine.dispose()
    if run == 2 and _seen_databases:
        previous = _seen_databases[-1].rsplit("/", 1)[1]
        with psycopg.connect(pg_server.dsn()) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (previous,))
            assert row.fetchone() is None, "the previous test's database was not dropped"
        for leaked in _open_connections:
            leaked.close()
    _seen_databases.append(pg_database)
    # Leave a connection open on purpose: teardown must still drop the database.
    _open_connections.append(
        psycopg.connect(pg_database.replace("postgresql+psycopg://", "postgresql://"))
    )


@pytest.mark.redis
def test_redis_roundtrip_and_acl(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    user = f"rig_{uuid.uuid4().hex[:8]}"
    try:
        version = str(client.info("server")["redis_version"])
        assert int(version.split(".")[0]) >= 6
        client.set("rig:key", "value")
        assert client.get("rig:key") == "value"

        assert client.acl_setuser(
            user, enabled=True, passwords=["+s3cret"], keys=["rig:*"], commands=["+get"]
        )
        as_user = redis.Redis(
            host=redis_server.host,
            port=redis_server.port,
            username=user,
            password="s3cret",
            decode_responses=True,
        )
        try:
            assert as_user.get("rig:key") == "value"
            with pytest.raises(redis.exceptions.NoPermissionError):
                as_user.set("rig:key", "other")
        finally:
            as_user.close()
    finally:
        client.acl_deluser(user)
        client.delete("rig:key")
        client.close()


def test_db_url_roundtrip(db_url: str, request: pytest.FixtureRequest) -> None:
    backend = request.node.callspec.id
    assert db_url.startswith(
        {"sqlite": "sqlite:///", "postgresql": "postgresql+psycopg://"}[backend]
    )
    engine = sa.create_engine(db_url)
    meta = sa.MetaData()
    things = sa.Table(
        "things",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
    )
    try:
        meta.create_all(engine)
        with engine.begin() as conn:
            conn.execute(things.insert(), [{"name": "a"}, {"name": "b"}])
        with engine.connect() as conn:
            names = conn.execute(sa.select(things.c.name).order_by(things.c.id)).scalars().all()
        assert names == ["a", "b"]
        assert engine.dialect.name == backend
    finally:
        engine.dispose()
