"""Use cases for principals, API tokens and tenants; and authentication (token -> Principal).

Each use case calls ``svc.authorize`` first. Principals and tokens need
``Action.PRINCIPAL_WRITE`` / ``PRINCIPAL_READ`` on the tenant as a whole (an admin of the
tenant, or the owner); tenants need ``Action.STORE_ADMIN`` (the owner only). Every write is
audited in its own transaction (``principal.add``, ``principal.remove``, ``token.create``,
``token.revoke``, ``tenant.add``); so is every refused token (``auth.denied``).

A token is ``rtr_<id>_<secret>``: ``id`` is 12 lowercase base32 characters (it names the
row, and appears in listings and audit entries); ``secret`` is 32 random bytes, base64url
without padding. The store keeps only the SHA-256 of the secret. A token is 256 bits of
randomness, so nobody can guess it from its digest however fast the hash is; a slow or
peppered hash (scrypt, argon2) only protects low-entropy passwords and would cost every
request time for nothing here.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from hmac import compare_digest

from sqlalchemy import Connection

from rotator.domain import names
from rotator.domain.access import PrincipalInfo, PrincipalKind, TokenInfo
from rotator.domain.model import DEFAULT_TENANT, Tenant
from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Grant, Principal, Role
from rotator.errors import (
    AlreadyExists,
    AuthenticationFailed,
    InvalidInput,
    NotFound,
)
from rotator.service.credentials import RotatorService
from rotator.store import keys as store_keys
from rotator.store import principals as store_p

TOKEN_PREFIX = "rtr_"  # noqa: S105 (a prefix that marks tokens, not a password)
_TOKEN = re.compile(r"rtr_([a-z2-7]{12})_([A-Za-z0-9_-]{43})")
_TOKEN_ID = re.compile(r"[a-z2-7]{12}")
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lower case
# Compared against when there is no stored digest (unknown id, malformed token), so every
# refusal does the same work as a wrong secret.
_DUMMY_DIGEST = hashlib.sha256(b"rotator: no such token").hexdigest()
# last_used_at is written at most this often per token, so a hot path does not write.
LAST_USED_RESOLUTION = timedelta(seconds=60)
# Who a refused token's audit entry names: nobody was authenticated.
UNAUTHENTICATED = "anonymous"
# How long a process trusts a successful authentication without asking the store again.
AUTH_TTL_ENV = "ROTATOR_API_AUTH_TTL_S"
DEFAULT_AUTH_TTL_S = 5.0
_AUTH_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class _Authenticated:
    principal: Principal
    until: datetime  # trusted before this (the TTL, or the token's expiry if sooner)
    last_used: datetime  # the token's last_used_at as stored after this authentication


class AuthCache:
    """Successful authentications of one service (one process), keyed by the SHA-256 of the
    whole token (the token itself is never kept), each trusted for ``ttl`` (0: no cache)
    and never past the token's expiry. Refusals are never cached (each is audited).

    What callers rely on: a token revoked, or a principal removed, through this service is
    refused by it AT ONCE (those use cases clear the cache); through another process, within
    ``ttl`` seconds. Grants are those of the last authentication that read the store."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl = timedelta(seconds=max(0.0, ttl_s))
        self._entries: dict[str, _Authenticated] = {}

    @staticmethod
    def key(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()

    def get(self, key: str, now: datetime) -> Principal | None:
        found = self._entries.get(key)
        if found is None:
            return None
        # Past the TTL or the expiry, or when last_used_at is due to be written again (so a
        # cache never makes that record coarser than LAST_USED_RESOLUTION): ask the store.
        if now >= found.until or found.last_used < now - LAST_USED_RESOLUTION:
            self._entries.pop(key, None)
            return None
        return found.principal

    def put(
        self,
        key: str,
        principal: Principal,
        now: datetime,
        expires: datetime | None,
        last_used: datetime,
    ) -> None:
        if not self.ttl:
            return
        until = now + self.ttl if expires is None else min(now + self.ttl, expires)
        if len(self._entries) >= _AUTH_CACHE_MAX:
            self._entries.clear()  # rare (that many live tokens in one TTL): start again
        self._entries[key] = _Authenticated(principal, until, last_used)

    def clear(self) -> None:
        self._entries.clear()


_caches: weakref.WeakKeyDictionary[RotatorService, AuthCache] = weakref.WeakKeyDictionary()


def auth_cache(svc: RotatorService) -> AuthCache:
    """The authentication cache of ``svc`` (made on first use; the TTL from
    ``ROTATOR_API_AUTH_TTL_S``, default 5 s; InvalidInput when that is not a number >= 0)."""
    found = _caches.get(svc)
    if found is None:
        raw = os.environ.get(AUTH_TTL_ENV, "").strip()
        try:
            ttl = float(raw) if raw else DEFAULT_AUTH_TTL_S
        except ValueError:
            ttl = -1.0
        if not ttl >= 0:  # also NaN
            raise InvalidInput(f"{AUTH_TTL_ENV} must be a number of seconds (0 or more)")
        found = _caches[svc] = AuthCache(ttl)
    return found


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def new_token() -> tuple[str, str, str]:
    """A fresh token: (id, token, digest of its secret)."""
    token_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}", _digest(secret)


# -- helpers ---------------------------------------------------------------------------------


async def _authorize_in(
    svc: RotatorService, principal: Principal, action: Action, tenant: str | None
) -> Principal:
    """Authorize ``action`` on the tenant as a whole, in ``tenant`` (None: the principal's
    own); returns the principal acting there. Only the owner acts in another tenant: anyone
    else naming one is refused (PermissionDenied, audited as ``access.denied``)."""
    await svc.authorize(principal, action)
    if tenant is None or tenant == principal.tenant:
        return principal
    names.check_tenant_name(tenant)
    await svc.authorize_tenant(principal, tenant, action)
    return principal.with_tenant(tenant)


def _role(role: str | Role) -> Role:
    try:
        return Role(role)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise InvalidInput(f"unknown role {role!r}: use one of {allowed}") from None


def _kind(kind: str | PrincipalKind) -> PrincipalKind:
    try:
        return PrincipalKind(kind)
    except ValueError:
        raise InvalidInput(f"unknown principal kind {kind!r}: use person or service") from None


async def _principal_id(svc: RotatorService, tenant: Tenant, name: str) -> int:
    pid = await svc._read(partial(store_p.principal_id, tenant_id=tenant.id, name=name))
    if pid is None:
        raise NotFound(f"no principal {name!r} in tenant {tenant.name!r}")
    return pid


# -- principals ------------------------------------------------------------------------------


async def add_principal(
    svc: RotatorService,
    name: str,
    role: str | Role,
    *,
    scope: str = "*",
    kind: str | PrincipalKind = PrincipalKind.PERSON,
    tenant: str | None = None,
    principal: Principal = LOCAL_PRINCIPAL,
) -> PrincipalInfo:
    """Add a principal with one grant (``role`` over the names matching ``scope``) to
    ``tenant`` (None: the caller's; another tenant needs the owner). Audited as
    ``principal.add``. Raises PermissionDenied, InvalidInput (name, role, scope, kind),
    NotFound (no such tenant), AlreadyExists (the name is taken in that tenant)."""
    acting = await _authorize_in(svc, principal, Action.PRINCIPAL_WRITE, tenant)
    names.check_principal_name(name)
    grant = Grant(_role(role), names.check_scope(scope))
    kind_ = _kind(kind)
    t = await svc.tenant(acting.tenant)
    now = svc.clock()

    def write(conn: Connection) -> PrincipalInfo:
        if store_p.principal_id(conn, t.id, name) is not None:
            raise AlreadyExists(f"principal {name!r} exists already in tenant {t.name!r}")
        store_p.insert_principal(
            conn,
            tenant_id=t.id,
            name=name,
            kind=kind_,
            grant=grant,
            now=now,
            created_by=principal.name,
        )
        svc.kernel.audit(
            conn,
            acting,
            "principal.add",
            None,
            None,
            {"principal": name, "kind": kind_.value, "role": grant.role.value, "scope": scope},
        )
        return PrincipalInfo(name, t.name, kind_, (grant,), now, principal.name)

    return await svc._write(write)


async def list_principals(
    svc: RotatorService, principal: Principal = LOCAL_PRINCIPAL
) -> list[PrincipalInfo]:
    """The principals of the caller's tenant, by name, with their grants."""
    await svc.authorize(principal, Action.PRINCIPAL_READ)
    t = await svc.tenant(principal.tenant)
    return await svc._read(partial(store_p.list_principals, tenant_id=t.id, tenant=t.name))


async def remove_principal(
    svc: RotatorService, name: str, principal: Principal = LOCAL_PRINCIPAL
) -> None:
    """Remove a principal of the caller's tenant with its grants and tokens (which stop
    working at once). Audited as ``principal.remove`` with the ids of the tokens removed.
    Raises PermissionDenied, InvalidInput, NotFound."""
    await svc.authorize(principal, Action.PRINCIPAL_WRITE)
    names.check_principal_name(name)
    t = await svc.tenant(principal.tenant)

    def write(conn: Connection) -> None:
        pid = store_p.principal_id(conn, t.id, name)
        if pid is None:
            raise NotFound(f"no principal {name!r} in tenant {t.name!r}")
        removed = store_p.delete_principal(conn, pid)
        svc.kernel.audit(
            conn, principal, "principal.remove", None, None, {"principal": name, "tokens": removed}
        )

    await svc._write(write)
    auth_cache(svc).clear()  # its tokens stop working here at once


# -- tokens ----------------------------------------------------------------------------------


async def create_token(
    svc: RotatorService,
    principal_name: str,
    *,
    expires: timedelta | None = None,
    principal: Principal = LOCAL_PRINCIPAL,
) -> tuple[TokenInfo, str]:
    """A new API token for a principal of the caller's tenant, valid until now + ``expires``
    (None: until revoked). Returns its metadata and the token, which is shown this once:
    the store keeps only a digest of it. Audited as ``token.create`` (id, principal,
    expiry; never the token). Raises PermissionDenied, InvalidInput, NotFound."""
    await svc.authorize(principal, Action.PRINCIPAL_WRITE)
    names.check_principal_name(principal_name)
    if expires is not None and expires <= timedelta(0):
        raise InvalidInput("--expires must be a positive duration")
    t = await svc.tenant(principal.tenant)
    now = svc.clock()
    expires_at = None if expires is None else now + expires
    token_id, token, digest = new_token()

    def write(conn: Connection) -> TokenInfo:
        pid = store_p.principal_id(conn, t.id, principal_name)
        if pid is None:
            raise NotFound(f"no principal {principal_name!r} in tenant {t.name!r}")
        store_p.insert_token(
            conn,
            token_id=token_id,
            principal_id=pid,
            digest=digest,
            now=now,
            created_by=principal.name,
            expires_at=expires_at,
        )
        svc.kernel.audit(
            conn,
            principal,
            "token.create",
            None,
            None,
            {
                "token": token_id,
                "principal": principal_name,
                "expires_at": None if expires_at is None else expires_at.isoformat(),
            },
        )
        return TokenInfo(token_id, principal_name, t.name, now, principal.name, expires_at)

    return await svc._write(write), token


async def list_tokens(
    svc: RotatorService,
    principal_name: str | None = None,
    principal: Principal = LOCAL_PRINCIPAL,
) -> list[TokenInfo]:
    """The tokens of the caller's tenant (or of one of its principals), oldest first:
    metadata only, never a token or its digest."""
    await svc.authorize(principal, Action.PRINCIPAL_READ)
    t = await svc.tenant(principal.tenant)
    pid = None
    if principal_name is not None:
        names.check_principal_name(principal_name)
        pid = await _principal_id(svc, t, principal_name)
    return await svc._read(partial(store_p.list_tokens, tenant_id=t.id, principal_id=pid))


async def revoke_token(
    svc: RotatorService, token_id: str, principal: Principal = LOCAL_PRINCIPAL
) -> TokenInfo:
    """Revoke a token of the caller's tenant: it is refused from now on. Idempotent (a
    revoked token stays revoked at its first time; only the first call is audited, as
    ``token.revoke``). Raises PermissionDenied, NotFound (no such token in the tenant),
    InvalidInput when ``token_id`` is not an id (12 characters a-z, 2-7): the message never
    quotes it, since a whole token pasted by mistake must not reach stderr or a log (it is
    refused, not revoked by its id part: nothing derived from a secret is acted on)."""
    if not _TOKEN_ID.fullmatch(token_id):
        if token_id.startswith("rtr_"):
            raise InvalidInput(
                "token revoke takes a token's ID, not the token itself (`rotator token list` "
                "shows the IDs); treat a token pasted anywhere as leaked"
            )
        raise InvalidInput(
            "not a token ID: an ID is 12 characters a-z and 2-7 (`rotator token list` shows them)"
        )
    await svc.authorize(principal, Action.PRINCIPAL_WRITE)
    t = await svc.tenant(principal.tenant)
    now = svc.clock()

    def write(conn: Connection) -> TokenInfo:
        info = store_p.get_token(conn, t.id, token_id)
        if info is None:
            raise NotFound(f"no token {token_id!r} in tenant {t.name!r}")
        if store_p.revoke_token(conn, token_id, now):
            svc.kernel.audit(
                conn,
                principal,
                "token.revoke",
                None,
                None,
                {"token": token_id, "principal": info.principal},
            )
        out = store_p.get_token(conn, t.id, token_id)
        assert out is not None
        return out

    revoked = await svc._write(write)
    auth_cache(svc).clear()  # refused here at once (other processes: within their TTL)
    return revoked


async def authenticate(svc: RotatorService, token: str) -> Principal:
    """The principal a token stands for, acting in its tenant with its grants.

    Every refusal raises AuthenticationFailed with one line that never quotes the token
    ("invalid token" when it is malformed, unknown or its secret is wrong; "token ID
    expired at ..." or "token ID was revoked" only once its secret matched), and is audited
    as ``auth.denied`` (the token id when the format parsed, and the reason) in its own
    transaction. The secret is compared in constant time, and against a dummy digest when
    there is nothing to compare with, so every refusal does the same work. A success records
    ``last_used_at`` (at most once a minute per token).

    A success is remembered by this service for ``ROTATOR_API_AUTH_TTL_S`` (default 5 s,
    never past the token's expiry; see :class:`AuthCache`): within it the same token is
    answered without reading the store, so a revocation made through another process takes
    effect within the TTL (through this one, at once)."""
    cache = auth_cache(svc)
    key = cache.key(token)
    hit = cache.get(key, svc.clock())
    if hit is not None:
        return hit
    m = _TOKEN.fullmatch(token)
    token_id, secret = (m.group(1), m.group(2)) if m else (None, "")
    record = None
    if token_id is not None:
        record = await svc._read(partial(store_p.find_token, token_id=token_id))
    stored = record.digest if record is not None else _DUMMY_DIGEST
    matched = compare_digest(stored, _digest(secret if m else "")) and record is not None
    now = svc.clock()
    if record is None or not matched:
        reason = "malformed" if m is None else ("unknown id" if record is None else "wrong secret")
        await _deny(svc, record.info.tenant if record else DEFAULT_TENANT, token_id, reason)
        raise AuthenticationFailed("invalid token")
    info = record.info
    if info.revoked_at is not None:
        await _deny(svc, info.tenant, token_id, "revoked")
        raise AuthenticationFailed(f"token {token_id} was revoked")
    if info.expires_at is not None and info.expires_at <= now:
        await _deny(svc, info.tenant, token_id, "expired")
        raise AuthenticationFailed(
            f"token {token_id} expired at {info.expires_at.isoformat(timespec='seconds')}"
        )

    def load(conn: Connection) -> tuple[Grant, ...]:
        return store_p.grants_of(conn, [record.principal_id]).get(record.principal_id, ())

    grants = await svc._read(load)
    last_used = info.last_used_at
    if last_used is None or last_used < now - LAST_USED_RESOLUTION:
        last_used = now
        await svc._write(
            partial(
                store_p.touch_token,
                token_id=info.id,
                now=now,
                before=now - LAST_USED_RESOLUTION,
            )
        )
    principal = Principal(info.principal, info.tenant, grants, owner=False, token_id=info.id)
    cache.put(key, principal, now, info.expires_at, last_used)
    return principal


async def acting_principal(
    svc: RotatorService, token: str | None, tenant: str | None = None
) -> Principal:
    """Who a local interface (the CLI, ``rotator mcp``) acts as: with a token, its principal
    (AuthenticationFailed as :func:`authenticate`; a ``tenant`` other than the token's raises
    PermissionDenied, audited with the token id); without, the store's owner in ``tenant``
    (default ``default``). InvalidInput for a malformed tenant name. The async twin of
    ``rotator.cli.app.acting_principal``, which reads the same two variables."""
    if tenant is not None:
        names.check_tenant_name(tenant)
    if token is None:
        return LOCAL_PRINCIPAL.with_tenant(tenant or DEFAULT_TENANT)
    principal = await authenticate(svc, token)
    if tenant is not None:
        await svc.authorize_tenant(principal, tenant)
    return principal


async def _deny(svc: RotatorService, tenant: str, token_id: str | None, reason: str) -> None:
    details = {"reason": reason} if token_id is None else {"token": token_id, "reason": reason}
    who = Principal(name=UNAUTHENTICATED, tenant=tenant)
    await svc._write(
        lambda conn: svc.kernel.audit(conn, who, "auth.denied", None, None, dict(details))
    )


# -- tenants ---------------------------------------------------------------------------------


async def add_tenant(
    svc: RotatorService, name: str, principal: Principal = LOCAL_PRINCIPAL
) -> Tenant:
    """Create a tenant with its own data key (the owner only). Audited as ``tenant.add``.
    Raises PermissionDenied, InvalidInput (name), AlreadyExists."""
    await svc.authorize(principal, Action.STORE_ADMIN)
    names.check_tenant_name(name)

    def write(conn: Connection) -> Tenant:
        if store_keys.get_tenant(conn, name) is not None:
            raise AlreadyExists(f"tenant {name!r} exists already")
        t = svc.kernel.create_tenant(conn, name)
        svc.kernel.audit(conn, principal.with_tenant(name), "tenant.add", None, None, {})
        return t

    return await svc._write(write)


async def list_tenants(svc: RotatorService, principal: Principal = LOCAL_PRINCIPAL) -> list[Tenant]:
    """Every tenant, by name (the owner only)."""
    await svc.authorize(principal, Action.STORE_ADMIN)
    rows = await svc._read(store_p.list_tenants)
    return [Tenant(id=i, name=n, created_at=c) for i, n, c in rows]
