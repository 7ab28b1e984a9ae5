"""The application SDK: read credential values and follow their rotations.

``Client()`` talks to ``rotator serve`` at ``ROTATOR_URL`` with ``ROTATOR_TOKEN``; with no URL
it opens the local store (``ROTATOR_HOME`` / ``ROTATOR_DB``) and calls the service directly,
as ``ROTATOR_TOKEN``'s principal or, without one, the store's owner in ``ROTATOR_TENANT``
(like the CLI). Both modes have the same API:

- ``get(name, stage="CURRENT") -> str``: the value, from a small cache (``cache_ttl`` seconds;
  0 turns it off). While the cache holds anything (and unless ``watch_cache=False``), a
  background watch drops a name's entries as soon as a new CURRENT of it is reported, so
  a rotation is seen within about a second, not after the TTL. Each fetch is one audited,
  counted read on the server.
- ``watch(names=None, prefix=None, after=None)``: a generator of :class:`Change`, forever;
  across a dropped connection it reconnects with ``Last-Event-ID`` (backing off up to
  ``max_backoff_s``), so no change is missed or repeated.
- ``psycopg_factory`` / ``redis_factory`` (module :mod:`rotator.client.helpers`): connection
  factories that log in with CURRENT and, when the server refuses the password, fetch it
  again (bypassing the cache) and retry once.

Errors are rotator's own (``rotator.errors``): NotFound, PermissionDenied,
AuthenticationFailed, InvalidInput, and :class:`Unreachable` when the server cannot be
reached. Values never appear in a repr or an exception.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import httpx

from rotator.client import _sse
from rotator.domain.change import Change
from rotator.domain.secret import Secret
from rotator.errors import (
    AuthenticationFailed,
    ConcurrentModification,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RotatorError,
    StoreFull,
    StoreUnavailable,
)

URL_ENV = "ROTATOR_URL"
TOKEN_ENV = "ROTATOR_TOKEN"  # noqa: S105 (the variable's name)
TENANT_ENV = "ROTATOR_TENANT"
STAGES = ("CURRENT", "PREVIOUS", "PENDING")
LOCAL_POLL_S = 0.2
# An idle keep-alive connection is dropped by the SDK after this long, well before
# ``rotator serve`` closes it (uvicorn's 5 s idle timeout, api.server.KEEP_ALIVE_S). With
# httpx's default (5 s, the same as the server's) a request sent on a connection at the moment
# the server closes it fails with a ReadError (Unreachable) although the server is fine: the
# soak (bench/soak.py) met it about once per 6,000 reads.
KEEPALIVE_EXPIRY_S = 2.0


def http_limits() -> httpx.Limits:
    """The connection-pool limits of the SDK's HTTP clients (see KEEPALIVE_EXPIRY_S)."""
    return httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S)


class Unreachable(RotatorError):
    """The rotator server could not be reached (connection refused, timed out, dropped)."""


class _Backend(Protocol):
    stop: threading.Event

    def value(self, name: str, stage: str) -> str: ...

    def changes(
        self,
        names: Sequence[str],
        prefix: str | None,
        after: int | None,
        on_ready: Callable[[int], None] | None,
    ) -> Iterator[Change]: ...

    def close(self) -> None: ...


_STATUS_ERRORS: dict[int, type[RotatorError]] = {
    400: InvalidInput,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    409: ConcurrentModification,
    422: InvalidInput,
    503: StoreUnavailable,
}
# Problem types that name an error more precisely than the status (api/problems.py _TYPES).
_TYPE_ERRORS: dict[str, type[RotatorError]] = {
    "https://rotator.dev/problems/store-full": StoreFull,
}


def _problem(resp: httpx.Response) -> RotatorError:
    """The typed error of a non-2xx answer; its text is the problem's title/detail (the
    server never puts a value there)."""
    try:
        doc = resp.json()
        detail = doc.get("detail") or doc.get("title") if isinstance(doc, dict) else None
        kind = doc.get("type") if isinstance(doc, dict) else None
    except ValueError:
        detail = kind = None
    if not isinstance(detail, str):
        detail = f"HTTP {resp.status_code}"
    if isinstance(kind, str) and kind in _TYPE_ERRORS:
        return _TYPE_ERRORS[kind](detail)
    return _STATUS_ERRORS.get(resp.status_code, RotatorError)(detail)


class _Remote:
    def __init__(self, url: str, token: str | None, timeout: float, max_backoff_s: float):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, limits=http_limits()
        )
        self.max_backoff_s = max_backoff_s
        self.url = url
        self.stop = threading.Event()

    def value(self, name: str, stage: str) -> str:
        # Every "/" escaped too: httpx would resolve a "." or ".." segment of a name (a valid
        # name like "a/../team-a/db") to another credential's URL. The server decodes it.
        path = "/v1/credentials/" + urllib.parse.quote(name, safe="") + "/value"
        try:
            resp = self.http.get(path, params={"stage": stage})
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.url}: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise _problem(resp)
        value = resp.json().get("value")
        if not isinstance(value, str):
            raise RotatorError("the server's answer has no value")
        return value

    def changes(
        self,
        names: Sequence[str],
        prefix: str | None,
        after: int | None,
        on_ready: Callable[[int], None] | None,
    ) -> Iterator[Change]:
        params: list[tuple[str, str | int | float | bool | None]] = [("name", n) for n in names]
        if prefix is not None:
            params.append(("prefix", prefix))
        cursor = after
        backoff = 0.1
        # The read timeout only has to outlast the server's 15 s heartbeat.
        timeout = httpx.Timeout(self.http.timeout.connect or 10.0, read=60.0)
        while not self.stop.is_set():
            headers = {"Last-Event-ID": str(cursor)} if cursor is not None else {}
            try:
                with self.http.stream(
                    "GET", "/v1/watch", params=params, headers=headers, timeout=timeout
                ) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        if resp.status_code < 500 and resp.status_code != 429:
                            raise _problem(resp)
                    else:
                        for ev in _sse.parse(resp.iter_lines()):
                            if ev.id is None or not ev.id.isdigit():
                                continue
                            if ev.event == "ready":
                                backoff = 0.1
                                cursor = int(ev.id)
                                if on_ready is not None:
                                    on_ready(cursor)
                            elif ev.event == "current":
                                change = Change.from_json(int(ev.id), json.loads(ev.data))
                                cursor = change.cursor
                                yield change
            except (httpx.TransportError, httpx.StreamError):
                pass  # dropped or refused: reconnect after the cursor
            if self.stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff_s)

    def close(self) -> None:
        self.stop.set()
        self.http.close()


class _Local:
    def __init__(self, token: str | None, tenant: str | None, env: dict[str, str]):
        from rotator.config import Settings
        from rotator.domain.model import DEFAULT_TENANT
        from rotator.domain.principal import LOCAL_PRINCIPAL
        from rotator.service import BlockingService, access

        self.stop = threading.Event()
        self.svc = BlockingService.open(Settings.from_env(env))
        try:
            if token:
                self.principal = self.svc.run(access.authenticate(self.svc.service, token))
                if tenant is not None:
                    self.svc.authorize_tenant(self.principal, tenant)
            else:
                self.principal = LOCAL_PRINCIPAL.with_tenant(tenant or DEFAULT_TENANT)
        except BaseException:
            self.svc.close()
            raise

    def value(self, name: str, stage: str) -> str:
        from rotator.domain.model import Stage

        try:
            st = Stage(stage)
        except ValueError:
            raise InvalidInput(f"stage must be one of {', '.join(STAGES)}") from None
        secret = self.svc.run(self.svc.service.get_value(name, st, principal=self.principal))
        return secret.reveal_text()

    def changes(
        self,
        names: Sequence[str],
        prefix: str | None,
        after: int | None,
        on_ready: Callable[[int], None] | None,
    ) -> Iterator[Change]:
        from rotator.service import watch

        sub = self.svc.run(
            watch.subscribe(
                self.svc.service, self.principal, names=names, prefix=prefix, after=after
            )
        )
        if on_ready is not None:
            on_ready(sub.cursor)
        while not self.stop.is_set():
            yield from self.svc.run(sub.poll())
            self.stop.wait(sub.poll_s)

    def close(self) -> None:
        self.stop.set()
        self.svc.close()


class Client:
    """See the module docstring. Thread-safe; close it (or use ``with``) to stop its
    background watch and release connections."""

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
        url = url or env.get(URL_ENV) or None
        token = token or env.get(TOKEN_ENV) or None
        if cache_ttl < 0:
            raise InvalidInput("cache_ttl must be >= 0")
        self.cache_ttl = cache_ttl
        self.watch_cache = watch_cache
        self._backend: _Backend = (
            _Remote(url, token, timeout, max_backoff_s)
            if url is not None
            else _Local(token, env.get(TENANT_ENV) or None, env)
        )
        self.mode = "remote" if url is not None else "local"
        self._url = url
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[Secret, float]] = {}
        self._generation: dict[str, int] = {}
        self._epoch = 0  # bumped when the whole cache is dropped
        self._invalidator: threading.Thread | None = None
        self._closed = threading.Event()
        self._invalidator_ready = threading.Event()

    @classmethod
    def local(cls, token: str | None = None, *, cache_ttl: float = 30.0) -> Client:
        """A client on the local store (``ROTATOR_HOME`` / ``ROTATOR_DB``), whatever
        ``ROTATOR_URL`` says."""
        env = {k: v for k, v in os.environ.items() if k != URL_ENV}
        return cls(None, token, cache_ttl=cache_ttl, env=env)

    def __repr__(self) -> str:
        where = self._url if self._url is not None else "local store"
        return f"Client({where!r}, cached={len(self._cache)})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the background watch and close the connection or store. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._backend.stop.set()
        if self._invalidator is not None:
            self._invalidator.join(timeout=1.0)
        self._backend.close()

    # -- values ----------------------------------------------------------------------------

    def get(self, name: str, stage: str = "CURRENT", *, fresh: bool = False) -> str:
        """The value of ``name``'s newest version in ``stage``; from the cache unless
        ``fresh`` (then fetched, and the cache refreshed). Raises NotFound, PermissionDenied,
        AuthenticationFailed, InvalidInput, Unreachable."""
        if stage not in STAGES:
            raise InvalidInput(f"stage must be one of {', '.join(STAGES)}")
        key = (name, stage)
        if self.cache_ttl > 0 and not fresh:
            if self.watch_cache:
                self._start_invalidator()
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None and hit[1] > time.monotonic():
                    return hit[0].reveal_text()
        with self._lock:
            seen = (self._epoch, self._generation.get(name, 0))
        value = self._backend.value(name, stage)
        if self.cache_ttl > 0:
            with self._lock:
                # A change reported while we fetched makes this value suspect: don't keep it.
                if seen == (self._epoch, self._generation.get(name, 0)):
                    self._cache[key] = (Secret(value), time.monotonic() + self.cache_ttl)
        return value

    def invalidate(self, name: str | None = None) -> None:
        """Drop ``name``'s cached values (None: all)."""
        with self._lock:
            if name is None:
                self._cache.clear()
                self._epoch += 1
            else:
                self._generation[name] = self._generation.get(name, 0) + 1
                for stage in STAGES:
                    self._cache.pop((name, stage), None)

    def _start_invalidator(self) -> None:
        with self._lock:
            if self._invalidator is not None or self._closed.is_set():
                return
            self._invalidator = threading.Thread(
                target=self._invalidate_forever, name="rotator-client-watch", daemon=True
            )
            self._invalidator.start()
        # Values fetched before the watch began could miss a change: wait (briefly) for it.
        self._invalidator_ready.wait(timeout=2.0)

    def _invalidate_forever(self) -> None:
        started = False

        def ready(_cursor: int) -> None:
            nonlocal started
            if not started:  # anything cached so far predates the watch: drop it
                started = True
                self.invalidate()
            self._invalidator_ready.set()

        try:
            for change in self._backend.changes((), None, None, ready):
                self.invalidate(change.name)
                if self._closed.is_set():
                    return
        except Exception:
            # No right to watch, or the client closed under it: the cache falls back to its
            # TTL.
            self._invalidator_ready.set()

    # -- changes ---------------------------------------------------------------------------

    def watch(
        self,
        names: str | Sequence[str] | None = None,
        *,
        prefix: str | None = None,
        after: int | None = None,
    ) -> Iterator[Change]:
        """Each new CURRENT of ``names`` (a name or several; None: every credential the
        token may read) starting with ``prefix``, after cursor ``after`` (None: from now),
        in order, forever. Close the generator (or break out of the loop) to stop."""
        wanted = [names] if isinstance(names, str) else list(names or ())
        for change in self._backend.changes(wanted, prefix, after, None):
            self.invalidate(change.name)
            yield change

    def psycopg_factory(self, name: str, conninfo: str = "", **kw: Any) -> Any:
        """See :func:`rotator.client.helpers.psycopg_factory`."""
        from rotator.client.helpers import psycopg_factory

        return psycopg_factory(self, name, conninfo, **kw)

    def redis_factory(self, name: str, **kw: Any) -> Any:
        """See :func:`rotator.client.helpers.redis_factory`."""
        from rotator.client.helpers import redis_factory

        return redis_factory(self, name, **kw)
