"""Store access for policy defaults and the schedule columns of credentials. Callers pass the
transaction; merging and scheduling are pure (``rotator.policy``) and run in the kernel."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, Connection, and_, bindparam, delete, insert, select, update

from rotator.domain.policy import RotationPolicy
from rotator.policy.defaults import own_partial
from rotator.store.claims import notify_work
from rotator.store.keys import set_meta
from rotator.store.prepared import Prepared
from rotator.store.schema import credential_tags, credentials, meta, policy_defaults, tenants

TENANT_SCOPE = ("", "")  # (tag_key, tag_value) of a tenant-wide default
# The ``meta`` key of the policy generation: a fresh random token written in the same
# transaction as every change of any tenant's defaults (put_default, delete_default), so a
# process may keep the defaults it read under the token it read with them (kernel.schedule)
# and trust them while the token it reads in a later transaction is the same. Random, not a
# counter: a store restored from a backup can never bring back a token with other defaults.
GENERATION_KEY = "policy_generation"


@dataclass(frozen=True, slots=True)
class DefaultRow:
    tag_key: str
    tag_value: str
    policy: dict[str, Any]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """What rescheduling a credential reads."""

    id: int
    tenant_id: int
    tenant: str
    name: str
    connector: str
    policy: dict[str, Any]
    policy_own: dict[str, Any] | None
    created_at: datetime
    last_rotated_at: datetime | None
    use_count: int
    next_rotation_at: datetime | None
    next_rotation_rule: str | None
    tags: dict[str, str]
    # The store's policy generation as read with the row (None: no default ever changed).
    policy_generation: str | None = None


# Statements on the rotation path (a finish reschedules its credential), built once.
_DEFAULTS_OF = (
    select(policy_defaults)
    .where(policy_defaults.c.tenant_id == bindparam("b_tid"))
    .order_by(policy_defaults.c.tag_key, policy_defaults.c.tag_value)
)
_IDS: BindParameter[int] = bindparam("b_ids", expanding=True)
_TAGS_OF = select(credential_tags).where(credential_tags.c.credential_id.in_(_IDS))
_SCHEDULE_COLS = (
    credentials.c.id,
    credentials.c.tenant_id,
    tenants.c.name.label("tenant"),
    credentials.c.name,
    credentials.c.connector,
    credentials.c.policy,
    credentials.c.policy_own,
    credentials.c.created_at,
    credentials.c.last_rotated_at,
    credentials.c.use_count,
    credentials.c.next_rotation_at,
    credentials.c.next_rotation_rule,
    select(meta.c.value)
    .where(meta.c.key == GENERATION_KEY)
    .scalar_subquery()
    .label("policy_generation"),
)
_SCHEDULE_FROM = credentials.join(tenants, tenants.c.id == credentials.c.tenant_id)
_SCHEDULE_ROWS = (
    select(*_SCHEDULE_COLS)
    .select_from(_SCHEDULE_FROM)
    .where(credentials.c.id.in_(_IDS))
    .order_by(credentials.c.id)
)

# The same for one credential, sent at driver level (store.prepared): a rotation's finish
# reschedules one credential inside the group-commit writer, whose hot path stays off Core.
_DEFAULTS_OF_FAST = Prepared(_DEFAULTS_OF)
_ID: BindParameter[int] = bindparam("b_id")
# The row with its tags in one statement: one row per tag, or one with no tag.
_SCHEDULE_ROW_ONE = Prepared(
    select(
        *_SCHEDULE_COLS,
        credential_tags.c.key.label("tag_key"),
        credential_tags.c.value.label("tag_value"),
    )
    .select_from(
        _SCHEDULE_FROM.outerjoin(
            credential_tags, credential_tags.c.credential_id == credentials.c.id
        )
    )
    .where(credentials.c.id == _ID)
)


def defaults(conn: Connection, tenant_id: int) -> list[DefaultRow]:
    """The tenant's defaults, the tenant-wide one first, then by tag key and value."""
    rows = _DEFAULTS_OF_FAST.rows(conn, {"b_tid": tenant_id})
    return [DefaultRow(r.tag_key, r.tag_value, dict(r.policy), r.updated_at) for r in rows]


def put_default(
    conn: Connection,
    tenant_id: int,
    scope: tuple[str, str],
    partial: Mapping[str, Any],
    now: datetime,
) -> bool:
    """Insert or replace the default for ``scope``; True if it existed before."""
    where = and_(
        policy_defaults.c.tenant_id == tenant_id,
        policy_defaults.c.tag_key == scope[0],
        policy_defaults.c.tag_value == scope[1],
    )
    res = conn.execute(
        update(policy_defaults).where(where).values(policy=dict(partial), updated_at=now)
    )
    bump_generation(conn)
    if res.rowcount:
        return True
    conn.execute(
        insert(policy_defaults).values(
            tenant_id=tenant_id,
            tag_key=scope[0],
            tag_value=scope[1],
            policy=dict(partial),
            updated_at=now,
        )
    )
    return False


def bump_generation(conn: Connection) -> None:
    """Mark the defaults changed (see GENERATION_KEY), in ``conn``'s transaction. Call with
    every write of ``policy_defaults``."""
    set_meta(conn, GENERATION_KEY, uuid.uuid4().hex)


def get_default(conn: Connection, tenant_id: int, scope: tuple[str, str]) -> dict[str, Any] | None:
    found = conn.execute(
        select(policy_defaults.c.policy).where(
            policy_defaults.c.tenant_id == tenant_id,
            policy_defaults.c.tag_key == scope[0],
            policy_defaults.c.tag_value == scope[1],
        )
    ).scalar_one_or_none()
    return None if found is None else dict(found)


def delete_default(conn: Connection, tenant_id: int, scope: tuple[str, str]) -> bool:
    """Delete the default for ``scope``; False if there was none."""
    res = conn.execute(
        delete(policy_defaults).where(
            policy_defaults.c.tenant_id == tenant_id,
            policy_defaults.c.tag_key == scope[0],
            policy_defaults.c.tag_value == scope[1],
        )
    )
    if res.rowcount:
        bump_generation(conn)
    return bool(res.rowcount)


def affected(conn: Connection, tenant_id: int, scope: tuple[str, str]) -> list[int]:
    """Ids of the tenant's credentials a default for ``scope`` applies to (indexed by tag)."""
    q = select(credentials.c.id).where(credentials.c.tenant_id == tenant_id)
    if scope != TENANT_SCOPE:
        q = q.join(
            credential_tags,
            and_(
                credential_tags.c.credential_id == credentials.c.id,
                credential_tags.c.key == scope[0],
                credential_tags.c.value == scope[1],
            ),
        )
    return [int(r[0]) for r in conn.execute(q.order_by(credentials.c.id))]


def _chunks(ids: Sequence[int], size: int = 500) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def schedule_rows(conn: Connection, ids: Sequence[int]) -> list[ScheduleRow]:
    """The rows (with tags) of the given credentials that exist, two queries per 500."""
    out: list[ScheduleRow] = []
    for chunk in _chunks(list(ids)):
        tags: dict[int, dict[str, str]] = defaultdict(dict)
        if len(chunk) == 1:  # a rotation's finish: at driver level, one statement
            joined = _SCHEDULE_ROW_ONE.rows(conn, {"b_id": chunk[0]})
            tag_rows = [r for r in joined if r.tag_key is not None]
            rows = joined[:1]
            for t in tag_rows:
                tags[t.id][t.tag_key] = t.tag_value
        else:
            tag_rows = list(conn.execute(_TAGS_OF, {"b_ids": list(chunk)}))
            rows = list(conn.execute(_SCHEDULE_ROWS, {"b_ids": list(chunk)}))
            for t in tag_rows:
                tags[t.credential_id][t.key] = t.value
        for r in rows:
            out.append(
                ScheduleRow(
                    id=r.id,
                    tenant_id=r.tenant_id,
                    tenant=r.tenant,
                    name=r.name,
                    connector=r.connector,
                    policy=dict(r.policy),
                    policy_own=None if r.policy_own is None else dict(r.policy_own),
                    created_at=r.created_at,
                    last_rotated_at=r.last_rotated_at,
                    use_count=int(r.use_count or 0),
                    next_rotation_at=r.next_rotation_at,
                    next_rotation_rule=r.next_rotation_rule,
                    tags=tags.get(r.id, {}),
                    policy_generation=r.policy_generation,
                )
            )
    return out


_SET_SCHEDULE = (
    update(credentials)
    .where(credentials.c.id == bindparam("b_id"))
    .values(
        policy=bindparam("b_policy", type_=credentials.c.policy.type),
        policy_own=bindparam("b_own", type_=credentials.c.policy_own.type),
        next_rotation_at=bindparam("b_next", type_=credentials.c.next_rotation_at.type),
        next_rotation_rule=bindparam("b_rule"),
    )
)


_SET_SCHEDULE_FAST = Prepared(_SET_SCHEDULE)
# A rotation's finish: the schedule and the rotation's own record in one statement.
_ROTATED: BindParameter[datetime] = bindparam("b_rotated", type_=credentials.c.last_rotated_at.type)
_SET_SCHEDULE_ROTATED = Prepared(
    _SET_SCHEDULE.values(last_rotated_at=_ROTATED, updated_at=_ROTATED, use_count=0)
)


def set_schedules(
    conn: Connection, rows: Sequence[Mapping[str, Any]], *, rotated_at: datetime | None = None
) -> None:
    """Write (b_id, b_policy, b_own, b_next, b_rule) for each row (one executemany). With
    ``rotated_at`` (a rotation's finish) the same statement also sets ``last_rotated_at``
    and ``updated_at`` to it and ``use_count`` to 0."""
    if not rows:
        return
    if rotated_at is None:
        _SET_SCHEDULE_FAST.many(conn, [dict(r) for r in rows])
    else:
        _SET_SCHEDULE_ROTATED.many(conn, [{**r, "b_rotated": rotated_at} for r in rows])


def set_due(conn: Connection, credential_id: int, when: datetime, rule: str) -> None:
    """Make a credential due at ``when`` for the reason ``rule`` (earlier than its stored
    time: callers check) and wake idle workers (``NOTIFY rotator_work``, at commit)."""
    conn.execute(
        update(credentials)
        .where(credentials.c.id == credential_id)
        .values(next_rotation_at=when, next_rotation_rule=rule)
    )
    notify_work(conn)


def own_policy(conn: Connection, credential_id: int) -> dict[str, Any]:
    """A credential's own partial policy (on rows from before migration 0007: see
    ``rotator.policy.defaults.own_partial``); empty if it does not exist."""
    r = conn.execute(
        select(credentials.c.policy, credentials.c.policy_own).where(
            credentials.c.id == credential_id
        )
    ).first()
    if r is None:
        return {}
    return own_partial(r.policy_own, r.policy)


def effective_policy(conn: Connection, credential_id: int) -> RotationPolicy:
    """A credential's stored effective policy."""
    data = conn.execute(
        select(credentials.c.policy).where(credentials.c.id == credential_id)
    ).scalar_one()
    return RotationPolicy.from_json(dict(data))
