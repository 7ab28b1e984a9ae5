"""The MCP server over HTTP (streamable HTTP), mounted by the REST API at ``/mcp``.

Callers rely on:
- every HTTP request to ``/mcp`` authenticates its own ``Authorization: Bearer rtr_...``
  through ``service.access.authenticate`` (unknown, wrong, expired or revoked tokens are
  refused and audited there); without a usable token the request is a 401 problem+json and
  never reaches the MCP server;
- the principal is stored in the request's ASGI ``state`` and the tools read it from the
  request that carried their ``tools/call`` (fastmcp's ``get_http_request``): a session
  never outlives a revoked token, and requests of one session may use different tokens;
- the app is stateless (no MCP session kept between requests), so any ``rotator serve``
  process on the same store answers any request;
- the returned app's ``lifespan`` must run (it starts fastmcp's session manager): the REST
  app enters it in its own lifespan, and ``rotator serve`` runs uvicorn with lifespan on.
"""

from __future__ import annotations

import json

from fastmcp.server.dependencies import get_http_request
from fastmcp.server.http import StarletteWithLifespan
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from rotator.domain.principal import Principal
from rotator.errors import AuthenticationFailed, RotatorError
from rotator.mcp.server import build_server
from rotator.service import RotatorService, access

PATH = "/mcp"
_STATE_KEY = "rotator_principal"


async def _request_principal() -> Principal:
    """The principal the current tool call's HTTP request authenticated as."""
    try:
        request = get_http_request()
    except RuntimeError:
        raise AuthenticationFailed("no HTTP request carries this call") from None
    principal = request.scope.get("state", {}).get(_STATE_KEY)
    if not isinstance(principal, Principal):
        raise AuthenticationFailed("missing bearer token (Authorization: Bearer rtr_...)")
    return principal


def _bearer(headers: Headers) -> str:
    header = headers.get("authorization")
    if not header:
        raise AuthenticationFailed("missing bearer token (Authorization: Bearer rtr_...)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("the Authorization header must be 'Bearer <token>'")
    return token.strip()


class BearerAuthenticated:
    """ASGI wrapper: authenticate the bearer token of every HTTP request, then pass it on
    with the principal in ``scope["state"]``; refuse it with a problem+json otherwise."""

    def __init__(self, app: StarletteWithLifespan, svc: RotatorService) -> None:
        self.app = app
        self.svc = svc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            principal = await access.authenticate(self.svc, _bearer(Headers(scope=scope)))
        except AuthenticationFailed as exc:
            await _problem(send, 401, "unauthorized", str(exc))
            return
        except RotatorError as exc:  # the store does not answer: not the caller's fault
            await _problem(send, 503, "unavailable", type(exc).__name__)
            return
        scope.setdefault("state", {})[_STATE_KEY] = principal
        await self.app(scope, receive, send)


async def _problem(send: Send, status: int, slug: str, detail: str) -> None:
    # The REST API's problem shape (api.problems), written here because this package may not
    # import the API.
    body = json.dumps(
        {
            "type": f"https://rotator.dev/problems/{slug}",
            "title": slug.replace("-", " "),
            "status": status,
            "detail": detail.splitlines()[0] if detail else slug,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def http_app(svc: RotatorService) -> tuple[ASGIApp, StarletteWithLifespan]:
    """The authenticated ASGI app serving MCP at :data:`PATH` (mount it as a route at that
    exact path; the inner app routes on the full path), and the inner app whose
    ``lifespan`` the caller must run while serving."""
    server = build_server(lambda: svc, _request_principal)
    inner = server.http_app(path=PATH, stateless_http=True, json_response=True)
    return BearerAuthenticated(inner, svc), inner
