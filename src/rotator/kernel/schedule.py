"""Rescheduling credentials: effective policy (own settings merged with tag and tenant
defaults) and the next rotation time with the rule that set it, written in the caller's
transaction. The merge and the schedule are pure (``rotator.policy``); this reads their
inputs and writes their results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from rotator.domain.policy import RotationPolicy
from rotator.errors import PolicyError
from rotator.policy import Resolved, next_rotation, resolve, usage_due
from rotator.policy.defaults import own_partial
from rotator.store import claims as store_claims
from rotator.store import credentials as store_creds
from rotator.store import policies as store_pol

HINT_RULE = "renewal hint of the {connector} connector"

_TenantDefaults = tuple[dict[tuple[str, str], dict[str, Any]], dict[str, Any] | None]


class DefaultsCache:
    """Each tenant's policy defaults as read under a policy generation (the token
    ``store.policies`` writes with every change of any defaults, read in the same statement
    as the credential being rescheduled): entries of another generation are never used, so
    a ``policy set`` committed by any process is seen by the next reschedule that reads its
    token. Shared by the kernel's threads: entries are immutable, replaced whole."""

    MAX = 4096  # (generation, tenant) entries kept, then forgotten all at once

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], _TenantDefaults] = {}

    def get(self, conn: Connection, tenant_id: int, generation: str | None) -> _TenantDefaults:
        # A store where no default ever changed has no token: nothing is cached, so defaults
        # written without one (a store from before the token) are always read.
        if generation is None:
            return _tenant_defaults(conn, tenant_id)
        key = (generation, tenant_id)
        found = self._entries.get(key)
        if found is None:
            if len(self._entries) >= self.MAX:
                self._entries.clear()
            found = self._entries[key] = _tenant_defaults(conn, tenant_id)
        return found


def _tenant_defaults(conn: Connection, tenant_id: int) -> _TenantDefaults:
    tags: dict[tuple[str, str], dict[str, Any]] = {}
    tenant: dict[str, Any] | None = None
    for d in store_pol.defaults(conn, tenant_id):
        if (d.tag_key, d.tag_value) == store_pol.TENANT_SCOPE:
            tenant = d.policy
        else:
            tags[(d.tag_key, d.tag_value)] = d.policy
    return tags, tenant


def effective(
    conn: Connection,
    *,
    tenant_id: int,
    tenant: str,
    name: str,
    tags: Mapping[str, str],
    own: Mapping[str, Any],
) -> Resolved:
    """The effective policy a credential with ``tags`` and its own partial policy ``own``
    would have under the tenant's current defaults (reads only). Raises PolicyError naming
    the credential when it would not be valid: call before any side effect."""
    tag_defaults, tenant_default = _tenant_defaults(conn, tenant_id)
    try:
        return resolve(
            own, tags=tags, tag_defaults=tag_defaults, tenant=tenant, tenant_default=tenant_default
        )
    except PolicyError as exc:
        raise PolicyError(f"credential {name!r}: {exc}") from None


def reschedule(
    conn: Connection,
    credential_ids: Sequence[int],
    *,
    now: datetime,
    own: Mapping[int, Mapping[str, Any]] | None = None,
    hints: Mapping[int, datetime | None] | None = None,
    strict: bool = True,
    rotated: bool = False,
    rotated_at: datetime | None = None,
    cache: DefaultsCache | None = None,
) -> dict[int, tuple[datetime | None, str]]:
    """Recompute and store, for each credential: its effective policy (``credentials.policy``),
    its own partial policy (``policy_own``; ``own`` replaces it), ``next_rotation_at`` and
    ``next_rotation_rule``. Returns {id: (next time, rule)}.

    ``hints``: the connector's renewal time per credential (a certificate's), which wins when
    earlier; without ``hints`` an earlier hint already stored is kept. ``strict``: raise
    PolicyError naming the credential when its merged policy is not valid (nothing is
    written then, as the caller's transaction rolls back); otherwise keep its stored policy.

    ``rotated``: the caller is a rotation's finish, which ends any scheduler claim of the
    credential. Otherwise a credential a scheduler has claimed keeps its next_rotation_at
    (the claim's lease) and rule: the claim's rotation, when it finishes, reschedules it.
    A new time earlier than the stored one (or none stored) wakes idle workers
    (``NOTIFY rotator_work``); a finish only moves the time later and sends nothing.
    ``rotated_at``: a rotation's finish at that time (implies ``rotated``): the same write
    also records the rotation (``last_rotated_at`` = ``rotated_at``, ``use_count`` 0,
    ``updated_at``), and the next time counts from it, as if they had been written first.
    ``cache``: the tenants' defaults kept under the policy generation (see DefaultsCache).
    """
    rotated = rotated or rotated_at is not None
    rows = store_pol.schedule_rows(conn, credential_ids)
    claimed = set() if rotated else store_claims.claimed_among(conn, [r.id for r in rows])
    earlier = False
    by_tenant: dict[int, _TenantDefaults] = {}
    writes: list[dict[str, Any]] = []
    out: dict[int, tuple[datetime | None, str]] = {}
    for r in rows:
        if r.tenant_id not in by_tenant:
            by_tenant[r.tenant_id] = (
                _tenant_defaults(conn, r.tenant_id)
                if cache is None
                else cache.get(conn, r.tenant_id, r.policy_generation)
            )
        tag_defaults, tenant_default = by_tenant[r.tenant_id]
        mine = dict(own[r.id]) if own is not None and r.id in own else None
        mine = own_partial(r.policy_own, r.policy) if mine is None else mine
        try:
            resolved = resolve(
                mine,
                tags=r.tags,
                tag_defaults=tag_defaults,
                tenant=r.tenant,
                tenant_default=tenant_default,
            )
        except PolicyError as exc:
            if strict:
                raise PolicyError(f"credential {r.name!r}: {exc}") from None
            resolved = Resolved(RotationPolicy.from_json(r.policy), {})
        when, rule = next_rotation(
            resolved.policy,
            now=now,
            last_rotated_at=rotated_at or r.last_rotated_at or r.created_at,
            use_count=0 if rotated_at is not None else r.use_count,
            seed=r.name,
            sources=resolved.sources,
        )
        hint_rule = HINT_RULE.format(connector=r.connector)
        hint = (hints or {}).get(r.id)
        if hints is None and r.next_rotation_rule == hint_rule:
            hint = r.next_rotation_at
        if hint is not None and (when is None or hint < when):
            when, rule = hint, hint_rule
        if r.id in claimed:
            when, rule = r.next_rotation_at, r.next_rotation_rule or rule
        elif when is not None and (r.next_rotation_at is None or when < r.next_rotation_at):
            earlier = True
        out[r.id] = (when, rule)
        writes.append(
            {
                "b_id": r.id,
                "b_policy": resolved.policy.to_json(),
                "b_own": mine,
                "b_next": when,
                "b_rule": rule,
            }
        )
    store_pol.set_schedules(conn, writes, rotated_at=rotated_at)
    if earlier and not rotated:
        store_claims.notify_work(conn)
    return out


def count_uses(conn: Connection, credential_id: int, n: int, now: datetime) -> int:
    """Add ``n`` uses; when that reaches the effective max uses, the credential becomes due
    now (or at the end of a blackout now is in) in the same transaction, and idle workers are
    woken. Returns the count. A credential a scheduler has claimed is left as it is: its time
    is the claim's lease, and moving it back would let another worker take it over."""
    count, policy, due = store_creds.count_use(conn, credential_id, n)
    if policy is None or policy.get("max_uses") is None:
        return count
    by_use = usage_due(RotationPolicy.from_json(dict(policy)), count, now)
    if (
        by_use is not None
        and (due is None or by_use[0] < due)
        and not store_claims.claimed_among(conn, [credential_id])
    ):
        store_pol.set_due(conn, credential_id, *by_use)
    return count
