"""The ``redis`` connector: passwords of a Redis ACL user (Redis 6+), strategy ``dual``.

A Redis ACL user may hold several passwords at once, so a rotation adds the new one
(``set``), proves it with a fresh connection (``test``: AUTH + PING) and leaves the old one
valid until its grace ends (``revoke`` removes it). Emergency rotations revoke at once.

What reaches Redis: the admin connection sends passwords only as their SHA-256 digests
(``ACL SETUSER user #<digest>`` / ``!<digest>``), the form Redis stores anyway, so a plaintext
password never travels on the admin channel and never comes back in a Redis error message
(Redis echoes a failing ``>password`` / ``<password`` modifier verbatim). Only ``test`` sends
the plaintext, as the AUTH argument. Every value is one protocol argument; nothing is built
into a command string. Redis error texts are never passed on: each failure is reported with a
message written here (plus Redis's error code, such as ``NOPERM``).

Settings: ``host``, ``port``, ``username`` (the ACL user rotated; required), ``admin`` (the
rotator credential holding the admin password; empty: the admin connection does not
authenticate, i.e. runs as Redis's ``default`` user), ``admin_user`` (ACL user the admin
connection authenticates as; default ``default``), ``db`` (database of the admin connection;
ACL users are server-wide), ``timeout_s``, ``password_length``, ``tls``.

Connections: the admin side is pooled, one ``redis.asyncio`` connection pool (at most
``ADMIN_POOL_SIZE`` connections, each authenticated when made) per target (host, port, db,
tls, timeout), admin credential and admin value, the value known only by an HMAC fingerprint
under a key random per connector instance; a changed admin value gets a new pool and the old
one is closed, and a refused admin login drops its pool. ``test`` never uses it: it connects
afresh with the value under test. ``aclose()`` closes every pool (see ``base.Closable``).

Starting: ``credential add`` without a value, then a first rotation, creates the user (or
adds a first password to an existing one). ``credential add`` with a value (given, or
``--generate``) makes that value valid at once: the service publishes a first value through
``finish``, which for a first value (no previous one) adds it as ``set`` would; a failure
stores nothing. A given value that Redis already has changes nothing.

The user's life:

- It does not exist: the first ``set`` creates it ``on`` with the new password and nothing else
  (no commands, keys or channels: permissions are the operator's business, e.g.
  ``ACL SETUSER app ~app:* +@read +@write``). Until then clients can authenticate but not run
  commands; ``test`` accepts that (AUTH succeeding is the proof; a NOPERM PING is fine).
- It exists and is ``on``: passwords are added and removed; nothing else is touched.
- It exists and is ``off`` (disabled by an operator): ``set`` refuses rather than silently
  re-enabling an account someone switched off.
- It has ``nopass`` (any password works): ``set`` refuses, because adding a password would
  turn nopass off and lock out every client that sends none: not a zero-downtime change.

Limits: ACL changes are per server. They are not replicated to replicas nor shared across a
cluster's nodes, and with an ``aclfile`` they live in memory until ``ACL SAVE`` (which this
connector does not run). Point one credential at one server, or run ``ACL SAVE`` / ``CONFIG
REWRITE`` yourself.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import string
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import redis.asyncio as aioredis
from pydantic import Field, field_validator, model_validator
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rotator import __version__
from rotator.connectors import base as cb
from rotator.connectors._resources import Fingerprints, Resources
from rotator.domain.secret import Secret

try:  # redis-py 7+: CLIENT SETINFO metadata, made once (else each client reads package metadata)
    from redis.driver_info import DriverInfo

    _DRIVER: dict[str, Any] = {
        "driver_info": DriverInfo().add_upstream_driver("rotator", __version__)
    }
except ImportError:  # pragma: no cover - older redis-py
    _DRIVER = {}

PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_"
# Admin connections per pool: the engine's default per-target limit, so a call at that limit
# never waits for one (a call above it waits up to timeout_s for one to come back).
ADMIN_POOL_SIZE = 16
DEFAULT_USER = "default"
# Redis rejects usernames holding any of these (C isspace() and NUL): "Usernames can't
# contain spaces or null characters". Anything else (quotes, unicode, ':'...) is accepted.
_USERNAME_FORBIDDEN = frozenset(" \t\n\v\f\r\0")


class RedisConfig(cb.ConnectorConfig):
    """``--set`` settings of the redis connector; see the module docstring."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=6379, ge=1, le=65535)
    username: str = Field(min_length=1, max_length=512)
    admin: str = ""
    admin_user: str = Field(default=DEFAULT_USER, min_length=1, max_length=512)
    db: int = Field(default=0, ge=0)
    timeout_s: float = Field(default=5.0, gt=0, le=300)
    password_length: int = Field(default=32, ge=16, le=512)
    tls: bool = False

    @field_validator("username", "admin_user")
    @classmethod
    def _redis_username(cls, v: str) -> str:
        if any(c in _USERNAME_FORBIDDEN for c in v):
            raise ValueError("Redis usernames cannot contain spaces, tabs, newlines or NUL")
        return v

    @model_validator(mode="after")
    def _admin_user_needs_admin(self) -> RedisConfig:
        if not self.admin and self.admin_user != DEFAULT_USER:
            raise ValueError("admin_user needs admin (the credential holding that user's password)")
        return self

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def _cfg(config: cb.ConnectorConfig) -> RedisConfig:
    if not isinstance(config, RedisConfig):
        raise cb.PermanentError(f"redis connector given {type(config).__name__} settings")
    return config


def digest(value: Secret) -> str:
    """The form Redis keeps a password in (``ACL GETUSER`` lists these): SHA-256, hex."""
    return hashlib.sha256(value.reveal()).hexdigest()


def generate(length: int) -> Secret:
    """A random password from an alphabet needing no escaping anywhere (URL, shell, config)."""
    return Secret("".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length)))


class _Login(CredentialProvider):
    """AUTH arguments for redis-py, given as bytes so any value works; holds no repr of them."""

    __slots__ = ("_password", "_username")

    def __init__(self, username: str, password: Secret) -> None:
        self._username = username
        self._password = password

    def get_credentials(self) -> tuple[str, str]:
        # redis-py sends bytes arguments unchanged; its annotations only say str.
        return self._username, cast(str, self._password.reveal())

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.get_credentials()

    def __repr__(self) -> str:
        return f"_Login(username={self._username!r}, password='***')"


class _Own:
    """A resolver that answers for one credential itself (see ``verify``)."""

    def __init__(self, inner: cb.SecretResolver, name: str, value: Secret) -> None:
        self._inner, self._name, self._value = inner, name, value

    async def get(self, name: str) -> Secret:
        return self._value if name == self._name else await self._inner.get(name)


@dataclass(frozen=True, slots=True)
class UserInfo:
    """What ``ACL GETUSER`` says about a user (flags and password digests)."""

    flags: frozenset[str]
    digests: frozenset[str]

    @property
    def enabled(self) -> bool:
        return "on" in self.flags

    @property
    def nopass(self) -> bool:
        return "nopass" in self.flags


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _parse_user(reply: Any) -> UserInfo | None:
    """ACL GETUSER's reply: None, a flat [k, v, ...] list (RESP2) or a map (RESP3)."""
    if reply is None:
        return None
    items: Mapping[Any, Any]
    if isinstance(reply, Mapping):
        items = reply
    else:
        seq = list(reply)
        items = dict(zip(seq[0::2], seq[1::2], strict=False))
    fields = {_text(k): v for k, v in items.items()}
    return UserInfo(
        flags=frozenset(_text(f) for f in fields.get("flags") or ()),
        digests=frozenset(_text(p) for p in fields.get("passwords") or ()),
    )


def _p(step: str) -> str:
    """Message prefix naming the step (none for verify: the service names it)."""
    return f"{step}: " if step else ""


async def _cmd(client: aioredis.Redis, *args: str | bytes) -> Any:
    """One command; each argument is sent as one protocol argument, never parsed."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def _code(exc: RedisError) -> str:
    """Redis's error code (NOPERM, ERR, ...) when there is one: safe to show, unlike the text."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, str) and status:
        return status
    first = str(exc).split(" ", 1)[0]
    return first if first.isalpha() and first.isupper() else type(exc).__name__


class RedisConnector:
    kind: ClassVar[str] = "redis"
    strategy: ClassVar[cb.Strategy] = cb.Strategy.DUAL
    # A value given or generated at `credential add` is made real through finish().
    publish_on_add: ClassVar[bool] = True
    config_model: ClassVar[type[cb.ConnectorConfig]] = RedisConfig
    references: ClassVar[tuple[str, ...]] = ("admin",)

    def __init__(self) -> None:
        self._fingerprints = Fingerprints()
        self._pools: Resources[aioredis.Redis] = Resources(_close_pool)
        self._pool_size = ADMIN_POOL_SIZE

    def set_pool_size(self, size: int) -> None:
        """Admin pools made from now on hold up to ``size`` connections (base.SizesPools)."""
        self._pool_size = max(1, size)

    def __repr__(self) -> str:
        return f"RedisConnector({len(self._pools)} admin pools)"

    async def aclose(self) -> None:
        """Close every admin pool (see ``base.Closable``). Idempotent; a later call opens
        a pool again."""
        await self._pools.aclose()

    def target_key(self, config: cb.ConnectorConfig) -> str:
        cfg = _cfg(config)
        return f"redis://{cfg.host}:{cfg.port}"

    # -- connections ----------------------------------------------------------------------

    @staticmethod
    @contextlib.asynccontextmanager
    async def _client(
        cfg: RedisConfig, login: _Login | None, *, db: int = 0
    ) -> AsyncIterator[aioredis.Redis]:
        """One fresh connection (made at the first command), closed on exit. No redis-py
        retries: the engine retries transient failures itself, with backoff and a breaker."""
        client = aioredis.Redis(
            host=cfg.host,
            port=cfg.port,
            db=db,
            credential_provider=login,
            socket_timeout=cfg.timeout_s,
            socket_connect_timeout=cfg.timeout_s,
            ssl=cfg.tls,
            retry=Retry(NoBackoff(), 0),
            single_connection_client=True,
            **_DRIVER,
        )
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _admin_client(
        self, cfg: RedisConfig, login: _Login | None, version: bytes
    ) -> tuple[tuple[Any, ...], aioredis.Redis]:
        """The pooled admin client of (target, admin credential, admin value), and its slot.
        Connections are made (and authenticated) on first use, as ``_client`` makes one."""
        slot = (cfg.host, cfg.port, cfg.db, cfg.tls, cfg.timeout_s, cfg.admin, cfg.admin_user)

        async def make() -> aioredis.Redis:
            pool = aioredis.BlockingConnectionPool(
                connection_class=aioredis.SSLConnection if cfg.tls else aioredis.Connection,
                max_connections=self._pool_size,
                timeout=cfg.timeout_s,
                host=cfg.host,
                port=cfg.port,
                db=cfg.db,
                credential_provider=login,
                socket_timeout=cfg.timeout_s,
                socket_connect_timeout=cfg.timeout_s,
                retry=Retry(NoBackoff(), 0),
                **_DRIVER,
            )
            return aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))

        return slot, await self._pools.get(slot, version, make)

    @staticmethod
    def _unreachable(cfg: RedisConfig, exc: BaseException, what: str) -> cb.TransientError:
        if isinstance(exc, RedisTimeoutError | TimeoutError):
            return cb.TransientError(
                f"{_p(what)}redis at {cfg.where} did not answer within {cfg.timeout_s:g}s"
            )
        return cb.TransientError(f"{_p(what)}cannot reach redis at {cfg.where}")

    @contextlib.asynccontextmanager
    async def _admin(
        self, cfg: RedisConfig, resolver: cb.SecretResolver, what: str
    ) -> AsyncIterator[aioredis.Redis]:
        """An admin connection; every Redis failure inside becomes a connector error."""
        login, version = None, b""
        if cfg.admin:
            try:
                password = await resolver.get(cfg.admin)
            except cb.PermanentError as exc:
                detail = str(exc).removeprefix(f"referenced credential {cfg.admin!r}: ")
                raise cb.PermanentError(
                    f"{_p(what)}admin credential {cfg.admin!r} cannot be read: {detail}"
                ) from None
            login = _Login(cfg.admin_user, password)
            version = self._fingerprints.of(password)
        slot, client = await self._admin_client(cfg, login, version)
        try:
            yield client
        except (cb.TransientError, cb.PermanentError):
            raise
        except (AuthenticationError, AuthenticationWrongNumberOfArgsError) as exc:
            # A value refused now may be read again (or fixed on the server): no pool keeps
            # a refused login around.
            await self._pools.drop(slot, client)
            if cfg.admin:
                raise cb.ReferenceRefused(
                    f"{_p(what)}admin credential {cfg.admin!r} was refused by redis at "
                    f"{cfg.where} (user {cfg.admin_user!r})",
                    cfg.admin,
                ) from None
            if _code(exc) == "NOAUTH":
                raise cb.PermanentError(
                    f"{_p(what)}redis at {cfg.where} requires authentication; set admin to the "
                    "credential holding the admin password"
                ) from None
            raise cb.PermanentError(
                f"{_p(what)}redis at {cfg.where} refused the unauthenticated admin connection"
            ) from None
        except NoPermissionError:
            raise cb.PermanentError(
                f"{_p(what)}redis user {self._admin_name(cfg)!r} may not manage ACL users "
                "(it needs +acl)"
            ) from None
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            raise self._unreachable(cfg, exc, what) from None
        except RedisError as exc:
            raise cb.PermanentError(
                f"{_p(what)}redis at {cfg.where} answered with an error ({_code(exc)})"
            ) from None

    @staticmethod
    def _own(
        cfg: RedisConfig, credential: str, resolver: cb.SecretResolver, value: Secret | None
    ) -> cb.SecretResolver:
        """A credential that is its own admin (an admin password rotating itself) is not
        stored yet when it is added: its admin secret is then the value being added."""
        if cfg.admin == credential and value is not None:
            return _Own(resolver, credential, value)
        return resolver

    @staticmethod
    def _admin_name(cfg: RedisConfig) -> str:
        return cfg.admin_user if cfg.admin else DEFAULT_USER

    @staticmethod
    async def _user(client: aioredis.Redis, username: str) -> UserInfo | None:
        return _parse_user(await _cmd(client, "ACL", "GETUSER", username))

    async def _remove(
        self, cfg: RedisConfig, resolver: cb.SecretResolver, value: Secret, what: str
    ) -> None:
        """Remove one password from the user; done already (or no such user) is success."""
        d = digest(value)
        async with self._admin(cfg, resolver, what) as client:
            user = await self._user(client, cfg.username)
            if user is None or d not in user.digests:
                return
            try:
                await _cmd(client, "ACL", "SETUSER", cfg.username, "!" + d)
            except ResponseError:
                # Another process removed it between GETUSER and SETUSER: fine. Anything
                # else is reported by the admin context (with the error code only).
                user = await self._user(client, cfg.username)
                if user is not None and d in user.digests:
                    raise

    # -- the protocol -----------------------------------------------------------------------

    async def create(self, req: cb.CreateRequest) -> Secret:
        return generate(_cfg(req.config).password_length)

    async def set(self, req: cb.SetRequest) -> None:
        """Add the pending password (creating the user ``on`` with it if missing)."""
        await self._add(_cfg(req.config), req.secrets, req.pending, "set")

    async def _add(
        self, cfg: RedisConfig, resolver: cb.SecretResolver, value: Secret, what: str
    ) -> None:
        d = digest(value)
        async with self._admin(cfg, resolver, what) as client:
            user = await self._user(client, cfg.username)
            if user is None:
                # Created enabled with this one password and no permissions at all.
                await _cmd(client, "ACL", "SETUSER", cfg.username, "on", "#" + d)
                return
            self._check_usable(cfg, user, "set")
            if d not in user.digests:
                await _cmd(client, "ACL", "SETUSER", cfg.username, "#" + d)

    @staticmethod
    def _check_usable(cfg: RedisConfig, user: UserInfo, what: str) -> None:
        if not user.enabled:
            raise cb.PermanentError(
                f"{_p(what)}redis user {cfg.username!r} is disabled (off); enable it with "
                "ACL SETUSER ... on, or stop rotating it"
            )
        if user.nopass:
            raise cb.PermanentError(
                f"{_p(what)}redis user {cfg.username!r} has nopass (any password works); adding "
                "a password would lock out clients that send none. Remove nopass first"
            )

    async def test(self, req: cb.TestRequest) -> None:
        """A new connection authenticates as the user with the pending value and PINGs."""
        cfg = _cfg(req.config)
        try:
            async with self._client(cfg, _Login(cfg.username, req.pending)) as client:
                # Authenticated once connected; what the user may run is the operator's business.
                with contextlib.suppress(NoPermissionError):
                    await _cmd(client, "PING")
        except (AuthenticationError, AuthenticationWrongNumberOfArgsError):
            raise cb.PermanentError("the target refused the new value") from None
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            raise self._unreachable(cfg, exc, "test") from None
        except RedisError as exc:
            raise cb.PermanentError(
                f"test: redis at {cfg.where} answered with an error ({_code(exc)})"
            ) from None

    async def finish(self, req: cb.FinishRequest) -> None:
        """In a rotation, nothing: ``set`` added the new password and the old one stays valid
        until it is revoked. For a first value (no previous one: ``credential add`` with a
        given or generated value, which the service publishes through ``finish``, or a
        credential's first rotation) make sure it is valid: added like ``set`` does, a no-op
        when Redis has it already."""
        if req.previous is not None:
            return None
        cfg = _cfg(req.config)
        await self._add(
            cfg, self._own(cfg, req.credential, req.secrets, req.current), req.current, "finish"
        )

    async def revoke(self, req: cb.RevokeRequest) -> None:
        await self._remove(_cfg(req.config), req.secrets, req.value, "revoke")

    async def rollback(self, req: cb.RollbackRequest) -> None:
        if req.current is not None and req.current == req.pending:
            return  # never remove the value still in use
        await self._remove(_cfg(req.config), req.secrets, req.pending, "rollback")

    # -- optional -------------------------------------------------------------------------

    async def verify(self, req: cb.VerifyRequest) -> None:
        """Redis is reachable, the admin secret is accepted, the admin may manage ACL users,
        and the user is missing (it will be created) or usable. Changes nothing."""
        cfg = _cfg(req.config)
        resolver = self._own(cfg, req.credential, req.secrets, req.current)
        try:
            async with self._admin(cfg, resolver, "") as client:
                user = await self._user(client, cfg.username)
                await self._check_dryrun(client, cfg)
        except cb.TransientError as exc:
            raise cb.PermanentError(str(exc)) from None
        if user is not None:
            self._check_usable(cfg, user, "")

    async def _check_dryrun(self, client: aioredis.Redis, cfg: RedisConfig) -> None:
        """ACL DRYRUN (Redis 7+): may the admin user run ACL SETUSER? Skipped where the
        server or the admin's permissions do not offer DRYRUN itself."""
        try:
            answer = await _cmd(
                client, "ACL", "DRYRUN", self._admin_name(cfg), "ACL", "SETUSER", cfg.username
            )
        except ResponseError:
            return
        if _text(answer) != "OK":
            raise cb.PermanentError(
                f"redis user {self._admin_name(cfg)!r} may not run ACL SETUSER (it needs +acl)"
            )


async def _close_pool(client: aioredis.Redis) -> None:
    await client.aclose(close_connection_pool=True)


__all__ = ["RedisConfig", "RedisConnector", "UserInfo", "digest", "generate"]
