"""The ``mariadb`` connector: account passwords on MariaDB and MySQL.

Accounts are ``'user'@'host_part'`` (``host_part`` defaults to ``%``). Modes:

- ``alternating`` (default, zero downtime): two accounts, USER and USER_clone (same host
  part). Before the clone's password is set, its privileges are made the same as USER's:
  everything the clone held directly is revoked and every line of ``SHOW GRANTS FOR USER``
  is run again with the grantee rewritten to the clone (privileges, roles, proxy grants, a
  default role still granted; on MariaDB also TLS requirements and resource limits; the
  password line is left out). MySQL 5.7.6+ prints TLS requirements and resource limits in
  ``SHOW CREATE USER`` only: there its ``REQUIRE … WITH …`` part is applied to the clone
  with ``ALTER USER`` (password options such as expiry intervals are not copied). Each
  rotation sets a new password on the idle account; the other keeps working for the grace.
- ``single``: one account; the old password stops working at ``set`` (not zero-downtime).
  With no ``admin`` the account changes its own password ("rotate root").
- ``dual``: MySQL 8.0.14+'s dual passwords: ``set`` runs ``ALTER USER ... IDENTIFIED BY ...
  RETAIN CURRENT PASSWORD`` and ``revoke`` ``ALTER USER ... DISCARD OLD PASSWORD``. MariaDB
  has no dual passwords: ``verify`` (``credential add --verify``) and ``set`` refuse
  ``mode=dual`` there in one line, before anything is changed.

Values are JSON: ``{"engine", "host", "port", "username", "password"}``; a plain string
given at ``credential add --value-stdin`` is taken as USER's current password. A value naming
any account other than USER (or its clone) is refused, as for the postgres connector.

What reaches the server's logs: MariaDB writes every statement verbatim to its general log
(and binary log), ``IDENTIFIED BY 'plaintext'`` included. For ``mysql_native_password``
accounts (MariaDB's default, and MySQL's before 8.0) this connector therefore computes the
password hash itself (``*`` + uppercase hex of SHA1(SHA1(password)), password as UTF-8) and
sends only ``IDENTIFIED WITH mysql_native_password AS '*HEX'``, which both servers accept:
the plaintext never reaches the server on the admin channel, only the stored hash does.
Accounts using ``caching_sha2_password`` or ``sha256_password`` (MySQL 8) get ``IDENTIFIED
WITH <plugin> BY '...'``: MySQL hashes it with a salt and rewrites the statement in its
general, slow and binary logs so the value is masked (MySQL's documented behaviour; rotator
cannot compute those salted hashes as the server does). Dual mode always sends ``IDENTIFIED
BY`` (MySQL has no ``AS`` form with ``RETAIN CURRENT PASSWORD``): MySQL only. Accounts using
any other plugin (ed25519, unix_socket, PAM, GSSAPI) are refused in one line: their secret
would have to be sent in clear (ed25519) or is not a password.

Logins (admin and test alike) refuse a server that asks for ``mysql_clear_password`` or
``mysql_old_password`` (nothing is sent), and ``ssl_mode`` ``required``/``verify_ca``/
``verify_identity`` refuse a server that does not offer TLS, before the password is sent.
``preferred`` and ``required`` do not check the server's certificate: they protect nothing
against an active attacker, who can pose as the server. So unless ``ssl_mode`` is
``verify_ca``/``verify_identity``, a server asking for ``sha256_password`` or for
caching_sha2_password's full authentication (both hand over the password itself, over TLS
or encrypted to an RSA key the server supplies) is refused before the password is sent:
MySQL 8 accounts of those plugins need ``verify_*`` (caching_sha2's fast path, a scramble,
works with any mode).
``test`` and the checks that a value logs in are each a fresh login with that value; the
admin side is pooled (one pool per target, TLS settings, admin credential and admin value,
the value known by an HMAC fingerprint only; a refused admin login drops its pool, a changed
admin value gets a new one). Admin sessions bound lock waits (and, on MariaDB, statement
run time) to ``STATEMENT_TIMEOUT_S``, below the engine's default step timeout, and a step
cancelled mid-statement sends ``KILL QUERY`` for it from a fresh login before it ends: no
statement takes effect after its step (and so after the rollback). No server error text
is ever passed on: MariaDB quotes the statement in syntax errors, and a statement may hold
a hash.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import re
import secrets
import ssl
import string
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal

import aiomysql
import pymysql
from pydantic import Field, field_validator, model_validator
from pymysql import _auth as pymysql_auth
from pymysql.constants import CLIENT

from rotator.connectors import base as cb
from rotator.connectors._logins import Login, parse_login
from rotator.connectors._resources import Fingerprints, Resources
from rotator.connectors.base import PermanentError
from rotator.domain.secret import Secret
from rotator.errors import ConnectorError

PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_.~"
# Server error numbers of a refused login: access denied (with/without password), the
# account locked, the password expired.
LOGIN_REFUSED = frozenset({1045, 1698, 3118, 4151, 1862, 1820})
# Of those, the ones the server sends only after the password checked out (locked, expired):
# the password is still valid and works again once the account is unlocked or renewed.
LOGIN_BLOCKED = frozenset({3118, 4151, 1862, 1820})
# Server error numbers worth another try: lock wait timeout, deadlock, too many connections,
# MariaDB's max_statement_time exceeded.
RETRYABLE = frozenset({1205, 1213, 1040, 1969})
ADMIN_POOL_SIZE = 16  # as the postgres connector: the engine's default per-target limit
# Bound on how long one admin statement may wait for a lock (lock_wait_timeout) or run
# (MariaDB's max_statement_time): below the engine's default step timeout (60 s,
# engine/options.py), so a statement stuck behind e.g. a backup's FLUSH TABLES WITH READ LOCK
# fails within the step instead of completing after its rollback ran.
STATEMENT_TIMEOUT_S = 30
MAX_USER_CHARS = 80  # MariaDB's limit (MySQL 8: 32, which the server enforces itself)
MAX_HOST_CHARS = 255
NATIVE = "mysql_native_password"
MYSQL_SALTED = frozenset({"caching_sha2_password", "sha256_password"})
DUAL_MIN_MYSQL = (8, 0, 14)


class MariadbConfig(cb.ConnectorConfig):
    """Settings: ``host``, ``port``, ``user``, ``host_part`` (the account's host, default
    ``%``), ``mode`` single|alternating|dual, ``clone`` (default USER_clone), ``admin``
    (credential holding the admin password; empty: the account logs in as itself, single
    mode only), ``admin_user`` (default root), ``ssl_mode`` disabled|preferred|required|
    verify_ca|verify_identity (default preferred), ``ssl_ca`` (CA file for verify_*),
    ``connect_timeout_s``, ``password_length``."""

    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = Field(min_length=1, max_length=MAX_USER_CHARS)
    host_part: str = Field(default="%", min_length=1, max_length=MAX_HOST_CHARS)
    mode: Literal["single", "alternating", "dual"] = "alternating"
    clone: str = Field(default="", max_length=MAX_USER_CHARS)
    admin: str = ""
    admin_user: str = "root"
    ssl_mode: Literal["disabled", "preferred", "required", "verify_ca", "verify_identity"] = (
        "preferred"
    )
    ssl_ca: str = ""
    connect_timeout_s: int = Field(default=5, ge=1, le=300)
    password_length: int = Field(default=32, ge=16, le=256)

    @field_validator("ssl_ca")
    @classmethod
    def _check_ssl_ca(cls, v: str) -> str:
        if v and not v.startswith("/"):
            raise ValueError("ssl_ca must be an absolute path to a CA file")
        return v

    @model_validator(mode="after")
    def _check(self) -> MariadbConfig:
        if self.mode == "alternating":
            if self.clone_name == self.user:
                raise ValueError("clone must differ from user")
            if len(self.clone_name) > MAX_USER_CHARS:
                raise ValueError(f"clone name is longer than {MAX_USER_CHARS} characters")
        if self.ssl_mode.startswith("verify") and not self.ssl_ca:
            raise ValueError(f"ssl_mode={self.ssl_mode} needs ssl_ca")
        if not self.admin and self.mode != "single":
            raise ValueError("without admin only mode=single works (the account changes itself)")
        for what, name in (("user", self.user), ("host_part", self.host_part)):
            if "\x00" in name:
                raise ValueError(f"{what} holds a NUL character")
        return self

    @property
    def users(self) -> tuple[str, ...]:
        """The only accounts (with ``host_part``) this credential may act on."""
        return (self.user, self.clone_name) if self.mode == "alternating" else (self.user,)

    @property
    def clone_name(self) -> str:
        return self.clone or f"{self.user}_clone"


def parse_value(value: Secret, cfg: MariadbConfig, what: str = "the value") -> Login:
    """A value of this credential as a login of one of its accounts (``cfg.users``);
    PermanentError when it names another account."""
    login = parse_login(value, cfg.user, what)
    if login.username not in cfg.users:
        allowed = " or ".join(repr(u) for u in cfg.users)
        raise PermanentError(
            f"{what} names account {login.username[:80]!r}; this credential acts only on {allowed}"
        )
    return login


def native_hash(password: str) -> str:
    """The ``mysql_native_password`` hash of ``password`` (UTF-8, as a utf8mb4 client sends
    it): ``*`` + uppercase hex of SHA1(SHA1(password))."""
    # SHA-1 because that is the server's format for this plugin, not a choice made here.
    inner = hashlib.sha1(password.encode("utf-8"), usedforsecurity=False).digest()
    return "*" + hashlib.sha1(inner, usedforsecurity=False).hexdigest().upper()


def quote_name(name: str) -> str:
    """``name`` as a backtick-quoted identifier (the form SHOW GRANTS prints)."""
    return "`" + name.replace("`", "``") + "`"


def grantee(user: str, host_part: str) -> str:
    return f"{quote_name(user)}@{quote_name(host_part)}"


def _grantee_at(line: str, source: str) -> int:
    """Index in ``line`` (a SHOW GRANTS line) of ``source`` where it is the grantee: right
    after the first `` TO `` or `` FOR `` keyword outside quotes; -1 if not there. A
    quoted identifier or string (a table named like an account) is never mistaken for it."""
    i, quote = 0, ""
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and quote == "'":
                i += 2
                continue
            if c == quote:
                if line.startswith(quote, i + 1):  # a doubled quote stays inside
                    i += 2
                    continue
                quote = ""
        elif c in "`'\"":
            quote = c
        else:
            for keyword in (" TO ", " FOR "):
                if line.startswith(keyword, i):
                    start = i + len(keyword)
                    return start if line.startswith(source, start) else -1
        i += 1
    return -1


_PASSWORD_CLAUSE = re.compile(r"^ IDENTIFIED BY PASSWORD '[^'\\]*'")
_QUOTED = r"`(?:[^`]|``)*`"
_ROLE = rf"{_QUOTED}(?:@{_QUOTED})?"  # MariaDB: `role`; MySQL: `role`@`host`
_ROLE_GRANT = re.compile(rf"^GRANT ({_ROLE}(?:,\s*{_ROLE})*) TO $")
_DEFAULT_ROLE = re.compile(rf"^SET DEFAULT ROLE ({_ROLE}) FOR $")


def clone_grants(lines: list[str], user: str, clone: str, host_part: str) -> list[str]:
    """The statements that give ``clone`` what SHOW GRANTS lists for ``user``: each line
    with its grantee replaced; the password part left out, and the bare USAGE line (which
    CREATE USER gives anyway) dropped. PermanentError if a line names no grantee rotator
    recognises or names an authentication method it cannot copy. A ``SET DEFAULT ROLE``
    line naming a role not granted in ``lines`` is dropped: MariaDB still prints it after
    the role was revoked, and the clone would be refused it (error 1959)."""
    source, target = grantee(user, host_part), grantee(clone, host_part)
    out, granted = [], set()
    for line in lines:
        at = _grantee_at(line, source)
        if at >= 0 and (roles := _ROLE_GRANT.match(line[:at])):
            granted.update(re.findall(_ROLE, roles.group(1)))
    for line in lines:
        at = _grantee_at(line, source)
        if at < 0:
            raise PermanentError(
                f"set: cannot read a grant of {user!r}@{host_part!r} (SHOW GRANTS format)"
            )
        default = _DEFAULT_ROLE.match(line[:at])
        if default and default.group(1) not in granted:
            continue
        rest = _PASSWORD_CLAUSE.sub("", line[at + len(source) :])
        if rest.startswith(" IDENTIFIED"):
            raise PermanentError(
                f"set: {user!r}@{host_part!r} uses an authentication method rotator cannot copy"
            )
        head = line[:at]
        if head == "GRANT USAGE ON *.* TO " and not rest.strip():
            continue
        out.append(head + target + rest)
    return out


def _mask_quoted(text: str) -> str:
    """``text`` with the inside of every quoted string or identifier replaced by ``_`` (same
    length), so keywords are searched for outside quotes only."""
    out, quote, i = list(text), "", 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == "'":
                out[i : i + 2] = "__"[: len(text) - i]
                i += 2
                continue
            if c == quote:
                if text.startswith(quote, i + 1):  # a doubled quote stays inside
                    out[i : i + 2] = "__"
                    i += 2
                    continue
                quote = ""
            else:
                out[i] = "_"
        elif c in "`'\"":
            quote = c
        i += 1
    return "".join(out)


_REQUIRE = re.compile(r"\sREQUIRE\s")
_AFTER_LIMITS = re.compile(
    r"\s(?:PASSWORD|ACCOUNT|FAILED_LOGIN_ATTEMPTS|PASSWORD_LOCK_TIME|COMMENT|ATTRIBUTE)\s"
)
_STRING = r"'(?:[^'\\]|\\.|'')*'"
_LIMITS = re.compile(
    rf"REQUIRE (?:NONE|SSL|X509|(?:(?:ISSUER|SUBJECT|CIPHER) {_STRING}(?: AND)? ?)+)"
    r"(?: WITH(?: MAX_(?:QUERIES|UPDATES|CONNECTIONS)_PER_HOUR \d+| MAX_USER_CONNECTIONS \d+)+)?"
)


def account_limits(create_user: str, user: str, host_part: str) -> str:
    """The ``REQUIRE … [WITH MAX_…]`` part of MySQL's ``SHOW CREATE USER`` output (TLS
    requirements and resource limits, which MySQL 5.7.6+ leaves out of SHOW GRANTS), as
    the server printed it; PermanentError if it cannot be read."""
    masked = _mask_quoted(create_user)
    start = _REQUIRE.search(masked)
    if start is not None:
        end = _AFTER_LIMITS.search(masked, start.end())
        part = " ".join(create_user[start.start() : end.start() if end else None].split())
        if _LIMITS.fullmatch(part):
            return part
    raise PermanentError(
        f"set: cannot read the TLS requirements of {user!r}@{host_part!r} (SHOW CREATE USER)"
    )


def _value(cfg: MariadbConfig, login: Login) -> Secret:
    return Secret(
        json.dumps(
            {
                "engine": "mariadb",
                "host": cfg.host,
                "port": cfg.port,
                "username": login.username,
                "password": login.password,
            }
        )
    )


class LoginRefused(cb.PermanentError):
    """The server refused a login's password."""


class LoginBlocked(LoginRefused):
    """The server refused a login whose password is right: the account is locked or its
    password expired."""


class _Connection(aiomysql.Connection):  # type: ignore[misc]
    """An aiomysql connection that refuses, before sending the password, a server without
    TLS when TLS is required, a server asking for the password in clear text
    (``mysql_clear_password``) or for the broken pre-4.1 scramble, and, unless the server's
    certificate is checked (``trusted_tls``: ssl_mode verify_ca/verify_identity), a server
    asking for ``sha256_password`` or for caching_sha2_password's full authentication: those
    send the raw password over TLS, or encrypt it to an RSA key the server itself supplies,
    so an impostor (which unverified TLS cannot tell apart) would read it."""

    require_tls = False
    trusted_tls = False

    async def _request_authentication(self) -> None:
        if self.require_tls and not self.server_capabilities & CLIENT.SSL:
            raise _Refused("offers no TLS, which ssl_mode requires; nothing was sent")
        plugin = self._server_auth_plugin
        if plugin in ("mysql_clear_password", "mysql_old_password") or (
            plugin == "sha256_password" and not self.trusted_tls
        ):
            # The first packet would carry the password in that form: answer with the
            # native scramble instead; the server then refuses or switches plugins.
            self._client_auth_plugin = NATIVE
        await super()._request_authentication()

    async def _process_auth(self, plugin_name: bytes, auth_packet: Any) -> Any:
        if plugin_name in (b"mysql_clear_password", b"mysql_old_password"):
            raise _Refused("asked for the password in clear text; nothing was sent")
        return await super()._process_auth(plugin_name, auth_packet)

    async def sha256_password_auth(self, pkt: Any) -> Any:
        if not self.trusted_tls:
            raise _Refused(_UNTRUSTED_PLUGIN.format("sha256_password"))
        return await super().sha256_password_auth(pkt)

    async def caching_sha2_password_auth(self, pkt: Any) -> Any:
        if self.trusted_tls or not self._password:
            return await super().caching_sha2_password_auth(pkt)
        # The fast path (a scramble) is safe to any server; only the full authentication
        # the server asks for next (4) is refused.
        if pkt.is_auth_switch_request():
            self.salt = pkt.read_all()
            self.write_packet(
                pymysql_auth.scramble_caching_sha2(self._password.encode("latin1"), self.salt)
            )
            pkt = await self._read_packet()
            pkt.check_error()
        if pkt.is_extra_auth_data() and pkt.get_all_data()[1:2] != b"\x03":
            raise _Refused(_UNTRUSTED_PLUGIN.format("caching_sha2_password full authentication"))
        return await super().caching_sha2_password_auth(pkt)


_UNTRUSTED_PLUGIN = (
    "asked for {} (the password itself, to a server whose certificate is not checked); "
    "nothing was sent: use ssl_mode=verify_ca or verify_identity with ssl_ca"
)


class _Refused(Exception):
    """Raised inside a login: the server is not one rotator sends a password to."""


class MariadbConnector:
    kind: ClassVar[str] = "mariadb"
    strategy: ClassVar[cb.Strategy] = cb.Strategy.ALTERNATING
    config_model: ClassVar[type[cb.ConnectorConfig]] = MariadbConfig
    references: ClassVar[tuple[str, ...]] = ("admin",)

    def strategy_for(self, config: cb.ConnectorConfig) -> cb.Strategy:
        cfg = _cfg(config)
        return {
            "single": cb.Strategy.SINGLE,
            "alternating": cb.Strategy.ALTERNATING,
            "dual": cb.Strategy.DUAL,
        }[cfg.mode]

    def target_key(self, config: cb.ConnectorConfig) -> str:
        cfg = _cfg(config)
        return f"mariadb://{cfg.host}:{cfg.port}"

    # -- connections ----------------------------------------------------------------------

    def __init__(
        self, admin_pool_size: int = ADMIN_POOL_SIZE, statement_timeout_s: int = STATEMENT_TIMEOUT_S
    ) -> None:
        if admin_pool_size < 1:
            raise ValueError("admin_pool_size must be at least 1")
        if statement_timeout_s < 1:
            raise ValueError("statement_timeout_s must be at least 1")
        self._pool_size = admin_pool_size
        self._statement_timeout_s = statement_timeout_s
        self._fingerprints = Fingerprints()
        self._pools: Resources[_AdminPool] = Resources(_AdminPool.close)

    def set_pool_size(self, size: int) -> None:
        """Admin pools made from now on hold up to ``size`` sessions (see base.SizesPools)."""
        self._pool_size = max(1, size)

    def __repr__(self) -> str:
        return f"MariadbConnector({len(self._pools)} admin pools)"

    async def aclose(self) -> None:
        """Close every admin pool (see ``base.Closable``). Idempotent."""
        await self._pools.aclose()

    @staticmethod
    def _ssl(cfg: MariadbConfig) -> ssl.SSLContext | None:
        if cfg.ssl_mode == "disabled":
            return None
        if cfg.ssl_mode.startswith("verify"):
            try:
                ctx = ssl.create_default_context(cafile=cfg.ssl_ca)
            except (OSError, ssl.SSLError):
                raise PermanentError(f"cannot read the CA file ssl_ca={cfg.ssl_ca!r}") from None
            ctx.check_hostname = cfg.ssl_mode == "verify_identity"
            return ctx
        # preferred / required: encrypted, the server's certificate not checked (as MySQL's
        # own clients do for these modes).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _connect(self, cfg: MariadbConfig, login: Login, what: str) -> _Connection:
        """A fresh login (never pooled); LoginRefused when the password is refused."""
        conn = _Connection(
            host=cfg.host,
            port=cfg.port,
            user=login.username,
            # aiomysql encodes the password as latin-1 when it scrambles it; servers hash the
            # bytes a utf8mb4 client sends: give it the UTF-8 bytes as latin-1 characters.
            password=login.password.encode("utf-8").decode("latin-1"),
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=cfg.connect_timeout_s,
            ssl=self._ssl(cfg),
            program_name="rotator",
        )
        conn.require_tls = cfg.ssl_mode not in ("disabled", "preferred")
        conn.trusted_tls = cfg.ssl_mode.startswith("verify")
        where = f"{what}: mariadb at {cfg.host}:{cfg.port}"
        try:
            # aiomysql's connect_timeout covers the TCP connect only; this covers the login.
            await asyncio.wait_for(conn._connect(), timeout=cfg.connect_timeout_s)
        except _Refused as exc:
            conn.close()
            raise PermanentError(f"{where} {exc}") from None
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else 0
            if isinstance(exc.__cause__, ssl.SSLError):  # aiomysql wraps it as "can't connect"
                raise PermanentError(
                    f"{where} failed the TLS check of ssl_mode={cfg.ssl_mode}"
                ) from None
            if code in LOGIN_BLOCKED:
                raise LoginBlocked(
                    f"{where} refused the login of {login.username!r} (account locked or "
                    f"password expired, mariadb error {code})"
                ) from None
            if code in LOGIN_REFUSED:
                raise LoginRefused(f"{where} refused the login of {login.username!r}") from None
            if code == 2059:  # an authentication plugin aiomysql does not have
                raise PermanentError(f"{where} asked for an unsupported auth plugin") from None
            raise cb.TransientError(f"{where} cannot be reached") from None
        except (TimeoutError, OSError, pymysql.err.Error):
            conn.close()
            raise cb.TransientError(f"{where} cannot be reached") from None
        return conn

    async def _admin_session(self, cfg: MariadbConfig, login: Login, what: str) -> _Session:
        """A session on a fresh login as ``login`` (not pooled) that changes accounts."""
        conn = await self._admin_connect(cfg, login, what)
        return _Session(conn, None, _ServerInfo(), self._killer(cfg, login))

    async def _admin_connect(self, cfg: MariadbConfig, login: Login, what: str) -> _Connection:
        """A fresh login whose statements give up waiting for a lock (and, on MariaDB, stop
        running) after ``statement_timeout_s``, so none outlives its step."""
        conn = await self._connect(cfg, login, what)
        limits = [f"SET SESSION lock_wait_timeout = {self._statement_timeout_s}"]
        if "mariadb" in str(conn.get_server_info()).lower():
            limits.append(f"SET SESSION max_statement_time = {self._statement_timeout_s}")
        try:
            async with conn.cursor() as cur:
                for statement in limits:
                    await cur.execute(statement)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, pymysql.err.Error):
                raise cb.TransientError(f"{what}: cannot set the session's timeouts") from None
            raise
        return conn

    def _killer(self, cfg: MariadbConfig, login: Login) -> Callable[[int], Awaitable[None]]:
        async def kill(thread_id: int) -> None:
            conn = await self._connect(cfg, login, "kill")
            try:
                async with conn.cursor() as cur:
                    await cur.execute("KILL QUERY %s", (thread_id,))
            finally:
                await _quit(conn)

        return kill

    async def _can_login(self, cfg: MariadbConfig, login: Login) -> bool:
        """Whether ``login``'s password is valid on the server; only a refused password is
        False (a locked account or an expired password is True: the server refuses those
        only after the password checked out, and it works again after an unlock)."""
        try:
            conn = await self._connect(cfg, login, "login")
        except LoginBlocked:
            return True
        except LoginRefused:
            return False
        await _quit(conn)
        return True

    async def _admin(
        self, cfg: MariadbConfig, secrets_: cb.SecretResolver, current: Secret | None, what: str
    ) -> _Session:
        """An admin session: pooled with an ``admin`` credential, else a fresh login as the
        account itself with CURRENT (single mode)."""
        if not cfg.admin:
            if current is None:
                raise PermanentError(f"{what}: no admin credential and no current value")
            login = parse_value(current, cfg, f"{what}: CURRENT")
            return await self._admin_session(cfg, login, f"{what} (as itself)")
        value = await secrets_.get(cfg.admin)
        login = parse_login(value, cfg.admin_user, f"{what}: admin {cfg.admin!r}")
        slot = (
            cfg.host,
            cfg.port,
            cfg.ssl_mode,
            cfg.ssl_ca,
            cfg.connect_timeout_s,
            cfg.admin,
            login.username,
        )
        label = f"{what} (admin {cfg.admin!r})"

        async def make() -> _AdminPool:
            return _AdminPool(lambda: self._admin_connect(cfg, login, label), self._pool_size)

        pool = await self._pools.get(slot, self._fingerprints.of(value), make)
        try:
            conn = await pool.acquire()
        except LoginRefused as exc:
            await self._pools.drop(slot, pool)
            raise cb.ReferenceRefused(str(exc), cfg.admin) from None
        return _Session(conn, pool, pool.info, self._killer(cfg, login))

    @staticmethod
    async def _exec(
        session: _Session, query: str, args: tuple[Any, ...] | None, what: str, missing: str = ""
    ) -> list[tuple[Any, ...]]:
        try:
            async with session.conn.cursor() as cur:
                await cur.execute(query, args)
                rows: list[tuple[Any, ...]] = list(await cur.fetchall())
                return rows
        except asyncio.CancelledError:
            # A step timeout: the statement may still be waiting on the server (behind a
            # lock) and would take effect after the rollback that follows; stop it first.
            if session.kill is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(session.kill(session.conn.server_thread_id[0]))
            raise
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else 0
            if code in RETRYABLE:
                raise cb.TransientError(f"{what}: mariadb error {code}") from None
            if code >= 2000:  # a client error: the connection broke
                session.broken = True
                raise cb.TransientError(f"{what}: the connection to mariadb failed") from None
            raise _translate(exc, what, missing) from None
        except pymysql.err.Error as exc:
            # The server's text may quote the statement (and so a hash): only its number.
            raise _translate(exc, what, missing) from None

    async def _server(self, session: _Session, what: str) -> _ServerInfo:
        """The server's flavour and version, read once per pool."""
        if session.info.version is None:
            rows = await self._exec(session, "SELECT VERSION()", None, what)
            session.info.parse(str(rows[0][0]) if rows else "")
        return session.info

    async def _plugin(self, session: _Session, user: str, host: str, what: str) -> str | None:
        """The account's authentication plugin; None if the account does not exist."""
        rows = await self._exec(
            session,
            "SELECT plugin FROM mysql.user WHERE User = %s AND Host = %s",
            (user, host),
            what,
        )
        if not rows:
            return None
        return str(rows[0][0] or NATIVE)

    @staticmethod
    def _auth_clause(plugin: str, password: str, what: str) -> tuple[str, tuple[str, ...]]:
        if plugin == NATIVE:
            return f"IDENTIFIED WITH {NATIVE} AS %s", (native_hash(password),)
        if plugin in MYSQL_SALTED:
            return f"IDENTIFIED WITH {plugin} BY %s", (password,)
        raise PermanentError(
            f"{what}: the account uses auth plugin {plugin[:40]!r}; rotator sets passwords of "
            f"{NATIVE}, caching_sha2_password and sha256_password accounts only"
        )

    async def _set_password(
        self, session: _Session, cfg: MariadbConfig, user: str, password: str, what: str
    ) -> None:
        if session.pool is None:
            # The account changes its own password: it may not read mysql.user, and MariaDB
            # lets it use SET PASSWORD only (with the hash); MySQL takes ALTER USER USER().
            if (await self._server(session, what)).mariadb:
                await self._exec(session, "SET PASSWORD = %s", (native_hash(password),), what)
            else:
                await self._exec(
                    session, "ALTER USER CURRENT_USER() IDENTIFIED BY %s", (password,), what
                )
            return
        plugin = await self._plugin(session, user, cfg.host_part, what)
        if plugin is None:
            raise PermanentError(f"{what}: account {user!r}@{cfg.host_part!r} does not exist")
        clause, args = self._auth_clause(plugin, password, what)
        await self._exec(session, f"ALTER USER %s@%s {clause}", (user, cfg.host_part, *args), what)

    async def _ensure_clone(self, session: _Session, cfg: MariadbConfig, password: str) -> None:
        what = f"set: clone {cfg.clone_name!r}@{cfg.host_part!r}"
        plugin = await self._plugin(session, cfg.user, cfg.host_part, what)
        if plugin is None:
            raise PermanentError(f"set: account {cfg.user!r}@{cfg.host_part!r} does not exist")
        # Read and parsed before the clone is touched: a line the parser refuses must not
        # leave an existing clone stripped of its privileges.
        rows = await self._exec(session, "SHOW GRANTS FOR %s@%s", (cfg.user, cfg.host_part), what)
        statements = clone_grants(
            [str(r[0]) for r in rows], cfg.user, cfg.clone_name, cfg.host_part
        )
        mariadb = (await self._server(session, what)).mariadb
        if not mariadb:
            # MySQL 5.7.6+ prints TLS requirements and resource limits in SHOW CREATE USER
            # only (MariaDB prints them in SHOW GRANTS, copied above).
            rows = await self._exec(
                session, "SHOW CREATE USER %s@%s", (cfg.user, cfg.host_part), what
            )
            limits = account_limits(str(rows[0][0]) if rows else "", cfg.user, cfg.host_part)
            statements.append(f"ALTER USER {grantee(cfg.clone_name, cfg.host_part)} {limits}")
        if await self._plugin(session, cfg.clone_name, cfg.host_part, what) is None:
            # Made with the new password at once, so it never exists without one.
            clause, args = self._auth_clause(plugin, password, what)
            await self._exec(
                session,
                f"CREATE USER IF NOT EXISTS %s@%s {clause}",
                (cfg.clone_name, cfg.host_part, *args),
                what,
            )
        else:
            # The clone is idle (its last value's grace is over): its privileges are made
            # anew, so one revoked from USER since the last copy is gone from it too.
            await self._exec(
                session,
                "REVOKE ALL PRIVILEGES, GRANT OPTION FROM %s@%s",
                (cfg.clone_name, cfg.host_part),
                what,
            )
            if mariadb:
                # A default role USER no longer has must not stay on the clone.
                await self._exec(
                    session,
                    "SET DEFAULT ROLE NONE FOR %s@%s",
                    (cfg.clone_name, cfg.host_part),
                    what,
                )
            else:
                # MySQL 8 keeps granted roles through REVOKE ALL (not checked against a
                # MySQL server: none can be installed here).
                edges = await self._exec(
                    session,
                    "SELECT FROM_USER, FROM_HOST FROM mysql.role_edges"
                    " WHERE TO_USER = %s AND TO_HOST = %s",
                    (cfg.clone_name, cfg.host_part),
                    what,
                )
                for role, role_host in edges:
                    await self._exec(
                        session,
                        "REVOKE %s@%s FROM %s@%s",
                        (str(role), str(role_host), cfg.clone_name, cfg.host_part),
                        what,
                    )
        for statement in statements:
            await self._exec(session, statement, None, what)

    async def _check_dual(self, session: _Session, what: str) -> None:
        info = await self._server(session, what)
        if not info.dual:
            raise PermanentError(
                f"{what}: mode=dual needs MySQL 8.0.14 or later (dual passwords); this server "
                f"is {info.name}: use mode=alternating"
            )

    # -- the protocol ---------------------------------------------------------------------

    async def create(self, req: cb.CreateRequest) -> Secret:
        cfg = _cfg(req.config)
        username = cfg.user
        if cfg.mode == "alternating" and req.current is not None:
            current = parse_value(req.current, cfg, "create: CURRENT")
            username = cfg.clone_name if current.username == cfg.user else cfg.user
        password = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(cfg.password_length))
        return _value(cfg, Login(username, password))

    async def set(self, req: cb.SetRequest) -> None:
        cfg = _cfg(req.config)
        pending = parse_value(req.pending, cfg, "set: PENDING")
        try:
            session = await self._admin(cfg, req.secrets, req.current, "set")
        except LoginRefused:
            if not cfg.admin and await self._can_login(cfg, pending):
                return  # set happened already (a retried or resumed step)
            raise
        async with session:
            if cfg.mode == "dual":
                await self._check_dual(session, "set")
                if await self._plugin(session, cfg.user, cfg.host_part, "set") is None:
                    raise PermanentError(
                        f"set: account {cfg.user!r}@{cfg.host_part!r} does not exist"
                    )
                if await self._can_login(cfg, pending):
                    return  # already set: a second RETAIN would push CURRENT out
                await self._exec(session, *_dual_set(cfg, pending.password), "set")
                return
            if cfg.mode == "alternating" and pending.username == cfg.clone_name:
                await self._ensure_clone(session, cfg, pending.password)
            await self._set_password(session, cfg, pending.username, pending.password, "set")

    async def test(self, req: cb.TestRequest) -> None:
        cfg = _cfg(req.config)
        pending = parse_value(req.pending, cfg, "test: PENDING")
        await _quit(await self._connect(cfg, pending, "test"))

    async def finish(self, req: cb.FinishRequest) -> None:
        return None

    async def revoke(self, req: cb.RevokeRequest) -> None:
        """Make the old value stop working: if it still logs in, its account gets a random
        password nobody knows (dual: the retained old password is discarded). An account
        whose password already moved on is left alone."""
        cfg = _cfg(req.config)
        old = parse_value(req.value, cfg, "revoke: the old value")
        if not await self._can_login(cfg, old):
            return
        if not cfg.admin:
            session = await self._admin_session(cfg, old, "revoke")
        else:
            session = await self._admin(cfg, req.secrets, None, "revoke")
        async with session:
            if cfg.mode == "dual":
                await self._exec(session, *_dual_discard(cfg), "revoke")
                return
            await self._set_password(
                session, cfg, old.username, secrets.token_urlsafe(48), "revoke"
            )

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
        else:  # the account is on pending now
            session = await self._admin_session(cfg, pending, "rollback")
        async with session:
            if cfg.mode == "dual":
                if current is not None:
                    await self._exec(session, *_dual_restore(cfg, current.password), "rollback")
                await self._exec(session, *_dual_discard(cfg), "rollback")
            elif current is not None and current.username == pending.username:
                # single mode: put the old password back so CURRENT works again
                await self._set_password(
                    session, cfg, pending.username, current.password, "rollback"
                )
            else:
                await self._set_password(
                    session, cfg, pending.username, secrets.token_urlsafe(48), "rollback"
                )

    async def verify(self, req: cb.VerifyRequest) -> None:
        cfg = _cfg(req.config)
        session = await self._admin(cfg, req.secrets, req.current, "verify")
        async with session:
            if cfg.mode == "dual":
                await self._check_dual(session, "verify")
            if session.pool is not None:
                plugin = await self._plugin(session, cfg.user, cfg.host_part, "verify")
                if plugin is None:
                    raise PermanentError(
                        f"account {cfg.user!r}@{cfg.host_part!r} does not exist on "
                        f"{cfg.host}:{cfg.port}"
                    )
                self._auth_clause(plugin, "", "verify")  # refuses an unsupported plugin
        if req.current is not None and not await self._can_login(
            cfg, parse_value(req.current, cfg, "the given value")
        ):
            raise PermanentError(f"the given value does not log in as {cfg.user!r}")

    def check_value(self, config: cb.ConnectorConfig, value: Secret) -> None:
        """A value given at ``credential add``/``update``: UTF-8 text naming one of this
        credential's accounts (or a bare password). PermanentError otherwise; no I/O."""
        parse_value(value, _cfg(config), "the given value")


def _dual_set(cfg: MariadbConfig, password: str) -> tuple[str, tuple[str, ...]]:
    """MySQL 8.0.14+: the new password becomes primary, the current one secondary."""
    return (
        "ALTER USER %s@%s IDENTIFIED BY %s RETAIN CURRENT PASSWORD",
        (cfg.user, cfg.host_part, password),
    )


def _dual_restore(cfg: MariadbConfig, password: str) -> tuple[str, tuple[str, ...]]:
    """Rollback: CURRENT primary again (without RETAIN the secondary is left as it is)."""
    return "ALTER USER %s@%s IDENTIFIED BY %s", (cfg.user, cfg.host_part, password)


def _dual_discard(cfg: MariadbConfig) -> tuple[str, tuple[str, ...]]:
    return "ALTER USER %s@%s DISCARD OLD PASSWORD", (cfg.user, cfg.host_part)


def _translate(exc: pymysql.err.Error, what: str, missing: str) -> ConnectorError:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    if code in (1044, 1045, 1142, 1227, 1370):
        return PermanentError(f"{what}: permission denied (mariadb error {code})")
    if missing and code in (1396, 1141, 1133):
        return PermanentError(f"{what}: {missing}")
    return PermanentError(f"{what}: mariadb error {code or type(exc).__name__}")


async def _quit(conn: _Connection) -> None:
    try:
        await conn.ensure_closed()
    except Exception:
        conn.close()


class _ServerInfo:
    """What a server is, read once: MariaDB or MySQL, and its version."""

    def __init__(self) -> None:
        self.version: tuple[int, ...] | None = None
        self.mariadb = False

    def parse(self, text: str) -> None:
        self.mariadb = "mariadb" in text.lower()
        found = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
        self.version = tuple(int(p) for p in found.groups()) if found else (0, 0, 0)

    @property
    def dual(self) -> bool:
        return not self.mariadb and self.version is not None and self.version >= DUAL_MIN_MYSQL

    @property
    def name(self) -> str:
        version = ".".join(str(p) for p in self.version or ())
        return f"{'MariaDB' if self.mariadb else 'MySQL'} {version}"


class _AdminPool:
    """Admin connections for one (target, admin credential, admin value): at most ``size``
    in use at once, idle ones kept for the next call. Logins happen outside any lock, so a
    burst of calls opens its connections in parallel; a refused login reaches the caller."""

    def __init__(self, connect: Callable[[], Awaitable[_Connection]], size: int) -> None:
        self._connect = connect
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slots = asyncio.Semaphore(size)
        self._closed = False
        self.info = _ServerInfo()

    def __repr__(self) -> str:
        return f"_AdminPool({len(self._idle)} idle)"

    async def acquire(self) -> _Connection:
        await self._slots.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn._reader.at_eof():
                    return conn
                conn.close()
            return await self._connect()
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: _Connection, broken: bool) -> None:
        self._slots.release()
        if self._closed or broken or conn.closed:
            conn.close()
        else:
            self._idle.append(conn)

    async def close(self) -> None:
        """Close the idle connections now; those in use close when they come back."""
        self._closed = True
        while self._idle:
            await _quit(self._idle.pop())


class _Session:
    """An admin connection for one call: ``async with session``; on exit it goes back to its
    pool (or, not pooled, is closed)."""

    def __init__(
        self,
        conn: _Connection,
        pool: _AdminPool | None,
        info: _ServerInfo,
        kill: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.conn, self.pool, self.info = conn, pool, info
        self.kill = kill  # stops the statement running on thread N (a fresh login)
        self.broken = False

    async def __aenter__(self) -> _Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.pool is not None:
            # A connector error leaves the connection usable; anything else (a cancellation
            # mid-statement) leaves it in an unknown state.
            failed = exc[0] is not None and not issubclass(exc[0], ConnectorError)  # type: ignore[arg-type]
            self.pool.release(self.conn, self.broken or failed)
        else:
            await _quit(self.conn)


def _cfg(config: cb.ConnectorConfig) -> MariadbConfig:
    assert isinstance(config, MariadbConfig)
    return config
