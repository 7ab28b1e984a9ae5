"""The rotator.client SDK: values with a cache that follows rotations, local mode, and the
psycopg / redis connection factories through real rotations of real targets."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
import redis
from psycopg import sql
from redis.backoff import AbstractBackoff
from redis.retry import Retry
from tests.conftest import PgTarget, RedisServer, free_port
from tests.integration.test_watch import Server, token
from tests.integration.test_watch import server as server  # the fixture

from rotator.client import AsyncClient, Client, Unreachable, redis_factory
from rotator.config import Settings
from rotator.domain.secret import Secret
from rotator.errors import NotFound, PermissionDenied
from rotator.service import BlockingService, Outcome, PolicyInput, ValueInput
from rotator.service.rotation import Selection

WAIT_S = 30.0
ROTATIONS = 10


def local_env(settings: Settings) -> dict[str, str]:
    return {"ROTATOR_HOME": str(settings.home), "ROTATOR_DB": settings.db_url}


def until(check: Callable[[], bool], what: str) -> None:
    """A bounded wait for ``check`` (never a fixed sleep)."""
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def rotate(svc: BlockingService, name: str, emergency: bool = False) -> None:
    result = svc.rotate(Selection(names=[name]), emergency=emergency)
    assert result.ok, result.to_json()
    assert [r.outcome for r in result.results] == [Outcome.ROTATED]


def test_get_serves_from_the_cache_until_a_rotation_is_reported(
    svc: BlockingService, server: Server
) -> None:
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    with Client(server.url, token(svc, "app", "reader", "app/*"), cache_ttl=3600) as client:
        first = client.get("app/db")
        assert client.get("app/db") == first
        assert svc.show("app/db").use_count == 1, "the second get came from the cache"
        rotate(svc, "app/db")
        # Long before the TTL: the watch drops the cached value once the rotation is reported.
        until(lambda: client.get("app/db") != first, "the cache to follow the rotation")
        new = client.get("app/db")
        assert new == svc.get_value("app/db").reveal_text()
        assert client.get("app/db", "PREVIOUS") == first
        assert first not in repr(client)
        assert new not in repr(client)


def test_errors_are_typed_and_never_hold_values(svc: BlockingService, server: Server) -> None:
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    svc.add_credential("other/db", "local", value=ValueInput(generate=True))
    with Client(server.url, token(svc, "app", "reader", "app/*"), cache_ttl=0) as client:
        with pytest.raises(NotFound):
            client.get("app/none")
        with pytest.raises(PermissionDenied) as denied:
            client.get("other/db")
        assert svc.get_value("other/db").reveal_text() not in str(denied.value)
    closed = Server(server.settings).start()
    closed.kill()
    with Client(closed.url, "rtr_x", cache_ttl=0) as gone, pytest.raises(Unreachable):
        gone.get("app/db")


def test_local_mode_has_the_same_api(settings: Settings, svc: BlockingService) -> None:
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    with Client(env=local_env(settings), cache_ttl=3600) as client:
        assert client.mode == "local"
        first = client.get("app/db")
        assert first == svc.get_value("app/db").reveal_text()
        changes = client.watch("app/db")
        threading.Thread(target=rotate, args=(svc, "app/db")).start()
        change = next(changes)
        changes.close()
        assert (change.name, change.version) == ("app/db", 2)
        until(lambda: client.get("app/db") != first, "the local cache to follow the rotation")
    # A token in local mode acts as its principal, like the CLI.
    reader = token(svc, "other", "reader", "other/*")
    with (
        Client(env={**local_env(settings), "ROTATOR_TOKEN": reader}) as client,
        pytest.raises(PermissionDenied),
    ):
        client.get("app/db")


# -- connection factories under rotation ------------------------------------------------------


def pg_admin(target: PgTarget, query: sql.Composable) -> None:
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        conn.execute(query)


@pytest.fixture
def pg_role(pg_target: PgTarget) -> Iterator[tuple[str, str]]:
    name, password = f"app_{uuid.uuid4().hex[:8]}", "initial-" + uuid.uuid4().hex
    pg_admin(
        pg_target,
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)
        ),
    )
    yield name, password
    for role in (name + "_clone", name):
        pg_admin(pg_target, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def add_pg(svc: BlockingService, target: PgTarget, role: tuple[str, str], mode: str) -> str:
    svc.add_credential("pg/admin", "local", value=ValueInput(value=Secret(target.password)))
    svc.add_credential(
        "pg/app",
        "postgres",
        settings={
            "host": target.host,
            "port": str(target.port),
            "role": role[0],
            "admin": "pg/admin",
            "mode": mode,
        },
        policy=PolicyInput(grace="0s"),
        value=ValueInput(value=Secret(role[1])),
    )
    return f"host={target.host} port={target.port} dbname=postgres user={role[0]} connect_timeout=5"


class Loop:
    """Runs ``work`` over and over in a thread until stopped; counts successes and failures."""

    def __init__(self, work: Callable[[], None]) -> None:
        self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.work = work
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.work()
                self.ok += 1
            except Exception as exc:  # counted, reported by the test
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=WAIT_S)


def counting_refetches(client: Client) -> list[str]:
    """Record each stage fetched bypassing the cache (the factories' retry path)."""
    seen: list[str] = []
    get = client.get

    def wrapped(name: str, stage: str = "CURRENT", *, fresh: bool = False) -> str:
        if fresh:
            seen.append(stage)
        return get(name, stage, fresh=fresh)

    client.get = wrapped  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("mode", ["single", "alternating"])
def test_psycopg_factory_has_no_failed_query_across_ten_rotations(
    settings: Settings,
    svc: BlockingService,
    pg_target: PgTarget,
    pg_role: tuple[str, str],
    mode: str,
) -> None:
    conninfo = add_pg(svc, pg_target, pg_role, mode)
    # The cache never expires and no watch refreshes it: only the retry can follow rotations.
    with Client(env=local_env(settings), cache_ttl=3600, watch_cache=False) as client:
        refetched = counting_refetches(client)
        connect = client.psycopg_factory("pg/app", conninfo)
        users: set[str] = set()

        def query() -> None:
            with connect() as conn:
                users.add(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]

        loop = Loop(query)
        until(lambda: loop.ok > 0 or bool(loop.failures), "a first query")
        for _ in range(ROTATIONS):
            rotate(svc, "pg/app")
            # Three more queries before the next rotation: a single-mode rotation whose set
            # lands during the retry's own login would fail it (single mode is not
            # zero-downtime; see rotator.client.helpers).
            done = loop.ok
            until(lambda b=done: loop.ok > b + 2 or bool(loop.failures), "queries")
        loop.finish()
    assert loop.failures == []
    assert loop.ok > ROTATIONS
    assert refetched, "the old password was refused at least once and fetched again"
    if mode == "alternating":
        assert users == {pg_role[0], pg_role[0] + "_clone"}


def test_psycopg_factory_retries_once_after_an_emergency_rotation(
    settings: Settings, svc: BlockingService, pg_target: PgTarget, pg_role: tuple[str, str]
) -> None:
    conninfo = add_pg(svc, pg_target, pg_role, "alternating")
    with Client(env=local_env(settings), cache_ttl=3600, watch_cache=False) as client:
        refetched = counting_refetches(client)
        connect = client.psycopg_factory("pg/app", conninfo)
        with connect() as conn:
            assert conn.execute("SELECT current_user").fetchone() == (pg_role[0],)
        rotate(svc, "pg/app", emergency=True)  # the cached password stops working at once
        with connect() as conn:
            assert conn.execute("SELECT current_user").fetchone() == (pg_role[0] + "_clone",)
        assert refetched == ["PENDING", "CURRENT"]


def refused_logins(admin: redis.Redis, user: str) -> int:
    """Logins as ``user`` the server refused, from its ACL LOG (which counts repeats of one
    failure in that entry's ``count``)."""
    entries: list[dict[str, Any]] = admin.acl_log(count=128)
    return sum(int(e["count"]) for e in entries if e["username"] == user and e["reason"] == "auth")


def test_redis_factory_has_no_failed_command_across_ten_rotations(
    svc: BlockingService, server: Server, redis_server: RedisServer
) -> None:
    user = f"app_{uuid.uuid4().hex[:8]}"
    svc.add_credential(
        "redis/app",
        "redis",
        settings={"host": redis_server.host, "port": str(redis_server.port), "username": user},
        policy=PolicyInput(grace="0s"),
    )
    rotate(svc, "redis/app")  # creates the user with a first password
    admin = redis.Redis(host=redis_server.host, port=redis_server.port)
    admin.execute_command("ACL", "SETUSER", user, "+ping", "+incr", "+incrby", "~counter:*")
    remote = token(svc, "app", "reader", "redis/*")
    try:
        with Client(server.url, remote, cache_ttl=3600, watch_cache=False) as client:
            refetched = counting_refetches(client)
            # redis-py's own policy (from 6.0 it retries a refused AUTH 10 times with backoff,
            # ~3 s): the factory must see the refusal at once and refetch, not outwait it.
            connect = client.redis_factory(
                "redis/app", host=redis_server.host, port=redis_server.port, username=user
            )

            def command() -> None:
                conn: Any = connect()
                try:
                    conn.incr(f"counter:{user}")
                finally:
                    conn.close()

            loop = Loop(command)
            until(lambda: loop.ok > 0 or bool(loop.failures), "a first command")
            for _ in range(ROTATIONS):
                # Emergency: the old password is removed before rotate returns.
                rotate(svc, "redis/app", emergency=True)
                done = loop.ok
                until(lambda b=done: loop.ok > b + 2 or bool(loop.failures), "commands")
            loop.finish()
        assert loop.failures == []
        assert loop.ok > ROTATIONS
        assert refetched
        # Each rotation costs one refused login (the stale cached password), then the
        # refetched one succeeds: two connection attempts, no redis-py retry in between.
        assert refused_logins(admin, user) == ROTATIONS
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


class CountingBackoff(AbstractBackoff):
    """No delay; counts the retries redis-py makes (every copy redis-py makes shares it)."""

    def __init__(self) -> None:
        self.retries = 0

    def reset(self) -> None:
        pass

    def compute(self, failures: int) -> float:
        self.retries += 1
        return 0

    def __deepcopy__(self, memo: dict[int, Any]) -> CountingBackoff:
        return self


class StaleClient:
    """Stands in for a rotator client whose every value (cached or fetched afresh) is one the
    server refuses, as when rotations land during the factory's own retry."""

    def get(self, name: str, stage: str = "CURRENT", *, fresh: bool = False) -> str:
        return "not-the-password"


def test_redis_factory_raises_a_twice_refused_login_at_once_yet_retries_network_errors(
    redis_server: RedisServer,
) -> None:
    user = f"app_{uuid.uuid4().hex[:8]}"
    admin = redis.Redis(host=redis_server.host, port=redis_server.port)
    admin.execute_command("ACL", "SETUSER", user, "on", ">the-password", "+ping")
    backoff = CountingBackoff()
    stale: Any = StaleClient()
    try:
        connect = redis_factory(
            stale,
            "redis/app",
            host=redis_server.host,
            port=redis_server.port,
            username=user,
            retry=Retry(backoff, 5),
        )
        with pytest.raises(redis.AuthenticationError):
            connect()
        assert refused_logins(admin, user) == 2, "the cached value, then the fetched one"
        assert backoff.retries == 0
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()
    # A refused TCP connect is no refused login: the caller's policy retries it.
    connect = redis_factory(
        stale, "redis/app", host="127.0.0.1", port=free_port(), retry=Retry(backoff, 5)
    )
    with pytest.raises(redis.ConnectionError) as caught:
        connect()
    assert not isinstance(caught.value, redis.AuthenticationError)
    assert backoff.retries == 5


def watch_starts(svc: BlockingService) -> int:
    return sum(e.action == "watch.start" for e in svc.audit_entries())


def test_async_client_follows_rotations_remote_and_local(
    settings: Settings, svc: BlockingService, server: Server
) -> None:
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    remote = token(svc, "app", "reader", "app/*")

    async def go(client: AsyncClient) -> int:
        started = watch_starts(svc)
        async with client:
            first = await client.get("app/db")  # starts the cache's own feed
            assert await client.get("app/db") == first
            feed = client.watch("app/db")
            nxt = asyncio.ensure_future(anext(feed))
            await asyncio.to_thread(
                until, lambda: watch_starts(svc) >= started + 2, "both feeds to start"
            )
            await asyncio.to_thread(rotate, svc, "app/db")
            change = await asyncio.wait_for(nxt, WAIT_S)
            await feed.aclose()
            deadline = time.monotonic() + WAIT_S
            while await client.get("app/db") == first:
                assert time.monotonic() < deadline, "the cache never followed the rotation"
                await asyncio.sleep(0.02)
            return change.version

    assert asyncio.run(go(AsyncClient(server.url, remote, cache_ttl=3600))) == 2
    assert asyncio.run(go(AsyncClient(env=local_env(settings), cache_ttl=3600))) == 3


async def aget(client: AsyncClient, name: str) -> str:
    async with client:
        return await client.get(name)


def test_a_name_with_dot_segments_reads_its_own_value_never_the_one_it_resolves_to(
    svc: BlockingService, server: Server
) -> None:
    # "a/../team-a/db" is a valid name; an HTTP client resolving its ".." would read team-a/db.
    svc.add_credential("team-a/db", "local", value=ValueInput(generate=True))
    svc.add_credential("a/../team-a/db", "local", value=ValueInput(generate=True))
    svc.add_credential("a/./b", "local", value=ValueInput(generate=True))
    svc.add_credential("a/b", "local", value=ValueInput(generate=True))
    remote = token(svc, "app", "reader", "*")
    for name in ("a/../team-a/db", "a/./b"):
        want = svc.get_value(name).reveal_text()
        with Client(server.url, remote, cache_ttl=0) as client:
            same = client.get(name) == want  # compared apart: a failure shows no value
        assert same, f"Client.get({name!r}) read another credential's value"
        same = asyncio.run(aget(AsyncClient(server.url, remote, cache_ttl=0), name)) == want
        assert same, f"AsyncClient.get({name!r}) read another credential's value"
    created = httpx.post(
        server.url + "/v1/credentials",
        headers={"Authorization": f"Bearer {token(svc, 'adm', 'admin', '*')}"},
        json={"name": "c/../a/b", "connector": "local", "generate": True},
    )
    assert created.status_code == 201, created.text
    assert created.headers["Location"] == "/v1/credentials/c%2F..%2Fa%2Fb"
