"""Store reads for the compliance report: a fixed number of aggregate queries per report
(GROUP BY and one window function), never one query per credential, so a tenant with
10,000 credentials reports in about a second. The figures are computed by
:mod:`rotator.policy.compliance`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Connection, Text, case, cast, func, select

from rotator.audit.log import format_ts
from rotator.domain.model import Stage
from rotator.policy.compliance import CredentialFacts, LastRotation, Reader
from rotator.store.schema import audit_log, credential_tags, credentials, rotations, versions

READ_ACTION = "value.read"
DENIED_ACTION = "access.denied"


@dataclass
class _Acc:
    """Per-credential figures while the queries' rows come in."""

    tags: dict[str, str] = field(default_factory=dict)
    current_created_at: datetime | None = None
    previous_revoked_at: datetime | None = None
    previous_revoke_due: datetime | None = None
    finished_ever: int = 0
    period_results: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    period_triggers: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last: LastRotation | None = None
    readers: list[Reader] = field(default_factory=list)


def credential_facts(
    conn: Connection, tenant_id: int, tenant: str, since: datetime
) -> list[CredentialFacts]:
    """What the report needs of every credential of the tenant, in name order. Rotations
    and reads are counted from ``since`` on (rotations by the time they started); the last
    rotation, finished rotations ever and revocations are taken over all time."""
    creds = conn.execute(
        select(
            credentials.c.id,
            credentials.c.name,
            credentials.c.connector,
            # Only what the figures read: the generator, and the policy as text (parsed once
            # per distinct policy, not once per row).
            credentials.c.config["generator"].as_string().label("generator"),
            cast(credentials.c.policy, Text).label("policy"),
            credentials.c.created_at,
            credentials.c.next_rotation_at,
        )
        .where(credentials.c.tenant_id == tenant_id)
        .order_by(credentials.c.name)
    ).all()
    acc: dict[int, _Acc] = {r.id: _Acc() for r in creds}
    by_name = {r.name: r.id for r in creds}
    in_tenant = credentials.c.tenant_id == tenant_id

    for t in conn.execute(
        select(credential_tags.c.credential_id, credential_tags.c.key, credential_tags.c.value)
        .join(credentials, credentials.c.id == credential_tags.c.credential_id)
        .where(in_tenant)
    ):
        if t.credential_id in acc:
            acc[t.credential_id].tags[t.key] = t.value

    stages = (Stage.CURRENT.value, Stage.PREVIOUS.value, Stage.RETIRED.value)
    for v in conn.execute(
        select(
            versions.c.credential_id,
            versions.c.stage,
            func.max(versions.c.created_at).label("created_at"),
            func.max(versions.c.staged_at).label("staged_at"),
            func.min(versions.c.expires_at).label("expires_at"),
        )
        .join(credentials, credentials.c.id == versions.c.credential_id)
        .where(in_tenant, versions.c.stage.in_(stages))
        .group_by(versions.c.credential_id, versions.c.stage)
    ):
        a = acc.get(v.credential_id)
        if a is None:
            continue
        if v.stage == Stage.CURRENT.value:
            a.current_created_at = v.created_at
        elif v.stage == Stage.RETIRED.value:
            a.previous_revoked_at = v.staged_at
        else:
            a.previous_revoke_due = v.expires_at

    in_period = case((rotations.c.created_at >= since, 1), else_=0)
    for r in conn.execute(
        select(
            rotations.c.credential_id,
            rotations.c.step,
            rotations.c.trigger,
            func.count().label("n"),
            func.sum(in_period).label("n_period"),
        )
        .where(rotations.c.tenant_id == tenant_id)
        .group_by(rotations.c.credential_id, rotations.c.step, rotations.c.trigger)
    ):
        a = acc.get(r.credential_id)
        if a is None:
            continue
        if r.step == "finished":
            a.finished_ever += int(r.n)
        n_period = int(r.n_period or 0)
        if n_period:
            a.period_results[r.step] += n_period
            a.period_triggers[r.trigger] += n_period

    newest = (
        func.row_number()
        .over(
            partition_by=rotations.c.credential_id,
            order_by=(rotations.c.created_at.desc(), rotations.c.updated_at.desc()),
        )
        .label("rn")
    )
    sub = (
        select(
            rotations.c.credential_id,
            rotations.c.trigger,
            rotations.c.step,
            rotations.c.error,
            rotations.c.created_at,
            rotations.c.finished_at,
            newest,
        )
        .where(rotations.c.tenant_id == tenant_id)
        .subquery()
    )
    for r in conn.execute(select(sub).where(sub.c.rn == 1)):
        a = acc.get(r.credential_id)
        if a is not None:
            a.last = LastRotation(
                at=r.created_at,
                trigger=r.trigger,
                result=r.step,
                finished_at=r.finished_at,
                error=r.error,
            )

    for r in conn.execute(
        select(
            audit_log.c.credential,
            audit_log.c.actor,
            func.count().label("n"),
            func.max(audit_log.c.ts).label("last"),
        )
        .where(
            audit_log.c.tenant == tenant,
            audit_log.c.action == READ_ACTION,
            audit_log.c.ts >= format_ts(since),
            audit_log.c.credential.is_not(None),
        )
        .group_by(audit_log.c.credential, audit_log.c.actor)
    ):
        cid = by_name.get(r.credential)
        if cid is not None:
            acc[cid].readers.append(Reader(r.actor, int(r.n), parse_ts(r.last)))

    return [
        CredentialFacts(
            name=c.name,
            connector=c.connector,
            config={} if c.generator is None else {"generator": c.generator},
            tags=acc[c.id].tags,
            policy=c.policy or "{}",
            created_at=c.created_at,
            current_created_at=acc[c.id].current_created_at,
            next_rotation_at=c.next_rotation_at,
            finished_ever=acc[c.id].finished_ever,
            period_results=dict(acc[c.id].period_results),
            period_triggers=dict(acc[c.id].period_triggers),
            last=acc[c.id].last,
            previous_revoked_at=acc[c.id].previous_revoked_at,
            previous_revoke_due=acc[c.id].previous_revoke_due,
            readers=acc[c.id].readers,
        )
        for c in creds
    ]


def denials(conn: Connection, tenant: str, since: datetime) -> int:
    """Access denials audited in ``tenant`` from ``since`` on."""
    n = conn.execute(
        select(func.count()).where(
            audit_log.c.tenant == tenant,
            audit_log.c.action == DENIED_ACTION,
            audit_log.c.ts >= format_ts(since),
        )
    ).scalar_one()
    return int(n)


def parse_ts(text: str) -> datetime:
    """An audit entry's ``ts`` (``audit.log.format_ts``) as an aware UTC datetime."""
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)
