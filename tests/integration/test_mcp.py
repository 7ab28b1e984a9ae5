"""The MCP server (rotator.mcp) through fastmcp's own client, on a real store (SQLite and
PostgreSQL): in memory against build_server, over stdio against a real ``rotator mcp``
process, and over HTTP against a real ``rotator serve`` process at ``/mcp``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport, StreamableHttpTransport
from mcp.types import CallToolResult
from sqlalchemy import Engine, select
from tests.support.server import ServeProcess

from rotator.config import Settings
from rotator.domain.model import Stage
from rotator.domain.principal import Principal, Role
from rotator.domain.secret import Secret
from rotator.mcp.server import build_server
from rotator.service import BlockingService, ValueInput, access
from rotator.store.schema import audit_log

ROTATOR = str(Path(sys.executable).parent / "rotator")
TOOLS = {
    "list_credentials",
    "describe_credential",
    "add_credential",
    "update_credential",
    "rotate",
    "emergency_rotate",
    "set_policy",
    "report_risk_event",
    "report_usage",
    "query_audit",
    "compliance_report",
    "reveal_value",
}
# A value no tool but reveal_value may ever show: given, not generated, so the test knows it.
VALUE = "mcp-canary-7f3a9c1e-value"
NUMERIC = 7302619485517


def principal_with(svc: BlockingService, name: str, role: Role) -> tuple[Principal, str]:
    svc.add_principal(name, role)
    _, token = svc.create_token(name)
    return svc.authenticate(token), token


def call_as(
    svc: BlockingService, principal: Principal, scenario: Callable[[Client[Any]], Awaitable[Any]]
) -> Any:
    """Run ``scenario`` with an in-memory client of a server acting as ``principal``, on the
    service's own loop (the tools call the service there)."""

    async def who() -> Principal:
        return principal

    server = build_server(lambda: svc.service, who)

    async def run() -> Any:
        async with Client(server) as client:
            return await scenario(client)

    return svc.run(run())


def text_of(result: CallToolResult) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def audit_actions(raw_db: Engine, action: str) -> list[dict[str, Any]]:
    with raw_db.connect() as c:
        rows = c.execute(
            select(audit_log).where(audit_log.c.action == action).order_by(audit_log.c.seq)
        )
        return [dict(r._mapping) | {"details": json.loads(r.details)} for r in rows]


def current_version(svc: BlockingService, name: str) -> int:
    cred = svc.show(name)
    return next(v.number for v in cred.versions if v.stage is Stage.CURRENT)


# -- in memory ---------------------------------------------------------------------------------


def test_every_tool_says_what_it_does_and_describes_every_argument(svc: BlockingService) -> None:
    admin, _ = principal_with(svc, "ada", Role.ADMIN)

    async def scenario(client: Client[Any]) -> Any:
        return await client.list_tools()

    tools = call_as(svc, admin, scenario)
    assert {t.name for t in tools} == TOOLS
    for tool in tools:
        assert len(tool.description or "") > 60, tool.name
        schema = tool.input_schema
        assert schema["type"] == "object"
        for arg, spec in schema.get("properties", {}).items():
            assert spec.get("description"), f"{tool.name}.{arg} has no description"
    by_name = {t.name: t for t in tools}
    # Names are shown by example; enums where the service takes a closed set.
    assert (
        "prod/payments/db"
        in by_name["describe_credential"].input_schema["properties"]["name"]["description"]
    )
    assert by_name["reveal_value"].input_schema["properties"]["stage"]["enum"] == [
        "CURRENT",
        "PREVIOUS",
        "PENDING",
    ]
    assert by_name["report_risk_event"].input_schema["properties"]["severity"]["enum"] == [
        "low",
        "medium",
        "high",
        "critical",
    ]
    # The one tool that returns a value says so.
    assert "ONLY tool that returns a value" in " ".join(
        (by_name["reveal_value"].description or "").split()
    )


def test_list_credentials_pages_by_name_through_what_the_caller_s_scope_lets_it_read(
    svc: BlockingService,
) -> None:
    for name in ("prod/c", "dev/a", "prod/a", "prod/b"):
        svc.add_credential(name, "local", value=ValueInput(generate=True))
    svc.add_principal("rita", Role.READER, scope="prod/*")
    _, token = svc.create_token("rita")
    rita = svc.authenticate(token)

    async def scenario(client: Client[Any]) -> list[dict[str, Any]]:
        pages = []
        after = None
        while True:
            r = await client.call_tool("list_credentials", {"limit": 2, "after": after})
            assert r.structured_content is not None
            pages.append(r.structured_content)
            after = r.structured_content["next_after"]
            if after is None:
                return pages

    pages = call_as(svc, rita, scenario)
    assert [[c["name"] for c in p["credentials"]] for p in pages] == [
        ["prod/a", "prod/b"],
        ["prod/c"],
    ]
    assert pages[0]["next_after"] == "prod/b"


def test_an_operator_rotates_a_local_credential_to_a_new_current(svc: BlockingService) -> None:
    svc.add_credential("prod/payments/api", "local", value=ValueInput(generate=True))
    before = current_version(svc, "prod/payments/api")
    olga, _ = principal_with(svc, "olga", Role.OPERATOR)

    async def scenario(client: Client[Any]) -> tuple[CallToolResult, CallToolResult]:
        plan = await client.call_tool("rotate", {"names": ["prod/payments/api"], "dry_run": True})
        done = await client.call_tool("rotate", {"names": ["prod/payments/api"]})
        return plan, done

    plan, done = call_as(svc, olga, scenario)
    assert plan.structured_content is not None
    assert plan.structured_content["dry_run"] is True
    assert [p["name"] for p in plan.structured_content["plan"]] == ["prod/payments/api"]
    assert done.structured_content is not None
    assert done.structured_content["rotated"] == ["prod/payments/api"]
    assert done.structured_content["failed"] == []
    assert current_version(svc, "prod/payments/api") == before + 1


def test_an_auditor_is_refused_rotation_as_a_tool_error_and_the_refusal_is_audited(
    svc: BlockingService, raw_db: Engine
) -> None:
    svc.add_credential("prod/payments/api", "local", value=ValueInput(generate=True))
    before = current_version(svc, "prod/payments/api")
    audrey, _ = principal_with(svc, "audrey", Role.AUDITOR)

    async def scenario(client: Client[Any]) -> CallToolResult:
        return await client.call_tool(
            "rotate", {"names": ["prod/payments/api"]}, raise_on_error=False
        )

    result = call_as(svc, audrey, scenario)
    assert result.is_error
    message = text_of(result)
    assert "\n" not in message
    assert "Traceback" not in message
    assert "permission denied" in message
    assert "rotate" in message
    denied = audit_actions(raw_db, "access.denied")
    assert [(d["actor"], d["credential"], d["details"]["permission"]) for d in denied] == [
        ("audrey", "prod/payments/api", "rotate")
    ]
    assert current_version(svc, "prod/payments/api") == before


def test_reveal_value_is_refused_without_value_read_and_returns_the_value_to_a_reader(
    svc: BlockingService, raw_db: Engine
) -> None:
    svc.add_credential("prod/payments/api", "local", value=ValueInput(value=Secret(VALUE.encode())))
    olga, _ = principal_with(svc, "olga", Role.OPERATOR)
    rita, _ = principal_with(svc, "rita", Role.READER)

    async def reveal(client: Client[Any]) -> CallToolResult:
        return await client.call_tool(
            "reveal_value", {"name": "prod/payments/api"}, raise_on_error=False
        )

    refused = call_as(svc, olga, reveal)
    assert refused.is_error
    assert VALUE not in text_of(refused)
    assert "value.read" in text_of(refused)
    assert [d["actor"] for d in audit_actions(raw_db, "access.denied")] == ["olga"]

    shown = call_as(svc, rita, reveal)
    assert not shown.is_error
    assert shown.structured_content == {
        "name": "prod/payments/api",
        "stage": "CURRENT",
        "value": VALUE,
    }
    reads = audit_actions(raw_db, "value.read")
    assert [r["actor"] for r in reads] == ["rita"]
    assert VALUE not in json.dumps(reads)


def test_no_tool_but_reveal_value_shows_the_value_in_a_result_or_an_error(
    svc: BlockingService,
) -> None:
    """Every other tool, called as the admin (who may read values), with successes and
    failures: the value appears in none of their results or errors."""
    svc.add_credential(
        "prod/payments/api",
        "local",
        tags={"env": "prod"},
        value=ValueInput(value=Secret(VALUE.encode())),
    )
    admin, _ = principal_with(svc, "ada", Role.ADMIN)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("list_credentials", {}),
        ("list_credentials", {"tags": {"env": "prod"}, "due": True}),
        ("describe_credential", {"name": "prod/payments/api"}),
        ("describe_credential", {"name": "prod/none"}),
        ("add_credential", {"name": "prod/payments/api", "connector": "local", "value": VALUE}),
        ("add_credential", {"name": "BAD NAME", "connector": "local", "value": VALUE}),
        ("add_credential", {"name": "prod/other", "connector": "nope", "value": VALUE}),
        (
            "add_credential",
            {"name": "prod/x", "connector": "local", "value": VALUE, "generate": True},
        ),
        # A value of the wrong JSON type: the schema refuses it without quoting it.
        ("add_credential", {"name": "prod/pin", "connector": "local", "value": NUMERIC}),
        ("update_credential", {"name": "prod/payments/api", "every": "bogus", "value": VALUE}),
        ("update_credential", {"name": "prod/payments/api", "grace": "10m"}),
        ("rotate", {"tags": {"env": "prod"}, "dry_run": True}),
        ("rotate", {"names": ["prod/none"]}),
        ("rotate", {}),
        ("emergency_rotate", {"names": ["prod/payments/api"], "confirm": False}),
        ("set_policy", {"tag": {"env": "prod"}, "every": "30d"}),
        ("set_policy", {"every": "30d"}),
        (
            "report_risk_event",
            {
                "kind": "leak",
                "severity": "low",
                "credential": "prod/payments/api",
                "detail": "seen in a log",
            },
        ),
        ("report_risk_event", {"kind": "leak", "severity": "low"}),
        ("report_usage", {"name": "prod/payments/api", "count": 2}),
        ("report_usage", {"name": "prod/none"}),
        ("query_audit", {"limit": 1000}),
        ("query_audit", {"credential": "prod/payments/api"}),
        ("compliance_report", {"format": "json"}),
        ("compliance_report", {"format": "csv"}),
        ("compliance_report", {"format": "html"}),
    ]

    async def scenario(client: Client[Any]) -> list[tuple[str, CallToolResult]]:
        return [
            (name, await client.call_tool(name, args, raise_on_error=False)) for name, args in calls
        ]

    results = call_as(svc, admin, scenario)
    outcomes = {}
    for (name, args), (_, result) in zip(calls, results, strict=True):
        shown = text_of(result) + json.dumps(result.structured_content)
        assert VALUE not in shown, (name, args)
        assert str(NUMERIC) not in shown, (name, args)
        if result.is_error:
            assert "\n" not in text_of(result), name
            assert "Traceback" not in text_of(result), name
        outcomes[(name, json.dumps(args))] = result.is_error
    # Both kinds were exercised: successes and refusals.
    assert not outcomes[("describe_credential", json.dumps({"name": "prod/payments/api"}))]
    assert outcomes[("add_credential", json.dumps(calls[4][1]))]
    assert not outcomes[("query_audit", json.dumps({"limit": 1000}))]
    # The same value is still CURRENT: none of the failed calls stored anything over it.
    assert svc.get_value("prod/payments/api").reveal_text() == VALUE


# -- real processes ----------------------------------------------------------------------------


def process_env(settings: Settings, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env["ROTATOR_HOME"] = str(settings.home)
    env["ROTATOR_DB"] = settings.db_url
    # Every request authenticates afresh (no cached authentication): these tests revoke a
    # token from another process mid-session and expect its very next call refused. The
    # cache's own window is tested in test_auth_cache.py.
    env["ROTATOR_API_AUTH_TTL_S"] = "0"
    if token is not None:
        env["ROTATOR_TOKEN"] = token
    return env


def test_rotator_mcp_serves_the_tools_over_stdio_as_the_token_s_principal(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    svc.add_credential("prod/payments/api", "local", value=ValueInput(generate=True))
    before = current_version(svc, "prod/payments/api")
    _, token = principal_with(svc, "olga", Role.OPERATOR)

    async def scenario() -> tuple[set[str], CallToolResult, CallToolResult, CallToolResult]:
        # Not kept alive: the process ends when the client disconnects.
        transport = StdioTransport(
            ROTATOR, ["mcp"], env=process_env(settings, token), keep_alive=False
        )
        async with Client(transport) as client:
            names = {t.name for t in await client.list_tools()}
            rotated = await client.call_tool("rotate", {"names": ["prod/payments/api"]})
            refused = await client.call_tool(
                "reveal_value", {"name": "prod/payments/api"}, raise_on_error=False
            )
            # Revoked during the session: the next call is refused.
            await access.revoke_token(svc.service, token[4:16])
            after_revoke = await client.call_tool("list_credentials", {}, raise_on_error=False)
            return names, rotated, refused, after_revoke

    names, rotated, refused, after_revoke = svc.run(scenario())
    assert names == TOOLS
    assert rotated.structured_content is not None
    assert rotated.structured_content["rotated"] == ["prod/payments/api"]
    assert current_version(svc, "prod/payments/api") == before + 1
    assert refused.is_error
    assert "value.read" in text_of(refused)
    assert after_revoke.is_error
    assert text_of(after_revoke) == f"token {token[4:16]} was revoked"
    # The process acted as the token's principal: its refusal names olga and the token.
    denied = audit_actions(raw_db, "access.denied")
    assert [(d["actor"], d["details"]["token"]) for d in denied] == [("olga", token[4:16])]


def test_rotator_mcp_with_a_bad_token_exits_2_with_one_line_before_serving(
    svc: BlockingService, settings: Settings
) -> None:
    bad = "rtr_aaaaaaaaaaaa_" + "A" * 43
    expected = {
        bad: "rotator: error: invalid token",
        " ": "rotator: error: ROTATOR_TOKEN is set but empty: unset it to act as the store's owner",
    }
    for token, line in expected.items():
        # stdin left open: a process that started serving would wait on it (and time out).
        proc = subprocess.run(
            [ROTATOR, "mcp"],
            env=process_env(settings, token),
            stdin=subprocess.PIPE,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert proc.stderr.splitlines() == [line]


@pytest.fixture
def served(svc: BlockingService, settings: Settings) -> Iterator[str]:
    """A real ``rotator serve --port 0`` on the test's store; yields its base URL."""
    proc = subprocess.Popen(
        [ROTATOR, "serve", "--port", "0", "--no-scheduler"],
        env=process_env(settings),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        url = None
        lines = []
        for line in proc.stderr:  # bounded by pytest's timeout if it never gets ready
            lines.append(line)
            if line.startswith("rotator: serving on "):
                url = line.split()[-1]
                break
        assert url is not None, "".join(lines)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mcp_over_http_under_rotator_serve_authenticates_each_request_s_bearer_token(
    svc: BlockingService, served: str, raw_db: Engine
) -> None:
    svc.add_credential("prod/payments/api", "local", value=ValueInput(generate=True))
    before = current_version(svc, "prod/payments/api")
    _, token = principal_with(svc, "olga", Role.OPERATOR)
    _, audrey_token = principal_with(svc, "audrey", Role.AUDITOR)

    async def as_(tok: str) -> CallToolResult:
        transport = StreamableHttpTransport(
            f"{served}/mcp", headers={"Authorization": f"Bearer {tok}"}
        )
        async with Client(transport) as client:
            return await client.call_tool(
                "rotate", {"names": ["prod/payments/api"]}, raise_on_error=False
            )

    rotated = svc.run(as_(token))
    assert not rotated.is_error
    assert rotated.structured_content is not None
    assert rotated.structured_content["rotated"] == ["prod/payments/api"]
    assert current_version(svc, "prod/payments/api") == before + 1

    refused = svc.run(as_(audrey_token))
    assert refused.is_error
    assert "permission denied" in text_of(refused)
    assert [d["actor"] for d in audit_actions(raw_db, "access.denied")] == ["audrey"]

    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }

    # Each request authenticates anew: a token revoked during a session is refused on the
    # session's next request.
    async def revoked_mid_session() -> tuple[CallToolResult, BaseException | None]:
        transport = StreamableHttpTransport(
            f"{served}/mcp", headers={"Authorization": f"Bearer {token}"}
        )
        async with Client(transport) as client:
            first = await client.call_tool("list_credentials", {})
            await access.revoke_token(svc.service, token[4:16])
            try:
                await client.call_tool("list_credentials", {})
            except Exception as exc:
                return first, exc
            return first, None

    first, error = svc.run(revoked_mid_session())
    assert not first.is_error
    assert error is not None  # the client sees the request refused (a 401 problem)
    revoked = [
        d for d in audit_actions(raw_db, "auth.denied") if d["details"].get("reason") == "revoked"
    ]
    assert [d["details"]["token"] for d in revoked] == [token[4:16]]

    accept = {"Accept": "application/json, text/event-stream"}
    for headers in ({}, {"Authorization": "Bearer rtr_aaaaaaaaaaaa_" + "A" * 43}):
        r = httpx.post(f"{served}/mcp", json=initialize, headers={**accept, **headers})
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 401
    assert current_version(svc, "prod/payments/api") == before + 1


SECRET_ARG = "S3CRET-hunter2-arg"


@pytest.mark.parametrize(
    "body",
    [
        {
            "jsonrpc": "2.1",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "add_credential", "arguments": {"value": SECRET_ARG}},
        },
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": SECRET_ARG},
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": 5, "value": SECRET_ARG},
        },
        [{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"value": SECRET_ARG}}],
        {"jsonrpc": "2.0", "id": 1, "method": SECRET_ARG, "params": {}},
        '{"jsonrpc": "2.0", "id": 1, "params": {"value": "' + SECRET_ARG + '"',
    ],
    ids=["bad-version", "params-not-object", "bad-tool-name", "batch", "method", "not-json"],
)
def test_mcp_envelope_errors_over_http_keep_their_code_and_never_quote_the_request(
    svc: BlockingService, served: str, body: Any
) -> None:
    _, token = principal_with(svc, "olga", Role.OPERATOR)
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(
        served + "/mcp",
        content=content,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        },
        timeout=30,
    )
    leaked = SECRET_ARG in r.text  # apart: a failure must not print the answer
    assert not leaked, f"HTTP {r.status_code}: the answer quotes the request"
    error = r.json()["error"]
    assert error["code"] in (-32700, -32600, -32601, -32602), error
    assert "not quoted" in error["message"], error


def test_mcp_over_http_logs_only_through_rotator_s_structured_log(
    svc: BlockingService, settings: Settings
) -> None:
    svc.add_credential("prod/payments/api", "local", value=ValueInput(value=Secret(VALUE.encode())))
    _, olga = principal_with(svc, "olga", Role.OPERATOR)

    async def calls(base_url: str) -> list[CallToolResult]:
        transport = StreamableHttpTransport(
            f"{base_url}/mcp", headers={"Authorization": f"Bearer {olga}"}
        )
        async with Client(transport) as client:
            return [
                await client.call_tool(tool, args, raise_on_error=False)
                for tool, args in [
                    ("reveal_value", {"name": "prod/payments/api"}),  # refused: no value.read
                    ("reveal_value", {"name": "prod/payments/api", "stage": "RETIRED"}),
                    ("describe_credential", {"name": "prod/nope"}),
                ]
            ]

    server = ServeProcess(process_env(settings))
    with server:
        results = svc.run(calls(server.base_url))
    assert server.stop() == 0
    assert all(r.is_error for r in results)
    # fastmcp's own rich handlers wrote "Error calling tool ..." lines past the log.
    lines = [line for line in server.stderr.splitlines() if line.strip()]
    assert lines, "no ready line"
    for line in lines:
        if line.startswith("rotator: serving on "):
            continue
        assert line.startswith("{"), f"not a structured log line: {line[:120]!r}"
        json.loads(line)
    assert VALUE not in server.stderr
