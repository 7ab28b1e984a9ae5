"""``rotator mcp``: the MCP server on stdio, acting as one principal for the whole session."""

from __future__ import annotations

import asyncio
import os

from rotator.cli.app import TENANT_ENV, TOKEN_ENV, app
from rotator.config import Settings
from rotator.errors import InvalidInput
from rotator.service import EngineOptions, Principal, RotatorService, access, rotation


@app.command("mcp")
def mcp_command() -> None:
    """Serve the MCP tools (list, describe, add, update, rotate, emergency-rotate, policies,
    risk events, usage, audit, compliance report, reveal_value) on standard input and output,
    for an AI assistant. Acts as ROTATOR_TOKEN's principal (a bad token: exit 2 before
    serving; one revoked or expired later: every later call is refused), or without it as
    the store's owner in ROTATOR_TENANT."""
    raw_token = os.environ.get(TOKEN_ENV)
    if raw_token is not None and not raw_token.strip():
        raise InvalidInput(f"{TOKEN_ENV} is set but empty: unset it to act as the store's owner")
    tenant = os.environ.get(TENANT_ENV) or None
    options = rotation.options_from_env()
    settings = Settings.from_env()
    asyncio.run(_serve(settings, raw_token or None, tenant, options))


async def _serve(
    settings: Settings, token: str | None, tenant: str | None, options: EngineOptions
) -> None:
    from rotator.mcp.server import build_server

    svc = await RotatorService.open(settings, options=options)
    try:
        # Before serving: a bad token never gets a session (exit 2, one line).
        await access.acting_principal(svc, token, tenant)

        async def who() -> Principal:
            # Again on every call, as the HTTP server does per request: a token revoked or
            # expired during the session is refused from its next call on.
            return await access.acting_principal(svc, token, tenant)

        server = build_server(lambda: svc, who)
        # No banner: stdout is the protocol channel, and stderr stays quiet for clients
        # that show it to a user.
        await server.run_stdio_async(show_banner=False, log_level="WARNING")
    finally:
        await svc.aclose()
