"""Use cases for policy defaults by tag and tenant: set, list, remove.

A default is a partial policy (only the fields given) for one scope: a tag pair
(``--tag env=prod``) or the tenant (``--tenant T``). A credential's effective policy takes,
per field, its own setting, else a matching tag default, else the tenant default, else the
built-in default (``rotator.policy.defaults``). Setting or removing a default recomputes the
effective policy and next rotation of every credential it applies to, in the same
transaction as the change and its audit entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import Connection

from rotator.domain import names
from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.errors import InvalidInput, NotFound, PolicyError
from rotator.policy import check_partial
from rotator.service.credentials import RotatorService
from rotator.service.inputs import PolicyInput
from rotator.store import policies as store_pol


@dataclass(frozen=True, slots=True)
class PolicyDefault:
    """One stored default: its scope and the fields it sets (``RotationPolicy.to_json``
    keys). ``tag`` is None for the tenant-wide default."""

    tenant: str
    tag: tuple[str, str] | None
    policy: dict[str, Any]
    affected: int = 0  # credentials recomputed by the call that returned it

    @property
    def scope(self) -> str:
        return f"tenant {self.tenant}" if self.tag is None else f"tag {self.tag[0]}={self.tag[1]}"


async def _scope(
    svc: RotatorService, tag: tuple[str, str] | None, tenant: str | None, principal: Principal
) -> tuple[str, str]:
    if (tag is None) == (tenant is None):
        raise InvalidInput("give either --tag KEY=VALUE or --tenant TENANT")
    if tenant is not None:
        names.check_tenant_name(tenant)
        # Another tenant than the one it acts in: refused and audited like every denial.
        await svc.authorize_tenant(principal, tenant, Action.POLICY_WRITE)
        if tenant != principal.tenant:
            # The owner acts in one tenant per call (ROTATOR_TENANT); a default set here
            # would land in that one, not in ``tenant``.
            raise InvalidInput(
                f"--tenant {tenant!r}: {principal.name!r} acts in tenant {principal.tenant!r}"
            )
        return store_pol.TENANT_SCOPE
    assert tag is not None
    return tag


async def set_default(
    svc: RotatorService,
    *,
    policy: PolicyInput,
    tag: tuple[str, str] | None = None,
    tenant: str | None = None,
    principal: Principal = LOCAL_PRINCIPAL,
) -> PolicyDefault:
    """Set fields of the default for a tag pair or the principal's tenant (merged onto the
    fields it set before; --every/--cron replace each other as on a credential). Audited as
    ``policy.set``. Raises InvalidInput (no scope or both, no option, a bad option, another
    tenant), PolicyError (naming a credential whose merged policy would not be valid, or
    the default when it is not valid on its own over the tenant default); nothing is stored
    then. Needs POLICY_WRITE tenant-wide."""
    await svc.authorize(principal, Action.POLICY_WRITE)
    scope = await _scope(svc, tag, tenant, principal)
    patch = policy.partial()
    if not patch:
        raise InvalidInput("policy set needs at least one policy option (--every, --grace, ...)")
    t = await svc.tenant(principal.tenant)
    now = svc.clock()

    def write(conn: Connection) -> PolicyDefault:
        merged = {**(store_pol.get_default(conn, t.id, scope) or {}), **patch}
        check_partial({k: v for k, v in merged.items() if k != "window"})
        store_pol.put_default(conn, t.id, scope, merged, now)
        ids = store_pol.affected(conn, t.id, scope)
        svc.kernel.reschedule(conn, ids)  # first: its error names a credential it breaks
        out = PolicyDefault(t.name, None if scope == store_pol.TENANT_SCOPE else scope, merged)
        # Valid on its own too (a credential added later gets it): over the tenant default
        # for a tag default (e.g. a --window needs a --cron here or there).
        under = None
        if scope != store_pol.TENANT_SCOPE:
            under = store_pol.get_default(conn, t.id, store_pol.TENANT_SCOPE)
        try:
            check_partial({**(under or {}), **merged})
        except PolicyError as exc:
            raise PolicyError(f"policy default for {out.scope}: {exc}") from None
        svc.kernel.audit(
            conn,
            principal,
            "policy.set",
            None,
            None,
            {"scope": out.scope, "policy": patch, "credentials": len(ids)},
        )
        return PolicyDefault(out.tenant, out.tag, merged, len(ids))

    return await svc.engine.writer.run(write)


def _tag(key: str, value: str) -> tuple[str, str] | None:
    return None if (key, value) == store_pol.TENANT_SCOPE else (key, value)


async def list_defaults(
    svc: RotatorService, principal: Principal = LOCAL_PRINCIPAL
) -> list[PolicyDefault]:
    """The defaults of the principal's tenant: the tenant-wide one first, then by tag.
    Needs POLICY_READ tenant-wide."""
    await svc.authorize(principal, Action.POLICY_READ)
    t = await svc._existing_tenant(principal)
    if t is None:
        return []
    rows = await svc.engine.runtime.read(partial(store_pol.defaults, tenant_id=t.id))
    return [
        PolicyDefault(
            t.name,
            _tag(r.tag_key, r.tag_value),
            r.policy,
        )
        for r in rows
    ]


async def remove_default(
    svc: RotatorService,
    *,
    tag: tuple[str, str] | None = None,
    tenant: str | None = None,
    principal: Principal = LOCAL_PRINCIPAL,
) -> PolicyDefault:
    """Remove the default of a scope and recompute the credentials it applied to. Audited as
    ``policy.remove``. Raises NotFound when the scope has no default. Needs POLICY_WRITE
    tenant-wide."""
    await svc.authorize(principal, Action.POLICY_WRITE)
    scope = await _scope(svc, tag, tenant, principal)
    t = await svc.tenant(principal.tenant)

    def write(conn: Connection) -> PolicyDefault:
        before = store_pol.get_default(conn, t.id, scope)
        out = PolicyDefault(t.name, None if scope == store_pol.TENANT_SCOPE else scope, {})
        if before is None:
            raise NotFound(f"no policy default for {out.scope}")
        store_pol.delete_default(conn, t.id, scope)
        ids = store_pol.affected(conn, t.id, scope)
        svc.kernel.reschedule(conn, ids)
        svc.kernel.audit(
            conn,
            principal,
            "policy.remove",
            None,
            None,
            {"scope": out.scope, "policy": before, "credentials": len(ids)},
        )
        return PolicyDefault(out.tenant, out.tag, before, len(ids))

    return await svc.engine.writer.run(write)
