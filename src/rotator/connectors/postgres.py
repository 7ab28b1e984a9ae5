"""The ``postgres`` connector: PostgreSQL role passwords.

Modes:

- ``alternating`` (default, zero downtime): two roles, ROLE and ROLE_clone, the clone made a
  member of ROLE (so it has exactly ROLE's privileges) and of ROLE's groups. Each rotation
  sets a new password on the idle role and makes it CURRENT; the other keeps working for the
  grace. The engine waits for the previous grace to end before touching the idle role again.
- ``single``: one role; the old password stops working at ``set`` (a short window; not
  zero-downtime). With no ``admin`` the role changes its own password ("rotate root").

Values are JSON: ``{"engine", "host", "port", "dbname", "username", "password"}``; a plain
string given at ``credential add --value-stdin`` is taken as ROLE's current password.

Which roles it touches: only the configured ``role`` and, in alternating mode, its clone. The
``username`` inside a value is data that anyone who can give a first value controls, so a value
naming any other role (the superuser, say) is refused (at ``credential add``/``update`` as bad
input, at rotation as a permanent error) before any login; a value that is not UTF-8 text is
refused the same way, without quoting it.

How it logs in (admin and test logins alike): by default only SCRAM-SHA-256 is accepted
(libpq's ``require_auth=scram-sha-256``, libpq >= 16, which psycopg[binary] bundles). SCRAM
proves the server knows the role's verifier, so a server that is not the real one (anyone with
a position on the network, with the default ``sslmode=prefer``) cannot ask for the password in
clear text or as an MD5 challenge, cannot accept the login without authentication, and so
never receives a password or a verifier. Servers that still use ``md5`` or ``password``
authentication need the documented opt-out ``require_auth=md5`` (or a libpq list such as
``scram-sha-256,md5``); ``require_auth=`` (empty) accepts whatever the server asks, as libpq
does by default, and is the only way to run with a libpq older than 16 (otherwise refused).
Across untrusted networks use ``sslmode=verify-full`` with
``sslrootcert`` naming the CA file (or ``system``): then the server's name is checked too.

Passwords reach the server only as SCRAM-SHA-256 verifiers, computed by libpq itself
(``PQencryptPasswordConn``, salted and SASLprepped as the server does); identifiers are quoted
with psycopg.sql. Every method is idempotent.

Admin sessions are pooled (``psycopg_pool.AsyncConnectionPool``): one pool per target (host,
port, dbname and every TLS/auth setting), admin credential and admin value, the value known
only by an HMAC fingerprint under a key random per connector instance. A changed admin value
(rotated) gets a new pool and the old one is closed (sessions it lent out close when they come
back). A pool grows on demand to ``ADMIN_POOL_SIZE`` sessions (idle ones close after
``ADMIN_POOL_MAX_IDLE_S``); a session idle longer than ``ADMIN_CHECK_IDLE_S`` is checked (one
round trip) before it is used, and one found broken (the server restarted or ended it) makes
its pool be replaced. A session used more recently is not checked: if the server ended it
since, the call's statements fail on it, its pool is replaced and the statements (idempotent)
run once more on a fresh login. A login refused while a pool grows
fails the calls waiting for it at once, with the same errors as an unpooled login
(``ReferenceRefused`` naming the admin credential), and the pool is dropped, so a value read
again makes a new one. ``aclose()`` closes every pool. What is never pooled: ``test`` and the
checks that a value logs in (each a fresh login with that value: that is their point), and a
role that changes its own password (no ``admin``: its value changes at every rotation).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import secrets
import string
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, ClassVar, Literal, Self

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout
from pydantic import Field, field_validator, model_validator

from rotator.connectors import base as cb
from rotator.connectors._logins import Login
from rotator.connectors._logins import parse_login as _parse_login
from rotator.connectors._resources import Fingerprints, Resources
from rotator.connectors.base import PermanentError
from rotator.domain.secret import Secret
from rotator.errors import ConnectorError

PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_.~"
AUTH_FAILED = ("28P01", "28000")
LIBPQ_REQUIRE_AUTH = 160000  # the first libpq with the require_auth connection parameter
_AUTH_METHOD = r"!?(?:password|md5|gss|sspi|scram-sha-256|none)"
_REQUIRE_AUTH = re.compile(rf"{_AUTH_METHOD}(?:,{_AUTH_METHOD})*")
# Admin sessions per pool: the engine's default per-target limit (16) runs at most that many
# calls on a target at once, so a call never waits for a session while every one it could
# wait for is a backend process on the server; most admin work is one short ALTER ROLE, so a
# pool rarely grows that far (see docs in the report of issue 8).
ADMIN_POOL_SIZE = 16
# SQLSTATEs of a statement that lost a race with another session on the same catalog rows:
# XX000 ("tuple concurrently updated" on pg_authid), serialization failure, deadlock.
CONCURRENT_UPDATE = frozenset({"XX000", "40001", "40P01"})
ADMIN_POOL_MAX_IDLE_S = 60.0  # an idle session above the minimum (0) closes after this
# A pooled session used within this many seconds is taken without a check (an empty query,
# one round trip per call); one ended by the server in that window costs its call one retry.
ADMIN_CHECK_IDLE_S = 5.0


MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


class PostgresConfig(cb.ConnectorConfig):
    """Settings: ``host``, ``port``, ``dbname``, ``role``, ``mode`` single|alternating, ``clone``
    (default ROLE_clone), ``admin`` (credential holding the admin password; empty: the role
    logs in as itself), ``admin_user``, ``sslmode`` (default prefer), ``sslrootcert`` (CA file
    for verify-ca/verify-full, or ``system``), ``require_auth`` (libpq's; default
    scram-sha-256; empty: any, see the module docstring), ``connect_timeout_s``,
    ``password_length``."""

    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str = "postgres"
    role: str = Field(min_length=1, max_length=63)
    mode: Literal["single", "alternating"] = "alternating"
    clone: str = Field(default="", max_length=63)
    admin: str = ""
    admin_user: str = "postgres"
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    sslrootcert: str = ""
    require_auth: str = "scram-sha-256"
    connect_timeout_s: int = Field(default=5, ge=1, le=300)
    password_length: int = Field(default=32, ge=16, le=256)

    @field_validator("require_auth")
    @classmethod
    def _check_require_auth(cls, v: str) -> str:
        v = v.strip().lower()
        if v and not _REQUIRE_AUTH.fullmatch(v):
            raise ValueError(
                "require_auth must be libpq auth methods like scram-sha-256 or scram-sha-256,md5"
            )
        return v

    @field_validator("sslrootcert")
    @classmethod
    def _check_sslrootcert(cls, v: str) -> str:
        if v and v != "system" and not v.startswith("/"):
            raise ValueError("sslrootcert must be an absolute path to a CA file, or system")
        return v

    @model_validator(mode="after")
    def _clone_differs(self) -> PostgresConfig:
        if self.mode == "alternating" and self.clone_name == self.role:
            raise ValueError("clone must differ from role")
        # PostgreSQL cuts a longer identifier to 63 bytes in SQL but not in a login's user
        # name: ALTER ROLE would change the cut name and every login (the test step) fail.
        for what, name in zip(("role", "clone"), self.roles, strict=False):
            if len(name.encode("utf-8", "surrogatepass")) > MAX_IDENTIFIER_BYTES:
                raise ValueError(
                    f"{what} {name[:20]!r}... is longer than PostgreSQL's "
                    f"{MAX_IDENTIFIER_BYTES}-byte limit for names (UTF-8)"
                )
        return self

    @property
    def roles(self) -> tuple[str, ...]:
        """The only roles this credential may act on."""
        return (self.role, self.clone_name) if self.mode == "alternating" else (self.role,)

    @property
    def clone_name(self) -> str:
        return self.clone or f"{self.role}_clone"


class LoginRefused(cb.PermanentError):
    """The server refused a login's password (as opposed to failing to authenticate itself)."""


def parse_login(value: Secret, default_user: str, what: str = "the value") -> Login:
    """:func:`rotator.connectors._logins.parse_login`, naming PostgreSQL for a NUL."""
    return _parse_login(value, default_user, what, server="PostgreSQL")


def parse_value(value: Secret, cfg: PostgresConfig | str, what: str = "the value") -> Login:
    """A value of this credential as a login of one of its roles (``cfg.roles``).

    PermanentError when the value names another role: rotator acts on the configured roles
    only, whatever a value says. A bare role name (``str``) is accepted for tests and tools
    that only read a value; it checks nothing but the encoding."""
    if isinstance(cfg, str):
        return parse_login(value, cfg, what)
    login = parse_login(value, cfg.role, what)
    if login.username not in cfg.roles:
        allowed = " or ".join(repr(r) for r in cfg.roles)
        raise PermanentError(
            f"{what} names role {login.username[:63]!r}; this credential acts only on {allowed}"
        )
    return login


def _value(cfg: PostgresConfig, login: Login) -> Secret:
    return Secret(
        json.dumps(
            {
                "engine": "postgres",
                "host": cfg.host,
                "port": cfg.port,
                "dbname": cfg.dbname,
                "username": login.username,
                "password": login.password,
            }
        )
    )


class PostgresConnector:
    kind: ClassVar[str] = "postgres"
    strategy: ClassVar[cb.Strategy] = cb.Strategy.ALTERNATING
    config_model: ClassVar[type[cb.ConnectorConfig]] = PostgresConfig
    references: ClassVar[tuple[str, ...]] = ("admin",)

    def strategy_for(self, config: cb.ConnectorConfig) -> cb.Strategy:
        assert isinstance(config, PostgresConfig)
        return cb.Strategy.SINGLE if config.mode == "single" else cb.Strategy.ALTERNATING

    def target_key(self, config: cb.ConnectorConfig) -> str:
        assert isinstance(config, PostgresConfig)
        return f"postgres://{config.host}:{config.port}"

    # -- connections ----------------------------------------------------------------------

    def __init__(
        self,
        admin_pool_size: int = ADMIN_POOL_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (seconds, monotonic) decides how long a pooled session has been idle."""
        if admin_pool_size < 1:
            raise ValueError("admin_pool_size must be at least 1")
        self._pool_size = admin_pool_size
        self._clock = clock
        self._fingerprints = Fingerprints()
        self._pools: Resources[_AdminPool] = Resources(_AdminPool.close)

    def set_pool_size(self, size: int) -> None:
        """Admin pools made from now on hold up to ``size`` sessions (see base.SizesPools)."""
        self._pool_size = max(1, size)

    def __repr__(self) -> str:
        return f"PostgresConnector({len(self._pools)} admin pools)"

    async def aclose(self) -> None:
        """Close every admin pool (see ``base.Closable``): idle sessions at once, sessions in
        use when their call returns them. Idempotent; a later call opens a pool again."""
        await self._pools.aclose()

    @staticmethod
    def _params(cfg: PostgresConfig, login: Login, what: str) -> dict[str, Any]:
        """libpq connection parameters for ``login``; PermanentError if this libpq cannot
        enforce ``require_auth``."""
        extra: dict[str, Any] = {"sslrootcert": cfg.sslrootcert} if cfg.sslrootcert else {}
        if cfg.require_auth:
            if psycopg.pq.version() < LIBPQ_REQUIRE_AUTH:
                raise cb.PermanentError(
                    f"{what}: libpq {psycopg.pq.version()} cannot enforce require_auth (needs "
                    "libpq 16; psycopg[binary] bundles one), and rotator will not log in "
                    "without it; set require_auth= (empty) to accept any method"
                )
            extra["require_auth"] = cfg.require_auth
        return {
            "host": cfg.host,
            "port": cfg.port,
            "dbname": cfg.dbname,
            "user": login.username,
            "password": login.password,
            "sslmode": cfg.sslmode,
            "connect_timeout": cfg.connect_timeout_s,
            "autocommit": True,
            **extra,
        }

    @staticmethod
    def _refused(
        exc: psycopg.Error, cfg: PostgresConfig, username: str, what: str
    ) -> ConnectorError:
        """A failed login as a connector error that quotes nothing of the server's text."""
        text = str(exc)
        if "authentication method requirement" in text or "channel binding" in text:
            # libpq refused the server's way of authenticating before sending anything.
            return cb.PermanentError(
                f"{what}: postgres at {cfg.host}:{cfg.port} asked for an authentication "
                f"method that require_auth={cfg.require_auth!r} refuses; nothing was sent "
                "(see require_auth)"
            )
        if cfg.sslmode in ("verify-ca", "verify-full", "require") and (
            "SSL" in text or "certificate" in text
        ):
            return cb.PermanentError(
                f"{what}: postgres at {cfg.host}:{cfg.port} failed the TLS check of "
                f"sslmode={cfg.sslmode}"
            )
        if exc.sqlstate in AUTH_FAILED or "authentication failed" in text:
            return LoginRefused(
                f"{what}: postgres at {cfg.host}:{cfg.port} refused the login of {username!r}"
            )
        return cb.TransientError(f"{what}: cannot reach postgres at {cfg.host}:{cfg.port}")

    async def _connect(
        self, cfg: PostgresConfig, login: Login, what: str
    ) -> psycopg.AsyncConnection[Any]:
        """A fresh login (never pooled)."""
        params = self._params(cfg, login, what)
        try:
            return await psycopg.AsyncConnection.connect(**params)
        except psycopg.OperationalError as exc:
            raise self._refused(exc, cfg, login.username, what) from None

    async def _can_login(self, cfg: PostgresConfig, login: Login) -> bool:
        """Whether the server accepts ``login``. Only a refused password is False: a server
        that fails require_auth or the TLS check raises (it proves nothing either way)."""
        try:
            conn = await self._connect(cfg, login, "login")
        except LoginRefused:
            return False
        await conn.close()
        return True

    async def _admin(
        self,
        cfg: PostgresConfig,
        secrets_: cb.SecretResolver,
        current: Secret | None,
        what: str,
    ) -> _Session:
        """An admin session: pooled with an ``admin`` credential, else a fresh login as the
        role itself with CURRENT. Use it as ``async with session as conn``."""
        if cfg.admin:
            value = await secrets_.get(cfg.admin)
            login = parse_login(value, cfg.admin_user, f"{what}: admin {cfg.admin!r}")
            return await self._pooled(cfg, login, value, f"{what} (admin {cfg.admin!r})")
        if current is None:
            raise cb.PermanentError(f"{what}: no admin credential and no current value to log in")
        login = parse_value(current, cfg, f"{what}: CURRENT")
        return _Session.fresh(await self._connect(cfg, login, f"{what} (as itself)"))

    async def _pooled(
        self, cfg: PostgresConfig, login: Login, value: Secret, what: str
    ) -> _Session:
        """A session from the admin pool of (target, admin credential, admin value)."""
        params = self._params(cfg, login, what)
        slot = (
            cfg.host,
            cfg.port,
            cfg.dbname,
            cfg.sslmode,
            cfg.sslrootcert,
            cfg.require_auth,
            cfg.connect_timeout_s,
            cfg.admin,
            login.username,
        )
        wait_s = 2.0 * cfg.connect_timeout_s
        for _ in range(3):

            async def make() -> _AdminPool:
                made = _AdminPool(
                    params,
                    functools.partial(self._refused, cfg=cfg, username=login.username),
                    self._pools,
                    slot,
                    size=self._pool_size,
                    timeout_s=wait_s,
                    clock=self._clock,
                    name=f"postgres admin {cfg.admin!r} at {cfg.host}:{cfg.port}/{cfg.dbname}",
                )
                await made.open()
                return made

            pool = await self._pools.get(slot, self._fingerprints.of(value), make)
            try:
                conn = await pool.pool.getconn()
            except (PoolClosed, PoolTimeout) as exc:
                failure = pool.failure
                await self._pools.drop(slot, pool)
                if failure is not None:
                    error = self._refused(failure, cfg, login.username, what)
                    if isinstance(error, LoginRefused):  # the admin's password was refused
                        raise cb.ReferenceRefused(str(error), cfg.admin) from None
                    raise error from None
                if isinstance(exc, PoolTimeout):
                    raise cb.TransientError(
                        f"{what}: no admin session with postgres at {cfg.host}:{cfg.port} "
                        f"within {wait_s:g}s"
                    ) from None
                continue  # closed under us (its admin value was replaced): take the new one
            replace = functools.partial(self._pools.drop, slot, pool)
            used_at = conn.used_at if isinstance(conn, _AdminConnection) else -math.inf
            if self._clock() - used_at <= ADMIN_CHECK_IDLE_S:
                # Used moments ago: the call's own statements are the check (see _run).
                return _Session(conn, pool.release, replace=replace)
            try:
                await AsyncConnectionPool.check_connection(conn)
            except psycopg.Error:
                # Broken while idle (the server restarted or ended it): the others are likely
                # broken too, so the whole pool is replaced rather than tried one by one.
                await conn.close()
                await replace()
                continue
            except BaseException:
                await pool.release(conn)
                raise
            return _Session(conn, pool.release)
        raise cb.TransientError(
            f"{what}: no working admin session with postgres at {cfg.host}:{cfg.port}"
        )

    @staticmethod
    async def _exec(
        conn: psycopg.AsyncConnection[Any],
        query: sql.SQL | sql.Composed,
        what: str,
        params: tuple[Any, ...] | None = None,
        missing: str = "",
    ) -> list[tuple[Any, ...]]:
        try:
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description else []
        except psycopg.errors.InsufficientPrivilege:
            raise cb.PermanentError(f"{what}: permission denied") from None
        except psycopg.errors.UndefinedObject as exc:
            if missing:
                raise cb.PermanentError(f"{what}: {missing}") from None
            raise cb.PermanentError(f"{what}: postgres error {exc.sqlstate}") from None
        except psycopg.OperationalError:
            raise cb.TransientError(f"{what}: the connection to postgres failed") from None
        except psycopg.Error as exc:
            if exc.sqlstate in CONCURRENT_UPDATE:
                # Another session changed the same role at once ("tuple concurrently
                # updated", a deadlock): the statement is idempotent, so trying again is safe.
                raise cb.TransientError(
                    f"{what}: postgres error {exc.sqlstate} (a concurrent change of the role)"
                ) from None
            # The message may quote the statement, and so a verifier: say only what kind.
            raise cb.PermanentError(
                f"{what}: postgres error {exc.sqlstate or type(exc).__name__}"
            ) from None

    @staticmethod
    async def _run(
        session: _Session,
        work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]],
        again: Callable[[], Awaitable[_Session]],
    ) -> None:
        """``work`` on ``session``; if that was a pooled session taken unchecked and the server
        had ended it (the statement fails, the connection is broken), its pool is replaced and
        ``work`` (idempotent) runs once more on a session from ``again()``."""
        try:
            async with session as conn:
                await work(conn)
            return
        except cb.TransientError:
            if session.replace is None or not conn.broken:
                raise
            await session.replace()
        async with await again() as conn:
            await work(conn)

    async def _set_password(
        self, conn: psycopg.AsyncConnection[Any], role: str, password: str, what: str
    ) -> None:
        # libpq's own verifier (PQencryptPasswordConn): SASLprep, a random salt and the
        # server's iteration count, exactly as the server would make it; the algorithm is
        # named, so libpq asks the server nothing. About 3 ms of CPU (docs in the report).
        try:
            verifier = conn.pgconn.encrypt_password(
                password.encode(), role.encode(), b"scram-sha-256"
            ).decode("ascii")
        except psycopg.Error:
            raise cb.PermanentError(f"{what}: libpq could not make a password verifier") from None
        q = sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier))
        await self._exec(conn, q, what, missing=f"role {role!r} does not exist")

    async def _role_exists(self, conn: psycopg.AsyncConnection[Any], role: str, what: str) -> bool:
        rows = await self._exec(
            conn, sql.SQL("SELECT 1 FROM pg_roles WHERE rolname = %s"), what, (role,)
        )
        return bool(rows)

    async def _ensure_clone(self, conn: psycopg.AsyncConnection[Any], cfg: PostgresConfig) -> None:
        what = f"set: create clone role {cfg.clone_name!r}"
        if not await self._role_exists(conn, cfg.role, what):
            raise cb.PermanentError(f"set: role {cfg.role!r} does not exist")
        if not await self._role_exists(conn, cfg.clone_name, what):
            await self._exec(
                conn,
                sql.SQL("CREATE ROLE {} WITH LOGIN").format(sql.Identifier(cfg.clone_name)),
                what,
            )
        groups = await self._exec(
            conn,
            sql.SQL(
                "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s"
            ),
            what,
            (cfg.role,),
        )
        for target in [cfg.role, *(g[0] for g in groups)]:
            await self._exec(
                conn,
                sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(target), sql.Identifier(cfg.clone_name)
                ),
                what,
            )

    # -- the protocol ---------------------------------------------------------------------

    async def create(self, req: cb.CreateRequest) -> Secret:
        cfg = _cfg(req.config)
        username = cfg.role
        if cfg.mode == "alternating" and req.current is not None:
            current = parse_value(req.current, cfg, "create: CURRENT")
            username = cfg.clone_name if current.username == cfg.role else cfg.role
        password = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(cfg.password_length))
        return _value(cfg, Login(username, password))

    async def set(self, req: cb.SetRequest) -> None:
        cfg = _cfg(req.config)
        pending = parse_value(req.pending, cfg, "set: PENDING")
        # Idempotent without a login attempt first (which costs a full SCRAM handshake and a
        # backend on the server, and is refused on every fresh rotation): setting the same
        # password again is harmless. Only a role changing its own password cannot log in
        # with CURRENT once set has happened; then PENDING does.
        try:
            session = await self._admin(cfg, req.secrets, req.current, "set")
        except cb.PermanentError:
            if not cfg.admin and await self._can_login(cfg, pending):
                return  # set happened already (a retried or resumed step)
            raise

        async def work(conn: psycopg.AsyncConnection[Any]) -> None:
            if cfg.mode == "alternating" and pending.username == cfg.clone_name:
                await self._ensure_clone(conn, cfg)
            await self._set_password(conn, pending.username, pending.password, "set")

        await self._run(session, work, lambda: self._admin(cfg, req.secrets, req.current, "set"))

    async def test(self, req: cb.TestRequest) -> None:
        cfg = _cfg(req.config)
        pending = parse_value(req.pending, cfg, "test: PENDING")
        conn = await self._connect(cfg, pending, "test")
        async with conn:
            await self._exec(conn, sql.SQL("SELECT 1"), "test")

    async def finish(self, req: cb.FinishRequest) -> None:
        return None

    async def revoke(self, req: cb.RevokeRequest) -> None:
        """Make the old value stop working: if it still logs in, its role gets a random
        password nobody knows. A role whose password already moved on (it became CURRENT
        again, or the single role changed at set) is left alone."""
        cfg = _cfg(req.config)
        old = parse_value(req.value, cfg, "revoke: the old value")
        if not await self._can_login(cfg, old):
            return
        session = (
            _Session.fresh(await self._connect(cfg, old, "revoke"))
            if not cfg.admin
            else await self._admin(cfg, req.secrets, None, "revoke")
        )

        async def work(conn: psycopg.AsyncConnection[Any]) -> None:
            await self._set_password(conn, old.username, secrets.token_urlsafe(48), "revoke")

        await self._run(session, work, lambda: self._admin(cfg, req.secrets, None, "revoke"))

    async def rollback(self, req: cb.RollbackRequest) -> None:
        cfg = _cfg(req.config)
        pending = parse_value(req.pending, cfg, "rollback: PENDING")
        if not await self._can_login(cfg, pending):
            return  # set never took effect, or was undone already
        current = (
            parse_value(req.current, cfg, "rollback: CURRENT") if req.current is not None else None
        )
        if cfg.admin:
            session = await self._admin(cfg, req.secrets, None, "rollback")
        else:  # the role is on pending now
            session = _Session.fresh(await self._connect(cfg, pending, "rollback"))

        async def work(conn: psycopg.AsyncConnection[Any]) -> None:
            if current is not None and current.username == pending.username:
                # single mode: put the old password back so CURRENT works again
                await self._set_password(conn, pending.username, current.password, "rollback")
            else:
                await self._set_password(
                    conn, pending.username, secrets.token_urlsafe(48), "rollback"
                )

        await self._run(session, work, lambda: self._admin(cfg, req.secrets, None, "rollback"))

    async def verify(self, req: cb.VerifyRequest) -> None:
        cfg = _cfg(req.config)
        session = await self._admin(cfg, req.secrets, req.current, "verify")

        async def work(conn: psycopg.AsyncConnection[Any]) -> None:
            if not await self._role_exists(conn, cfg.role, "verify"):
                raise cb.PermanentError(
                    f"role {cfg.role!r} does not exist on {cfg.host}:{cfg.port}"
                )
            if cfg.admin:
                rows = await self._exec(
                    conn,
                    sql.SQL(
                        "SELECT rolsuper OR rolcreaterole FROM pg_roles"
                        " WHERE rolname = current_user"
                    ),
                    "verify",
                )
                if not rows or not rows[0][0]:
                    raise cb.PermanentError(
                        f"admin {cfg.admin!r} may not change passwords (needs CREATEROLE)"
                    )

        await self._run(session, work, lambda: self._admin(cfg, req.secrets, req.current, "verify"))
        if req.current is not None and not await self._can_login(
            cfg, parse_value(req.current, cfg, "the given value")
        ):
            raise cb.PermanentError(f"the given value does not log in as {cfg.role!r}")

    def check_value(self, config: cb.ConnectorConfig, value: Secret) -> None:
        """A value given at ``credential add``/``update``: UTF-8 text naming one of this
        credential's roles (or a bare password). PermanentError otherwise; no I/O."""
        parse_value(value, _cfg(config), "the given value")


class _Session:
    """An admin connection for one call: ``async with session as conn``; on exit it goes back
    to its pool (or, not pooled, is closed). ``replace`` is set on a pooled session taken
    without a check: it replaces its pool when the connection turns out broken."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        release: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]],
        *,
        replace: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._conn, self._release = conn, release
        self.replace = replace

    @classmethod
    def fresh(cls, conn: psycopg.AsyncConnection[Any]) -> _Session:
        async def close(c: psycopg.AsyncConnection[Any]) -> None:
            await c.close()

        return cls(conn, close)

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        await self._release(self._conn)


class _AdminConnection(psycopg.AsyncConnection[Any]):
    """A pooled admin connection. The pool logs in in a background task, where a failure
    would only make the waiting calls time out; this reports it to its ``_AdminPool``
    (passed in the ``rotator_pool`` parameter), which fails them at once. ``used_at`` is when
    it last worked (logged in, or came back from a call) on the connector's clock."""

    used_at: float = -math.inf

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        pool: _AdminPool = kwargs.pop("rotator_pool")
        clock: Callable[[], float] = kwargs.pop("rotator_clock")
        try:
            conn = await super().connect(conninfo, **kwargs)
            conn.used_at = clock()
            return conn
        except psycopg.Error as exc:
            # The pool logs what it catches: our message, which quotes nothing of the server.
            raise pool.failed(exc) from None
        except asyncio.CancelledError:
            # psycopg_pool's workers survive a cancellation of what they run and stop only
            # when their pool closes: a loop ending (asyncio.run) while this login is under
            # way would wait for this worker forever. Close the pool from another task.
            pool.abandon()
            raise


class _AdminPool:
    """The admin sessions for one (target, admin credential, admin value).

    ``failure`` holds the error of the last login the pool tried and failed; it then closes
    itself (through ``drop``), so the calls waiting in it get PoolClosed and raise that
    error instead. Holds the login in its connection parameters; shows none of it."""

    def __init__(
        self,
        params: dict[str, Any],
        translate: Callable[..., ConnectorError],
        owner: Resources[_AdminPool],
        slot: Hashable,
        *,
        size: int,
        timeout_s: float,
        clock: Callable[[], float],
        name: str,
    ) -> None:
        self.failure: psycopg.Error | None = None
        self.clock = clock
        # Weak references only: with no cycle through the connector, a connector instance
        # nobody closes (a one-shot use) frees its pool, and its sessions, when dropped.
        self._translate = translate
        self._owner, self._slot = weakref.ref(owner), slot
        self._dropping: set[asyncio.Task[None]] = set()
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            kwargs={**params, "rotator_pool": weakref.proxy(self), "rotator_clock": clock},
            connection_class=_AdminConnection,
            min_size=0,
            max_size=size,
            open=False,
            name=name,
            timeout=timeout_s,
            max_idle=ADMIN_POOL_MAX_IDLE_S,
        )

    def __repr__(self) -> str:
        return f"_AdminPool({self.pool.name!r})"

    async def open(self) -> None:
        await self.pool.open()

    async def close(self) -> None:
        await self.pool.close()

    async def release(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Give ``conn`` back after a call (a broken one the pool discards)."""
        if isinstance(conn, _AdminConnection):
            conn.used_at = self.clock()
        await self.pool.putconn(conn)

    def failed(self, exc: psycopg.Error) -> ConnectorError:
        """A login of the pool failed: record it, drop the pool, and the error to raise."""
        self.failure = exc
        self.abandon()
        return self._translate(exc, what="admin pool")

    def abandon(self) -> None:
        """Drop (and close) the pool soon. Called from one of the pool's own tasks, which
        close() waits for, so it runs in another task."""
        owner = self._owner()
        drop = owner.drop(self._slot, self) if owner is not None else self.close()
        task = asyncio.get_running_loop().create_task(drop)
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)


def _cfg(config: cb.ConnectorConfig) -> PostgresConfig:
    assert isinstance(config, PostgresConfig)
    return config
