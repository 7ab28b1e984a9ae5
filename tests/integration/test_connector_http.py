"""The ``http`` connector against a real local HTTP API (tests/support/api_server.py).

Direct connector calls first (each operation, idempotency, placeholder substitution, HMAC,
error classes, timeouts, config errors), then the engine on both databases (rotation with
grace and revocation, rollback, a flaky server, ``add_credential(verify=True)``).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from typing import Any, ClassVar, TypeVar

import httpx
import pytest
from tests.conftest import free_port
from tests.support.api_server import ApiServer, running

from rotator.connectors import base as cb
from rotator.connectors import http as http_connector
from rotator.connectors.base import parse_config
from rotator.connectors.http import HttpConfig, HttpConnector
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.engine import Engine, EngineOptions, RotationRequest
from rotator.errors import InvalidInput, VerificationFailed
from rotator.service import BlockingService, PolicyInput, ValueInput

T = TypeVar("T")
ACCOUNT = "acme"
ADMIN = "admin-token-0123456789abcdef"
HMAC_KEY = "hmac-key-for-tests-0123456789"
FAST = EngineOptions(retry_initial_s=0.001, retry_max_s=0.01)
# Values that would break naive string formatting in JSON, headers or paths.
TRICKY = [
    'quo"te\\back\\slash',
    "ünïcødé 🔑 ключ",
    '{"inject": true}", "admin": "yes',
    "slash/and?query#frag%20&x=1",
    "looks like $previous and $credential",
]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Secrets:
    """A SecretResolver over a dict (the engine's resolver reads the store instead)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    async def get(self, name: str) -> Secret:
        if name not in self.values:
            raise cb.PermanentError(f"credential {name!r} cannot be read here")
        return Secret(self.values[name])


ADMIN_SECRETS = Secrets({"api/admin": ADMIN, "api/hmac": HMAC_KEY})


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with running() as server:
        server.add_account(ACCOUNT, ADMIN)
        yield server


def http_settings(api: ApiServer, **over: str) -> dict[str, str]:
    s = {
        "base_url": api.url,
        "allow_insecure_http": "true",  # the test API speaks plain HTTP on loopback
        "auth": "api/admin",
        "set_path": "/keys",
        "set_body": '{"key": "$value", "label": "$credential", "version": "$version"}',
        "test_path": "/whoami",
        "revoke_path": "/keys/$value",
        "timeout_s": "5",
    }
    s.update(over)
    return s


def config(api: ApiServer, **over: str) -> HttpConfig:
    cfg = parse_config(HttpConnector(), http_settings(api, **over))
    assert isinstance(cfg, HttpConfig)
    return cfg


def set_req(
    cfg: HttpConfig,
    value: str,
    current: str | None = None,
    secrets: cb.SecretResolver = ADMIN_SECRETS,
    version: int = 2,
) -> cb.SetRequest:
    return cb.SetRequest(
        "svc/api",
        version,
        cfg,
        Secret(value),
        None if current is None else Secret(current),
        secrets=secrets,
    )


def probe_req(
    cfg: HttpConfig, value: str, secrets: cb.SecretResolver = ADMIN_SECRETS
) -> cb.TestRequest:
    return cb.TestRequest("svc/api", 2, cfg, Secret(value), secrets=secrets)


def revoke_req(
    cfg: HttpConfig, value: str, secrets: cb.SecretResolver = ADMIN_SECRETS
) -> cb.RevokeRequest:
    return cb.RevokeRequest("svc/api", 1, cfg, Secret(value), secrets=secrets)


def rollback_req(cfg: HttpConfig, value: str, current: str | None = None) -> cb.RollbackRequest:
    cur = None if current is None else Secret(current)
    return cb.RollbackRequest("svc/api", 2, cfg, Secret(value), cur, secrets=ADMIN_SECRETS)


def assert_clean(exc: BaseException, *values: str) -> None:
    """One line, no value (raw or percent-encoded), nothing chained that could hold one."""
    msg = str(exc)
    assert "\n" not in msg
    for v in values:
        assert v not in msg
        assert urllib.parse.quote(v, safe="") not in msg
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


# ------------------------------------------------------------------------- the operations


def test_create_makes_a_key_with_prefix_and_length(api: ApiServer) -> None:
    cfg = config(api, prefix="ak_", length="40")
    c = HttpConnector()
    a = run(c.create(cb.CreateRequest("svc/api", 0, cfg))).reveal_text()
    b = run(c.create(cb.CreateRequest("svc/api", 0, cfg))).reveal_text()
    assert a.startswith("ak_")
    assert len(a) == 43
    assert a != b
    hexcfg = config(api, generator="hex", length="24")
    h = run(c.create(cb.CreateRequest("svc/api", 0, hexcfg))).reveal_text()
    assert len(h) == 24
    assert all(ch in "0123456789abcdef" for ch in h)


def test_set_adds_the_key_and_is_idempotent(api: ApiServer) -> None:
    cfg = config(api)
    c = HttpConnector()
    run(c.set(set_req(cfg, "new-key-1", current="old-key")))
    run(c.set(set_req(cfg, "new-key-1", current="old-key")))  # again: 409 = already there
    assert api.valid(ACCOUNT) == {"new-key-1"}
    posts = api.seen("POST", "/keys")
    assert [r.status for r in posts] == [201, 409]
    assert json.loads(posts[0].body) == {"key": "new-key-1", "label": "svc/api", "version": 2}
    assert posts[0].headers["authorization"] == f"Bearer {ADMIN}"
    assert posts[0].headers["content-type"] == "application/json"


def test_a_plain_http_target_loads_no_ca_bundle(
    api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An http:// target never does TLS, so the default CA bundle (~30 ms of CPU to load,
    once per process) is not read for it: calls work even when it cannot be read."""
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca-bundle.pem")
    http_connector._tls_context.cache_clear()  # a bundle an earlier test loaded
    try:
        c = HttpConnector()
        run(c.set(set_req(config(api), "new-key-1", current="old-key")))
        run(c.test(probe_req(config(api), "new-key-1")))
        run(c.aclose())
    finally:
        http_connector._tls_context.cache_clear()
    assert api.valid(ACCOUNT) == {"new-key-1"}


def test_test_accepts_the_new_key_and_refuses_an_unknown_one(api: ApiServer) -> None:
    cfg = config(api)
    c = HttpConnector()
    api.add_key(ACCOUNT, "good-key")
    run(c.test(probe_req(cfg, "good-key")))
    run(c.test(probe_req(cfg, "good-key")))
    with pytest.raises(cb.PermanentError) as err:
        run(c.test(probe_req(cfg, "unknown-key")))
    assert "test: GET " in str(err.value)
    assert "/whoami answered 401 Unauthorized" in str(err.value)
    assert "refused the value" in str(err.value)
    assert_clean(err.value, "unknown-key")
    # test is not an admin call: the admin token never goes with it
    assert all(r.headers["authorization"] != f"Bearer {ADMIN}" for r in api.seen("GET", "/whoami"))


def test_revoke_deletes_the_key_and_is_idempotent(api: ApiServer) -> None:
    cfg = config(api)
    c = HttpConnector()
    api.add_key(ACCOUNT, "old-key")
    api.add_key(ACCOUNT, "cur-key")
    run(c.revoke(revoke_req(cfg, "old-key")))
    run(c.revoke(revoke_req(cfg, "old-key")))  # again: 404 = already gone
    assert api.valid(ACCOUNT) == {"cur-key"}
    assert [r.status for r in api.seen("DELETE")] == [204, 404]


def test_revoke_gone_statuses_are_configurable(api: ApiServer) -> None:
    c = HttpConnector()
    strict = config(api, revoke_gone="")
    with pytest.raises(cb.PermanentError, match="answered 404 Not Found"):
        run(c.revoke(revoke_req(strict, "never-there")))
    lenient = config(api, revoke_gone="404,410")
    run(c.revoke(revoke_req(lenient, "never-there")))


def test_rollback_deletes_the_candidate_and_is_idempotent(api: ApiServer) -> None:
    cfg = config(api)
    c = HttpConnector()
    api.add_key(ACCOUNT, "cur-key")
    run(c.set(set_req(cfg, "cand-key", current="cur-key")))
    run(c.rollback(rollback_req(cfg, "cand-key", current="cur-key")))
    run(c.rollback(rollback_req(cfg, "cand-key", current="cur-key")))
    assert api.valid(ACCOUNT) == {"cur-key"}


def test_rollback_can_have_its_own_request(api: ApiServer) -> None:
    cfg = config(api, rollback_method="DELETE", rollback_path="/keys/$value?reason=rollback")
    c = HttpConnector()
    api.add_key(ACCOUNT, "cand-key")
    run(c.rollback(rollback_req(cfg, "cand-key")))
    assert api.valid(ACCOUNT) == set()
    assert api.seen("DELETE")[0].path == "/keys/cand-key?reason=rollback"


def test_finish_touches_nothing(api: ApiServer) -> None:
    cfg = config(api)
    req = cb.FinishRequest("svc/api", 2, cfg, Secret("new"), Secret("old"))
    run(HttpConnector().finish(req))
    assert api.seen() == []


@pytest.mark.parametrize("value", TRICKY)
def test_placeholders_carry_any_value_exactly(api: ApiServer, value: str) -> None:
    old = "old-" + value
    cfg = config(
        api,
        set_body='{"key": "$value", "old": "$previous", "meta": {"list": ["$credential"]}}',
        set_headers='{"X-Label": "cred=$credential v=$version $$value"}',
        test_headers='{"Authorization": "Bearer $value", "X-Echo": "[$value]"}',
    )
    c = HttpConnector()
    run(c.set(set_req(cfg, value, current=old)))
    assert api.valid(ACCOUNT) == {value}
    doc = api.key_meta[value]
    assert doc == {"key": value, "old": old, "meta": {"list": ["svc/api"]}}
    post = api.seen("POST")[0]
    assert post.headers["x-label"] == "cred=svc/api v=2 $value"  # $$ is a literal $
    run(c.test(probe_req(cfg, value)))
    who = api.seen("GET", "/whoami")[0]
    assert who.status == 200
    assert who.headers["authorization"] == f"Bearer {value}"
    assert who.headers["x-echo"] == f"[{value}]"  # no second substitution inside the value
    run(c.revoke(revoke_req(cfg, value)))
    assert api.valid(ACCOUNT) == set()
    assert api.seen("DELETE")[0].status == 204


def test_previous_is_null_in_a_body_when_there_is_no_current_value(api: ApiServer) -> None:
    cfg = config(api, set_body='{"key": "$value", "old": "$previous"}')
    run(HttpConnector().set(set_req(cfg, "first-key", current=None)))
    assert api.key_meta["first-key"] == {"key": "first-key", "old": None}
    in_header = config(api, set_headers='{"X-Old": "$previous"}')
    with pytest.raises(cb.PermanentError, match=r"\$previous is used but there is none"):
        run(HttpConnector().set(set_req(in_header, "first-key", current=None)))


def test_a_value_with_a_newline_is_never_put_in_a_header(api: ApiServer) -> None:
    cfg = config(api)
    value = "line1\r\nX-Injected: yes"
    with pytest.raises(cb.PermanentError, match="CR, LF or NUL") as err:
        run(HttpConnector().test(probe_req(cfg, value)))
    assert_clean(err.value, value, "line1")
    assert api.seen() == []


# ------------------------------------------------------------------------ auth and HMAC


def test_wrong_admin_token_is_a_permanent_error(api: ApiServer) -> None:
    cfg = config(api)
    wrong = Secrets({"api/admin": "not-the-admin-token"})
    with pytest.raises(cb.PermanentError) as err:
        run(HttpConnector().set(set_req(cfg, "k1", secrets=wrong)))
    assert "answered 401" in str(err.value)
    assert "refused the admin token ('api/admin')" in str(err.value)
    assert_clean(err.value, "k1", "not-the-admin-token")
    missing = Secrets({})
    with pytest.raises(cb.PermanentError, match="'api/admin' cannot be read"):
        run(HttpConnector().set(set_req(cfg, "k1", secrets=missing)))


def test_hmac_signature_is_checked_by_the_server(api: ApiServer) -> None:
    api.hmac_key = HMAC_KEY.encode()
    c = HttpConnector()
    cfg = config(api, hmac_key="api/hmac")
    run(c.set(set_req(cfg, "signed-key", current="x")))
    run(c.test(probe_req(cfg, "signed-key")))
    run(c.revoke(revoke_req(cfg, "signed-key")))
    assert [r.status for r in api.seen()] == [201, 200, 204]
    assert all(r.headers["x-rotator-signature"].startswith("sha256=") for r in api.seen())

    wrong = Secrets({"api/admin": ADMIN, "api/hmac": "some-other-key"})
    with pytest.raises(cb.PermanentError) as err:
        run(c.set(set_req(cfg, "k2", secrets=wrong)))
    assert "answered 401" in str(err.value)
    assert "signature (hmac_key 'api/hmac')" in str(err.value)
    assert_clean(err.value, "k2", "some-other-key")
    with pytest.raises(cb.PermanentError, match="401"):
        run(c.test(probe_req(cfg, "k2", secrets=wrong)))
    unsigned = config(api)
    with pytest.raises(cb.PermanentError, match="401"):
        run(c.set(set_req(unsigned, "k3")))
    assert api.valid(ACCOUNT) == set()


# ------------------------------------------------------------------------ error classes


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_429_and_5xx_are_transient(api: ApiServer, status: int) -> None:
    cfg = config(api)
    c = HttpConnector()
    api.fail_next(1, status)
    with pytest.raises(cb.TransientError) as err:
        run(c.set(set_req(cfg, "k1")))
    assert f"set: POST {api.url}/keys answered {status}" in str(err.value)
    assert_clean(err.value, "k1")
    run(c.set(set_req(cfg, "k1")))  # the next attempt goes through
    assert api.valid(ACCOUNT) == {"k1"}


def test_4xx_is_permanent_and_response_bodies_never_show(api: ApiServer) -> None:
    cfg = config(api, set_body='{"token": "$value"}')  # the API wants "key": 400
    with pytest.raises(cb.PermanentError) as err:
        run(HttpConnector().set(set_req(cfg, "k1")))
    assert str(err.value) == f"set: POST {api.url}/keys answered 400 Bad Request"
    # 409 is success only through set_exists; the API echoes the key in that body
    api.add_key(ACCOUNT, "dup-key")
    strict = config(api, set_exists="")
    with pytest.raises(cb.PermanentError) as err:
        run(HttpConnector().set(set_req(strict, "dup-key")))
    assert "answered 409 Conflict" in str(err.value)
    assert_clean(err.value, "dup-key")


def test_a_value_in_the_path_never_shows_in_errors_or_logs(
    api: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(api)
    value = "path-secret-" + "x" * 20
    caplog.set_level(logging.DEBUG)
    api.fail_next(1, 503)
    with pytest.raises(cb.TransientError) as err:
        run(HttpConnector().revoke(revoke_req(cfg, value)))
    assert (
        str(err.value) == f"revoke: DELETE {api.url}/keys/$value answered 503 Service Unavailable"
    )
    run(HttpConnector().revoke(revoke_req(cfg, value)))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert value not in text
    assert "DELETE " + api.url + "/keys/$value" in text  # httpx's line, redacted
    # outside connector calls httpx logs as usual
    caplog.clear()
    httpx.get(api.url + "/")
    assert api.url in "\n".join(r.getMessage() for r in caplog.records)


def test_a_slow_server_times_out_as_transient(api: ApiServer) -> None:
    cfg = config(api, timeout_s="0.3")
    api.delay_s = 3
    t0 = time.monotonic()
    with pytest.raises(cb.TransientError) as err:
        run(HttpConnector().set(set_req(cfg, "k1")))
    assert time.monotonic() - t0 < 2
    assert str(err.value) == f"set: POST {api.url}/keys timed out after 0.3s"
    assert_clean(err.value, "k1")


def test_nothing_listening_is_transient() -> None:
    port = free_port()
    cfg = parse_config(
        HttpConnector(),
        {
            "base_url": f"http://127.0.0.1:{port}",
            "allow_insecure_http": "true",
            "set_path": "/keys",
            "set_body": '{"key": "$value"}',
            "test_path": "/whoami",
            "revoke_path": "/keys/$value",
        },
    )
    assert isinstance(cfg, HttpConfig)
    with pytest.raises(cb.TransientError) as err:
        run(HttpConnector().set(set_req(cfg, "k1")))
    assert f"set: POST http://127.0.0.1:{port}/keys cannot connect" in str(err.value)
    assert_clean(err.value, "k1")


def test_target_key_is_scheme_host_port(api: ApiServer) -> None:
    c = HttpConnector()
    assert c.target_key(config(api)) == f"http://127.0.0.1:{api.port}"
    assert c.target_key(config(api, base_url="https://api.example.com/v1/")) == (
        "https://api.example.com:443"
    )
    assert c.target_key(config(api, base_url="http://[::1]/")) == "http://[::1]:80"


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("setting", "value", "fragment"),
    [
        ("base_url", "ftp://example.com", "http:// or https://"),
        ("base_url", "http://user:pw@example.com", "user or password"),
        ("base_url", "http://example.com/?a=1", "query or fragment"),
        ("base_url", "https://example.com/v1/../admin", "'.' or '..' path segment"),
        ("allow_insecure_http", "false", "allow_insecure_http=true"),
        ("revoke_path", "/keys/../$value", "revoke_path holds a '.' or '..' segment"),
        ("set_path", "/a/%2e%2e/keys", "set_path holds a '.' or '..' segment"),
        ("set_headers", '{"X-Rotator-Nonce": "1"}', "is set by hmac_key"),
        ("set_body", '{"key": ', "set_body is not valid JSON"),
        ("set_body", '{"key": "x-$value"}', "must be a whole JSON string value"),
        ("set_body", '{"key": "$valeu"}', "unknown placeholder $valeu"),
        ("set_body", '{"$value": 1, "k": "$value"}', "cannot be object keys"),
        ("set_headers", '["x"]', "set_headers must be a JSON object"),
        ("set_headers", '{"X-A": 1}', "must be a string"),
        ("set_headers", '{"Bad Name": "x"}', "not a valid header name"),
        ("set_headers", '{"Authorization": "Basic x"}', "sets Authorization and auth is set"),
        ("test_headers", '{"Authorization": "Bearer $previous"}', "$previous is not available"),
        ("test_headers", "{}", "test_body and test_headers never use $value"),
        ("set_body", '{"key": "fixed"}', "set_body and set_headers never use $value"),
        ("revoke_path", "/keys", "must name the key to delete"),
        ("rollback_path", "/keys/$nope", "unknown placeholder $nope in rollback_path"),
        ("revoke_path", "keys/$value", "revoke_path must start with /"),
        ("revoke_path", "/keys/$value x", "must be percent-encoded"),
        ("set_expect", "2xy", "not a status"),
        ("set_expect", "", "set_expect is empty"),
        ("set_method", "FETCH", "not one of"),
        ("timeout_s", "soon", "valid number"),
        ("timeout_s", "0", "greater than 0"),
        ("length", "4", "greater than or equal to 16"),
        ("generator", "rsa", "Input should be"),
        ("color", "blue", "unknown setting 'color'"),
    ],
)
def test_bad_settings_are_one_line_invalid_input(
    api: ApiServer, setting: str, value: str, fragment: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        config(api, **{setting: value})
    msg = str(err.value)
    assert msg.startswith("connector 'http': ")
    assert fragment in msg
    assert "\n" not in msg


def test_a_missing_required_setting_is_named(api: ApiServer) -> None:
    s = http_settings(api)
    del s["revoke_path"]
    with pytest.raises(InvalidInput, match="Field required 'revoke_path'"):
        parse_config(HttpConnector(), s)


def test_config_round_trips_through_the_store_form(api: ApiServer) -> None:
    cfg = config(api, hmac_key="api/hmac", set_exists="409,422", rollback_gone="404,410")
    stored = cfg.model_dump(mode="json", exclude_defaults=True)
    assert all(isinstance(v, str | int | float) for v in stored.values())
    again = parse_config(HttpConnector(), {k: str(v) for k, v in stored.items()})
    assert again == cfg
    assert again.op("rollback").also_ok == frozenset({404, 410})  # type: ignore[attr-defined]
    assert again.op("set").also_ok == frozenset({409, 422})  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- verify


def verify_req(cfg: HttpConfig, current: str | None = None, secrets: Any = None) -> Any:
    return cb.VerifyRequest(
        "svc/api",
        cfg,
        None if current is None else Secret(current),
        secrets=secrets or ADMIN_SECRETS,
    )


def test_verify_passes_and_changes_nothing(api: ApiServer) -> None:
    api.add_key(ACCOUNT, "cur-key")
    c = HttpConnector()
    run(c.verify(verify_req(config(api))))
    run(c.verify(verify_req(config(api), current="cur-key")))
    run(c.verify(verify_req(config(api, verify_path="/keys"), current="cur-key")))
    assert {r.method for r in api.seen()} == {"GET"}
    assert api.valid(ACCOUNT) == {"cur-key"}


def test_verify_names_what_is_wrong(api: ApiServer) -> None:
    c = HttpConnector()
    wrong = Secrets({"api/admin": "wrong-token"})
    with pytest.raises(cb.PermanentError, match="refused the admin token"):
        run(c.verify(verify_req(config(api), secrets=wrong)))
    with pytest.raises(cb.PermanentError, match=r"verify: GET .*/keys answered 401"):
        run(c.verify(verify_req(config(api, verify_path="/keys"), secrets=wrong)))
    with pytest.raises(cb.PermanentError, match="'api/admin' cannot be read"):
        run(c.verify(verify_req(config(api), secrets=Secrets({}))))
    with pytest.raises(cb.PermanentError, match="the current value does not work") as err:
        run(c.verify(verify_req(config(api), current="stale-key")))
    assert_clean(err.value, "stale-key")
    api.fail_next(1, 503)
    with pytest.raises(cb.PermanentError, match="answered 503"):
        run(c.verify(verify_req(config(api))))
    dead = config(api, base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(cb.PermanentError, match="cannot connect"):
        run(c.verify(verify_req(dead)))


# ---------------------------------------------------------------- through the engine


def rotate(svc: BlockingService, names: list[str], opts: EngineOptions = FAST) -> Any:
    async def go() -> Any:
        async with Engine(svc.kernel, opts) as engine:
            return await engine.rotate([RotationRequest(n) for n in names])

    return asyncio.run(go())


def revoke_due(svc: BlockingService) -> dict[int, bool]:
    async def go() -> dict[int, bool]:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.process_revocations()

    return asyncio.run(go())


def add_admin_secrets(svc: BlockingService) -> None:
    svc.add_credential("api/admin", "local", value=ValueInput(value=Secret(ADMIN)))
    svc.add_credential("api/hmac", "local", value=ValueInput(value=Secret(HMAC_KEY)))


def add_http(
    svc: BlockingService, api: ApiServer, name: str, first: str, grace: str = "10m", **over: str
) -> None:
    api.add_key(ACCOUNT, first)
    svc.add_credential(
        name,
        "http",
        settings=http_settings(api, **over),
        policy=PolicyInput(grace=grace),
        value=ValueInput(value=Secret(first)),
    )


def works(api: ApiServer, key: str) -> bool:
    r = httpx.get(api.url + "/whoami", headers={"Authorization": f"Bearer {key}"})
    return r.status_code == 200


def test_engine_rotation_adds_a_key_keeps_both_during_grace_then_revokes(
    svc: BlockingService, api: ApiServer
) -> None:
    api.hmac_key = HMAC_KEY.encode()
    add_admin_secrets(svc)
    add_http(svc, api, "svc/api", "first-key-0001", grace="10m", hmac_key="api/hmac")
    result = rotate(svc, ["svc/api"])
    assert result.to_json()["rotated"] == ["svc/api"], result.to_json()
    new = svc.get_value("svc/api").reveal_text()
    assert new != "first-key-0001"
    assert api.valid(ACCOUNT) == {"first-key-0001", new}
    api.hmac_key = None  # so the plain probes below pass
    assert works(api, "first-key-0001")
    assert works(api, new)
    assert api.key_meta[new]["version"] == 2
    assert api.key_meta[new]["label"] == "svc/api"
    api.hmac_key = HMAC_KEY.encode()

    assert revoke_due(svc) == {}  # grace not over yet
    assert api.valid(ACCOUNT) == {"first-key-0001", new}
    later = svc.clock() + timedelta(minutes=11)
    svc.kernel.clock = lambda: later
    assert list(revoke_due(svc).values()) == [True]
    assert api.valid(ACCOUNT) == {new}
    stages = {v.number: v.stage for v in svc.show("svc/api").versions}
    assert stages == {1: Stage.RETIRED, 2: Stage.CURRENT}
    actions = [e.action for e in svc.audit_entries(credential="svc/api") if e.rotation_id]
    assert actions[:4] == ["rotation.create", "rotation.set", "rotation.test", "rotation.finish"]


def test_engine_failing_test_step_rolls_back_and_the_old_key_still_works(
    svc: BlockingService, api: ApiServer
) -> None:
    add_admin_secrets(svc)
    add_http(svc, api, "svc/api", "first-key-0001")
    api.whoami_status = 403  # the API refuses every key on /whoami
    data = rotate(svc, ["svc/api"]).to_json()
    assert data["rolled_back"] == ["svc/api"]
    assert "/whoami answered 403 Forbidden" in data["failed"][0]["error"]
    assert svc.get_value("svc/api").reveal_text() == "first-key-0001"
    assert api.valid(ACCOUNT) == {"first-key-0001"}, "the candidate must be gone"
    assert [r.status for r in api.seen("DELETE")] == [204]
    api.whoami_status = None
    assert works(api, "first-key-0001")
    stages = {v.number: v.stage for v in svc.show("svc/api").versions}
    assert stages == {1: Stage.CURRENT, 2: Stage.FAILED}


def test_engine_rotates_through_a_flaky_server(svc: BlockingService, api: ApiServer) -> None:
    add_admin_secrets(svc)
    names = [f"svc/api{i}" for i in range(8)]
    for i, n in enumerate(names):
        add_http(svc, api, n, f"first-key-{i:04d}", grace="0s")
    api.fail_rate = 0.3  # 503 for 30% of requests, at most 3 in a row
    data = rotate(svc, names).to_json()
    assert data["failed"] == [], data
    assert sorted(data["rotated"]) == names
    retries = [e for e in svc.audit_entries() if e.action == "rotation.retry"]
    assert retries, "some calls must have failed and been retried"
    assert all("answered 503" in e.details["error"] for e in retries)
    assert any(r.status == 503 for r in api.seen())
    api.fail_rate = 0
    current = {svc.get_value(n).reveal_text() for n in names}
    later = svc.clock() + timedelta(seconds=1)
    svc.kernel.clock = lambda: later
    revoke_due(svc)
    assert api.valid(ACCOUNT) == current


def test_add_with_verify_refuses_a_dead_target_or_wrong_admin_token(
    svc: BlockingService, api: ApiServer
) -> None:
    add_admin_secrets(svc)
    svc.add_credential(
        "api/wrong-admin", "local", value=ValueInput(value=Secret("not-the-admin-token"))
    )
    before = [c.name for c in svc.list_credentials()]
    dead = http_settings(api, base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(VerificationFailed, match="cannot connect") as err:
        svc.add_credential("svc/dead", "http", settings=dead, verify=True)
    assert "\n" not in str(err.value)
    with pytest.raises(VerificationFailed, match="refused the admin token"):
        svc.add_credential(
            "svc/wrong",
            "http",
            settings=http_settings(api, auth="api/wrong-admin"),
            verify=True,
        )
    with pytest.raises(VerificationFailed, match="refused the admin token"):
        svc.add_credential(
            "svc/wrong2",
            "http",
            settings=http_settings(api, auth="api/wrong-admin", verify_path="/keys"),
            verify=True,
        )
    assert [c.name for c in svc.list_credentials()] == before
    # and a good one passes and is stored
    api.add_key(ACCOUNT, "live-key")
    svc.add_credential(
        "svc/good",
        "http",
        settings=http_settings(api, verify_path="/keys"),
        value=ValueInput(value=Secret("live-key")),
        verify=True,
    )
    assert "svc/good" in [c.name for c in svc.list_credentials()]
    assert {r.method for r in api.seen()} == {"GET"}


# ------------------------------------------------------------- signing, TLS, path values


SIGNED = ("x-rotator-timestamp", "x-rotator-nonce", "x-rotator-signature")


def resend(
    api: ApiServer,
    captured: Any,
    method: str | None = None,
    target: str | None = None,
    body: bytes | None = None,
) -> tuple[int, str]:
    """Send a captured signed request again, changed as asked: (status, the API's error)."""
    headers = {k: v for k, v in captured.headers.items() if k in SIGNED}
    headers["authorization"] = captured.headers.get("authorization", "")
    headers["content-type"] = "application/json"
    r = httpx.request(
        method or captured.method,
        api.url + (target or captured.path),
        content=captured.body if body is None else body,
        headers=headers,
    )
    return r.status_code, (r.json().get("error", "") if r.content else "")


def test_a_captured_signed_request_replayed_as_another_request_is_refused(
    api: ApiServer,
) -> None:
    api.hmac_key = HMAC_KEY.encode()
    cfg = config(api, hmac_key="api/hmac")
    run(HttpConnector().set(set_req(cfg, "signed-key", current="x")))
    [captured] = api.seen("POST")
    assert captured.status == 201
    assert all(captured.headers.get(h) for h in SIGNED)
    other_body = json.dumps({"key": "attacker-key"}).encode()
    assert resend(api, captured, method="PUT") == (401, "bad signature")
    assert resend(api, captured, target="/keys?account=other") == (401, "bad signature")
    assert resend(api, captured, body=other_body) == (401, "bad signature")
    assert resend(api, captured, method="DELETE", target="/keys/signed-key") == (
        401,
        "bad signature",
    )
    assert api.valid(ACCOUNT) == {"signed-key"}, "no replay changed anything"


def test_the_same_nonce_twice_is_refused_and_each_call_has_its_own(api: ApiServer) -> None:
    api.hmac_key = HMAC_KEY.encode()
    api.add_key(ACCOUNT, "key-1")
    cfg = config(api, hmac_key="api/hmac", test_path="/whoami?from=$credential")
    run(HttpConnector().test(probe_req(cfg, "key-1")))
    run(HttpConnector().test(probe_req(cfg, "key-1")))
    first, second = api.seen("GET")
    assert (first.status, second.status) == (200, 200), "the query is signed as sent"
    assert first.headers["x-rotator-nonce"] != second.headers["x-rotator-nonce"]
    assert resend(api, first) == (401, "nonce replayed")


def test_http_base_url_needs_allow_insecure_http(api: ApiServer) -> None:
    settings = http_settings(api)
    del settings["allow_insecure_http"]
    with pytest.raises(InvalidInput, match="allow_insecure_http=true") as err:
        parse_config(HttpConnector(), settings)
    assert "\n" not in str(err.value)
    secure = parse_config(HttpConnector(), {**settings, "base_url": "https://api.example.com"})
    assert isinstance(secure, HttpConfig)
    assert not secure.allow_insecure_http


@pytest.mark.parametrize("value", [".", "..", "%2e", "%2E%2e", ".%2E", "%252e%252e", "%25252e"])
def test_a_value_that_would_be_a_dot_segment_in_a_path_is_refused(
    api: ApiServer, value: str
) -> None:
    cfg = config(api, revoke_path="/keys/$value")
    with pytest.raises(cb.PermanentError, match=r"path segment '\.' or '\.\.'") as err:
        run(HttpConnector().revoke(revoke_req(cfg, value)))
    assert "revoke: DELETE " in str(err.value)
    assert api.seen() == [], "nothing was sent"


# ----------------------------------------------------------------------- pooled connections


def test_calls_on_one_target_share_one_kept_alive_connection(api: ApiServer) -> None:
    cfg = config(api)
    conn = HttpConnector()
    keys = [f"key-{i:02d}-0123456789abcdef" for i in range(10)]

    async def go() -> None:
        for key in keys:
            await conn.set(set_req(cfg, key))
            await conn.test(probe_req(cfg, key))
            await conn.revoke(revoke_req(cfg, key))
        await conn.aclose()

    run(go())
    assert len(api.seen()) == 30
    assert api.valid(ACCOUNT) == set()
    connections = api.connections
    assert connections == 1


class _CookieSetter(http.server.BaseHTTPRequestHandler):
    """Answers every request 200 with a ``Set-Cookie`` (a session cookie, as a web API behind
    a login may send) and records each request's ``Cookie`` header."""

    protocol_version = "HTTP/1.1"
    cookies_seen: ClassVar[list[str | None]] = []

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.cookies_seen.append(self.headers.get("Cookie"))
        self.send_response(200)
        self.send_header("Set-Cookie", "session=granted-by-an-earlier-call; Path=/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_DELETE = _answer


def test_no_request_carries_a_cookie_a_response_set() -> None:
    # A kept cookie would ride along on later calls (other credentials' included) and could
    # let a test call pass on the cookie rather than on the new key.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CookieSetter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _CookieSetter.cookies_seen = []
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        cfg = parse_config(
            HttpConnector(),
            {
                "base_url": url,
                "allow_insecure_http": "true",
                "auth": "api/admin",
                "set_path": "/keys",
                "set_body": '{"key": "$value"}',
                "test_path": "/whoami",
                "revoke_path": "/keys/$value",
            },
        )
        assert isinstance(cfg, HttpConfig)
        conn = HttpConnector()

        async def go() -> None:
            for key in ("cookie-key-1-0123456789", "cookie-key-2-0123456789"):
                await conn.set(set_req(cfg, key))
                await conn.test(probe_req(cfg, key))
                await conn.revoke(revoke_req(cfg, key))
            await conn.aclose()

        run(go())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert _CookieSetter.cookies_seen == [None] * 6


def test_a_call_after_aclose_opens_a_new_connection_and_aclose_is_idempotent(
    api: ApiServer,
) -> None:
    cfg = config(api)
    conn = HttpConnector()

    async def go() -> None:
        await conn.set(set_req(cfg, "key-before-close-0123456789"))
        await conn.test(probe_req(cfg, "key-before-close-0123456789"))
        await conn.aclose()
        await conn.aclose()
        await conn.test(probe_req(cfg, "key-before-close-0123456789"))
        await conn.test(probe_req(cfg, "key-before-close-0123456789"))
        await conn.aclose()

    run(go())
    assert [r.status for r in api.seen()] == [201, 200, 200, 200]
    connections = api.connections
    assert connections == 2, "one connection before aclose, one after"
