"""Connector lifecycle: pooled admin sessions of the postgres connector (observed on the real
server: ``pg_stat_database.sessions`` counts every login to a database, ``pg_stat_activity``
shows the sessions open now), and the ``ConnectorSet`` the engine holds.

Each postgres test gets its own database, admin role and application role on the password-
checking server, so the counts are its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from tests.conftest import PgTarget

from rotator.connectors import base as cb
from rotator.connectors import registry
from rotator.connectors.postgres import ADMIN_CHECK_IDLE_S, ADMIN_POOL_SIZE, PostgresConnector
from rotator.connectors.registry import ConnectorSet
from rotator.domain.secret import Secret
from rotator.errors import UnknownConnector

ADMIN = "pg/admin"
SETTLE_S = 15.0  # bound on waiting for the server to show sessions ended (polling its state)


@dataclass
class Resolver:
    values: dict[str, Secret] = field(default_factory=dict)

    async def get(self, name: str) -> Secret:
        if name not in self.values:
            raise cb.PermanentError(f"credential {name!r} cannot be read here")
        return self.values[name]


@dataclass
class Site:
    """A database of its own, an admin role (CREATEROLE) and an application role on it."""

    target: PgTarget
    db: str
    admin: str
    admin_password: str
    role: str
    resolver: Resolver
    made: list[str] = field(default_factory=list)

    def config(self, role: str = "") -> cb.ConnectorConfig:
        return cb.parse_config(
            PostgresConnector(),
            {
                "host": self.target.host,
                "port": str(self.target.port),
                "dbname": self.db,
                "role": role or self.role,
                "mode": "single",
                "admin": ADMIN,
                "admin_user": self.admin,
            },
        )

    def make_role(self, name: str) -> None:
        self.superuser(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal("initial-" + uuid.uuid4().hex)
            )
        )
        self.made.append(name)

    def superuser(self, query: sql.Composable, params: tuple[Any, ...] = ()) -> list[Any]:
        with psycopg.connect(self.target.dsn(), autocommit=True) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def sessions(self) -> int:
        """Logins to the site's database so far (read from another database, so the reading
        itself is not counted)."""
        rows = self.superuser(
            sql.SQL("SELECT sessions FROM pg_stat_database WHERE datname = %s"), (self.db,)
        )
        return int(rows[0][0])

    def backends(self, user: str | None = None) -> list[int]:
        """Pids of the sessions open now on the site's database (as ``user``)."""
        rows = self.superuser(
            sql.SQL(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s"
                " AND (%s::text IS NULL OR usename = %s) ORDER BY pid"
            ),
            (self.db, user, user),
        )
        return [int(r[0]) for r in rows]

    def settle(self, expected_logins: int, base: int) -> int:
        """Wait until no session is open on the database and its login count reached
        ``base + expected_logins`` (stats are flushed by a backend as it ends), or the bound
        passes; the logins counted since ``base``."""
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            if not self.backends() and self.sessions() - base >= expected_logins:
                break
            time.sleep(0.05)
        return self.sessions() - base


def wait_for(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + SETTLE_S
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def site(pg_target: PgTarget) -> Iterator[Site]:
    tag = uuid.uuid4().hex[:8]
    s = Site(
        pg_target,
        f"pool_{tag}",
        f"adm_{tag}",
        "adm-" + uuid.uuid4().hex,
        f"app_{tag}",
        Resolver(),
    )
    s.resolver.values[ADMIN] = Secret(s.admin_password)
    s.superuser(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(s.db)))
    s.superuser(
        sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
            sql.Identifier(s.admin), sql.Literal(s.admin_password)
        )
    )
    s.make_role(s.role)
    yield s
    s.superuser(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(s.db)))
    for role in (*s.made, s.admin):
        s.superuser(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def set_req(site: Site, password: str, role: str = "") -> cb.SetRequest:
    return cb.SetRequest(
        "pg/app", 2, site.config(role), Secret(password), None, secrets=site.resolver
    )


def probe_req(site: Site, password: str) -> cb.TestRequest:
    return cb.TestRequest("pg/app", 2, site.config(), Secret(password), secrets=site.resolver)


def password() -> str:
    return "pw-" + uuid.uuid4().hex


def test_sequential_rotations_share_one_admin_session_and_each_test_logs_in_afresh(
    site: Site,
) -> None:
    conn = PostgresConnector()
    base = site.sessions()
    pooled: list[int] = []

    async def go() -> None:
        for _ in range(20):
            value = password()
            await conn.set(set_req(site, value))
            await conn.test(probe_req(site, value))
        pooled.extend(site.backends(site.admin))
        await conn.aclose()

    asyncio.run(go())
    assert len(pooled) == 1, "one admin session served the 20 set steps"
    # 1 admin login + 20 test logins; nothing else logged in, and aclose ended the admin one.
    assert site.settle(21, base) == 21
    assert site.backends() == []


def test_concurrent_set_steps_open_at_most_pool_size_admin_sessions(site: Site) -> None:
    conn = PostgresConnector()
    roles = [f"{site.role}_{i}" for i in range(20)]  # one per rotation, as in a batch
    for role in roles:
        site.make_role(role)
    base = site.sessions()
    pooled: list[int] = []

    async def go() -> None:
        await asyncio.gather(*(conn.set(set_req(site, password(), role)) for role in roles))
        pooled.extend(site.backends(site.admin))
        await conn.aclose()

    asyncio.run(go())
    assert 1 <= len(pooled) <= ADMIN_POOL_SIZE < 20
    # The pool may still be growing when the last step returns (a login under way is not yet
    # among the sessions seen above), so the logins are bounded, not equal to that snapshot.
    logins = site.settle(len(pooled), base)
    assert len(pooled) <= logins <= ADMIN_POOL_SIZE, "at most a pool's worth of admin logins"
    assert site.backends() == []


def test_a_changed_admin_value_gets_a_new_pool_and_the_old_pool_is_closed(site: Site) -> None:
    conn = PostgresConnector()
    rotated = "adm-" + uuid.uuid4().hex
    seen: list[list[int]] = []

    async def go() -> None:
        await conn.set(set_req(site, password()))
        seen.append(site.backends(site.admin))
        # The admin credential is rotated: the server takes the new value, the old one is
        # refused from now on; sessions already logged in stay (PostgreSQL keeps them).
        site.superuser(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(site.admin), sql.Literal(rotated)
            )
        )
        site.resolver.values[ADMIN] = Secret(rotated)
        await conn.set(set_req(site, password()))
        old = seen[0][0]
        assert wait_for(lambda: old not in site.backends(site.admin)), "old pool not closed"
        seen.append(site.backends(site.admin))
        await conn.aclose()

    asyncio.run(go())
    assert len(seen[0]) == 1
    assert len(seen[1]) == 1
    assert seen[0] != seen[1]


def test_a_refused_admin_login_is_reference_refused_also_when_the_pool_logs_in_again(
    site: Site,
) -> None:
    conn = PostgresConnector()
    changed = "adm-" + uuid.uuid4().hex
    stale = site.admin_password

    async def go() -> None:
        await conn.set(set_req(site, password()))
        assert len(site.backends(site.admin)) == 1  # pooled
        # Another process rotates the admin credential and the server ends the pool's
        # session: the pool must log in again with the value it has, which is now refused.
        site.superuser(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(site.admin), sql.Literal(changed)
            )
        )
        site.superuser(
            sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"),
            (site.admin,),
        )
        assert wait_for(lambda: site.backends(site.admin) == [])
        with pytest.raises(cb.ReferenceRefused) as refused:
            await conn.set(set_req(site, password()))
        assert refused.value.reference == ADMIN
        assert stale not in str(refused.value)
        assert changed not in str(refused.value)
        assert "\n" not in str(refused.value)
        # The engine reads the admin credential again and retries: the new value works.
        site.resolver.values[ADMIN] = Secret(changed)
        await conn.set(set_req(site, password()))
        await conn.aclose()

    asyncio.run(go())


def test_a_wrong_admin_value_is_reference_refused_at_once(site: Site) -> None:
    conn = PostgresConnector()
    site.resolver.values[ADMIN] = Secret("wrong-" + uuid.uuid4().hex)

    async def go() -> None:
        with pytest.raises(cb.ReferenceRefused) as refused:
            await conn.set(set_req(site, password()))
        assert refused.value.reference == ADMIN
        assert site.resolver.values[ADMIN].reveal_text() not in str(refused.value)
        assert repr(conn) == "PostgresConnector(0 admin pools)"
        await conn.aclose()

    asyncio.run(go())


def test_a_pooled_session_killed_on_the_server_is_replaced_without_a_failed_call(
    site: Site,
) -> None:
    conn = PostgresConnector()
    seen: list[list[int]] = []

    async def go() -> None:
        await conn.set(set_req(site, password()))
        seen.append(site.backends(site.admin))
        site.superuser(
            sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"),
            (site.admin,),
        )
        assert wait_for(lambda: site.backends(site.admin) == [])
        value = password()
        await conn.set(set_req(site, value))  # no TransientError: the broken session is dropped
        await conn.test(probe_req(site, value))
        seen.append(site.backends(site.admin))
        await conn.aclose()

    asyncio.run(go())
    assert len(seen[0]) == 1
    assert len(seen[1]) == 1
    assert seen[0] != seen[1]


class Clock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the checks (psycopg_pool's empty query) of pooled sessions; each still runs."""
    seen: list[int] = []
    real = AsyncConnectionPool.check_connection

    async def counted(conn: Any) -> None:
        seen.append(1)
        await real(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(counted))
    return seen


def kill_admin_sessions(site: Site) -> None:
    site.superuser(
        sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"),
        (site.admin,),
    )
    assert wait_for(lambda: site.backends(site.admin) == [])


def test_a_session_ended_by_the_server_right_after_its_last_use_is_retried_once_unchecked(
    site: Site, checks: list[int]
) -> None:
    clock = Clock()
    conn = PostgresConnector(clock=clock)
    base = site.sessions()
    seen: list[list[int]] = []

    async def go() -> None:
        await conn.set(set_req(site, password()))
        seen.append(site.backends(site.admin))
        clock.now += ADMIN_CHECK_IDLE_S  # idle, but not longer than the bound: no check
        kill_admin_sessions(site)
        value = password()
        await conn.set(set_req(site, value))  # fails on the dead session, succeeds on a new one
        await conn.test(probe_req(site, value))  # the new password is the one set
        seen.append(site.backends(site.admin))
        await conn.aclose()

    asyncio.run(go())
    assert checks == [], "a session used moments ago is not checked before use"
    assert len(seen[0]) == 1
    assert len(seen[1]) == 1
    assert seen[0] != seen[1]
    # 2 admin logins (the first, and exactly one for the retry) + the test's login.
    assert site.settle(3, base) == 3


def test_a_session_idle_longer_than_the_bound_is_checked_and_a_dead_one_replaced_first(
    site: Site, checks: list[int]
) -> None:
    clock = Clock()
    conn = PostgresConnector(clock=clock)
    base = site.sessions()

    async def go() -> None:
        await conn.set(set_req(site, password()))
        clock.now += ADMIN_CHECK_IDLE_S + 1
        await conn.set(set_req(site, password()))  # checked, alive: kept
        assert len(checks) == 1
        clock.now += ADMIN_CHECK_IDLE_S + 1
        kill_admin_sessions(site)
        value = password()
        await conn.set(set_req(site, value))  # checked, dead: the pool is replaced
        await conn.test(probe_req(site, value))
        await conn.aclose()

    asyncio.run(go())
    assert len(checks) == 2
    assert site.settle(3, base) == 3  # 2 admin logins + the test's login


def test_aclose_ends_every_admin_session_is_idempotent_and_a_later_call_opens_again(
    site: Site,
) -> None:
    conn = PostgresConnector()
    seen: list[int] = []

    async def go() -> None:
        await conn.set(set_req(site, password()))
        seen.append(len(site.backends(site.admin)))
        await conn.aclose()
        await conn.aclose()
        assert wait_for(lambda: site.backends(site.admin) == [])
        await conn.set(set_req(site, password()))
        seen.append(len(site.backends(site.admin)))
        await conn.aclose()
        assert wait_for(lambda: site.backends(site.admin) == [])

    asyncio.run(go())
    assert seen == [1, 1]


def test_no_admin_value_or_fingerprint_shows_in_a_repr(site: Site) -> None:
    conn = PostgresConnector()

    async def go() -> str:
        await conn.set(set_req(site, password()))
        shown = repr(conn) + repr(vars(conn)) + repr(conn._pools) + repr(conn._fingerprints)
        await conn.aclose()
        return shown

    shown = asyncio.run(go())
    assert site.admin_password not in shown
    assert conn._fingerprints.of(Secret(site.admin_password)).hex() not in shown


# ---------------------------------------------------------------------------- ConnectorSet


class _Closing:
    def __init__(self, log: list[str], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    async def aclose(self) -> None:
        self.log.append(self.name)
        if self.fail:
            raise RuntimeError("boom")


def test_connector_set_gives_one_instance_per_kind_and_refuses_an_unknown_kind() -> None:
    connectors = ConnectorSet()
    assert connectors.get("postgres") is connectors.get("postgres")
    assert connectors.get("http") is not connectors.get("redis")
    assert registry.get_connector("postgres") is not connectors.get("postgres")
    with pytest.raises(UnknownConnector, match="unknown connector 'nope'"):
        connectors.get("nope")
    asyncio.run(cb.aclose(connectors.get("local")))  # no resources, no aclose: a no-op


def test_connector_set_aclose_closes_every_instance_even_when_one_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[str] = []
    made = {
        "a": _Closing(closed, "a", fail=True),
        "b": _Closing(closed, "b"),
        "local": registry.get_connector("local"),  # has no aclose: skipped
    }
    monkeypatch.setattr(registry, "get_connector", lambda kind: made[kind])
    connectors = ConnectorSet()
    for kind in made:
        connectors.get(kind)

    async def go() -> None:
        await connectors.aclose()
        await connectors.aclose()

    asyncio.run(go())
    assert closed == ["a", "b", "a", "b"]
