"""Store access for coordinated groups. Callers pass the transaction."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, insert, select

from rotator.domain.group import Group, GroupMember
from rotator.store.schema import credentials, group_members, groups


def insert_group(
    conn: Connection, tenant_id: int, group: Group, member_ids: dict[str, int], now: datetime
) -> None:
    res = conn.execute(
        insert(groups).values(
            tenant_id=tenant_id,
            name=group.name,
            all_or_nothing=int(group.all_or_nothing),
            min_offset_ms=int(group.min_offset.total_seconds() * 1000),
            created_at=now,
        )
    )
    assert res.inserted_primary_key is not None
    gid = int(res.inserted_primary_key[0])
    conn.execute(
        insert(group_members),
        [
            {
                "group_id": gid,
                "credential_id": member_ids[m.name],
                "position": i,
                "after": list(m.after),
            }
            for i, m in enumerate(group.members)
        ],
    )


def group_id(conn: Connection, tenant_id: int, name: str) -> int | None:
    return conn.execute(
        select(groups.c.id).where(groups.c.tenant_id == tenant_id, groups.c.name == name)
    ).scalar_one_or_none()


def get_group(conn: Connection, tenant_id: int, name: str) -> Group | None:
    row = conn.execute(
        select(groups).where(groups.c.tenant_id == tenant_id, groups.c.name == name)
    ).first()
    if row is None:
        return None
    members = conn.execute(
        select(credentials.c.name, group_members.c.after)
        .join(credentials, credentials.c.id == group_members.c.credential_id)
        .where(group_members.c.group_id == row.id)
        .order_by(group_members.c.position)
    ).all()
    return Group(
        name=row.name,
        members=tuple(GroupMember(m.name, tuple(m.after)) for m in members),
        all_or_nothing=bool(row.all_or_nothing),
        min_offset=timedelta(milliseconds=row.min_offset_ms),
    )


def list_groups(conn: Connection, tenant_id: int) -> list[Group]:
    names = (
        conn.execute(
            select(groups.c.name).where(groups.c.tenant_id == tenant_id).order_by(groups.c.name)
        )
        .scalars()
        .all()
    )
    found = [get_group(conn, tenant_id, n) for n in names]
    return [g for g in found if g is not None]


def delete_group(conn: Connection, gid: int) -> None:
    conn.execute(delete(group_members).where(group_members.c.group_id == gid))
    conn.execute(delete(groups).where(groups.c.id == gid))


def groups_of_credential(conn: Connection, credential_id: int) -> list[str]:
    return list(
        conn.execute(
            select(groups.c.name)
            .join(group_members, group_members.c.group_id == groups.c.id)
            .where(group_members.c.credential_id == credential_id)
        ).scalars()
    )
