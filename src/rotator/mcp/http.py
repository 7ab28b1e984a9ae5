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
- :meth:`McpEndpoint.lifespan` must run while serving (the REST app enters it in its own
  lifespan; ``rotator serve`` runs uvicorn with lifespan on). It starts the MCP server in
  the background: importing fastmcp takes seconds on a loaded machine, and the REST API
  must not wait for it. A request that comes earlier waits until it is ready (503 if it
  could not start). This module imports no fastmcp at import time for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from rotator.domain.principal import Principal
from rotator.errors import AuthenticationFailed, RotatorError
from rotator.service import RotatorService, access

if TYPE_CHECKING:
    from fastmcp.server.http import StarletteWithLifespan

PATH = "/mcp"
_STATE_KEY = "rotator_principal"
log = logging.getLogger("rotator.mcp")


async def _request_principal() -> Principal:
    """The principal the current tool call's HTTP request authenticated as."""
    from fastmcp.server.dependencies import get_http_request

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


def _import_fastmcp() -> None:
    # In a worker thread: the modules are cached for the loop thread's imports after it.
    for module in ("fastmcp.server.http", "rotator.mcp.server"):
        importlib.import_module(module)
    # fastmcp configures its logger at import: rich handlers writing wrapped lines straight
    # to stderr, not propagated. Its records go through rotator's structured, redacted log
    # instead (telemetry.logs.configure on the root logger), at that log's level.
    fastmcp_log = logging.getLogger("fastmcp")
    for handler in fastmcp_log.handlers[:]:
        fastmcp_log.removeHandler(handler)
    fastmcp_log.propagate = True
    fastmcp_log.setLevel(logging.NOTSET)


async def _in_daemon_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a daemon thread and wait for it. Unlike ``asyncio.to_thread``, a
    cancelled wait leaves nothing for the interpreter to join at exit: the process ends
    without waiting for ``fn`` to finish."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    def work() -> None:
        error: BaseException | None = None
        try:
            fn()
        except BaseException as exc:  # handed to the waiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed while fn ran
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=work, name="mcp-import", daemon=True).start()
    await done


class McpEndpoint:
    """The ASGI app of :data:`PATH` (route it at that exact path: the inner fastmcp app
    routes on the full path). Authenticates each HTTP request's bearer token, then passes it
    to the MCP server with the principal in ``scope["state"]``; refuses it with a
    problem+json otherwise."""

    def __init__(self, svc: RotatorService) -> None:
        self.svc = svc
        self._inner: StarletteWithLifespan | None = None
        self._settled: asyncio.Event | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the MCP server (built in the background) until the block ends."""
        self._settled = asyncio.Event()
        stop = asyncio.Event()
        task = asyncio.create_task(self._run(stop, self._settled), name="mcp")
        try:
            yield
        finally:
            stop.set()
            if not self._settled.is_set():
                # Still importing fastmcp: stopping must not wait for an import that only a
                # request would use (it takes seconds on a loaded machine).
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, stop: asyncio.Event, settled: asyncio.Event) -> None:
        # One task enters and leaves the session manager's lifespan (anyio task groups must
        # be left by the task that entered them).
        try:
            await _in_daemon_thread(_import_fastmcp)
            from rotator.mcp.server import build_server

            server = build_server(lambda: self.svc, _request_principal)
            inner = server.http_app(path=PATH, stateless_http=True, json_response=True)
            async with inner.lifespan(inner):
                self._inner = inner
                settled.set()
                await stop.wait()
        except Exception as exc:
            log.error("the MCP server could not start (%s)", type(exc).__name__)
        finally:
            self._inner = None
            settled.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            principal = await access.authenticate(self.svc, _bearer(Headers(scope=scope)))
        except AuthenticationFailed as exc:
            await _problem(send, 401, "unauthorized", str(exc))
            return
        except RotatorError as exc:  # the store does not answer: not the caller's fault
            await _problem(send, 503, "unavailable", type(exc).__name__)
            return
        # The REST API's rate limiter (api.limits.CHARGE_KEY, by name: this package may not
        # import the API) charged the client address; the request is the token's now.
        charge = scope.get("state", {}).get("rotator_rate_charge")
        if charge is not None:
            wait = charge(principal)
            if wait > 0:
                retry = str(max(1, math.ceil(wait)))
                await _problem(
                    send,
                    429,
                    "too-many-requests",
                    f"rate limit exceeded: retry in {retry} s",
                    [(b"retry-after", retry.encode())],
                )
                return
        if self._settled is not None:
            await self._settled.wait()
        inner = self._inner
        if inner is None:
            await _problem(send, 503, "unavailable", "the MCP server is not running")
            return
        scope.setdefault("state", {})[_STATE_KEY] = principal
        await inner(scope, receive, _quoting_no_input(send))


# JSON-RPC's own errors, answered by the MCP SDK before any tool runs; its messages quote the
# request (pydantic's "input_value=..."), which may hold a value argument.
_NOT_QUOTED = " (the request is not quoted: it may hold a value)"
_ENVELOPE_ERRORS = {
    -32700: "parse error" + _NOT_QUOTED,
    -32600: "invalid request" + _NOT_QUOTED,
    -32601: "method not found" + _NOT_QUOTED,
    -32602: "invalid params" + _NOT_QUOTED,
}


def _scrub_envelope_errors(body: bytes) -> bytes:
    """``body`` with the message of each JSON-RPC envelope error replaced by a fixed text
    and its ``data`` dropped; any other body unchanged (byte for byte)."""
    if b'"error"' not in body:
        return body
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    changed = False
    for item in doc if isinstance(doc, list) else [doc]:
        err = item.get("error") if isinstance(item, dict) else None
        if isinstance(err, dict) and err.get("code") in _ENVELOPE_ERRORS:
            err["message"] = _ENVELOPE_ERRORS[err["code"]]
            err.pop("data", None)
            changed = True
    return json.dumps(doc, separators=(",", ":")).encode() if changed else body


def _quoting_no_input(send: Send) -> Send:
    """``send`` for the inner MCP app: a JSON answer is held until complete and its envelope
    errors scrubbed (:func:`_scrub_envelope_errors`); any other answer (an event stream)
    passes through as it comes."""
    start: Message | None = None
    body = bytearray()

    async def wrapped(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            ctype = Headers(raw=message.get("headers", [])).get("content-type", "")
            if ctype.startswith("application/json"):
                start = message
                return
        elif message["type"] == "http.response.body" and start is not None:
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            out = _scrub_envelope_errors(bytes(body))
            headers = [
                (k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(out)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": out})
            return
        await send(message)

    return wrapped


async def _problem(
    send: Send,
    status: int,
    slug: str,
    detail: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
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
    headers.extend(extra_headers or ())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
