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
"""

from __future__ import annotations

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
    cache, and retry once."""
    import redis as redis_mod
    from redis.credentials import CredentialProvider

    class _Provider(CredentialProvider):
        def __init__(self) -> None:
            self.override: str | None = None

        def get_credentials(self) -> tuple[str] | tuple[str, str]:
            password = self.override if self.override is not None else client.get(name)
            return (password,) if username is None else (username, password)

    def connect() -> redis_mod.Redis:
        provider = _Provider()
        conn = redis_mod.Redis(host=host, port=port, credential_provider=provider, **kw)
        refused = client.get(name)
        try:
            conn.ping()
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
        return conn

    return connect
