"""``AsyncClient``: the SDK for asyncio applications; the same API as
:class:`rotator.client.Client` with ``await`` (``get``) and ``async for`` (``watch``).

Use it as ``async with AsyncClient() as client:`` (local mode opens the store in the
caller's loop; remote mode holds an ``httpx.AsyncClient``). A cached value is dropped when
the background watch task reports a new CURRENT of its credential (see ``Client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from rotator.client import _sse
from rotator.client.client import (
    STAGES,
    TENANT_ENV,
    TOKEN_ENV,
    URL_ENV,
    Unreachable,
    _problem,
    http_limits,
)
from rotator.domain.change import Change
from rotator.domain.secret import Secret
from rotator.errors import InvalidInput, RotatorError


class AsyncClient:
    """See the module docstring."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        cache_ttl: float = 30.0,
        timeout: float = 10.0,
        max_backoff_s: float = 5.0,
        watch_cache: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        env = dict(os.environ) if env is None else env
        self._env = env
        self._url = url or env.get(URL_ENV) or None
        self._token = token or env.get(TOKEN_ENV) or None
        if cache_ttl < 0:
            raise InvalidInput("cache_ttl must be >= 0")
        self.cache_ttl = cache_ttl
        self.watch_cache = watch_cache
        self.max_backoff_s = max_backoff_s
        self.mode = "remote" if self._url is not None else "local"
        self._timeout = timeout
        self._http: httpx.AsyncClient | None = None
        self._svc: Any = None  # RotatorService in local mode
        self._principal: Any = None
        self._cache: dict[tuple[str, str], tuple[Secret, float]] = {}
        self._generation: dict[str, int] = {}
        self._epoch = 0
        self._invalidator: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()

    def __repr__(self) -> str:
        where = self._url if self._url is not None else "local store"
        return f"AsyncClient({where!r}, cached={len(self._cache)})"

    async def __aenter__(self) -> AsyncClient:
        if self._url is not None:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            self._http = httpx.AsyncClient(
                base_url=self._url.rstrip("/"),
                headers=headers,
                timeout=self._timeout,
                limits=http_limits(),
            )
            return self
        from rotator.config import Settings
        from rotator.domain.model import DEFAULT_TENANT
        from rotator.domain.principal import LOCAL_PRINCIPAL
        from rotator.service import RotatorService, access

        self._svc = await RotatorService.open(Settings.from_env(self._env))
        try:
            tenant = self._env.get(TENANT_ENV) or None
            if self._token:
                self._principal = await access.authenticate(self._svc, self._token)
                if tenant is not None:
                    await self._svc.authorize_tenant(self._principal, tenant)
            else:
                self._principal = LOCAL_PRINCIPAL.with_tenant(tenant or DEFAULT_TENANT)
        except BaseException:
            await self._svc.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the background watch; close the connection or the store. Idempotent."""
        self._stop.set()
        if self._invalidator is not None:
            self._invalidator.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._invalidator
            self._invalidator = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._svc is not None:
            await self._svc.aclose()
            self._svc = None

    # -- values ----------------------------------------------------------------------------

    async def get(self, name: str, stage: str = "CURRENT", *, fresh: bool = False) -> str:
        """As :meth:`rotator.client.Client.get`."""
        if stage not in STAGES:
            raise InvalidInput(f"stage must be one of {', '.join(STAGES)}")
        key = (name, stage)
        if self.cache_ttl > 0 and not fresh:
            if self.watch_cache and self._invalidator is None:
                self._invalidator = asyncio.create_task(self._invalidate_forever())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), 2.0)
            hit = self._cache.get(key)
            if hit is not None and hit[1] > time.monotonic():
                return hit[0].reveal_text()
        seen = (self._epoch, self._generation.get(name, 0))
        value = await self._value(name, stage)
        if self.cache_ttl > 0 and seen == (self._epoch, self._generation.get(name, 0)):
            self._cache[key] = (Secret(value), time.monotonic() + self.cache_ttl)
        return value

    def invalidate(self, name: str | None = None) -> None:
        """Drop ``name``'s cached values (None: all)."""
        if name is None:
            self._cache.clear()
            self._epoch += 1
            return
        self._generation[name] = self._generation.get(name, 0) + 1
        for stage in STAGES:
            self._cache.pop((name, stage), None)

    async def _value(self, name: str, stage: str) -> str:
        if self._http is not None:
            # Every "/" escaped too: httpx would resolve a "." or ".." segment of a name (a valid
            # name like "a/../team-a/db") to another credential's URL. The server decodes it.
            path = "/v1/credentials/" + urllib.parse.quote(name, safe="") + "/value"
            try:
                resp = await self._http.get(path, params={"stage": stage})
            except httpx.TransportError as exc:
                raise Unreachable(f"cannot reach {self._url}: {type(exc).__name__}") from None
            if resp.status_code != 200:
                raise _problem(resp)
            value = resp.json().get("value")
            if not isinstance(value, str):
                raise RotatorError("the server's answer has no value")
            return value
        if self._svc is None:
            raise RotatorError("use the client inside `async with`")
        from rotator.domain.model import Stage

        secret = await self._svc.get_value(name, Stage(stage), principal=self._principal)
        return str(secret.reveal_text())

    async def _invalidate_forever(self) -> None:
        first = True
        try:
            async for change in self._changes((), None, None, ready=True):
                if change is None:  # the feed (re)started
                    if first:
                        first = False
                        self.invalidate()
                    self._ready.set()
                else:
                    self.invalidate(change.name)
        except Exception:  # no right to watch: the cache falls back to its TTL
            self._ready.set()

    # -- changes ---------------------------------------------------------------------------

    async def watch(
        self,
        names: str | Sequence[str] | None = None,
        *,
        prefix: str | None = None,
        after: int | None = None,
    ) -> AsyncIterator[Change]:
        """As :meth:`rotator.client.Client.watch`, for ``async for``."""
        wanted = [names] if isinstance(names, str) else list(names or ())
        async for change in self._changes(wanted, prefix, after, ready=False):
            if change is not None:
                self.invalidate(change.name)
                yield change

    async def _changes(
        self, names: Sequence[str], prefix: str | None, after: int | None, *, ready: bool
    ) -> AsyncIterator[Change | None]:
        """Changes; with ``ready``, also None each time the feed (re)starts."""
        if self._http is None:
            from rotator.service import watch

            if self._svc is None:
                raise RotatorError("use the client inside `async with`")
            sub = await watch.subscribe(
                self._svc,
                self._principal,
                names=names,
                prefix=prefix,
                after=after,
                stop=self._stop,
            )
            if ready:
                yield None
            async for c in sub:
                yield c
            return
        params: list[tuple[str, str | int | float | bool | None]] = [("name", n) for n in names]
        if prefix is not None:
            params.append(("prefix", prefix))
        cursor, backoff = after, 0.1
        timeout = httpx.Timeout(self._timeout, read=60.0)
        while not self._stop.is_set():
            headers = {"Last-Event-ID": str(cursor)} if cursor is not None else {}
            try:
                async with self._http.stream(
                    "GET", "/v1/watch", params=params, headers=headers, timeout=timeout
                ) as resp:
                    if resp.status_code != 200:
                        await resp.aread()
                        if resp.status_code < 500 and resp.status_code != 429:
                            raise _problem(resp)
                    else:
                        parser = _sse.Parser()
                        async for line in resp.aiter_lines():
                            ev = parser.feed(line)
                            if ev is None or ev.id is None or not ev.id.isdigit():
                                continue
                            if ev.event == "ready":
                                backoff, cursor = 0.1, int(ev.id)
                                if ready:
                                    yield None
                            elif ev.event == "current":
                                change = Change.from_json(int(ev.id), json.loads(ev.data))
                                cursor = change.cursor
                                yield change
            except (httpx.TransportError, httpx.StreamError):
                pass  # dropped or refused: reconnect after the cursor
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
