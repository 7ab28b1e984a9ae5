"""Store access for credentials, their tags and versions. Callers pass the transaction.

Values appear here only as ciphertext; sealing and opening happen in the kernel.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    null,
    or_,
    select,
    update,
)

from rotator.domain.model import Credential, Stage, Version
from rotator.domain.policy import RotationPolicy
from rotator.errors import ConcurrentModification
from rotator.store.claims import notify_work
from rotator.store.prepared import Prepared
from rotator.store.schema import (
    credential_claims,
    credential_locks,
    credential_tags,
    credentials,
    group_members,
    revocations,
    rotations,
    tenants,
    versions,
)

# Statements on the rotation hot path, built once (see store/rotations.py).
_SEALED_COLS = (versions, credentials.c.tenant_id, credentials.c.name)
_SEALED_BY_STAGE = (
    select(*_SEALED_COLS)
    .join(credentials, credentials.c.id == versions.c.credential_id)
    .where(versions.c.credential_id == bindparam("b_cid"), versions.c.stage == bindparam("b_stage"))
    .order_by(versions.c.number.desc())
    .limit(1)
)
_SEALED_BY_NUMBER = (
    select(*_SEALED_COLS)
    .join(credentials, credentials.c.id == versions.c.credential_id)
    .where(versions.c.credential_id == bindparam("b_cid"), versions.c.number == bindparam("b_no"))
)
_MAX_VERSION = select(func.max(versions.c.number)).where(
    versions.c.credential_id == bindparam("b_cid")
)
# The hot ones (every rotation, every value read) are also compiled once per dialect and sent
# at driver level (store/prepared.py).
_INSERT_VERSION = Prepared(
    insert(versions),
    keys=(
        "credential_id",
        "number",
        "stage",
        "ciphertext",
        "data_key_id",
        "created_at",
        "staged_at",
        "expires_at",
    ),
)
_CURRENT_NUMBER = Prepared(
    select(versions.c.number).where(
        versions.c.credential_id == bindparam("b_cid"), versions.c.stage == Stage.CURRENT.value
    )
)
_VERSION_NUMBERS = select(
    func.max(case((versions.c.stage == Stage.CURRENT.value, versions.c.number))),
    func.max(versions.c.number),
).where(versions.c.credential_id == bindparam("b_cid"))
# promote in one statement: PENDING ``b_no`` -> CURRENT and any other CURRENT -> PREVIOUS.
_IS_PROMOTED = versions.c.number == bindparam("b_no")
_PROMOTE = Prepared(
    update(versions)
    .where(
        versions.c.credential_id == bindparam("b_cid"),
        or_(
            and_(_IS_PROMOTED, versions.c.stage == Stage.PENDING.value),
            and_(~_IS_PROMOTED, versions.c.stage == Stage.CURRENT.value),
        ),
    )
    .values(
        stage=case((_IS_PROMOTED, Stage.CURRENT.value), else_=Stage.PREVIOUS.value),
        staged_at=bindparam("b_now", type_=versions.c.staged_at.type),
        expires_at=case(
            (_IS_PROMOTED, null()),
            else_=bindparam("b_expires", type_=versions.c.expires_at.type),
        ),
    )
    .returning(versions.c.number)
)
_UPDATE_CREDENTIAL = Prepared(
    update(credentials).where(credentials.c.id == bindparam("b_id")), dynamic=True
)
_CREDENTIAL_BY_NAME = (
    select(credentials, tenants.c.name.label("tenant_name"))
    .join(tenants, tenants.c.id == credentials.c.tenant_id)
    .where(credentials.c.tenant_id == bindparam("b_tid"), credentials.c.name == bindparam("b_name"))
)
_TAGS_OF = select(credential_tags.c.key, credential_tags.c.value).where(
    credential_tags.c.credential_id == bindparam("b_cid")
)
_CREDENTIAL_ID = select(credentials.c.id).where(
    credentials.c.tenant_id == bindparam("b_tid"), credentials.c.name == bindparam("b_name")
)
_INSERT_CREDENTIAL = insert(credentials)
_INSERT_TAGS = insert(credential_tags)
# Every value read counts a use. Most policies set no max uses, and then the policy and the
# due time are not needed: the count returns only whether the effective policy sets
# ``max_uses`` (JSON null or absent: NULL on both dialects), and the policy is read (and its
# JSON decoded) only when it does.
_COUNT_USE = Prepared(
    update(credentials)
    .where(credentials.c.id == bindparam("b_id"))
    .values(use_count=credentials.c.use_count + bindparam("b_n"))
    .returning(
        credentials.c.use_count, credentials.c.policy["max_uses"].as_string().label("max_uses")
    )
)
_USE_POLICY = Prepared(
    select(credentials.c.policy, credentials.c.next_rotation_at).where(
        credentials.c.id == bindparam("b_id")
    )
)
# What a stage map is made of: the credential's MAC'd columns and its versions' stages.
_MAP_COLS = (
    credentials.c.tenant_id,
    credentials.c.name,
    credentials.c.connector,
    credentials.c.config,
    credentials.c.sinks,
    credentials.c.stage_mac,
    versions.c.number,
    versions.c.stage,
)
_WITH_VERSIONS = credentials.outerjoin(versions, versions.c.credential_id == credentials.c.id)
# One credential's stage map in one statement (run at every stage move).
_STAGE_MAP_ONE = Prepared(
    select(*_MAP_COLS)
    .select_from(_WITH_VERSIONS)
    .where(credentials.c.id == bindparam("b_cid"))
    .order_by(versions.c.number)
)
# A value read: the credential's stage map and, for the one stage asked for, the sealed
# versions, in one query by (tenant, name).
_VALUE_READ = Prepared(
    select(
        credentials.c.id.label("credential_id"),
        *_MAP_COLS,
        case((versions.c.stage == bindparam("b_stage"), versions.c.ciphertext)).label("ciphertext"),
        versions.c.data_key_id,
    )
    .select_from(_WITH_VERSIONS)
    .where(credentials.c.tenant_id == bindparam("b_tid"), credentials.c.name == bindparam("b_name"))
    .order_by(versions.c.number)
)
_LOCK_CREDENTIAL = Prepared(
    select(credentials.c.id).where(credentials.c.id == bindparam("b_cid")).with_for_update()
)
_SET_STAGE_MAC = Prepared(
    update(credentials)
    .where(credentials.c.id == bindparam("b_id"))
    .values(stage_mac=bindparam("b_mac"))
)
_VERSION_COLS = (
    versions.c.credential_id,
    versions.c.number,
    versions.c.stage,
    versions.c.created_at,
    versions.c.staged_at,
    versions.c.expires_at,
)
_VERSIONS_OF = (
    select(*_VERSION_COLS)
    .where(versions.c.credential_id == bindparam("b_cid"))
    .order_by(versions.c.number)
)


@dataclass(frozen=True, slots=True)
class SealedVersion:
    """A version row with its ciphertext, as stored."""

    credential_id: int
    number: int
    stage: Stage
    ciphertext: bytes
    data_key_id: int
    tenant_id: int  # the credential row's tenant (opening checks the data key's against it)
    name: str


def _sealed(r: Any) -> SealedVersion:
    return SealedVersion(
        credential_id=r.credential_id,
        number=r.number,
        stage=Stage(r.stage),
        ciphertext=r.ciphertext,
        data_key_id=r.data_key_id,
        tenant_id=r.tenant_id,
        name=r.name,
    )


@dataclass(frozen=True, slots=True)
class StageMap:
    """What a credential's stage MAC covers, as stored, with the stored MAC."""

    credential_id: int
    tenant_id: int
    name: str
    stages: tuple[tuple[int, str], ...]  # (number, stage) by number
    mac: str | None
    # Where values go: a connector and settings (its target, its admin reference) and sinks.
    connector: str = ""
    config: Any = None
    sinks: Any = None

    def with_mac(self, mac: str | None) -> StageMap:
        """This map carrying ``mac`` (as ``dataclasses.replace``, without its introspection:
        called a few times per rotation)."""
        return StageMap(
            self.credential_id,
            self.tenant_id,
            self.name,
            self.stages,
            mac,
            self.connector,
            self.config,
            self.sinks,
        )

    def with_stages(self, stages: tuple[tuple[int, str], ...]) -> StageMap:
        """This map with ``stages`` (as :meth:`with_mac`: a few times per rotation)."""
        return StageMap(
            self.credential_id,
            self.tenant_id,
            self.name,
            stages,
            self.mac,
            self.connector,
            self.config,
            self.sinks,
        )


# -- the stage-map cache of a write transaction ---------------------------------------------
#
# A stage move is checked (the map read and verified), made, and re-stamped (the MAC of the new
# map written) in one transaction. A transaction that carries a cache (see :func:`stage_cache`;
# the engine's group-commit writer holds one per batch) reads each credential's map at most
# once: later reads are served from the cache, which the stage moves of this module and of
# store/rotations.py keep equal to the rows they write (a version inserted, promote,
# mark_version), and its new MACs are written together when the block ends. A write here that
# changes what a map covers in another way (connector, settings, sinks, a deletion) drops the
# credential's entry, so the next read goes to the database. Any new statement that writes
# ``versions.stage``/``number`` or the covered ``credentials`` columns must do the same.
STAGE_CACHE_KEY = "rotator.stage_maps"


@dataclass
class StageCache:
    """Stage maps read in one transaction, and MACs to write before it commits."""

    maps: dict[int, StageMap] = field(default_factory=dict)
    macs: dict[int, str] = field(default_factory=dict)

    def flush(self, conn: Connection) -> None:
        """Write the new stage MACs (one executemany)."""
        if self.macs:
            _SET_STAGE_MAC.many(conn, [{"b_id": c, "b_mac": m} for c, m in self.macs.items()])
            self.macs.clear()


@contextlib.contextmanager
def stage_cache(conn: Connection) -> Iterator[StageCache]:
    """Cache stage maps and hold back MAC writes for the block, which must end inside
    ``conn``'s transaction; the MACs are written when it ends without an error."""
    cache = conn.info[STAGE_CACHE_KEY] = StageCache()
    try:
        yield cache
        cache.flush(conn)
    finally:
        conn.info.pop(STAGE_CACHE_KEY, None)


def _cache(conn: Connection) -> StageCache | None:
    cache: StageCache | None = conn.info.get(STAGE_CACHE_KEY)
    return cache


def cached_stage_moves(conn: Connection, credential_id: int, moves: Mapping[int, str]) -> None:
    """Apply the stage moves ``moves`` (number -> stage, new numbers too) to a cached map."""
    cache = _cache(conn)
    m = None if cache is None else cache.maps.get(credential_id)
    if cache is None or m is None:
        return
    stages = dict(m.stages)
    stages.update(moves)
    cache.maps[credential_id] = m.with_stages(tuple(sorted(stages.items())))


def _forget_stage_map(conn: Connection, credential_id: int, *, deleted: bool = False) -> None:
    cache = _cache(conn)
    if cache is not None:
        cache.maps.pop(credential_id, None)
        if deleted:
            cache.macs.pop(credential_id, None)


def _writing(conn: Connection, cache: StageCache | None) -> bool:
    """Whether ``conn`` is a write transaction (Database.write, or a group commit)."""
    return cache is not None or bool(conn.get_execution_options().get("rotator_immediate"))


def _with_pending_mac(cache: StageCache | None, m: StageMap) -> StageMap:
    mac = None if cache is None else cache.macs.get(m.credential_id)
    return m if mac is None else m.with_mac(mac)


def stage_map(conn: Connection, credential_id: int) -> StageMap | None:
    """The stage map of one credential (one query, or none when the transaction's stage
    cache holds it), or None if it does not exist."""
    cache = _cache(conn)
    if cache is not None and credential_id in cache.maps:
        return cache.maps[credential_id]
    # In a write transaction the map is about to be checked, moved and re-stamped: lock the
    # credential row now (PostgreSQL; a SQLite writer holds the database lock), so no other
    # worker moves its stages between our check and our commit, and our new MAC covers
    # exactly the rows it commits with.
    # The lock comes first, in its own statement: a locking join that waited for another
    # transaction would re-read the locked row but not the joined versions (READ COMMITTED),
    # and so mix two states; the map is then read in a fresh snapshot.
    if _writing(conn, cache) and conn.dialect.name == "postgresql":
        _LOCK_CREDENTIAL.execute(conn, {"b_cid": credential_id})
    rows = _STAGE_MAP_ONE.rows(conn, {"b_cid": credential_id})
    if not rows:
        return None
    m = _map_from_rows(credential_id, rows)
    if cache is not None:
        m = cache.maps[credential_id] = _with_pending_mac(cache, m)
    return m


def _map_from_rows(credential_id: int, rows: Sequence[Any]) -> StageMap:
    """A stage map from rows of ``_MAP_COLS`` (one per version, or one with no version)."""
    first = rows[0]
    return StageMap(
        credential_id,
        first.tenant_id,
        first.name,
        tuple((int(r.number), str(r.stage)) for r in rows if r.number is not None),
        first.stage_mac,
        first.connector,
        first.config,
        first.sinks,
    )


def value_read(
    conn: Connection, tenant_id: int, name: str, stage: Stage
) -> tuple[StageMap, SealedVersion | None] | None:
    """For reading a value: the stage map of credential ``name`` and its newest version in
    ``stage`` with the ciphertext (None if it has none), in one query; None if there is no
    such credential. In a group commit whose earlier operations moved its stages, the map
    carries the MAC the transaction will write at its end (the rows already show the moves)."""
    rows = _VALUE_READ.rows(conn, {"b_tid": tenant_id, "b_name": name, "b_stage": stage.value})
    if not rows:
        return None
    m = _map_from_rows(rows[0].credential_id, rows)
    # Verified as read now (a stage edited by another connection since the batch cached the
    # map fails the check), carrying the MAC this transaction will write for our own moves.
    m = _with_pending_mac(_cache(conn), m)
    hit = next((r for r in reversed(rows) if r.ciphertext is not None), None)
    return m, None if hit is None else _sealed(hit)


def stage_maps(conn: Connection, credential_ids: Sequence[int]) -> dict[int, StageMap]:
    """The stage map of each existing credential among ``credential_ids`` (two queries per
    500 credentials)."""
    if len(credential_ids) == 1:
        one = stage_map(conn, credential_ids[0])
        return {} if one is None else {one.credential_id: one}
    cache = _cache(conn)
    out: dict[int, StageMap] = {}
    if cache is not None:
        out = {c: cache.maps[c] for c in credential_ids if c in cache.maps}
        credential_ids = [c for c in credential_ids if c not in out]
    for chunk in _chunks(list(credential_ids)):
        heads_q = select(
            credentials.c.id,
            credentials.c.tenant_id,
            credentials.c.name,
            credentials.c.stage_mac,
            credentials.c.connector,
            credentials.c.config,
            credentials.c.sinks,
        ).where(credentials.c.id.in_(chunk))
        if _writing(conn, cache) and conn.dialect.name == "postgresql":  # as in stage_map
            conn.execute(
                select(credentials.c.id)
                .where(credentials.c.id.in_(chunk))
                .order_by(credentials.c.id)
                .with_for_update()
            )
        heads = conn.execute(heads_q).all()
        stages: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for r in conn.execute(
            select(versions.c.credential_id, versions.c.number, versions.c.stage)
            .where(versions.c.credential_id.in_(chunk))
            .order_by(versions.c.credential_id, versions.c.number)
        ):
            stages[r.credential_id].append((int(r.number), str(r.stage)))
        for h in heads:
            out[h.id] = _with_pending_mac(
                cache,
                StageMap(
                    h.id,
                    h.tenant_id,
                    h.name,
                    tuple(stages[h.id]),
                    h.stage_mac,
                    h.connector,
                    h.config,
                    h.sinks,
                ),
            )
    return out


def set_stage_mac(conn: Connection, credential_id: int, mac: str) -> None:
    """Store a credential's stage MAC (with a stage cache: when its block ends)."""
    cache = _cache(conn)
    if cache is None:
        _SET_STAGE_MAC.execute(conn, {"b_id": credential_id, "b_mac": mac})
        return
    cache.macs[credential_id] = mac
    m = cache.maps.get(credential_id)
    if m is not None:
        cache.maps[credential_id] = m.with_mac(mac)


def all_credential_ids(conn: Connection) -> list[int]:
    return [
        int(x) for x in conn.execute(select(credentials.c.id).order_by(credentials.c.id)).scalars()
    ]


def insert_credential(
    conn: Connection,
    *,
    tenant_id: int,
    name: str,
    connector: str,
    config: Mapping[str, str],
    policy: RotationPolicy,
    tags: Mapping[str, str],
    now: datetime,
    next_rotation_at: datetime | None,
    sinks: Sequence[Mapping[str, Any]] = (),
    policy_own: Mapping[str, Any] | None = None,
) -> int:
    """Insert a credential and its tags; return its id. The unique name is enforced by the DB.
    ``policy_own``: the policy fields it sets itself (None: all of ``policy``)."""
    res = conn.execute(
        _INSERT_CREDENTIAL,
        {
            "tenant_id": tenant_id,
            "name": name,
            "connector": connector,
            "config": dict(config),
            "policy": policy.to_json(),
            "created_at": now,
            "updated_at": now,
            "next_rotation_at": next_rotation_at,
            "last_rotated_at": None,
            "use_count": 0,
            "sinks": [dict(x) for x in sinks],
            **({} if policy_own is None else {"policy_own": dict(policy_own)}),
        },
    )
    assert res.inserted_primary_key is not None
    cid = int(res.inserted_primary_key[0])
    _insert_tags(conn, cid, tags)
    if next_rotation_at is not None:
        notify_work(conn)  # new scheduled work: wake idle workers (at commit)
    return cid


def _insert_tags(conn: Connection, credential_id: int, tags: Mapping[str, str]) -> None:
    if tags:
        conn.execute(
            _INSERT_TAGS,
            [{"credential_id": credential_id, "key": k, "value": v} for k, v in tags.items()],
        )


def update_credential(
    conn: Connection,
    credential_id: int,
    *,
    now: datetime,
    connector: str | None = None,
    config: Mapping[str, str] | None = None,
    policy: RotationPolicy | None = None,
    tags: Mapping[str, str] | None = None,
    next_rotation_at: datetime | None = None,
    set_next_rotation: bool = False,
    last_rotated_at: datetime | None = None,
    use_count: int | None = None,
    sinks: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Change the given fields. ``tags`` and ``sinks`` replace all tags / sinks."""
    values: dict[str, Any] = {"updated_at": now}
    if connector is not None:
        values["connector"] = connector
    if config is not None:
        values["config"] = dict(config)
    if policy is not None:
        values["policy"] = policy.to_json()
    if set_next_rotation:
        values["next_rotation_at"] = next_rotation_at
        if next_rotation_at is not None and last_rotated_at is None:
            # Its time may have moved earlier: idle workers recompute their sleep. A finished
            # rotation (last_rotated_at given) only moves it later, which no sleeping worker
            # can miss (each wakes by the earliest time it read), so it sends nothing.
            notify_work(conn)
    if last_rotated_at is not None:
        values["last_rotated_at"] = last_rotated_at
    if use_count is not None:
        values["use_count"] = use_count
    if sinks is not None:
        values["sinks"] = [dict(x) for x in sinks]
    _UPDATE_CREDENTIAL.execute(conn, {"b_id": credential_id, **values})
    if connector is not None or config is not None or sinks is not None:
        _forget_stage_map(conn, credential_id)
    if tags is not None:
        conn.execute(
            delete(credential_tags).where(credential_tags.c.credential_id == credential_id)
        )
        _insert_tags(conn, credential_id, tags)


def delete_credential(conn: Connection, credential_id: int) -> None:
    """Delete a credential with its tags and versions (ciphertexts are gone for good)."""
    for table in (
        group_members,
        revocations,
        credential_locks,
        credential_claims,
        rotations,
        versions,
    ):
        conn.execute(delete(table).where(table.c.credential_id == credential_id))
    conn.execute(delete(credential_tags).where(credential_tags.c.credential_id == credential_id))
    conn.execute(delete(credentials).where(credentials.c.id == credential_id))
    _forget_stage_map(conn, credential_id, deleted=True)


def credential_id(conn: Connection, tenant_id: int, name: str) -> int | None:
    return conn.execute(_CREDENTIAL_ID, {"b_tid": tenant_id, "b_name": name}).scalar_one_or_none()


def get_credential(
    conn: Connection, tenant_id: int, name: str, *, with_versions: bool = True
) -> Credential | None:
    """The credential named ``name`` in the tenant, with versions (metadata only), or None."""
    r = conn.execute(_CREDENTIAL_BY_NAME, {"b_tid": tenant_id, "b_name": name}).first()
    if r is None:
        return None
    tags = {t.key: t.value for t in conn.execute(_TAGS_OF, {"b_cid": r.id})}
    vers = (
        [_version(v) for v in conn.execute(_VERSIONS_OF, {"b_cid": r.id})] if with_versions else []
    )
    return _credential(r, tags, vers)


def list_credentials(
    conn: Connection,
    tenant_id: int,
    *,
    names: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    due_before: datetime | None = None,
    with_versions: bool = False,
    limit: int | None = None,
) -> list[Credential]:
    """Credentials of a tenant ordered by name, filtered by names, all given tags, and due time."""
    # With a tag or due filter, "tenant_id + 0" keeps SQLite's planner (no ANALYZE stats)
    # from walking the whole tenant through the (tenant_id, name) index just to avoid a sort;
    # it then uses the tag or next_rotation_at index. No effect on results.
    tenant_col = credentials.c.tenant_id + 0 if (tags or due_before is not None) else None
    q = (
        select(credentials, tenants.c.name.label("tenant_name"))
        .join(tenants, tenants.c.id == credentials.c.tenant_id)
        .where((credentials.c.tenant_id if tenant_col is None else tenant_col) == tenant_id)
    )
    if names is not None:
        q = q.where(credentials.c.name.in_(list(names)))
    for i, (k, v) in enumerate((tags or {}).items()):
        t = credential_tags.alias(f"t{i}")
        q = q.join(t, and_(t.c.credential_id == credentials.c.id, t.c.key == k, t.c.value == v))
    if due_before is not None:
        q = q.where(credentials.c.next_rotation_at <= due_before)
    q = q.order_by(credentials.c.name)
    if limit is not None:
        q = q.limit(limit)
    rows = conn.execute(q).all()
    ids = [r.id for r in rows]
    tag_map = _tags_for(conn, ids)
    ver_map = _versions_for(conn, ids) if with_versions else {}
    return [_credential(r, tag_map.get(r.id, {}), ver_map.get(r.id, [])) for r in rows]


def _credential(r: Any, tags: dict[str, str], vers: list[Version]) -> Credential:
    return Credential(
        id=r.id,
        tenant=r.tenant_name,
        name=r.name,
        connector=r.connector,
        config=dict(r.config),
        tags=tags,
        policy=RotationPolicy.from_json(r.policy),
        created_at=r.created_at,
        updated_at=r.updated_at,
        next_rotation_at=r.next_rotation_at,
        last_rotated_at=r.last_rotated_at,
        use_count=r.use_count,
        next_rotation_rule=r.next_rotation_rule,
        versions=tuple(vers),
        sinks=tuple(r.sinks or ()),
    )


def _chunks(ids: list[int], size: int = 500) -> Iterable[list[int]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def _tags_for(conn: Connection, ids: list[int]) -> dict[int, dict[str, str]]:
    out: dict[int, dict[str, str]] = defaultdict(dict)
    for chunk in _chunks(ids):
        for r in conn.execute(
            select(credential_tags).where(credential_tags.c.credential_id.in_(chunk))
        ):
            out[r.credential_id][r.key] = r.value
    return out


def _versions_for(conn: Connection, ids: list[int]) -> dict[int, list[Version]]:
    out: dict[int, list[Version]] = defaultdict(list)
    for chunk in _chunks(ids):
        q = (
            select(*_VERSION_COLS)
            .where(versions.c.credential_id.in_(chunk))
            .order_by(versions.c.number)
        )
        for r in conn.execute(q):
            out[r.credential_id].append(_version(r))
    return out


def _version(r: Any) -> Version:
    return Version(
        credential_id=r.credential_id,
        number=r.number,
        stage=Stage(r.stage),
        created_at=r.created_at,
        staged_at=r.staged_at,
        expires_at=r.expires_at,
    )


def next_version_number(conn: Connection, credential_id: int) -> int:
    n = conn.execute(_MAX_VERSION, {"b_cid": credential_id}).scalar_one_or_none()
    return (n or 0) + 1


def insert_version(
    conn: Connection,
    *,
    credential_id: int,
    number: int,
    stage: Stage,
    ciphertext: bytes,
    data_key_id: int,
    now: datetime,
) -> None:
    """Insert a version. A second insert of the same number fails with ConcurrentModification."""
    _INSERT_VERSION.execute(
        conn,
        {
            "credential_id": credential_id,
            "number": number,
            "stage": stage.value,
            "ciphertext": ciphertext,
            "data_key_id": data_key_id,
            "created_at": now,
            "staged_at": now,
            "expires_at": None,
        },
    )
    cached_stage_moves(conn, credential_id, {number: stage.value})


def sealed_version(
    conn: Connection, credential_id: int, *, stage: Stage | None = None, number: int | None = None
) -> SealedVersion | None:
    """The newest version with ``stage``, or the version ``number``, with its ciphertext."""
    if number is not None:
        r = conn.execute(_SEALED_BY_NUMBER, {"b_cid": credential_id, "b_no": number}).first()
        if r is not None and stage is not None and r.stage != stage.value:
            r = None
    else:
        assert stage is not None, "give a stage or a number"
        r = conn.execute(_SEALED_BY_STAGE, {"b_cid": credential_id, "b_stage": stage.value}).first()
    if r is None:
        return None
    return _sealed(r)


def current_versions(conn: Connection, credential_ids: list[int]) -> dict[int, SealedVersion]:
    """The CURRENT version (with ciphertext) of each credential that has one."""
    out: dict[int, SealedVersion] = {}
    for chunk in _chunks(credential_ids):
        q = (
            select(*_SEALED_COLS)
            .join(credentials, credentials.c.id == versions.c.credential_id)
            .where(versions.c.credential_id.in_(chunk), versions.c.stage == Stage.CURRENT.value)
        )
        for r in conn.execute(q):
            out[r.credential_id] = _sealed(r)
    return out


def version_numbers(conn: Connection, credential_id: int) -> tuple[int | None, int]:
    """(number of the CURRENT version or None, next free version number) in one query.

    With a stage cache (a stage move follows: its check then reads no more) the query reads
    the whole stage map."""
    if _cache(conn) is not None:
        m = stage_map(conn, credential_id)
        stages = () if m is None else m.stages
        current = [n for n, st in stages if st == Stage.CURRENT.value]
        return (max(current) if current else None), max((n for n, _ in stages), default=0) + 1
    cur, top = conn.execute(_VERSION_NUMBERS, {"b_cid": credential_id}).one()
    return (None if cur is None else int(cur)), int(top or 0) + 1


def promote(
    conn: Connection, credential_id: int, number: int, *, now: datetime, grace: timedelta
) -> int | None:
    """Make version ``number`` CURRENT and the old CURRENT PREVIOUS (expiring after ``grace``).

    One transaction (the caller's). An older PREVIOUS still inside its grace stays PREVIOUS
    until the engine revokes it. Returns the number of the demoted version, or None.
    Idempotent: promoting the version that is already CURRENT changes nothing.
    Raises ConcurrentModification when ``number`` is not PENDING.
    """
    params = {"b_cid": credential_id, "b_no": number, "b_now": now, "b_expires": now + grace}
    changed = [int(n) for n in _PROMOTE.scalars(conn, params)]
    demoted = [n for n in changed if n != number]
    if len(demoted) > 1:
        raise ConcurrentModification(f"credential {credential_id} had several CURRENT versions")
    prev = demoted[0] if demoted else None
    if number in changed:
        moves = {number: Stage.CURRENT.value}
        if prev is not None:
            moves[prev] = Stage.PREVIOUS.value
        cached_stage_moves(conn, credential_id, moves)
        return prev
    found = _CURRENT_NUMBER.scalars(conn, {"b_cid": credential_id})
    cur = found[0] if found else None
    if cur == number and prev is None:
        return None
    raise ConcurrentModification(f"version {number} is not PENDING any more")


__all__ = ["ConcurrentModification", "SealedVersion"]


def due_credentials(conn: Connection, now: datetime, limit: int = 1000) -> list[tuple[str, str]]:
    """(tenant, name) of credentials whose next_rotation_at has come, soonest first (indexed)."""
    rows = conn.execute(
        select(tenants.c.name, credentials.c.name)
        .join(tenants, tenants.c.id == credentials.c.tenant_id)
        .where(credentials.c.next_rotation_at <= now)
        .order_by(credentials.c.next_rotation_at)
        .limit(limit)
    ).all()
    return [(r[0], r[1]) for r in rows]


def postpone(conn: Connection, names: list[tuple[str, str]], until: datetime) -> None:
    """Move next_rotation_at of (tenant, name) credentials to ``until``."""
    for tenant, name in names:
        tid = select(tenants.c.id).where(tenants.c.name == tenant).scalar_subquery()
        conn.execute(
            update(credentials)
            .where(credentials.c.tenant_id == tid, credentials.c.name == name)
            .values(next_rotation_at=until)
        )
    notify_work(conn)


def next_due_time(conn: Connection) -> datetime | None:
    """The earliest next_rotation_at of any credential (indexed), or None."""
    value: datetime | None = conn.execute(
        select(credentials.c.next_rotation_at)
        .where(credentials.c.next_rotation_at.is_not(None))
        .order_by(credentials.c.next_rotation_at)
        .limit(1)
    ).scalar_one_or_none()
    return value


def count_use(
    conn: Connection, credential_id: int, n: int = 1
) -> tuple[int, dict[str, Any] | None, datetime | None]:
    """Record ``n`` uses of a credential's value (drives usage-based policies). Returns the
    new use count, and when the effective policy sets ``max_uses`` that policy's JSON and
    next_rotation_at (None and None when it sets none; zero, None and None if the credential
    does not exist)."""
    r = _COUNT_USE.first(conn, {"b_id": credential_id, "b_n": n})
    if r is None:
        return 0, None, None
    if r.max_uses is None:
        return int(r.use_count), None, None
    p = _USE_POLICY.first(conn, {"b_id": credential_id})
    return int(r.use_count), p.policy, p.next_rotation_at
