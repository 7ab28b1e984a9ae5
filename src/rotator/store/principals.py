"""Store access for principals, grants and API tokens. Callers pass the transaction.

Every query names the tenant (by id) it reads, except the token look-up by id that
authentication makes before it knows the tenant; it returns the tenant with the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, Select, delete, insert, select, update

from rotator.domain.access import PrincipalInfo, PrincipalKind, TokenInfo
from rotator.domain.principal import Grant, Role
from rotator.store.schema import grants, principals, tenants, tokens


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token row for authentication: its metadata, its digest and its principal's id."""

    info: TokenInfo
    digest: str
    principal_id: int


def principal_id(conn: Connection, tenant_id: int, name: str) -> int | None:
    return conn.execute(
        select(principals.c.id).where(
            principals.c.tenant_id == tenant_id, principals.c.name == name
        )
    ).scalar_one_or_none()


def insert_principal(
    conn: Connection,
    *,
    tenant_id: int,
    name: str,
    kind: PrincipalKind,
    grant: Grant,
    now: datetime,
    created_by: str,
) -> int:
    res = conn.execute(
        insert(principals).values(
            tenant_id=tenant_id, name=name, kind=kind.value, created_at=now, created_by=created_by
        )
    )
    assert res.inserted_primary_key is not None
    pid = int(res.inserted_primary_key[0])
    conn.execute(insert(grants).values(principal_id=pid, role=grant.role.value, scope=grant.scope))
    return pid


def grants_of(conn: Connection, principal_ids: list[int]) -> dict[int, tuple[Grant, ...]]:
    """The grants of each principal, by id, in a stable order (role, scope)."""
    out: dict[int, list[Grant]] = {pid: [] for pid in principal_ids}
    if not principal_ids:
        return {}
    rows = conn.execute(
        select(grants.c.principal_id, grants.c.role, grants.c.scope)
        .where(grants.c.principal_id.in_(principal_ids))
        .order_by(grants.c.principal_id, grants.c.role, grants.c.scope)
    ).all()
    for r in rows:
        out[r.principal_id].append(Grant(Role(r.role), r.scope))
    return {pid: tuple(gs) for pid, gs in out.items()}


def list_principals(conn: Connection, tenant_id: int, tenant: str) -> list[PrincipalInfo]:
    """The principals of one tenant, by name."""
    rows = conn.execute(
        select(principals).where(principals.c.tenant_id == tenant_id).order_by(principals.c.name)
    ).all()
    gs = grants_of(conn, [r.id for r in rows])
    return [
        PrincipalInfo(
            name=r.name,
            tenant=tenant,
            kind=PrincipalKind(r.kind),
            grants=gs.get(r.id, ()),
            created_at=r.created_at,
            created_by=r.created_by,
        )
        for r in rows
    ]


def delete_principal(conn: Connection, principal_id: int) -> list[str]:
    """Delete a principal with its grants and tokens; returns the ids of the tokens deleted.
    (The foreign keys cascade too; the explicit deletes keep that true on a SQLite
    connection made without ``PRAGMA foreign_keys``.)"""
    ids = list(
        conn.execute(
            select(tokens.c.id).where(tokens.c.principal_id == principal_id).order_by(tokens.c.id)
        ).scalars()
    )
    conn.execute(delete(tokens).where(tokens.c.principal_id == principal_id))
    conn.execute(delete(grants).where(grants.c.principal_id == principal_id))
    conn.execute(delete(principals).where(principals.c.id == principal_id))
    return ids


def insert_token(
    conn: Connection,
    *,
    token_id: str,
    principal_id: int,
    digest: str,
    now: datetime,
    created_by: str,
    expires_at: datetime | None,
) -> None:
    conn.execute(
        insert(tokens).values(
            id=token_id,
            principal_id=principal_id,
            digest=digest,
            created_at=now,
            created_by=created_by,
            expires_at=expires_at,
        )
    )


_TOKEN_COLUMNS = (
    tokens.c.id,
    tokens.c.principal_id,
    tokens.c.digest,
    tokens.c.created_at,
    tokens.c.created_by,
    tokens.c.expires_at,
    tokens.c.revoked_at,
    tokens.c.last_used_at,
    principals.c.name.label("principal"),
    principals.c.tenant_id,
    tenants.c.name.label("tenant"),
)


def _token_query() -> Select[Any]:
    return (
        select(*_TOKEN_COLUMNS)
        .join(principals, principals.c.id == tokens.c.principal_id)
        .join(tenants, tenants.c.id == principals.c.tenant_id)
    )


def _info(r: Row[Any]) -> TokenInfo:
    return TokenInfo(
        id=r.id,
        principal=r.principal,
        tenant=r.tenant,
        created_at=r.created_at,
        created_by=r.created_by,
        expires_at=r.expires_at,
        revoked_at=r.revoked_at,
        last_used_at=r.last_used_at,
    )


def find_token(conn: Connection, token_id: str) -> TokenRecord | None:
    """The token with id ``token_id`` in any tenant (for authentication), or None."""
    r = conn.execute(_token_query().where(tokens.c.id == token_id)).first()
    return None if r is None else TokenRecord(_info(r), r.digest, r.principal_id)


def get_token(conn: Connection, tenant_id: int, token_id: str) -> TokenInfo | None:
    """The token with id ``token_id`` if it belongs to a principal of the tenant."""
    r = conn.execute(
        _token_query().where(tokens.c.id == token_id, principals.c.tenant_id == tenant_id)
    ).first()
    return None if r is None else _info(r)


def list_tokens(
    conn: Connection, tenant_id: int, principal_id: int | None = None
) -> list[TokenInfo]:
    """The tokens of a tenant (or of one of its principals), oldest first."""
    q = _token_query().where(principals.c.tenant_id == tenant_id)
    if principal_id is not None:
        q = q.where(tokens.c.principal_id == principal_id)
    return [_info(r) for r in conn.execute(q.order_by(tokens.c.created_at, tokens.c.id)).all()]


def revoke_token(conn: Connection, token_id: str, now: datetime) -> bool:
    """Mark the token revoked at ``now`` unless it is already; whether it changed."""
    res = conn.execute(
        update(tokens)
        .where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return res.rowcount == 1


def touch_token(conn: Connection, token_id: str, now: datetime, before: datetime) -> None:
    """Record a use at ``now`` unless one was recorded at or after ``before`` (so a token
    used in a hot loop writes at most once per interval)."""
    conn.execute(
        update(tokens)
        .where(
            tokens.c.id == token_id,
            (tokens.c.last_used_at.is_(None)) | (tokens.c.last_used_at < before),
        )
        .values(last_used_at=now)
    )


def list_tenants(conn: Connection) -> list[tuple[int, str, datetime]]:
    """(id, name, created_at) of every tenant, by name."""
    rows = conn.execute(
        select(tenants.c.id, tenants.c.name, tenants.c.created_at).order_by(tenants.c.name)
    ).all()
    return [(r.id, r.name, r.created_at) for r in rows]
