"""The ``ldap`` connector: passwords of service accounts in an LDAP directory (OpenLDAP, ...).

Modes (``mode``):

- ``single`` (default): one account, ``dn``; its password changes at ``set``, so the old one
  stops working then (a short window; not zero-downtime). With no ``admin`` the account
  changes its own password, binding with its CURRENT value.
- ``alternating`` (zero downtime): two accounts that must both exist, ``dn`` and ``clone_dn``
  (given explicitly; the directory has no notion of a clone). Each rotation sets a new
  password on the idle account and makes it CURRENT; the other keeps working for the grace,
  after which ``revoke`` gives it a random password nobody knows. Needs ``admin``.

How the password is written (``method``):

- ``passmod`` (default): the Password Modify extended operation (RFC 3062). The server hashes
  the value with its own ``password-hash`` setting; the value travels to the server once.
- ``replace``: replace ``userPassword`` with a value hashed here, so the plaintext never
  travels on the admin connection: ``{SSHA}`` (salted SHA-1, what every LDAP server checks;
  the default) or ``{ARGON2}`` (``hash=argon2``: argon2id, PHC string). ``{ARGON2}`` is
  checked only by servers with a module for it (OpenLDAP's ``argon2``): ``verify``, and
  ``set`` (once per target and connector instance), read ``olcModuleLoad`` under
  ``cn=config`` as the admin and refuse ``hash=argon2`` unless the module is loaded (or when
  cn=config cannot be read: a value the server cannot check would lock the account out).

Values are JSON ``{"engine": "ldap", "url", "dn", "password"}``; a plain string given at
``credential add --value-stdin`` is taken as the password of ``dn``. A value naming any other
DN than ``dn`` (or ``clone_dn``) is refused, before any bind.

Connections: ``url`` is ``ldap://host[:port]`` or ``ldaps://host[:port]``; ``starttls=true``
upgrades an ``ldap://`` connection before any bind. A plain ``ldap://`` url without
``starttls`` is refused (passwords would cross the network in clear text) unless its host is
loopback (``localhost``, ``127.0.0.0/8``, ``::1``) or ``allow_insecure=true``. With TLS, the
server's certificate is checked against ``ca_file`` (or the system's CAs) and its name against
the host in ``url``.
``test`` is always a fresh simple bind as the account with the new value, over the same TLS;
it never uses an admin connection. Admin connections (bound as ``admin_dn`` with the value of
the ``admin`` credential) are pooled per target (url, TLS settings, timeout), admin DN, admin
credential and admin value, the value known only by an HMAC fingerprint under a key random
per connector instance (see ``base.Closable``); an account changing its own password is never
pooled (its value changes every rotation).

DNs are given whole, with RFC 4514 escaping (``cn=Smith\\, Pat+uid=ps,ou=svc,dc=example,dc=org``);
they are checked with ldap3's DN parser and sent as one protocol field, never pasted into a
filter or another DN.

Library: ``ldap3`` (pure Python; ``python-ldap`` would need libldap headers to build). It is
blocking, so every call runs in a thread of a bounded executor owned by the connector instance
(``set_pool_size`` threads, shared by all targets; the engine's global limit on rotations under
way is as large by default) rather than ``asyncio.to_thread``, whose default executor other
code shares. Its connect and receive timeouts (``timeout_s``, whole seconds, at most
``MAX_TIMEOUT_S``) bound each wait, so a thread never outlives a hung server by more than a
few of them, and the work on one account holds that account's lock (``_run``): a rollback or
revoke waits for a ``set`` the engine gave up on to end before it looks. ldap3's own
connection strategies (its REUSABLE pool among them) are not used: the admin pool here is a
plain list of bound connections, each used by one thread at a time.

Errors never carry a value nor the server's diagnostic text: each one is written here, with
the LDAP result name (``noSuchObject``, ``insufficientAccessRights``...) when there is one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import ssl
import string
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import (
    LDAPException,
    LDAPInvalidDnError,
    LDAPSocketReceiveError,
    LDAPSSLConfigurationError,
    LDAPStartTLSError,
)
from ldap3.utils.dn import parse_dn
from pydantic import Field, field_validator, model_validator

from rotator.connectors import base as cb
from rotator.connectors._hosts import is_loopback
from rotator.connectors._resources import Fingerprints, Resources
from rotator.domain.secret import Secret
from rotator.errors import ConnectorError

PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_.~"
# Admin connections kept per pool, and threads of the connector's executor: the engine's
# default per-target limit, so a call it admits never waits for either.
ADMIN_POOL_SIZE = 16
# An admin connection idle longer than this is closed rather than used: a server or a firewall
# may have dropped it meanwhile (OpenLDAP's idletimeout is often a few minutes).
ADMIN_IDLE_MAX_S = 60.0
# LDAP result codes (RFC 4511) this connector tells apart.
SUCCESS = 0
NO_SUCH_OBJECT = 32
INVALID_CREDENTIALS = 49
BUSY, UNAVAILABLE = 51, 52
TRANSIENT_RESULTS = frozenset({3, BUSY, UNAVAILABLE, 80})  # timeLimitExceeded, busy, other

# argon2id cost of {ARGON2} values: OWASP's minimum (19 MiB, 2 passes, 1 lane). The server
# pays it at every bind of the account, so argon2-cffi's default (64 MiB, 3 passes, 4 lanes)
# would make each service bind four times dearer on the directory for little gain.
ARGON2_TIME_COST, ARGON2_MEMORY_KIB, ARGON2_LANES = 2, 19456, 1

# The largest timeout_s. ldap3's timeouts bound each connect and each receive, not a call: one
# executor job is at most a stale pooled bind's failed work, then connect, StartTLS, bind and
# the operation, five bounded waits, so 5 x 10 s stays under the engine's default step
# timeout (60 s, engine/options.py) and a thread the engine gave up on ends before long.
MAX_TIMEOUT_S = 10

T = TypeVar("T")


class LdapConfig(cb.ConnectorConfig):
    """``--set`` settings of the ldap connector; see the module docstring."""

    url: str = Field(min_length=1)
    starttls: bool = False
    allow_insecure: bool = False  # permit ldap:// without starttls to a non-loopback host
    ca_file: str = ""
    dn: str = Field(min_length=1)
    mode: Literal["single", "alternating"] = "single"
    clone_dn: str = ""
    admin_dn: str = ""
    admin: str = ""
    method: Literal["passmod", "replace"] = "passmod"
    hash: Literal["ssha", "argon2"] = "ssha"
    # Whole seconds: ldap3 sets the receive timeout as SO_RCVTIMEO from an integer. Capped so
    # that one thread's worst case (see MAX_TIMEOUT_S) ends before the engine's step timeout.
    timeout_s: int = Field(default=5, ge=1, le=MAX_TIMEOUT_S)
    password_length: int = Field(default=32, ge=16, le=256)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError("url must be ldap://HOST[:PORT] or ldaps://HOST[:PORT]")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError("url has a bad port") from None
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError("url must be ldap://HOST[:PORT] or ldaps://HOST[:PORT] alone")
        return v

    @field_validator("hash", mode="before")
    @classmethod
    def _hash_name(cls, v: object) -> object:
        return v.strip("{}").lower() if isinstance(v, str) else v

    @field_validator("ca_file")
    @classmethod
    def _check_ca_file(cls, v: str) -> str:
        if v and not v.startswith("/"):
            raise ValueError("ca_file must be an absolute path to a PEM CA file")
        return v

    @field_validator("dn", "clone_dn", "admin_dn")
    @classmethod
    def _check_dn(cls, v: str) -> str:
        if v and normal_dn(v) is None:
            raise ValueError('not a valid DN (RFC 4514: escape , + " \\ < > ; with a backslash)')
        return v

    @model_validator(mode="after")
    def _consistent(self) -> LdapConfig:
        if self.starttls and self.ldaps:
            raise ValueError("starttls is for ldap:// urls; ldaps:// is TLS already")
        if not (self.ldaps or self.starttls or self.allow_insecure or is_loopback(self.host)):
            raise ValueError(
                "ldap:// without starttls sends passwords in clear text to a host that is not "
                "loopback; use ldaps://, starttls=true, or allow_insecure=true"
            )
        if bool(self.admin) != bool(self.admin_dn):
            raise ValueError("admin and admin_dn go together (the credential and its DN)")
        if self.mode == "alternating":
            if not self.clone_dn:
                raise ValueError("alternating mode needs clone_dn (the second account)")
            if normal_dn(self.clone_dn) == normal_dn(self.dn):
                raise ValueError("clone_dn must differ from dn")
            if not self.admin:
                raise ValueError("alternating mode needs admin and admin_dn")
        elif self.clone_dn:
            raise ValueError("clone_dn is for mode=alternating")
        if self.hash != "ssha" and self.method != "replace":
            raise ValueError("hash applies to method=replace (passmod lets the server hash)")
        return self

    @property
    def ldaps(self) -> bool:
        return urlsplit(self.url).scheme == "ldaps"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (636 if self.ldaps else 389)

    @property
    def where(self) -> str:
        return f"{'ldaps' if self.ldaps else 'ldap'}://{self.host}:{self.port}"

    @property
    def dns(self) -> tuple[str, ...]:
        """The only accounts this credential may act on."""
        return (self.dn, self.clone_dn) if self.mode == "alternating" else (self.dn,)


def normal_dn(dn: str) -> tuple[tuple[str, str], ...] | None:
    """A DN's comparable form (attribute types lowercased, values as escaped), or None when
    ldap3's parser refuses it."""
    try:
        return tuple((attr.strip().lower(), value.strip()) for attr, value, _ in parse_dn(dn))
    except (LDAPInvalidDnError, LDAPException, ValueError, IndexError):
        return None


def _cfg(config: cb.ConnectorConfig) -> LdapConfig:
    if not isinstance(config, LdapConfig):
        raise cb.PermanentError(f"ldap connector given {type(config).__name__} settings")
    return config


@dataclass(frozen=True)
class Login:
    dn: str
    password: str

    def __repr__(self) -> str:
        return f"Login(dn={self.dn!r}, password='***')"


def parse_login(value: Secret, default_dn: str, what: str = "the value") -> Login:
    """A value as a login: JSON with dn/password, or a bare password of ``default_dn``.
    PermanentError (quoting nothing of the value) when it is not UTF-8 or holds a NUL."""
    try:
        text = value.reveal_text()
    except UnicodeDecodeError:
        raise cb.PermanentError(f"{what} is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("password"), str):
        login = Login(str(data.get("dn") or default_dn), data["password"])
    else:
        login = Login(default_dn, text)
    if "\x00" in login.password:
        raise cb.PermanentError(f"{what} holds a NUL character")
    if not login.password:
        raise cb.PermanentError(f"{what} is empty (an empty password is an anonymous bind)")
    return login


def parse_value(value: Secret, cfg: LdapConfig, what: str = "the value") -> Login:
    """A value of this credential as a login of one of its accounts (``cfg.dns``), with the
    DN spelt as in the settings; PermanentError when it names another DN."""
    login = parse_login(value, cfg.dn, what)
    wanted = normal_dn(login.dn)
    for dn in cfg.dns:
        if wanted is not None and normal_dn(dn) == wanted:
            return Login(dn, login.password)
    allowed = " or ".join(repr(d) for d in cfg.dns)
    raise cb.PermanentError(f"{what} names another DN; this credential acts only on {allowed}")


def _value(cfg: LdapConfig, login: Login) -> Secret:
    return Secret(
        json.dumps({"engine": "ldap", "url": cfg.url, "dn": login.dn, "password": login.password})
    )


def _random_password(length: int) -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def hash_password(password: str, scheme: str) -> str:
    """``userPassword`` for ``password``: ``{SSHA}`` (SHA-1 over password + 8-byte salt, then
    salt appended, base64) or ``{ARGON2}`` (argon2id PHC string, as OpenLDAP's module
    checks; cost ``ARGON2_*``)."""
    if scheme == "argon2":
        from argon2 import PasswordHasher

        hasher = PasswordHasher(
            time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_LANES
        )
        return "{ARGON2}" + hasher.hash(password)
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode("utf-8") + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def _p(step: str) -> str:
    return f"{step}: " if step else ""


class _Failed(Exception):
    """An LDAP operation's result other than success (code and its RFC 4511 name only)."""

    def __init__(self, code: int, name: str) -> None:
        super().__init__(f"{name} ({code})")
        self.code, self.name = code, name


def _check(conn: ldap3.Connection, ok: object) -> None:
    if ok:
        return
    result = conn.result or {}
    code = int(result.get("result", -1))
    if code == SUCCESS:
        return
    raise _Failed(code, str(result.get("description") or "error"))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _timed_out(exc: BaseException) -> bool:
    """Did the server not answer in time (a TLS handshake included)? Checked before
    ``_tls_failure``: ldap3 words a handshake timeout "socket ssl wrapping error: ...timed
    out", which is the network, not the certificate."""
    for seen in _chain(exc):
        if isinstance(seen, LDAPSocketReceiveError | TimeoutError):
            return True
    return "timed out" in str(exc).lower()


def _tls_failure(exc: BaseException) -> bool:
    """Did a certificate check or the TLS negotiation fail (as opposed to the network)?"""
    for seen in _chain(exc):
        if isinstance(seen, ssl.SSLError | ssl.CertificateError | LDAPStartTLSError):
            return True
    # ldap3 re-raises some socket errors as new exceptions that keep only the text.
    text = str(exc).lower()
    return any(w in text for w in ("certificate", "verif", "hostname", "wrong version number"))


class _AdminPool:
    """Bound admin connections of one target and admin value, used one call at a time each.
    Thread-safe: connections are taken and given back from executor threads.

    The connections hold the admin password (ldap3's ``Connection.__repr__`` prints it): none
    is ever put in an exception's message or args, nor logged; errors are written here."""

    def __init__(
        self,
        opener: Callable[[str], ldap3.Connection],
        size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open = opener
        self._size = size
        self._clock = clock
        self._idle: list[tuple[ldap3.Connection, float]] = []  # (connection, idle since)
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"_AdminPool({len(self._idle)} idle)"

    def _take(self) -> ldap3.Connection | None:
        """The most recently used idle connection; those idle too long are closed (servers
        close idle connections themselves: OpenLDAP's ``idletimeout``, firewalls)."""
        stale: list[ldap3.Connection] = []
        conn = None
        with self._lock:
            oldest = self._clock() - ADMIN_IDLE_MAX_S
            stale = [c for c, since in self._idle if since < oldest]
            self._idle = [(c, since) for c, since in self._idle if since >= oldest]
            if self._idle:
                conn = self._idle.pop()[0]
        for old in stale:
            _unbind(old)
        return conn

    def _give(self, conn: ldap3.Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._size:
                self._idle.append((conn, self._clock()))
                return
        _unbind(conn)

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            _unbind(conn)

    def run(self, work: Callable[[ldap3.Connection], T], what: str) -> T:
        """``work`` on a bound connection (``what``: the step, for the opener's errors).
        The connection is given back when ``work`` succeeds or fails with an LDAP result,
        closed when it fails otherwise (a broken socket). ``work`` must be idempotent: when a
        connection taken from the idle list turns out broken (the server closed it while it
        was idle), the others are presumed broken too and dropped, and ``work`` runs once
        more on a fresh bind."""
        conn = self._take()
        if conn is not None:
            try:
                result = work(conn)
            except _Failed:
                self._give(conn)
                raise
            except (LDAPException, OSError):
                _unbind(conn)
                self._drop_idle()
            else:
                self._give(conn)
                return result
        conn = self._open(what)
        try:
            result = work(conn)
        except _Failed:
            self._give(conn)
            raise
        except BaseException:
            _unbind(conn)
            raise
        self._give(conn)
        return result

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._drop_idle()


def _unbind(conn: ldap3.Connection) -> None:
    with contextlib.suppress(Exception):
        conn.unbind()


class LdapConnector:
    kind: ClassVar[str] = "ldap"
    strategy: ClassVar[cb.Strategy] = cb.Strategy.SINGLE
    config_model: ClassVar[type[cb.ConnectorConfig]] = LdapConfig
    references: ClassVar[tuple[str, ...]] = ("admin",)

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: monotonic seconds, for the admin connections' idle ages."""
        self._clock = clock
        self._fingerprints = Fingerprints()
        self._pools: Resources[_AdminPool] = Resources(self._close_pool)
        self._size = ADMIN_POOL_SIZE
        self._executor: ThreadPoolExecutor | None = None
        self._locks_lock = threading.Lock()
        self._account_locks: dict[tuple[str, object], threading.Lock] = {}
        # Targets (where, TLS) whose argon2 module was seen loaded (``_check_argon2``).
        self._argon2_ok: set[tuple[str, bool, str]] = set()

    def __repr__(self) -> str:
        return f"LdapConnector({len(self._pools)} admin pools)"

    def strategy_for(self, config: cb.ConnectorConfig) -> cb.Strategy:
        return cb.Strategy.ALTERNATING if _cfg(config).mode == "alternating" else cb.Strategy.SINGLE

    def target_key(self, config: cb.ConnectorConfig) -> str:
        cfg = _cfg(config)
        return f"ldap://{cfg.host}:{cfg.port}"

    def set_pool_size(self, size: int) -> None:
        """Admin pools and the executor made from now on hold up to ``size`` connections and
        threads (``base.SizesPools``)."""
        self._size = max(1, size)

    async def aclose(self) -> None:
        """Close every admin pool and stop the executor (``base.Closable``). Idempotent; a
        later call opens what it needs again."""
        await self._pools.aclose()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    async def _close_pool(self, pool: _AdminPool) -> None:
        await self._run(pool.close)

    async def _run(
        self, fn: Callable[[], T], cfg: LdapConfig | None = None, dn: str | None = None
    ) -> T:
        """Run blocking ldap3 work in the connector's executor; with ``dn``, holding that
        account's lock for the whole of the work.

        Why a thread lock: a step the engine cuts (its step timeout, a lost lease) stops
        awaiting, but its thread runs on to the end of its own timeouts; an asyncio lock
        would be released at the cancel while that thread could still write. Taken inside
        the thread, the lock makes the next job for the account (rollback's or revoke's
        check) wait until a late ``set`` has landed, so it acts on what is really there."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._size, thread_name_prefix="rotator-ldap")
        work = fn
        if cfg is not None and dn is not None:
            lock = self._account_lock(cfg, dn)

            def work() -> T:
                with lock:
                    return fn()

        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _account_lock(self, cfg: LdapConfig, dn: str) -> threading.Lock:
        key = (cfg.where, normal_dn(dn) or ((dn, ""),))
        with self._locks_lock:
            # One small lock per account ever acted on: as many as credentials, kept.
            return self._account_locks.setdefault(key, threading.Lock())

    # -- connections (run in executor threads) --------------------------------------------

    @staticmethod
    def _server(cfg: LdapConfig) -> ldap3.Server:
        tls = None
        if cfg.ldaps or cfg.starttls:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED,
                version=ssl.PROTOCOL_TLS_CLIENT,
                ca_certs_file=cfg.ca_file or None,
            )
        return ldap3.Server(
            cfg.host,
            port=cfg.port,
            use_ssl=cfg.ldaps,
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=cfg.timeout_s,
        )

    @staticmethod
    def _unreachable(cfg: LdapConfig, exc: BaseException, what: str) -> ConnectorError:
        if isinstance(exc, LDAPSSLConfigurationError):
            return cb.PermanentError(
                f"{_p(what)}ca_file {cfg.ca_file!r} cannot be read (missing or unreadable)"
            )
        if _timed_out(exc):
            return cb.TransientError(
                f"{_p(what)}ldap at {cfg.where} did not answer within {cfg.timeout_s}s"
            )
        if _tls_failure(exc):
            trust = f"ca_file {cfg.ca_file!r}" if cfg.ca_file else "the system's CAs"
            return cb.PermanentError(
                f"{_p(what)}TLS with {cfg.where} failed: its certificate is not trusted by "
                f"{trust}, does not name {cfg.host!r}, or TLS is not offered"
            )
        return cb.TransientError(f"{_p(what)}cannot reach ldap at {cfg.where}")

    def _bind(self, cfg: LdapConfig, login: Login, what: str) -> ldap3.Connection:
        """A fresh connection bound as ``login`` over the configured TLS. LoginRefused when
        the server refuses the password (or the DN does not exist: LDAP tells no
        difference).

        ldap3's ``Connection.__repr__`` prints the password: a connection is never put in an
        exception's message or args nor logged, here or by a caller; every error about one
        is written from its result code and the settings only."""
        conn = ldap3.Connection(
            self._server(cfg),
            user=login.dn,
            password=login.password,
            authentication=ldap3.SIMPLE,
            receive_timeout=cfg.timeout_s,
            auto_referrals=False,
            raise_exceptions=False,
        )
        try:
            conn.open(read_server_info=False)
            if cfg.starttls:
                conn.start_tls(read_server_info=False)
            ok = conn.bind(read_server_info=False)
        except (LDAPException, OSError) as exc:
            _unbind(conn)
            raise self._unreachable(cfg, exc, what) from None
        if not ok:
            _unbind(conn)
            code = int((conn.result or {}).get("result", -1))
            if code == INVALID_CREDENTIALS:
                raise LoginRefused(
                    f"{_p(what)}ldap at {cfg.where} refused the bind as {login.dn!r}"
                )
            raise self._result_error(cfg, _Failed(code, str(conn.result.get("description"))), what)
        return conn

    def _can_bind(self, cfg: LdapConfig, login: Login, what: str) -> bool:
        try:
            conn = self._bind(cfg, login, what)
        except LoginRefused:
            return False
        _unbind(conn)
        return True

    @staticmethod
    def _result_error(cfg: LdapConfig, exc: _Failed, what: str) -> ConnectorError:
        msg = f"{_p(what)}ldap at {cfg.where} answered {exc.name} ({exc.code})"
        if exc.code in TRANSIENT_RESULTS:
            return cb.TransientError(msg)
        return cb.PermanentError(msg)

    async def _admin_pool(
        self, cfg: LdapConfig, resolver: cb.SecretResolver, what: str
    ) -> tuple[tuple[Any, ...], _AdminPool]:
        try:
            value = await resolver.get(cfg.admin)
        except cb.PermanentError as exc:
            detail = str(exc).removeprefix(f"referenced credential {cfg.admin!r}: ")
            raise cb.PermanentError(
                f"{_p(what)}admin credential {cfg.admin!r} cannot be read: {detail}"
            ) from None
        what_value = f"{_p(what)}the value of admin credential {cfg.admin!r}"
        login = Login(cfg.admin_dn, parse_login(value, cfg.admin_dn, what_value).password)
        slot = (cfg.where, cfg.starttls, cfg.ca_file, cfg.timeout_s, cfg.admin, cfg.admin_dn)
        size = self._size

        async def make() -> _AdminPool:
            return _AdminPool(lambda step: self._bind(cfg, login, step), size, self._clock)

        return slot, await self._pools.get(slot, self._fingerprints.of(value), make)

    async def _as_admin(
        self,
        cfg: LdapConfig,
        resolver: cb.SecretResolver,
        what: str,
        work: Callable[[ldap3.Connection], T],
        dn: str | None = None,
    ) -> T:
        """Run ``work`` on a pooled admin connection (holding ``dn``'s lock, see ``_run``);
        every failure becomes a connector error (a refused admin bind: ReferenceRefused, and
        the pool is dropped)."""
        slot, pool = await self._admin_pool(cfg, resolver, what)

        try:
            return await self._run(lambda: pool.run(work, what), cfg, dn)
        except LoginRefused:
            await self._pools.drop(slot, pool)
            raise cb.ReferenceRefused(
                f"{_p(what)}admin credential {cfg.admin!r} was refused by ldap at {cfg.where} "
                f"(admin_dn {cfg.admin_dn!r})",
                cfg.admin,
            ) from None
        except _Failed as exc:
            raise self._result_error(cfg, exc, what) from None
        except (LDAPException, OSError) as exc:
            raise self._unreachable(cfg, exc, what) from None

    async def _as_self(
        self, cfg: LdapConfig, login: Login, what: str, work: Callable[[ldap3.Connection], T]
    ) -> T:
        """Run ``work`` on a fresh connection bound as ``login`` (never pooled), holding the
        account's lock (see ``_run``)."""

        def run() -> T:
            conn = self._bind(cfg, login, what)
            try:
                return work(conn)
            finally:
                _unbind(conn)

        try:
            return await self._run(run, cfg, login.dn)
        except _Failed as exc:
            raise self._result_error(cfg, exc, what) from None
        except (LDAPException, OSError) as exc:
            raise self._unreachable(cfg, exc, what) from None

    def _writer(
        self,
        cfg: LdapConfig,
        dn: str,
        password: str,
        old: str | None = None,
        scheme: str | None = None,
    ) -> Callable[[ldap3.Connection], None]:
        """The operation that makes ``password`` the password of ``dn`` (``method=replace``
        hashes with ``scheme``, default ``cfg.hash``)."""

        def write(conn: ldap3.Connection) -> None:
            if cfg.method == "passmod":
                ok = conn.extend.standard.modify_password(
                    user=dn, old_password=old, new_password=password
                )
            else:
                hashed = hash_password(password, scheme or cfg.hash)
                ok = conn.modify(  # type: ignore[no-untyped-call]
                    dn, {"userPassword": [(ldap3.MODIFY_REPLACE, [hashed])]}
                )
            _check(conn, ok)

        return write

    async def _put(
        self,
        cfg: LdapConfig,
        resolver: cb.SecretResolver,
        target: Login,
        bound_as: Login | None,
        what: str,
        scheme: str | None = None,
    ) -> None:
        """Make ``target.password`` the password of ``target.dn``: as the admin, or (no
        admin) on a connection bound as ``bound_as`` (the account itself)."""
        if cfg.admin:
            write = self._writer(cfg, target.dn, target.password, scheme=scheme)
            await self._as_admin(cfg, resolver, what, write, target.dn)
            return
        if bound_as is None:
            raise cb.PermanentError(
                f"{_p(what)}no admin and no current value: nothing can bind as {cfg.dn!r}"
            )
        write = self._writer(cfg, target.dn, target.password, bound_as.password, scheme)
        await self._as_self(cfg, bound_as, what, write)

    async def _bind_check(self, cfg: LdapConfig, login: Login, what: str) -> bool:
        try:
            return await self._run(lambda: self._can_bind(cfg, login, what), cfg, login.dn)
        except (LDAPException, OSError) as exc:
            raise self._unreachable(cfg, exc, what) from None

    # -- the protocol ---------------------------------------------------------------------

    async def create(self, req: cb.CreateRequest) -> Secret:
        cfg = _cfg(req.config)
        dn = cfg.dn
        if cfg.mode == "alternating" and req.current is not None:
            current = parse_value(req.current, cfg, "create: CURRENT")
            dn = cfg.clone_dn if current.dn == cfg.dn else cfg.dn
        return _value(cfg, Login(dn, _random_password(cfg.password_length)))

    async def set(self, req: cb.SetRequest) -> None:
        """Make PENDING the password of its account. Idempotent: writing the same password
        again is harmless; an account changing its own password whose CURRENT no longer binds
        checks that PENDING does (set happened already)."""
        cfg = _cfg(req.config)
        pending = parse_value(req.pending, cfg, "set: PENDING")
        current = parse_value(req.current, cfg, "set: CURRENT") if req.current else None
        if cfg.hash == "argon2":
            await self._check_argon2(cfg, req.secrets, current)
        if cfg.admin:
            await self._put(cfg, req.secrets, pending, None, "set")
            return
        if current is not None and await self._bind_check(cfg, current, "set"):
            await self._put(cfg, req.secrets, pending, current, "set")
        elif not await self._bind_check(cfg, pending, "set"):
            raise cb.PermanentError(
                f"set: ldap at {cfg.where} refused CURRENT for {cfg.dn!r}, and no admin is set"
            )

    async def _check_argon2(
        self, cfg: LdapConfig, resolver: cb.SecretResolver, current: Login | None
    ) -> None:
        """PermanentError unless the server is known to check ``{ARGON2}`` values (its argon2
        module loaded, read under cn=config as the admin, or as the account); a confirmed
        target is remembered, so the check costs one search per target and connector."""
        key = (cfg.where, cfg.starttls, cfg.ca_file)
        if key in self._argon2_ok:
            return
        if cfg.admin:
            loaded = await self._as_admin(cfg, resolver, "set", _argon2_loaded)
        elif current is not None and await self._bind_check(cfg, current, "set"):
            loaded = await self._as_self(cfg, current, "set", _argon2_loaded)
        else:
            loaded = False
        if not loaded:
            raise cb.PermanentError("set: " + self._no_argon2(cfg))
        self._argon2_ok.add(key)

    async def test(self, req: cb.TestRequest) -> None:
        """A fresh simple bind as the account with PENDING, over the configured TLS."""
        cfg = _cfg(req.config)
        pending = parse_value(req.pending, cfg, "test: PENDING")
        if not await self._bind_check(cfg, pending, "test"):
            raise cb.PermanentError("the target refused the new value")

    async def finish(self, req: cb.FinishRequest) -> None:
        return None

    async def revoke(self, req: cb.RevokeRequest) -> None:
        """Make the old value stop working: if it still binds, its account gets a random
        password nobody knows. An account whose password moved on is left alone."""
        cfg = _cfg(req.config)
        old = parse_value(req.value, cfg, "revoke: the old value")
        if not await self._bind_check(cfg, old, "revoke"):
            return
        gone = Login(old.dn, _random_password(48))
        await self._put(cfg, req.secrets, gone, old, "revoke")

    async def rollback(self, req: cb.RollbackRequest) -> None:
        """Undo ``set``. Single mode (PENDING and CURRENT of one account): decided by CURRENT,
        never by PENDING (``test`` fails exactly when PENDING does not bind, so PENDING
        failing to bind says nothing about what ``set`` wrote): nothing to do when CURRENT
        binds, else CURRENT's password goes back (as the admin, or bound as PENDING), checked
        by a bind; PermanentError naming the account's unknown state when that is not
        possible. An alternating idle account (or a first value) whose PENDING binds gets a
        random password."""
        cfg = _cfg(req.config)
        if req.current is not None and req.current == req.pending:
            return
        pending = parse_value(req.pending, cfg, "rollback: PENDING")
        current = (
            parse_value(req.current, cfg, "rollback: CURRENT") if req.current is not None else None
        )
        if current is None or current.dn != pending.dn:
            if not await self._bind_check(cfg, pending, "rollback"):
                return
            gone = Login(pending.dn, _random_password(48))
            await self._put(cfg, req.secrets, gone, pending, "rollback")
            return
        if await self._bind_check(cfg, current, "rollback"):
            return
        unknown = (
            f"rollback: the password of {current.dn!r} on {cfg.where} is in an unknown state: "
            "CURRENT does not bind"
        )
        if not cfg.admin and not await self._bind_check(cfg, pending, "rollback"):
            raise cb.PermanentError(f"{unknown}, nor does PENDING, and no admin is set")
        # {ARGON2} only where the server was seen to check it: else it would not bind either.
        argon2_ok = (cfg.where, cfg.starttls, cfg.ca_file) in self._argon2_ok
        scheme = cfg.hash if argon2_ok else "ssha"
        await self._put(cfg, req.secrets, current, pending, "rollback", scheme=scheme)
        if not await self._bind_check(cfg, current, "rollback"):
            raise cb.PermanentError(f"{unknown} even after it was written back")

    # -- optional -------------------------------------------------------------------------

    async def verify(self, req: cb.VerifyRequest) -> None:
        """The server is reachable (over the configured TLS), the admin secret binds, the
        accounts exist, a given value binds, and a ``hash=argon2`` server checks
        ``{ARGON2}``. Changes nothing; one-line PermanentError otherwise."""
        cfg = _cfg(req.config)
        current = parse_value(req.current, cfg, "the given value") if req.current else None
        try:
            if cfg.admin:
                missing = await self._as_admin(cfg, req.secrets, "", self._missing(cfg))
                if missing:
                    raise cb.PermanentError(f"{missing!r} does not exist on {cfg.where}")
                if cfg.hash == "argon2":
                    loaded = await self._as_admin(cfg, req.secrets, "", _argon2_loaded)
                    if not loaded:
                        raise cb.PermanentError(self._no_argon2(cfg))
            if current is not None and not await self._bind_check(cfg, current, ""):
                raise cb.PermanentError(
                    f"the given value does not bind as {current.dn!r} (wrong value, or no such DN)"
                )
            if (
                not cfg.admin
                and cfg.hash == "argon2"
                and (current is None or not await self._as_self(cfg, current, "", _argon2_loaded))
            ):
                raise cb.PermanentError(self._no_argon2(cfg))
            if not cfg.admin and current is None:
                await self._run(lambda: self._reachable(cfg))
        except cb.TransientError as exc:
            raise cb.PermanentError(str(exc)) from None

    @staticmethod
    def _no_argon2(cfg: LdapConfig) -> str:
        return (
            f"hash=argon2: cannot confirm that ldap at {cfg.where} checks {{ARGON2}} passwords "
            "(its argon2 module is not loaded, or cn=config is not readable by the admin); "
            "load the module or use hash=ssha"
        )

    def _missing(self, cfg: LdapConfig) -> Callable[[ldap3.Connection], str | None]:
        def missing(conn: ldap3.Connection) -> str | None:
            for dn in cfg.dns:
                ok = conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["1.1"])
                if not ok and int((conn.result or {}).get("result", -1)) == NO_SUCH_OBJECT:
                    return dn
                _check(conn, ok)
            return None

        return missing

    def _reachable(self, cfg: LdapConfig) -> None:
        conn = ldap3.Connection(self._server(cfg), receive_timeout=cfg.timeout_s)
        try:
            conn.open(read_server_info=False)
            if cfg.starttls:
                conn.start_tls(read_server_info=False)
        except (LDAPException, OSError) as exc:
            raise self._unreachable(cfg, exc, "") from None
        finally:
            _unbind(conn)

    def check_value(self, config: cb.ConnectorConfig, value: Secret) -> None:
        """A value given at ``credential add``/``update``: UTF-8 text naming one of this
        credential's DNs (or a bare password). PermanentError otherwise; no I/O."""
        parse_value(value, _cfg(config), "the given value")


class LoginRefused(cb.PermanentError):
    """The server refused a simple bind (wrong password or no such DN)."""


def _argon2_loaded(conn: ldap3.Connection) -> bool:
    """Does ``cn=config`` list the argon2 module as loaded? False when it cannot be read."""
    ok = conn.search("cn=config", "(olcModuleLoad=*)", ldap3.SUBTREE, attributes=["olcModuleLoad"])
    if not ok:
        return False
    for entry in conn.response or ():
        for value in (entry.get("attributes") or {}).get("olcModuleLoad", ()):
            if "argon2" in str(value).lower():
                return True
    return False


__all__ = ["LdapConfig", "LdapConnector", "Login", "hash_password", "normal_dn", "parse_value"]
