"""The redis connector's settings and pure helpers (no server needed)."""

from __future__ import annotations

import hashlib

import pytest

from rotator.connectors import base as cb
from rotator.connectors.redis import (
    PASSWORD_ALPHABET,
    RedisConfig,
    RedisConnector,
    _Login,
    _parse_user,
    digest,
    generate,
)
from rotator.connectors.registry import get_connector
from rotator.domain.secret import Secret
from rotator.errors import InvalidInput

CONN = RedisConnector()


def parse(**settings: str) -> cb.ConnectorConfig:
    return cb.parse_config(CONN, settings)


def test_registered_as_a_dual_connector() -> None:
    impl = get_connector("redis")
    assert isinstance(impl, RedisConnector)
    assert isinstance(impl, cb.Connector)
    assert impl.strategy is cb.Strategy.DUAL
    assert impl.config_model is RedisConfig


def test_defaults_and_target_key() -> None:
    cfg = parse(username="app")
    assert cfg == RedisConfig(
        host="127.0.0.1",
        port=6379,
        username="app",
        admin="",
        admin_user="default",
        db=0,
        timeout_s=5.0,
        password_length=32,
        tls=False,
    )
    assert CONN.target_key(cfg) == "redis://127.0.0.1:6379"
    assert CONN.target_key(parse(username="a", host="cache.internal", port="6380")) == (
        "redis://cache.internal:6380"
    )


def test_settings_arrive_as_strings() -> None:
    cfg = parse(
        username="app",
        port="6380",
        db="2",
        timeout_s="0.5",
        password_length="64",
        tls="true",
        admin="redis/admin",
        admin_user="rotator",
    )
    assert isinstance(cfg, RedisConfig)
    assert (cfg.port, cfg.db, cfg.timeout_s, cfg.password_length, cfg.tls) == (
        6380,
        2,
        0.5,
        64,
        True,
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "Field required 'username'"),
        ({"username": ""}, "'username'"),
        ({"username": "app", "password": "x"}, "unknown setting 'password'"),
        ({"username": "app", "port": "0"}, "'port'"),
        ({"username": "app", "port": "70000"}, "'port'"),
        ({"username": "app", "db": "-1"}, "'db'"),
        ({"username": "app", "timeout_s": "0"}, "'timeout_s'"),
        ({"username": "app", "password_length": "8"}, "'password_length'"),
        ({"username": "app", "tls": "maybe"}, "'tls'"),
        ({"username": "with space"}, "cannot contain spaces"),
        ({"username": "app", "admin_user": "root"}, "admin_user needs admin"),
    ],
)
def test_bad_settings_are_one_line_invalid_input(settings: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        cb.parse_config(CONN, settings)
    assert message in str(info.value)
    assert str(info.value).startswith("connector 'redis': ")
    assert "\n" not in str(info.value)


def test_digest_is_what_redis_stores() -> None:
    value = Secret(b"p\x00w \xff")
    assert digest(value) == hashlib.sha256(b"p\x00w \xff").hexdigest()


def test_generated_passwords_need_no_escaping() -> None:
    values = {generate(40).reveal_text() for _ in range(50)}
    assert len(values) == 50
    assert all(len(v) == 40 and set(v) <= set(PASSWORD_ALPHABET) for v in values)


def test_acl_getuser_reply_in_both_protocols() -> None:
    resp2 = [b"flags", [b"on"], b"passwords", [b"ab" * 32], b"commands", b"-@all"]
    resp3 = {b"flags": {b"on", b"nopass"}, b"passwords": [], b"commands": b"+@all"}
    a, b = _parse_user(resp2), _parse_user(resp3)
    assert a is not None
    assert b is not None
    assert (a.enabled, a.nopass, a.digests) == (True, False, frozenset({"ab" * 32}))
    assert (b.enabled, b.nopass, b.digests) == (True, True, frozenset())
    assert _parse_user(None) is None


def test_login_hides_the_password() -> None:
    login = _Login("app", Secret("hunter2-secret"))
    assert "hunter2" not in repr(login)
    creds: tuple[object, ...] = login.get_credentials()
    assert creds == ("app", b"hunter2-secret"), "sent as bytes: any value works"
