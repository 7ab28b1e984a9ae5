"""Connection factories for applications: log in with CURRENT, and when the server refuses
the password (rotated since it was cached), fetch it again and retry once.

The retry uses the CURRENT fetched afresh; if that is still the value just refused, a rotation
is between its ``set`` and ``finish`` steps (a ``single``-mode PostgreSQL role has its new
password already), so the retry uses that rotation's PENDING value instead. (So the token
needs VALUE_READ on the credential's PENDING stage too, which VALUE_READ gives.) One
window is left in ``single`` mode, which is not zero-downtime: a rotation whose ``set``
lands during the retry's own login (rotations of one credential back to back, faster than a
login) fails that login; alternating and dual strategies have no such window. psycopg and
redis-py are imported when a factory is made, so applications need only the one they use.

Neither library may outwait a refused login before the factory sees it: psycopg makes one
attempt per host address, with no delay between them; redis-py (6.0+) retries a connect that
fails with AuthenticationError like a network error (by default 10 times with backoff, ~3 s),
so the factory's own check of a new ``redis.Redis`` stops its retries for a refused login.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rotator.errors import NotFound

if TYPE_CHECKING:
    import psycopg
    import redis

    from rotator.client.client import Client

PG_AUTH_FAILED = ("28P01",)  # invalid_password
_PG_FROM_VALUE = {"host": "host", "port": "port", "dbname": "dbname", "username": "user"}


def _retry_value(client: Client, name: str, refused: str) -> str:
    """The value to retry a refused login with (see the module docstring).

    PENDING is read before CURRENT: if CURRENT is still the refused value when read, the
    rotation that made it invalid (its ``set`` ran) had not finished by then, so it was in
    flight when PENDING was read (one rotation per credential at a time), and that PENDING
    is its value. Read the other way round, a rotation finishing in between and the next one
    starting would hand over a PENDING not yet set."""
    try:
        pending: str | None = client.get(name, "PENDING", fresh=True)
    except NotFound:
        pending = None
    current = client.get(name, fresh=True)
    return pending if current == refused and pending is not None else current


def _pg_params(value: str, conninfo: str, kw: dict[str, Any]) -> dict[str, Any]:
    import psycopg.conninfo

    params: dict[str, Any] = {}
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("password"), str):
        for src, dst in _PG_FROM_VALUE.items():
            if doc.get(src) not in (None, ""):
                params[dst] = doc[src]
        password = doc["password"]
    else:
        password = value
    given = psycopg.conninfo.conninfo_to_dict(conninfo, **kw)
    # The value names the role (alternating mode switches between ROLE and ROLE_clone):
    # its username wins over the conninfo's; everything else the caller gives wins.
    user = params.get("user")
    params.update({k: v for k, v in given.items() if k != "password"})
    if user is not None:
        params["user"] = user
    params["password"] = password
    return params


def _pg_refused(exc: Exception) -> bool:
    if getattr(exc, "sqlstate", None) in PG_AUTH_FAILED:
        return True
    # libpq reports a refused password at connect time as text only (no SQLSTATE on
    # psycopg's error for some versions): recognise its fixed message.
    return "password authentication failed" in str(exc)


def psycopg_factory(
    client: Client, name: str, conninfo: str = "", **kw: Any
) -> Callable[[], psycopg.Connection[Any]]:
    """A function returning a new psycopg connection logged in with credential ``name``
    (a ``postgres`` connector value: JSON with username and password, or a bare password for
    the conninfo's user). ``conninfo``/``kw`` give everything but the password. A refused
    password (SQLSTATE 28P01) is fetched again, bypassing the cache, and the login retried
    once; any other error, or a second refusal, is psycopg's (its message never holds the
    password)."""
    import psycopg

    def connect() -> psycopg.Connection[Any]:
        value = client.get(name)
        try:
            return psycopg.connect(**_pg_params(value, conninfo, kw))
        except psycopg.OperationalError as exc:
            if not _pg_refused(exc):
                raise
        return psycopg.connect(**_pg_params(_retry_value(client, name, value), conninfo, kw))

    return connect


def psycopg_connect(client: Client, name: str, conninfo: str = "", **kw: Any) -> Any:
    """One connection from :func:`psycopg_factory`."""
    return psycopg_factory(client, name, conninfo, **kw)()


def redis_factory(
    client: Client,
    name: str,
    *,
    host: str = "127.0.0.1",
    port: int = 6379,
    username: str | None = None,
    **kw: Any,
) -> Callable[[], redis.Redis]:
    """A function returning a new ``redis.Redis`` logged in as ``username`` with credential
    ``name`` (a ``redis`` connector value: the password), checked with PING. Every new pooled
    connection asks the client for the password (its cache follows rotations), and a refused
    login (AuthenticationError / WRONGPASS) makes the factory fetch it again, bypassing the
    cache, and retry once. The caller's ``retry`` / ``retry_on_error`` (or redis-py's
    default policy) apply as given, except that during the factory's own check a refused
    login is raised at once instead of retried with backoff; the returned client has them
    whole."""
    import redis as redis_mod
    from redis.backoff import NoBackoff
    from redis.credentials import CredentialProvider
    from redis.retry import Retry

    class _Provider(CredentialProvider):
        def __init__(self) -> None:
            self.override: str | None = None
            # While the factory checks the login, redis-py does not retry a refusal (see
            # _ProbeRetry); afterwards the returned client's policy is the caller's whole.
            self.probing = True

        def get_credentials(self) -> tuple[str] | tuple[str, str]:
            password = self.override if self.override is not None else client.get(name)
            return (password,) if username is None else (username, password)

    class _ProbeRetry(Retry):
        """``inner`` (the caller's ``retry``, or redis-py's default), except that while
        ``provider.probing`` an AuthenticationError is raised at once, not retried: network
        errors keep ``inner``'s retries. Each connection deep-copies its policy (and adds
        the caller's ``retry_on_error`` to it): a copy copies ``inner``, shares ``provider``."""

        def __init__(self, inner: Retry, provider: _Provider) -> None:
            super().__init__(NoBackoff(), 0)  # unused: every method defers to inner
            self.inner = inner
            self.provider = provider

        def __deepcopy__(self, memo: dict[int, Any]) -> _ProbeRetry:
            return _ProbeRetry(copy.deepcopy(self.inner, memo), self.provider)

        def __eq__(self, other: object) -> bool:
            return isinstance(other, _ProbeRetry) and self.inner == other.inner

        def __hash__(self) -> int:
            return hash(self.inner)

        def get_retries(self) -> int:
            return self.inner.get_retries()

        def update_retries(self, value: int) -> None:
            self.inner.update_retries(value)

        def update_supported_errors(self, specified_errors: Any) -> None:
            self.inner.update_supported_errors(specified_errors)

        def call_with_retry(
            self,
            do: Callable[[], Any],
            fail: Any,
            is_retryable: Callable[[Exception], bool] | None = None,
            with_failure_count: bool = False,
        ) -> Any:
            def retryable(error: Exception) -> bool:
                if self.provider.probing and isinstance(error, redis_mod.AuthenticationError):
                    return False  # the factory fetches the password again instead
                return is_retryable is None or is_retryable(error)

            return self.inner.call_with_retry(do, fail, retryable, with_failure_count)

    def connect() -> redis_mod.Redis:
        provider = _Provider()
        conn = redis_mod.Redis(host=host, port=port, credential_provider=provider, **kw)
        retry = conn.get_retry()
        if retry is not None and "connection_pool" not in kw:  # never alter a caller's pool
            conn.set_retry(_ProbeRetry(retry, provider))
        refused = client.get(name)
        try:
            conn.ping()
            provider.probing = False
            return conn
        except redis_mod.AuthenticationError:
            pass
        except redis_mod.ResponseError as exc:
            if "WRONGPASS" not in str(exc):
                conn.close()
                raise
        provider.override = _retry_value(client, name, refused)
        conn.connection_pool.disconnect()
        try:
            conn.ping()
        except BaseException:
            conn.close()
            raise
        provider.override = None  # later pooled connections follow the cache again
        provider.probing = False
        return conn

    return connect
