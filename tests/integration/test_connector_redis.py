"""The ``redis`` connector against the real throwaway Redis server.

Direct connector calls (no store) check idempotency, error classes and odd names/values;
engine-level tests (through ``svc``, on SQLite and PostgreSQL) check rotation, grace,
emergency revocation, zero downtime under load, and bad configuration. Each test uses its own
ACL users (unique names, deleted afterwards); the ``default`` user is never touched.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.retry import Retry as SyncRetry
from tests.conftest import RedisServer

from rotator import scheduler
from rotator.connectors import base as cb
from rotator.connectors.redis import RedisConfig, RedisConnector, digest, generate
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.engine import Engine, EngineOptions, Outcome, RotationRequest, Trigger
from rotator.errors import ConnectorError, InvalidInput, NotFound, VerificationFailed
from rotator.service import BlockingService, PolicyInput, ValueInput

pytestmark = pytest.mark.redis

FAST = EngineOptions(retry_initial_s=0.001, retry_max_s=0.01, retry_attempts=3)
CONN = RedisConnector()
DRIVER = DriverInfo()  # made once: each redis-py client would read package metadata otherwise


# ------------------------------------------------------------------------------ helpers


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw(value: Secret | str | bytes) -> bytes:
    if isinstance(value, Secret):
        return value.reveal()
    return value.encode() if isinstance(value, str) else value


def can_auth(server: RedisServer, username: str, password: Secret | str | bytes) -> bool:
    """A new connection: does Redis accept AUTH username password?"""
    client = redis.Redis(
        host=server.host,
        port=server.port,
        single_connection_client=True,
        socket_timeout=5,
        retry=SyncRetry(NoBackoff(), 0),  # a refused AUTH is a ConnectionError: never retry it
    )
    try:
        client.execute_command("AUTH", username, raw(password))
        return True
    except redis.exceptions.AuthenticationError:
        return False
    finally:
        client.close()


@dataclass
class Acl:
    """Makes uniquely named ACL users on the shared server and deletes them afterwards."""

    server: RedisServer
    client: redis.Redis
    made: list[str] = field(default_factory=list)

    def name(self, prefix: str = "u") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.made.append(name)
        return name

    def setuser(self, name: str, *rules: str | bytes) -> None:
        if name not in self.made:
            self.made.append(name)
        self.client.execute_command("ACL", "SETUSER", name, *rules)

    def admin(self, *rules: str) -> tuple[str, str]:
        """A new admin user (all permissions unless ``rules``) and its password."""
        name, password = self.name("admin"), f"adm-{uuid.uuid4().hex}"
        self.setuser(name, "on", ">" + password, *(rules or ("~*", "&*", "+@all")))
        return name, password

    def user(self, name: str) -> dict[str, Any] | None:
        reply = self.client.execute_command("ACL", "GETUSER", name)
        if reply is None:
            return None
        if isinstance(reply, dict):
            return {str(k): v for k, v in reply.items()}
        return {str(k): v for k, v in zip(reply[0::2], reply[1::2], strict=False)}

    def digests(self, name: str) -> set[str]:
        info = self.user(name)
        return set() if info is None else {str(p) for p in info["passwords"]}


@pytest.fixture
def acl(redis_server: RedisServer) -> Iterator[Acl]:
    client = redis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=True)
    helper = Acl(redis_server, client)
    yield helper
    if helper.made:
        client.execute_command("ACL", "DELUSER", *helper.made)
    client.close()


@dataclass
class Resolver:
    """The SecretResolver a connector gets: other credentials' CURRENT values by name."""

    values: dict[str, Secret] = field(default_factory=dict)

    async def get(self, name: str) -> Secret:
        try:
            return self.values[name]
        except KeyError:
            raise cb.PermanentError(
                f"referenced credential {name!r}: no credential {name!r}"
            ) from None


def config(server: RedisServer, username: str, **kw: Any) -> RedisConfig:
    return RedisConfig(host=server.host, port=server.port, username=username, **kw)


def admin_config(acl: Acl, username: str, **kw: Any) -> tuple[RedisConfig, Resolver]:
    admin, password = acl.admin()
    cfg = config(acl.server, username, admin="redis/admin", admin_user=admin, **kw)
    return cfg, Resolver({"redis/admin": Secret(password)})


def set_(
    cfg: RedisConfig, res: cb.SecretResolver, pending: Secret, current: Secret | None = None
) -> Coroutine[Any, Any, None]:
    return CONN.set(cb.SetRequest("redis/app", 2, cfg, pending, current, secrets=res))


def check(cfg: RedisConfig, pending: Secret) -> Coroutine[Any, Any, None]:
    return CONN.test(cb.TestRequest("redis/app", 2, cfg, pending))


def revoke(cfg: RedisConfig, res: cb.SecretResolver, value: Secret) -> Coroutine[Any, Any, None]:
    return CONN.revoke(cb.RevokeRequest("redis/app", 1, cfg, value, secrets=res))


def rollback(
    cfg: RedisConfig, res: cb.SecretResolver, pending: Secret, current: Secret | None
) -> Coroutine[Any, Any, None]:
    return CONN.rollback(cb.RollbackRequest("redis/app", 2, cfg, pending, current, secrets=res))


def verify(cfg: RedisConfig, res: cb.SecretResolver) -> Coroutine[Any, Any, None]:
    return CONN.verify(cb.VerifyRequest("redis/app", cfg, secrets=res))


def new_value() -> Secret:
    return generate(32)


# ------------------------------------------------------------------------------ direct


def test_create_makes_random_passwords_of_the_configured_length() -> None:
    cfg = RedisConfig(username="x", password_length=48)
    values = [
        asyncio.run(CONN.create(cb.CreateRequest("c", 1, cfg))).reveal_text() for _ in range(20)
    ]
    assert all(len(v) == 48 for v in values)
    assert len(set(values)) == 20
    assert all(c.isalnum() or c in "-_" for v in values for c in v)


def test_set_test_revoke_rollback_are_idempotent(acl: Acl) -> None:
    user = acl.name()
    cfg, res = admin_config(acl, user)
    old, new, failed = new_value(), new_value(), new_value()

    async def go() -> None:
        for _ in range(2):
            await set_(cfg, res, old)
        assert acl.digests(user) == {digest(old)}
        for _ in range(2):
            await set_(cfg, res, new, old)
            await check(cfg, new)
        assert acl.digests(user) == {digest(old), digest(new)}
        assert can_auth(acl.server, user, old)
        assert can_auth(acl.server, user, new)

        for _ in range(2):
            await revoke(cfg, res, old)
        assert acl.digests(user) == {digest(new)}
        assert not can_auth(acl.server, user, old)
        assert can_auth(acl.server, user, new)

        await set_(cfg, res, failed, new)
        for _ in range(2):
            await rollback(cfg, res, failed, new)
        assert acl.digests(user) == {digest(new)}
        assert not can_auth(acl.server, user, failed)
        # rollback of a value never set, revoke of a user that does not exist: nothing to do
        await rollback(cfg, res, new_value(), new)
        await revoke(
            config(acl.server, acl.name(), admin="redis/admin", admin_user=cfg.admin_user), res, new
        )
        assert acl.digests(user) == {digest(new)}
        # finish has nothing to do in a rotation (a previous value exists) ...
        await CONN.finish(cb.FinishRequest("redis/app", 2, cfg, failed, new, secrets=res))
        assert acl.digests(user) == {digest(new)}
        # ... and publishes a first value (none before it), idempotently
        first = new_value()
        for _ in range(2):
            await CONN.finish(cb.FinishRequest("redis/app", 1, cfg, first, None, secrets=res))
        assert acl.digests(user) == {digest(new), digest(first)}

    asyncio.run(go())


def test_rollback_never_removes_the_current_value(acl: Acl) -> None:
    user = acl.name()
    cfg, res = admin_config(acl, user)
    value = new_value()
    asyncio.run(set_(cfg, res, value))
    asyncio.run(rollback(cfg, res, value, value))
    assert can_auth(acl.server, user, value)


def test_first_set_creates_the_user_on_with_no_permissions(acl: Acl) -> None:
    user = acl.name()
    cfg, res = admin_config(acl, user)
    value = new_value()
    asyncio.run(verify(cfg, res))  # a missing user is fine: set creates it
    assert acl.user(user) is None, "verify changes nothing"
    asyncio.run(set_(cfg, res, value))
    info = acl.user(user)
    assert info is not None
    assert info["flags"] == ["on"]
    assert info["commands"] == "-@all"
    assert info["keys"] == ""
    asyncio.run(check(cfg, value))  # AUTH works; the NOPERM PING is not a failure


def test_existing_user_keeps_its_permissions_and_flags(acl: Acl) -> None:
    user = acl.name()
    acl.setuser(user, "on", ">operator-set", "~app:*", "+get", "+set", "+del")
    before = acl.user(user)
    assert before is not None
    cfg, res = admin_config(acl, user)
    value = new_value()
    asyncio.run(set_(cfg, res, value))
    after = acl.user(user)
    assert after is not None
    assert {k: v for k, v in after.items() if k != "passwords"} == {
        k: v for k, v in before.items() if k != "passwords"
    }
    assert can_auth(acl.server, user, "operator-set")
    assert can_auth(acl.server, user, value)
    client = redis.Redis(
        host=acl.server.host, port=acl.server.port, username=user, password=value.reveal_text()
    )
    try:
        client.set(f"app:{user}", "ok")
        assert client.get(f"app:{user}") == b"ok"
        client.delete(f"app:{user}")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.get("other")
    finally:
        client.close()


def test_admin_may_be_the_default_user_without_auth(acl: Acl) -> None:
    user = acl.name()
    cfg = config(acl.server, user)  # admin empty: the default user, no AUTH
    value = new_value()
    asyncio.run(verify(cfg, cb.NO_SECRETS))
    asyncio.run(set_(cfg, cb.NO_SECRETS, value))
    asyncio.run(check(cfg, value))
    asyncio.run(revoke(cfg, cb.NO_SECRETS, value))
    assert not can_auth(acl.server, user, value)


def test_disabled_user_is_not_silently_reenabled(acl: Acl) -> None:
    user = acl.name()
    acl.setuser(user, "off", ">old")
    cfg, res = admin_config(acl, user)
    with pytest.raises(cb.PermanentError, match=r"is disabled \(off\)"):
        asyncio.run(set_(cfg, res, new_value()))
    with pytest.raises(cb.PermanentError, match=r"is disabled \(off\)"):
        asyncio.run(verify(cfg, res))
    info = acl.user(user)
    assert info is not None
    assert info["flags"] == ["off"]
    assert len(info["passwords"]) == 1


def test_nopass_user_is_refused(acl: Acl) -> None:
    user = acl.name()
    acl.setuser(user, "on", "nopass")
    cfg, res = admin_config(acl, user)
    with pytest.raises(cb.PermanentError, match="has nopass"):
        asyncio.run(set_(cfg, res, new_value()))
    info = acl.user(user)
    assert info is not None
    assert "nopass" in info["flags"]


def test_bad_admin_password_is_permanent_and_names_the_credential(acl: Acl) -> None:
    user = acl.name()
    admin, _ = acl.admin()
    wrong = f"wrong-{uuid.uuid4().hex}"
    cfg = config(acl.server, user, admin="redis/admin", admin_user=admin)
    res = Resolver({"redis/admin": Secret(wrong)})
    value = new_value()
    for call in (
        lambda: set_(cfg, res, value),
        lambda: revoke(cfg, res, value),
        lambda: rollback(cfg, res, value, None),
        lambda: verify(cfg, res),
    ):
        with pytest.raises(cb.PermanentError) as info:
            asyncio.run(call())
        msg = str(info.value)
        assert (
            f"admin credential 'redis/admin' was refused by redis at 127.0.0.1:{acl.server.port}"
            in msg
        )
        assert f"(user {admin!r})" in msg
        assert wrong not in msg
        assert value.reveal_text() not in msg
    assert acl.user(user) is None


def test_unknown_admin_credential_is_permanent(acl: Acl) -> None:
    cfg = config(acl.server, acl.name(), admin="redis/nope", admin_user="someone")
    with pytest.raises(cb.PermanentError) as info:
        asyncio.run(set_(cfg, Resolver(), new_value()))
    assert str(info.value) == (
        "set: admin credential 'redis/nope' cannot be read: no credential 'redis/nope'"
    )


def test_admin_without_acl_permission_is_permanent(acl: Acl) -> None:
    user = acl.name()
    admin, password = acl.admin("+ping")
    cfg = config(acl.server, user, admin="redis/admin", admin_user=admin)
    res = Resolver({"redis/admin": Secret(password)})
    with pytest.raises(cb.PermanentError, match=f"redis user {admin!r} may not manage ACL users"):
        asyncio.run(set_(cfg, res, new_value()))
    with pytest.raises(cb.PermanentError, match="may not manage ACL users"):
        asyncio.run(verify(cfg, res))


def test_admin_that_may_read_but_not_change_acl_fails_verify(acl: Acl) -> None:
    admin, password = acl.admin("+ping", "+acl|getuser", "+acl|dryrun")
    cfg = config(acl.server, acl.name(), admin="redis/admin", admin_user=admin)
    with pytest.raises(cb.PermanentError, match=f"redis user {admin!r} may not run ACL SETUSER"):
        asyncio.run(verify(cfg, Resolver({"redis/admin": Secret(password)})))


def test_unreachable_port_is_transient_and_verify_permanent() -> None:
    port = closed_port()
    cfg = RedisConfig(port=port, username="app", timeout_s=1)
    value = new_value()
    for call in (
        lambda: set_(cfg, cb.NO_SECRETS, value),
        lambda: check(cfg, value),
        lambda: revoke(cfg, cb.NO_SECRETS, value),
        lambda: rollback(cfg, cb.NO_SECRETS, value, None),
    ):
        with pytest.raises(
            cb.TransientError,
            match=f"^(set|test|revoke|rollback): cannot reach redis at 127.0.0.1:{port}$",
        ):
            asyncio.run(call())
    with pytest.raises(cb.PermanentError, match=f"^cannot reach redis at 127.0.0.1:{port}$"):
        asyncio.run(verify(cfg, cb.NO_SECRETS))


def test_silent_server_times_out_as_transient() -> None:
    with socket.socket() as listener:  # accepts the connection, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        cfg = RedisConfig(port=port, username="app", timeout_s=0.3)
        t0 = time.monotonic()
        with pytest.raises(
            cb.TransientError, match=r"^test: redis at 127.0.0.1:\d+ did not answer within 0.3s$"
        ):
            asyncio.run(check(cfg, new_value()))
        assert time.monotonic() - t0 < 3


def test_refused_new_value_is_permanent(acl: Acl) -> None:
    user = acl.name()
    acl.setuser(user, "on", ">known")
    with pytest.raises(cb.PermanentError, match=r"^the target refused the new value$"):
        asyncio.run(check(config(acl.server, user), Secret("not-the-password")))


# Redis rejects usernames with C isspace() characters or NUL; everything else is a name.
ODD_NAMES = ["quo\"te's", "ünïcødé-名前", "a:b@c/d#e>f<g", "nbsp\u00a0inside", "`$(x)`;", "x" * 300]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_usernames_work_end_to_end(acl: Acl, name: str) -> None:
    user = f"{name}_{uuid.uuid4().hex[:6]}"
    acl.made.append(user)
    cfg, res = admin_config(acl, user)
    first, second = Secret("first value"), Secret("sec'ond\" value")

    async def go() -> None:
        await verify(cfg, res)
        await set_(cfg, res, first)
        await set_(cfg, res, second, first)
        await check(cfg, second)
        await revoke(cfg, res, first)

    asyncio.run(go())
    assert not can_auth(acl.server, user, first)
    assert can_auth(acl.server, user, second)
    assert acl.digests(user) == {digest(second)}


@pytest.mark.parametrize(
    "bad", ["with space", "tab\there", "new\nline", "cr\rx", "vt\vx", "ff\fx", "nul\0x"]
)
def test_usernames_redis_rejects_are_rejected_by_the_config(acl: Acl, bad: str) -> None:
    with pytest.raises(redis.exceptions.ResponseError, match="can't contain spaces or null"):
        acl.client.execute_command("ACL", "SETUSER", bad, "on")
    with pytest.raises(
        InvalidInput, match=r"connector 'redis': .*cannot contain spaces.*'username'"
    ):
        cb.parse_config(CONN, {"username": bad})
    with pytest.raises(InvalidInput, match="'admin_user'"):
        cb.parse_config(CONN, {"username": "ok", "admin": "a", "admin_user": bad})


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    password=st.binary(min_size=1, max_size=80) | st.text(min_size=1, max_size=40).map(str.encode)
)
@example(password=b">also-a-modifier")
@example(password=b"<also-a-modifier")
@example(password=b"nopass")
@example(password=b"resetpass on ~* +@all")
@example(password=b"with space 'single' \"double\" \\ back")
@example(password=b"new\nline\r\n\x00nul")
@example(password="ünïcødé ☃".encode())
def test_any_bytes_are_one_password(acl: Acl, password: bytes) -> None:
    """A password is one argument: whatever it holds, it never becomes an ACL rule."""
    user = f"bytes_{uuid.uuid4().hex[:10]}"
    acl.made.append(user)
    cfg = config(acl.server, user)
    value = Secret(password)

    async def go() -> None:
        await set_(cfg, cb.NO_SECRETS, value)
        await set_(cfg, cb.NO_SECRETS, value)
        await check(cfg, value)

    asyncio.run(go())
    info = acl.user(user)
    assert info is not None
    assert info["flags"] == ["on"]
    assert info["commands"] == "-@all"
    assert {str(p) for p in info["passwords"]} == {digest(value)}
    assert not can_auth(acl.server, user, password + b"x")
    asyncio.run(revoke(cfg, cb.NO_SECRETS, value))
    assert not can_auth(acl.server, user, password)
    acl.client.execute_command("ACL", "DELUSER", user)


def test_no_value_in_messages_logs_or_reprs(acl: Acl, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    user = acl.name()
    admin, admin_pw = acl.admin()
    wrong = Secret(f"wrong-admin-{uuid.uuid4().hex}")
    value = Secret(f"value-{uuid.uuid4().hex}")
    good = config(acl.server, user, admin="redis/admin", admin_user=admin)
    errors: list[BaseException] = []

    async def go() -> None:
        await set_(good, Resolver({"redis/admin": Secret(admin_pw)}), value)
        for call in (
            lambda: set_(good, Resolver({"redis/admin": wrong}), value),
            lambda: check(good, Secret(b"refused " + value.reveal())),
            lambda: revoke(good, Resolver({"redis/admin": wrong}), value),
            lambda: set_(RedisConfig(port=closed_port(), username=user), cb.NO_SECRETS, value),
        ):
            try:
                await call()
            except ConnectorError as exc:
                errors.append(exc)

    asyncio.run(go())
    assert len(errors) == 4
    secrets = [value.reveal_text(), wrong.reveal_text(), admin_pw, digest(value), digest(wrong)]
    texts = [caplog.text, repr(good), str(good.model_dump())]
    for exc in errors:
        assert exc.__cause__ is None
        assert exc.__suppress_context__
        texts += [str(exc), repr(exc)]
        ctx, depth = exc.__context__, 0
        while ctx is not None and depth < 10:  # even the suppressed redis-py errors are clean
            texts += [str(ctx), repr(ctx)]
            ctx, depth = ctx.__context__, depth + 1
    for text in texts:
        for s in secrets:
            assert s not in text


# ------------------------------------------------------------------------------ engine


def add_admin(svc: BlockingService, acl: Acl) -> str:
    """An admin ACL user whose password is the rotator credential ``redis/admin``."""
    admin, password = acl.admin()
    svc.add_credential("redis/admin", "local", value=ValueInput(value=Secret(password)))
    return admin


def app_settings(server: RedisServer, user: str, admin: str, **kw: Any) -> dict[str, str]:
    out = {
        "host": server.host,
        "port": str(server.port),
        "username": user,
        "admin": "redis/admin",
        "admin_user": admin,
    }
    out.update({k: str(v) for k, v in kw.items()})
    return out


def run(svc: BlockingService, reqs: list[RotationRequest], opts: EngineOptions = FAST) -> Any:
    async def go() -> Any:
        async with Engine(svc.kernel, opts) as engine:
            return await engine.rotate(reqs)

    return asyncio.run(go())


def stages(svc: BlockingService, name: str) -> dict[int, Stage]:
    return {v.number: v.stage for v in svc.show(name).versions}


def test_rotation_keeps_old_value_valid_until_grace_then_revokes(
    svc: BlockingService, acl: Acl
) -> None:
    admin = add_admin(svc, acl)
    user = acl.name("app")
    svc.add_credential(
        "redis/app",
        "redis",
        settings=app_settings(acl.server, user, admin),
        policy=PolicyInput(grace="10m"),
        verify=True,
    )
    # No value yet: the first rotation creates the ACL user with its first password.
    assert run(svc, [RotationRequest("redis/app")]).ok
    first = svc.get_value("redis/app")
    assert can_auth(acl.server, user, first)
    assert stages(svc, "redis/app") == {1: Stage.CURRENT}

    result = run(svc, [RotationRequest("redis/app")])
    assert result.to_json()["rotated"] == ["redis/app"]
    second = svc.get_value("redis/app")
    assert second != first
    assert svc.get_value("redis/app", Stage.PREVIOUS) == first
    assert can_auth(acl.server, user, first), "the old value stays valid during the grace"
    assert can_auth(acl.server, user, second)
    assert stages(svc, "redis/app") == {1: Stage.PREVIOUS, 2: Stage.CURRENT}
    steps = [e.action for e in svc.audit_entries(credential="redis/app") if e.rotation_id]
    assert steps[-5:] == [
        "rotation.create",
        "rotation.set",
        "rotation.test",
        "rotation.finish",
        "rotation.complete",
    ]

    later = svc.clock() + timedelta(minutes=11)
    svc.kernel.clock = lambda: later

    async def revoke_due() -> dict[int, bool]:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.process_revocations()

    assert list(asyncio.run(revoke_due()).values()) == [True]
    assert not can_auth(acl.server, user, first)
    assert can_auth(acl.server, user, second)
    assert acl.digests(user) == {digest(second)}
    assert stages(svc, "redis/app") == {1: Stage.RETIRED, 2: Stage.CURRENT}


def test_a_value_given_or_generated_at_add_is_valid_at_once(svc: BlockingService, acl: Acl) -> None:
    """The service publishes a first value through ``finish``: the redis connector adds it
    (creating the user), so ``--generate`` and ``--value-stdin`` work without a rotation."""
    admin = add_admin(svc, acl)
    user = acl.name("app")
    svc.add_credential(
        "redis/app",
        "redis",
        settings=app_settings(acl.server, user, admin),
        value=ValueInput(generate=True),
        verify=True,
    )
    generated = svc.get_value("redis/app")
    assert len(generated.reveal_text()) == 32
    assert can_auth(acl.server, user, generated)
    assert acl.digests(user) == {digest(generated)}
    assert run(svc, [RotationRequest("redis/app", trigger=Trigger.EMERGENCY, grace_s=0)]).ok
    assert not can_auth(acl.server, user, generated)
    assert can_auth(acl.server, user, svc.get_value("redis/app"))
    assert stages(svc, "redis/app") == {1: Stage.RETIRED, 2: Stage.CURRENT}

    # Adopting a user that exists with a known password: nothing changes on Redis.
    other = acl.name("legacy")
    acl.setuser(other, "on", ">legacy-password", "+ping")
    before = acl.user(other)
    svc.add_credential(
        "redis/legacy",
        "redis",
        settings=app_settings(acl.server, other, admin),
        value=ValueInput(value=Secret("legacy-password")),
        verify=True,
    )
    assert acl.user(other) == before


def test_emergency_rotation_refuses_old_value_when_rotate_returns(
    svc: BlockingService, acl: Acl
) -> None:
    admin = add_admin(svc, acl)
    user = acl.name("app")
    svc.add_credential(
        "redis/app",
        "redis",
        settings=app_settings(acl.server, user, admin),
        policy=PolicyInput(grace="1h"),
    )
    assert run(svc, [RotationRequest("redis/app")]).ok
    old = svc.get_value("redis/app")
    result = run(svc, [RotationRequest("redis/app", trigger=Trigger.EMERGENCY, grace_s=0)])
    assert result.ok, result.to_json()
    new = svc.get_value("redis/app")
    assert not can_auth(acl.server, user, old)
    assert can_auth(acl.server, user, new)
    assert acl.digests(user) == {digest(new)}
    assert stages(svc, "redis/app") == {1: Stage.RETIRED, 2: Stage.CURRENT}


def test_the_admin_credential_rotates_itself(svc: BlockingService, acl: Acl) -> None:
    """The admin password is a credential like any other: the redis connector rotates it,
    authenticating with its own CURRENT value, and the app keeps rotating afterwards (in the
    same engine, whose admin-secret cache must not serve the revoked value)."""
    admin, password = acl.admin()
    svc.add_credential(
        "redis/admin",
        "redis",
        settings=app_settings(acl.server, admin, admin),
        value=ValueInput(value=Secret(password)),
        verify=True,  # checked with the value being added: it is not stored yet
    )
    user = acl.name("app")
    svc.add_credential("redis/app", "redis", settings=app_settings(acl.server, user, admin))

    async def go() -> list[Any]:
        async with Engine(svc.kernel, FAST) as engine:
            return [
                await engine.rotate([RotationRequest("redis/app")]),
                await engine.rotate(
                    [RotationRequest("redis/admin", trigger=Trigger.EMERGENCY, grace_s=0)]
                ),
                await engine.rotate([RotationRequest("redis/app")]),
                await engine.rotate([RotationRequest("redis/admin")]),
                await engine.rotate([RotationRequest("redis/app", grace_s=0)]),
            ]

    results = asyncio.run(go())
    assert [r.ok for r in results] == [True] * 5, [r.to_json() for r in results]
    assert not can_auth(acl.server, admin, password)
    second = svc.get_value("redis/admin", Stage.PREVIOUS)
    assert can_auth(acl.server, admin, second), "a normal rotation keeps the old admin value"
    assert can_auth(acl.server, admin, svc.get_value("redis/admin"))
    assert len(acl.digests(admin)) == 2
    # The last app rotation had grace 0: every older app password is gone.
    assert acl.digests(user) == {digest(svc.get_value("redis/app"))}


def test_emergency_rotation_revokes_every_older_value(svc: BlockingService, acl: Acl) -> None:
    admin = add_admin(svc, acl)
    user = acl.name("app")
    svc.add_credential(
        "redis/app",
        "redis",
        settings=app_settings(acl.server, user, admin),
        policy=PolicyInput(grace="1h"),
    )
    assert run(svc, [RotationRequest("redis/app")]).ok
    first = svc.get_value("redis/app")
    assert run(svc, [RotationRequest("redis/app")]).ok
    assert run(svc, [RotationRequest("redis/app", trigger=Trigger.EMERGENCY, grace_s=0)]).ok
    assert acl.digests(user) == {digest(svc.get_value("redis/app"))}
    assert not can_auth(acl.server, user, first)


PACE_S = 0.02  # between a client's attempts: load without starving the store's writer


def test_zero_downtime_under_50_rotations(svc: BlockingService, acl: Acl) -> None:
    """4 clients authenticate in a loop (new connection + AUTH each time) with the CURRENT
    value read through rotator (PREVIOUS if CURRENT is refused) while 50 rotations run one
    after another with a 2 s grace and ``serve`` revokes expired values in the background."""
    admin = add_admin(svc, acl)
    user = acl.name("app")
    name = "redis/app"
    svc.add_credential(name, "redis", settings=app_settings(acl.server, user, admin))
    assert run(svc, [RotationRequest(name)]).ok
    issued = [svc.get_value(name)]
    stats: Counter[str] = Counter()
    failures: list[str] = []
    timing: dict[str, float] = {"read_s": 0.0, "auth_s": 0.0}

    async def auth(value: Secret) -> bool:
        client = aioredis.Redis(
            host=acl.server.host,
            port=acl.server.port,
            single_connection_client=True,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
            driver_info=DRIVER,
        )
        try:
            await client.execute_command("AUTH", user, value.reveal())  # type: ignore[no-untyped-call]
            return True
        except redis.exceptions.AuthenticationError:
            return False
        finally:
            await client.aclose()

    async def client_loop(done: asyncio.Event) -> None:
        while not done.is_set():
            await asyncio.sleep(PACE_S)
            stats["attempts"] += 1
            try:
                t0 = time.monotonic()
                value = await asyncio.to_thread(svc.get_value, name)
                t1 = time.monotonic()
                accepted = await auth(value)
                timing["read_s"] += t1 - t0
                timing["auth_s"] += time.monotonic() - t1
                if accepted:
                    stats["ok"] += 1
                    continue
                stats["current_refused"] += 1
                previous = await asyncio.to_thread(svc.get_value, name, Stage.PREVIOUS)
                if await auth(previous):
                    stats["ok_with_previous"] += 1
                    continue
                stats["failed"] += 1
                failures.append("CURRENT and PREVIOUS refused")
            except Exception as exc:
                stats["failed"] += 1
                failures.append(f"{type(exc).__name__}: {exc}")

    async def go() -> float:
        async with Engine(svc.kernel, FAST) as engine:
            stop, done = asyncio.Event(), asyncio.Event()
            server = asyncio.create_task(scheduler.run(engine, stop, poll_s=0.1, schedule=False))
            clients = [asyncio.create_task(client_loop(done)) for _ in range(4)]
            t0 = time.monotonic()
            for i in range(50):
                result = await engine.rotate([RotationRequest(name, grace_s=2)])
                assert result.ok, (i, result.to_json())
                issued.append(await asyncio.to_thread(svc.get_value, name))
            rotating_s = time.monotonic() - t0
            # Keep authenticating through the last grace and its revocation.
            deadline = time.monotonic() + 15
            while Stage.PREVIOUS in (await asyncio.to_thread(stages, svc, name)).values():
                assert time.monotonic() < deadline, "revocations did not finish in time"
                await asyncio.sleep(0.1)
            done.set()
            await asyncio.gather(*clients)
            stop.set()
            await server
            return rotating_s

    t0 = time.monotonic()
    rotating_s = asyncio.run(go())
    total_s = time.monotonic() - t0
    print(
        f"\nzero downtime: 50 rotations in {rotating_s:.2f}s (total {total_s:.2f}s); "
        f"clients: {dict(stats)}; mean read {timing['read_s'] / stats['attempts'] * 1000:.1f}ms, "
        f"mean auth {timing['auth_s'] / stats['attempts'] * 1000:.1f}ms"
    )
    assert stats["failed"] == 0, failures[:5]
    assert stats["ok"] + stats["ok_with_previous"] == stats["attempts"]
    assert stats["attempts"] >= 200, "the clients must have run throughout"
    assert total_s < 60
    assert len({v.reveal() for v in issued}) == 51
    assert acl.digests(user) == {digest(issued[-1])}
    assert can_auth(acl.server, user, issued[-1])
    for old in issued[:-1]:
        assert not can_auth(acl.server, user, old)
    assert sorted(stages(svc, name).values()) == [Stage.CURRENT] + [Stage.RETIRED] * 50


# ------------------------------------------------------------------------------ bad config


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "publish"])
@pytest.mark.parametrize(
    "problem", ["unknown admin", "wrong admin secret", "unreachable", "no +acl"]
)
def test_bad_configuration_at_add_time_stores_nothing(
    svc: BlockingService, acl: Acl, problem: str, verify: bool
) -> None:
    """``--verify`` checks first; without it, publishing the first value fails the same way."""
    admin, password = acl.admin("+ping") if problem == "no +acl" else acl.admin()
    stored = f"wrong-{uuid.uuid4().hex}" if problem == "wrong admin secret" else password
    svc.add_credential("redis/admin", "local", value=ValueInput(value=Secret(stored)))
    user = acl.name("app")
    settings = app_settings(acl.server, user, admin)
    port = closed_port()
    if problem == "unknown admin":
        settings["admin"] = "redis/nope"
    if problem == "unreachable":
        settings["port"] = str(port)
    core = {
        "unknown admin": "admin credential 'redis/nope' cannot be read: no credential 'redis/nope'",
        "wrong admin secret": "admin credential 'redis/admin' was refused by redis at "
        f"127.0.0.1:{acl.server.port} (user {admin!r})",
        "unreachable": f"cannot reach redis at 127.0.0.1:{port}",
        "no +acl": f"redis user {admin!r} may not manage ACL users (it needs +acl)",
    }[problem]
    expected = (
        f"redis/app: verification failed: {core}"
        if verify
        else f"redis/app: cannot publish the first value: finish: {core}"
    )
    audit_before = [e.action for e in svc.audit_entries()]
    with pytest.raises(VerificationFailed) as info:
        svc.add_credential(
            "redis/app", "redis", settings=settings, value=ValueInput(generate=True), verify=verify
        )
    assert str(info.value) == expected
    assert stored not in str(info.value)
    with pytest.raises(NotFound):
        svc.show("redis/app")
    assert [c.name for c in svc.list_credentials()] == ["redis/admin"]
    assert "credential.add" not in [e.action for e in svc.audit_entries()][len(audit_before) :]
    assert acl.user(user) is None


@pytest.mark.parametrize("problem", ["wrong admin secret", "unknown admin", "unreachable"])
def test_bad_configuration_at_rotation_time_keeps_the_old_value(
    svc: BlockingService, acl: Acl, problem: str
) -> None:
    admin = add_admin(svc, acl)
    user = acl.name("app")
    settings = app_settings(acl.server, user, admin, timeout_s=1)
    svc.add_credential("redis/app", "redis", settings=settings)
    assert run(svc, [RotationRequest("redis/app")]).ok
    old = svc.get_value("redis/app")
    port = closed_port()
    if problem == "wrong admin secret":
        svc.update_credential("redis/admin", value=ValueInput(value=Secret("not-the-password")))
    elif problem == "unknown admin":
        svc.update_credential("redis/app", settings={**settings, "admin": "redis/nope"})
    else:
        svc.update_credential("redis/app", settings={**settings, "port": str(port)})

    result = run(svc, [RotationRequest("redis/app")])
    data = result.to_json()
    assert data["rotated"] == []
    assert [r.outcome for r in result.results] != [Outcome.ROTATED]
    error = data["failed"][0]["error"]
    assert {
        "wrong admin secret": f"set: admin credential 'redis/admin' was refused by redis at "
        f"127.0.0.1:{acl.server.port} (user {admin!r})",
        "unknown admin": "set: admin credential 'redis/nope' cannot be read: "
        "no credential 'redis/nope'",
        "unreachable": f"set: cannot reach redis at 127.0.0.1:{port}",
    }[problem] in error
    assert "not-the-password" not in error
    assert svc.get_value("redis/app") == old
    assert can_auth(acl.server, user, old), "the old value keeps working"
    assert acl.digests(user) == {digest(old)}
    assert stages(svc, "redis/app") == {1: Stage.CURRENT, 2: Stage.FAILED}


# ----------------------------------------------------------------------- pooled connections


def connections_received(acl: Acl) -> int:
    info = acl.client.info("stats")
    return int(info["total_connections_received"])


def clients_of(acl: Acl, user: str, *, settle_to: int | None = None) -> list[str]:
    """Connections now open as ``user`` (CLIENT LIST lines).

    The server notices a client's close asynchronously, so a caller that just closed
    connections passes ``settle_to``: the listing is re-read (bounded, 5 s) until it has
    that many lines, and the last listing is returned either way.
    """
    deadline = time.monotonic() + 5
    while True:
        listing = acl.client.execute_command("CLIENT", "LIST")
        lines = [line for line in str(listing).splitlines() if f" user={user} " in f" {line} "]
        if settle_to is None or len(lines) == settle_to or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def test_admin_operations_share_pooled_connections_and_test_connects_afresh(acl: Acl) -> None:
    user = acl.name()
    cfg, res = admin_config(acl, user)
    admin_user = cfg.admin_user
    conn = RedisConnector()
    values = [new_value() for _ in range(10)]
    seen: dict[str, int] = {}

    async def go() -> None:
        before = connections_received(acl)
        for value in values:  # 20 admin operations (ACL GETUSER + SETUSER each)
            await conn.set(cb.SetRequest("redis/app", 2, cfg, value, None, secrets=res))
            await conn.revoke(cb.RevokeRequest("redis/app", 1, cfg, value, secrets=res))
        seen["admin"] = connections_received(acl) - before
        seen["pooled"] = len(clients_of(acl, admin_user))
        await conn.set(cb.SetRequest("redis/app", 2, cfg, values[0], None, secrets=res))
        before = connections_received(acl)
        for _ in range(5):
            await conn.test(cb.TestRequest("redis/app", 2, cfg, values[0]))
        seen["tests"] = connections_received(acl) - before
        await conn.aclose()
        await conn.aclose()

    asyncio.run(go())
    assert seen == {"admin": 1, "pooled": 1, "tests": 5}
    assert clients_of(acl, admin_user, settle_to=0) == []
    assert acl.digests(user) == {digest(values[0])}


def test_a_changed_admin_value_gets_a_new_pool_and_the_old_one_is_closed(acl: Acl) -> None:
    user = acl.name()
    cfg, res = admin_config(acl, user)
    admin_user = cfg.admin_user
    conn = RedisConnector()
    rotated = Secret(f"adm-{uuid.uuid4().hex}")
    ids: list[set[str]] = []

    def client_ids() -> set[str]:
        return {line.split(" ", 1)[0] for line in clients_of(acl, admin_user, settle_to=1)}

    async def go() -> None:
        await conn.set(cb.SetRequest("redis/app", 2, cfg, new_value(), None, secrets=res))
        ids.append(client_ids())
        # The admin password rotates: the server takes the new one, the old one is removed.
        acl.setuser(admin_user, "resetpass", ">" + rotated.reveal_text())
        res.values["redis/admin"] = rotated
        await conn.set(cb.SetRequest("redis/app", 2, cfg, new_value(), None, secrets=res))
        ids.append(client_ids())
        await conn.aclose()

    asyncio.run(go())
    assert len(ids[0]) == 1
    assert len(ids[1]) == 1
    assert ids[0] != ids[1], "the old pool's connection was closed, a new one made"


def test_a_refused_admin_value_is_reference_refused_and_its_pool_is_not_kept(acl: Acl) -> None:
    user = acl.name()
    cfg, res = admin_config(acl, user)
    right = res.values["redis/admin"]
    conn = RedisConnector()

    async def go() -> None:
        res.values["redis/admin"] = Secret("wrong-" + uuid.uuid4().hex)
        with pytest.raises(cb.ReferenceRefused) as refused:
            await conn.set(cb.SetRequest("redis/app", 2, cfg, new_value(), None, secrets=res))
        assert refused.value.reference == "redis/admin"
        assert res.values["redis/admin"].reveal_text() not in str(refused.value)
        assert repr(conn) == "RedisConnector(0 admin pools)"
        res.values["redis/admin"] = right
        await conn.set(cb.SetRequest("redis/app", 2, cfg, new_value(), None, secrets=res))
        await conn.aclose()

    asyncio.run(go())
