"""Store access for meta values, tenants and wrapped data keys. Callers pass the transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from rotator.domain.model import Tenant
from rotator.errors import ConcurrentModification
from rotator.store.schema import data_keys, meta, tenants


def get_meta(conn: Connection, key: str) -> Any:
    """The JSON value stored under ``key``, or None."""
    return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one_or_none()


def set_meta(conn: Connection, key: str, value: Any) -> None:
    """Insert or replace the value under ``key``."""
    if conn.execute(select(meta.c.key).where(meta.c.key == key)).first() is None:
        conn.execute(insert(meta).values(key=key, value=value))
    else:
        conn.execute(update(meta).where(meta.c.key == key).values(value=value))


def delete_meta(conn: Connection, key: str) -> None:
    conn.execute(delete(meta).where(meta.c.key == key))


def get_meta_for_update(conn: Connection, key: str) -> Any:
    """Like get_meta, but the row stays locked until the transaction ends (PostgreSQL; on
    SQLite the write transaction holds the whole database already)."""
    return conn.execute(
        select(meta.c.value).where(meta.c.key == key).with_for_update()
    ).scalar_one_or_none()


def begin_master_rotation(conn: Connection, expect_master_id: str, entry: dict[str, Any]) -> None:
    """Record ``entry`` as ``master_next``, only if ``master`` is still ``expect_master_id``
    and no other rotation recorded its own next key: ConcurrentModification otherwise. Never
    overwrites a stored entry (it may hold the only copy of a passphrase's salt)."""
    master = get_meta_for_update(conn, "master")
    if master is None or master.get("id") != expect_master_id:
        raise ConcurrentModification("the master key changed while this rotation was starting")
    if get_meta_for_update(conn, "master_next") is not None:
        raise ConcurrentModification("another master-key rotation recorded its new key")
    conn.execute(insert(meta).values(key="master_next", value=entry))


def finish_master_rotation(conn: Connection, expect_master_id: str, expect_next_id: str) -> None:
    """Compare-and-swap: make ``master_next`` the ``master``, only if ``master`` is still
    ``expect_master_id`` and ``master_next`` is ``expect_next_id``; ConcurrentModification
    otherwise (nothing changed). The old entry is replaced only by a committed new one."""
    master = get_meta_for_update(conn, "master")
    nxt = get_meta_for_update(conn, "master_next")
    if master is None or master.get("id") != expect_master_id:
        raise ConcurrentModification("the master key changed while this rotation ran")
    if nxt is None or nxt.get("id") != expect_next_id:
        raise ConcurrentModification("the master-key rotation in the store is not this one")
    conn.execute(update(meta).where(meta.c.key == "master").values(value=nxt))
    if conn.execute(delete(meta).where(meta.c.key == "master_next")).rowcount != 1:
        raise ConcurrentModification("the master-key rotation in the store is not this one")


def lock_data_keys(conn: Connection) -> None:
    """Block new data keys until this transaction ends (PostgreSQL; SQLite's write
    transaction does so already), so a check of every data key stays true until commit.
    Takes the ``master`` row first, in the order reserve_data_key does (no deadlock)."""
    if conn.dialect.name == "postgresql":
        get_meta_for_update(conn, "master")
        conn.exec_driver_sql(f"LOCK TABLE {data_keys.name} IN EXCLUSIVE MODE")


def get_tenant(conn: Connection, name: str) -> Tenant | None:
    row = conn.execute(select(tenants).where(tenants.c.name == name)).first()
    return None if row is None else Tenant(id=row.id, name=row.name, created_at=row.created_at)


def tenant_name(conn: Connection, tenant_id: int) -> str:
    """The name of the tenant with id ``tenant_id`` (which must exist)."""
    return str(conn.execute(select(tenants.c.name).where(tenants.c.id == tenant_id)).scalar_one())


def insert_tenant(conn: Connection, name: str, now: datetime) -> Tenant:
    tid = conn.execute(insert(tenants).values(name=name, created_at=now)).inserted_primary_key
    assert tid is not None
    return Tenant(id=int(tid[0]), name=name, created_at=now)


def reserve_data_key(conn: Connection, tenant_id: int, master_key_id: str, now: datetime) -> int:
    """Insert a data-key row with a placeholder and return its id (the id is part of the AAD).

    ConcurrentModification if ``master_key_id`` is neither the store's master key nor the one
    a rotation is moving to: a process that loaded its keys before a master-key rotation
    finished must not wrap a new data key under a key the store no longer keeps.
    """
    # FOR SHARE: waits for a rotation's final swap (which holds the row FOR UPDATE) and then
    # sees its result, so no data key slips in under the old key after the swap.
    master = conn.execute(
        select(meta.c.value).where(meta.c.key == "master").with_for_update(read=True)
    ).scalar_one_or_none()
    nxt = get_meta(conn, "master_next")
    known = {m["id"] for m in (master, nxt) if m is not None}
    if master is not None and master_key_id not in known:
        raise ConcurrentModification(
            "the master key was rotated since this process loaded it: run the command again"
        )
    res = conn.execute(
        insert(data_keys).values(
            tenant_id=tenant_id, wrapped=b"", master_key_id=master_key_id, created_at=now
        )
    )
    assert res.inserted_primary_key is not None
    return int(res.inserted_primary_key[0])


def set_wrapped(
    conn: Connection,
    data_key_id: int,
    wrapped: bytes,
    master_key_id: str,
    expect_master_key_id: str | None = None,
) -> None:
    """Store a (re-)wrapped data key. With ``expect_master_key_id``, only if still wrapped by it."""
    stmt = update(data_keys).where(data_keys.c.id == data_key_id)
    if expect_master_key_id is not None:
        stmt = stmt.where(data_keys.c.master_key_id == expect_master_key_id)
    if conn.execute(stmt.values(wrapped=wrapped, master_key_id=master_key_id)).rowcount != 1:
        raise ConcurrentModification(f"data key {data_key_id} was re-wrapped by another process")


def latest_data_key(conn: Connection, tenant_id: int) -> tuple[int, bytes, str] | None:
    """(id, wrapped, master_key_id) of the tenant's newest data key, or None."""
    row = conn.execute(
        select(data_keys.c.id, data_keys.c.wrapped, data_keys.c.master_key_id)
        .where(data_keys.c.tenant_id == tenant_id)
        .order_by(data_keys.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else (row.id, row.wrapped, row.master_key_id)


def get_data_key(conn: Connection, data_key_id: int) -> tuple[int, bytes, str]:
    """(tenant_id, wrapped, master_key_id) of one data key."""
    row = conn.execute(
        select(data_keys.c.tenant_id, data_keys.c.wrapped, data_keys.c.master_key_id).where(
            data_keys.c.id == data_key_id
        )
    ).one()
    return (row.tenant_id, row.wrapped, row.master_key_id)


def data_keys_not_wrapped_by(
    conn: Connection, master_key_id: str
) -> list[tuple[int, int, bytes, str]]:
    """(id, tenant_id, wrapped, master_key_id) of every data key wrapped by another master key."""
    rows = conn.execute(
        select(
            data_keys.c.id, data_keys.c.tenant_id, data_keys.c.wrapped, data_keys.c.master_key_id
        )
        .where(data_keys.c.master_key_id != master_key_id)
        .order_by(data_keys.c.id)
    ).all()
    return [(r.id, r.tenant_id, r.wrapped, r.master_key_id) for r in rows]
