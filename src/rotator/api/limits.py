"""Request limits as pure ASGI middleware: body size and request rate.

- Body size: a request whose body is longer than ``max_body`` bytes is answered 413
  (problem+json) before the application sees any of it, whether it declares a
  ``Content-Length`` or is sent chunked (the body is read, at most ``max_body`` bytes plus one
  message, and replayed to the application). So a refused request never reaches a use case:
  nothing is stored.
- Rate: token buckets refill ``rate`` requests a second up to ``burst``; a request finding
  its bucket empty is answered 429 with ``Retry-After`` (whole seconds until a request would
  pass). Two buckets, because nothing in a request is trusted before it authenticates:
  every request first takes from the bucket of its client address (the socket peer:
  ``rotator serve`` trusts no ``X-Forwarded-For``), so unauthenticated requests, whatever
  token id they claim, are limited per address; when its token authenticates
  (api.auth.principal_of, the MCP endpoint) that take is given back and the request is
  charged to the bucket of the token id the service verified instead (:data:`CHARGE_KEY`).
  So a token is limited across addresses, and a wrong secret naming someone else's token
  id spends the sender's address, never the token's bucket. Health and metrics probes are
  not limited.

Configuration (read by :func:`Limits.from_env`): ``ROTATOR_API_MAX_BODY`` (bytes, default
1 MiB) and ``ROTATOR_API_RATE`` (``50/s``, ``600/m``; optionally ``:BURST``, default twice the
per-second rate, at least 1). The clock is injectable so tests drive time.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rotator.api import problems
from rotator.domain.principal import Principal
from rotator.errors import InvalidInput

MAX_BODY_ENV = "ROTATOR_API_MAX_BODY"
RATE_ENV = "ROTATOR_API_RATE"
DEFAULT_MAX_BODY = 1024 * 1024
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*(?::\s*(\d+))?\s*")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}
_BYTES = re.compile(r"[0-9]{1,18}")
_UNLIMITED = frozenset({"/healthz", "/readyz", "/metrics"})
_MAX_BUCKETS = 10_000  # callers remembered; full buckets are forgotten beyond this
# The key, in the request's ASGI ``scope["state"]``, of the callable that charges an
# authenticated request to its token: ``charge(principal) -> seconds to wait`` (0: it may
# pass). The MCP endpoint looks it up by this literal name (it may not import the API).
CHARGE_KEY = "rotator_rate_charge"


@dataclass(frozen=True)
class Limits:
    max_body: int = DEFAULT_MAX_BODY
    rate: float = 50.0  # requests per second
    burst: float = 100.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        """Limits from the environment; InvalidInput naming the variable when it is bad."""
        env = os.environ if env is None else env
        max_body = DEFAULT_MAX_BODY
        raw = env.get(MAX_BODY_ENV)
        if raw is not None and raw.strip():
            # ASCII digits only, and few: str.isdigit() also says yes to "²", which int()
            # refuses, and int() refuses more than 4300 digits.
            if not _BYTES.fullmatch(raw.strip()) or int(raw) < 1:
                raise InvalidInput(f"{MAX_BODY_ENV} must be a number of bytes (1 or more)")
            max_body = int(raw)
        rate, burst = 50.0, 100.0
        raw = env.get(RATE_ENV)
        if raw is not None and raw.strip():
            rate, burst = parse_rate(raw)
        return cls(max_body=max_body, rate=rate, burst=burst)


def parse_rate(text: str) -> tuple[float, float]:
    """``N/s``, ``N/m``, ``N/h`` with an optional ``:BURST`` -> (per second, burst)."""
    m = _RATE.fullmatch(text)
    if m is None or float(m.group(1)) <= 0:
        raise InvalidInput(f"{RATE_ENV} must look like 50/s, 600/m or 50/s:100")
    per_s = float(m.group(1)) / _PER[m.group(2)]
    burst = float(m.group(3)) if m.group(3) else max(1.0, 2 * per_s)
    if burst < 1:
        raise InvalidInput(f"{RATE_ENV}: the burst must be 1 or more")
    return per_s, burst


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class RateLimiter:
    """Token buckets per key; ``take`` answers 0 when a request may pass, else the seconds
    to wait."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        now = self.clock()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget_full(now)
            b = self._buckets[key] = _Bucket(self.burst, now)
        else:
            b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
            b.at = now
        if b.tokens >= 1:
            b.tokens -= 1
            return 0.0
        return (1 - b.tokens) / self.rate

    def give_back(self, key: str) -> None:
        """Undo one successful :meth:`take` of ``key`` (never above the burst)."""
        b = self._buckets.get(key)
        if b is not None:
            b.tokens = min(self.burst, b.tokens + 1)

    def _forget_full(self, now: float) -> None:
        for key, b in list(self._buckets.items()):
            if b.tokens + (now - b.at) * self.rate >= self.burst:
                del self._buckets[key]
        if len(self._buckets) >= _MAX_BUCKETS:  # all busy: forget the oldest
            oldest = min(self._buckets, key=lambda k: self._buckets[k].at)
            del self._buckets[oldest]


class LimitsMiddleware:
    """Body-size and rate limits in front of ``app`` (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.limits = limits or Limits()
        self.limiter = RateLimiter(self.limits.rate, self.limits.burst, clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path") not in _UNLIMITED:
            address = _address(scope)
            wait = self.limiter.take(address)
            if wait > 0:
                await rate_limited(wait)(scope, receive, send)
                return
            scope.setdefault("state", {})[CHARGE_KEY] = partial(self._charge, address)
        declared = _content_length(scope)

        async def too_big(scope: Scope, receive: Receive, send: Send) -> None:
            # Built only when sent: rendering a problem costs a JSON encoding per request.
            await problems.problem(
                413,
                f"request body larger than {self.limits.max_body} bytes",
                headers={"Connection": "close"},
            )(scope, receive, send)

        if declared is not None and declared > self.limits.max_body:
            await too_big(scope, receive, send)
            return
        body: list[Message] = []
        size = 0
        while True:
            message = await receive()
            body.append(message)
            if message["type"] != "http.request":
                break  # the client went away: let the app see it
            size += len(message.get("body", b""))
            if size > self.limits.max_body:
                await too_big(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(body, receive), send)

    def _charge(self, address: str, principal: Principal) -> float:
        # Authenticated: the request is the token's, not the address's.
        self.limiter.give_back(address)
        if principal.token_id is not None:
            key = "token:" + principal.token_id
        else:
            key = f"principal:{principal.tenant}/{principal.name}"
        return self.limiter.take(key)


def rate_limited(wait: float) -> JSONResponse:
    """The 429 problem for a caller that may try again in ``wait`` seconds."""
    retry = str(max(1, math.ceil(wait)))
    return problems.problem(
        429, f"rate limit exceeded: retry in {retry} s", headers={"Retry-After": retry}
    )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()  # after the body: disconnect notices (streaming responses)

    return replay


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _content_length(scope: Scope) -> int | None:
    raw = _header(scope, b"content-length")
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw)


def _address(scope: Scope) -> str:
    client: Any = scope.get("client")
    return "addr:" + (str(client[0]) if client else "unknown")
