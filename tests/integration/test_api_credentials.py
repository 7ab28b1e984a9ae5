"""``/v1/credentials`` of a real ``rotator serve`` subprocess (tests/support/server.py), with
httpx, on SQLite and PostgreSQL (``db_url``).

The store, its principals and tokens are made in-process through the service (a CLI process
per set-up step costs about a second); every request under test goes over HTTP to the server
process, and what it stored is checked in the store afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select
from tests.support.server import ServeProcess, serve_env

from rotator.api import pagination
from rotator.config import Settings
from rotator.domain.principal import Action, Grant, Principal, Role
from rotator.domain.secret import Secret
from rotator.service import BlockingService, ValueInput
from rotator.store.schema import audit_log, credentials

PROBLEM = "application/problem+json"
VALUE = "s3cret-value-7f1c"  # never expected in an error body or the server's stderr


@dataclass
class Api:
    srv: ServeProcess
    tokens: dict[str, str]  # role name -> bearer token
    svc: BlockingService

    def client(self, who: str = "admin") -> httpx.Client:
        return httpx.Client(
            base_url=self.srv.base_url,
            headers={"Authorization": f"Bearer {self.tokens[who]}"},
            timeout=30,
        )


# Each principal: role and scope.
PRINCIPALS = {
    "admin": (Role.ADMIN, "*"),
    "operator": (Role.OPERATOR, "prod/*"),
    "auditor": (Role.AUDITOR, "*"),
    "reader": (Role.READER, "prod/*"),
    "app": (Role.APP, "prod/app/*"),
}


@pytest.fixture
def api(tmp_path: Path, db_url: str) -> Iterator[Api]:
    home = tmp_path / "home"
    svc, created = BlockingService.init(Settings(home=home, db_url=db_url))
    assert created
    try:
        tokens = {}
        for name, (role, scope) in PRINCIPALS.items():
            svc.add_principal(name, role, scope=scope, kind="service")
            tokens[name] = svc.create_token(name)[1]
        with ServeProcess(serve_env(home, db_url)) as srv:
            yield Api(srv, tokens, svc)
        assert VALUE not in srv.stderr
    finally:
        svc.close()


def _problem(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert body["status"] == status
    assert body["detail"]
    assert VALUE not in r.text


def test_a_credential_goes_through_add_show_patch_value_usage_and_delete_over_http(
    api: Api, raw_db: Engine
) -> None:
    with api.client() as c:
        r = c.post(
            "/v1/credentials",
            json={
                "name": "prod/payments/db",
                "connector": "local",
                "tags": {"env": "prod"},
                "policy": {"every": "30d", "grace": "10m"},
                "value": VALUE,
            },
        )
        assert r.status_code == 201, r.text
        assert r.headers["location"] == "/v1/credentials/prod/payments/db"
        made = r.json()
        assert made["name"] == "prod/payments/db"
        assert made["current_version"] == 1
        assert made["policy"]["every"] == "30d"
        assert made["policy"]["grace"] == "10m"
        assert VALUE not in r.text

        shown = c.get(r.headers["location"])
        assert shown.status_code == 200
        assert shown.json()["tags"] == {"env": "prod"}

        value = c.get("/v1/credentials/prod/payments/db/value")
        assert value.status_code == 200
        assert value.headers["cache-control"] == "no-store"
        assert value.json() == {
            "name": "prod/payments/db",
            "version": 1,
            "stage": "CURRENT",
            "value": VALUE,
        }

        patched = c.patch(
            "/v1/credentials/prod/payments/db",
            json={"tags": {"env": "prod", "team": "pay"}, "value": "second-value"},
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["tags"] == {"env": "prod", "team": "pay"}
        assert patched.json()["current_version"] == 2
        previous = c.get("/v1/credentials/prod/payments/db/value", params={"stage": "PREVIOUS"})
        assert previous.json()["version"] == 1
        assert previous.json()["value"] == VALUE

        # The new value started a new count; the PREVIOUS read counted one, the batch adds 5.
        used = c.post("/v1/credentials/prod/payments/db/usage", json={"count": 5})
        assert used.status_code == 200
        assert used.json() == {"name": "prod/payments/db", "use_count": 6}

        gone = c.delete("/v1/credentials/prod/payments/db")
        assert gone.status_code == 204
        assert gone.content == b""
        _problem(c.get("/v1/credentials/prod/payments/db"), 404)

    with raw_db.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(credentials)) == 0
        actions = [a for (a,) in conn.execute(select(audit_log.c.action))]
    for action in ("credential.add", "credential.update", "credential.used", "credential.remove"):
        assert action in actions
    assert VALUE not in repr(actions)


def test_bad_input_is_a_problem_naming_it_and_stores_nothing(api: Api, raw_db: Engine) -> None:
    with api.client() as c:
        cases = [
            {"name": "Bad Name", "connector": "local", "value": VALUE},
            {"name": "prod/x", "connector": "local", "value": VALUE, "generate": True},
            {"name": "prod/x", "connector": "local", "value": VALUE, "policy": {"every": "x"}},
            {"name": "prod/x", "connector": "local", "value": VALUE, "tags": {"A=B": "c"}},
            {"name": "prod/x", "connector": "no-such", "value": VALUE},
        ]
        for body in cases:
            r = c.post("/v1/credentials", json=body)
            assert 400 <= r.status_code < 500, (body, r.text)
            _problem(r, r.status_code)
        _problem(
            c.post(
                "/v1/credentials", json={"name": "prod/x", "connector": "local", "valeu": VALUE}
            ),
            422,
        )
        _problem(c.get("/v1/credentials/prod/x/value", params={"stage": "RETIRED"}), 422)
    with raw_db.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(credentials)) == 0


# (method, path, json body, action the service checks, status when allowed)
def _requests(role: str) -> list[tuple[str, str, dict[str, object] | None, Action, int]]:
    return [
        ("GET", "/v1/credentials/prod/app/db", None, Action.CREDENTIAL_READ, 200),
        ("GET", "/v1/credentials/dev/tool", None, Action.CREDENTIAL_READ, 200),
        ("GET", "/v1/credentials/prod/app/db/value", None, Action.VALUE_READ, 200),
        ("GET", "/v1/credentials/dev/tool/value", None, Action.VALUE_READ, 200),
        ("GET", "/v1/credentials/prod/app/missing", None, Action.CREDENTIAL_READ, 404),
        ("POST", "/v1/credentials/prod/app/db/usage", {"count": 1}, Action.USAGE_REPORT, 200),
        (
            "PATCH",
            "/v1/credentials/prod/app/db",
            {"tags": {"by": role}},
            Action.CREDENTIAL_WRITE,
            200,
        ),
        (
            "POST",
            "/v1/credentials",
            {"name": f"prod/app/new-{role}", "connector": "local", "generate": True},
            Action.CREDENTIAL_WRITE,
            201,
        ),
        ("DELETE", f"/v1/credentials/prod/app/del-{role}", None, Action.CREDENTIAL_WRITE, 204),
    ]


def test_each_role_gets_exactly_what_the_permission_rules_give_it(api: Api) -> None:
    api.svc.add_credential("prod/app/db", "local", value=ValueInput(value=Secret(VALUE)))
    api.svc.add_credential("dev/tool", "local", value=ValueInput(value=Secret(VALUE)))
    for role in PRINCIPALS:
        api.svc.add_credential(f"prod/app/del-{role}", "local", value=ValueInput(generate=True))
    for who, (role, scope) in PRINCIPALS.items():
        rules = Principal(who, grants=(Grant(role, scope),))
        with api.client(who) as c:
            for method, path, body, action, ok in _requests(who):
                target = path.removeprefix("/v1/credentials/").removesuffix("/value")
                target = target.removesuffix("/usage")
                name = body["name"] if path == "/v1/credentials" and body else target
                assert isinstance(name, str)
                r = c.request(method, path, json=body)
                want = ok if rules.may(action, name) else 403
                assert r.status_code == want, (who, method, path, r.text)
                if want >= 400:
                    _problem(r, want)
                assert VALUE not in r.text or path.endswith("/value")
            listed = c.get("/v1/credentials")
            names = {x["name"] for x in listed.json()["items"]}
            visible = {n for n in names if rules.may(Action.CREDENTIAL_READ, n)}
            assert names == visible
            assert ("dev/tool" in names) == (scope == "*")
            assert VALUE not in listed.text


def test_pages_walk_every_credential_once_in_name_order(api: Api) -> None:
    made = [f"svc/{i:03d}" for i in range(23)] + ["a/first", "z/last"]
    for name in made:
        tags = {"team": "x"} if name.startswith("svc/") else {"team": "y"}
        api.svc.add_credential(name, "local", tags=tags)
    with api.client("auditor") as c:
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, str | int] = {"limit": 7}
            if cursor is not None:
                params["cursor"] = cursor
            r = c.get("/v1/credentials", params=params)
            assert r.status_code == 200, r.text
            seen += [x["name"] for x in r.json()["items"]]
            pages += 1
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(made)
        assert pages == 4

        tagged = c.get("/v1/credentials", params={"tag": "team=y", "limit": 1})
        assert [x["name"] for x in tagged.json()["items"]] == ["a/first"]
        rest = c.get(
            "/v1/credentials",
            params={"tag": "team=y", "limit": 1, "cursor": tagged.json()["next_cursor"]},
        )
        assert [x["name"] for x in rest.json()["items"]] == ["z/last"]
        assert rest.json()["next_cursor"] is None


@pytest.mark.parametrize(
    "cursor",
    ["not base64 !", "aTo1", "czp", "x" * 700, "czpzdmMvMDAx" + "A"],
    ids=["garbage", "a-seq-cursor", "truncated", "too-long", "trailing-bits"],
)
def test_a_malformed_cursor_is_a_400_problem(api: Api, cursor: str) -> None:
    with api.client() as c:
        r = c.get("/v1/credentials", params={"cursor": cursor})
        if len(cursor) > 600:
            _problem(r, 422)
        else:
            _problem(r, 400)
            assert "cursor" in r.json()["detail"]
            assert cursor not in r.json()["detail"]
        _problem(c.get("/v1/credentials", params={"limit": 0}), 422)
        _problem(c.get("/v1/credentials", params={"limit": 1001}), 422)


@pytest.mark.parametrize(
    "key", [99999999999999999999999, 2**63, -1], ids=["huge", "past-int64", "negative"]
)
def test_a_numeric_cursor_out_of_range_is_a_400_problem_on_events_and_audit(
    api: Api, key: int
) -> None:
    cursor = pagination.encode_cursor(key)
    with api.client() as c:
        for path in ("/v1/events", "/v1/audit"):
            r = c.get(path, params={"cursor": cursor})
            _problem(r, 400)
            assert r.json()["detail"] == "malformed cursor", path
        assert c.get("/v1/audit", params={"cursor": pagination.encode_cursor(2**63 - 1)}).is_success
    assert "Traceback" not in api.srv.stderr


def test_a_lone_surrogate_in_any_string_is_a_422_naming_its_field_and_stores_nothing(
    api: Api, raw_db: Engine
) -> None:
    api.svc.add_credential("prod/kept", "local", value=ValueInput(generate=True))
    before = api.svc.show("prod/kept")
    # JSON's \ud800 escape decodes to a lone surrogate: valid JSON, not storable text.
    add = '{"name": "prod/x", "connector": "local", '
    cases = [
        ("POST", "/v1/credentials", add + '"value": "\\ud800x"}', "value"),
        ("POST", "/v1/credentials", add + '"generate": true, "tags": {"a": "\\ud800"}}', "tags"),
        ("POST", "/v1/credentials", add + '"generate": true, "tags": {"\\udfff": "b"}}', "tags"),
        (
            "POST",
            "/v1/credentials",
            add + '"generate": true, "settings": {"l": "\\udfff"}}',
            "settings",
        ),
        ("POST", "/v1/credentials", add + '"value": "x", "sinks": ["file:/\\ud800"]}', "sinks"),
        (
            "POST",
            "/v1/credentials",
            add + '"generate": true, "policy": {"tz": "\\ud800"}}',
            "policy.tz",
        ),
        ("PATCH", "/v1/credentials/prod/kept", '{"value": "\\udfff"}', "value"),
        ("PATCH", "/v1/credentials/prod/kept", '{"tags": {"a": "\\ud800"}}', "tags"),
        ("POST", "/v1/rotations", '{"tags": {"a": "\\ud800"}}', "tags"),
        ("POST", "/v1/rotations", '{"names": ["prod/\\ud800"]}', "names"),
        (
            "POST",
            "/v1/events",
            '{"kind": "leak", "severity": "high", "credential": "prod/kept", "detail": "\\ud800"}',
            "detail",
        ),
    ]
    with api.client() as c:
        for method, path, body, field in cases:
            r = c.request(method, path, content=body, headers={"Content-Type": "application/json"})
            _problem(r, 422)
            assert r.json()["detail"].startswith(f"{field}: "), (path, body, r.text)
            assert "unicode" in r.json()["detail"].lower(), r.text
    after = api.svc.show("prod/kept")
    assert (after.versions, after.tags) == (before.versions, before.tags)
    with raw_db.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(credentials)) == 1
    assert "Traceback" not in api.srv.stderr
