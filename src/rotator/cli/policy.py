"""``rotator policy ...``: policy defaults by tag and tenant (set, list, remove)."""

from __future__ import annotations

from typing import Annotated

import typer

from rotator.cli.app import (
    BlackoutOpt,
    CronOpt,
    EveryOpt,
    GraceOpt,
    JitterOpt,
    JsonOpt,
    MaxAgeOpt,
    MaxUsesOpt,
    OnRiskOpt,
    RiskCooldownOpt,
    TzOpt,
    WindowOpt,
    emit_json,
    out,
    pairs,
    policy_app,
    policy_input,
    service,
)
from rotator.errors import InvalidInput
from rotator.service.views import partial_policy_view

ScopeTagOpt = Annotated[
    str | None, typer.Option("--tag", help="The default applies to credentials with tag K=V.")
]
ScopeTenantOpt = Annotated[
    str | None, typer.Option("--tenant", help="The default applies to the whole tenant.")
]


def _tag(tag: str | None) -> tuple[str, str] | None:
    if tag is None:
        return None
    ((key, value),) = pairs([tag], "--tag").items()
    return key, value


def _check_scope(tag: str | None, tenant: str | None) -> None:
    if (tag is None) == (tenant is None):
        raise InvalidInput("give either --tag KEY=VALUE or --tenant TENANT")


@policy_app.command("set")
def policy_set(
    tag: ScopeTagOpt = None,
    tenant: ScopeTenantOpt = None,
    every: EveryOpt = None,
    cron: CronOpt = None,
    window: WindowOpt = None,
    jitter: JitterOpt = None,
    blackout: BlackoutOpt = None,
    tz: TzOpt = None,
    max_age: MaxAgeOpt = None,
    grace: GraceOpt = None,
    max_uses: MaxUsesOpt = None,
    on_risk: OnRiskOpt = None,
    risk_cooldown: RiskCooldownOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set policy defaults for a tag or the tenant; credentials override them field by field."""
    _check_scope(tag, tenant)
    scope = _tag(tag)
    policy = policy_input(
        every=every,
        cron=cron,
        window=window,
        grace=grace,
        max_uses=max_uses,
        jitter=jitter,
        blackout=blackout,
        tz=tz,
        max_age=max_age,
        on_risk=on_risk,
        risk_cooldown=risk_cooldown,
    )
    with service() as svc:
        d = svc.set_policy_default(policy=policy, tag=scope, tenant=tenant)
    if as_json:
        emit_json(
            {"scope": d.scope, "policy": partial_policy_view(d.policy), "affected": d.affected}
        )
        return
    out.print(f"policy default for {d.scope} set; {d.affected} credential(s) rescheduled")


@policy_app.command("list")
def policy_list(as_json: JsonOpt = False) -> None:
    """List the policy defaults of the tenant."""
    with service() as svc:
        found = svc.list_policy_defaults()
    views = [(d.scope, partial_policy_view(d.policy)) for d in found]
    if as_json:
        emit_json([{"scope": scope, "policy": pol} for scope, pol in views])
        return
    from rich.table import Table

    table = Table("SCOPE", "POLICY")
    for scope, pol in views:
        table.add_row(scope, ", ".join(f"{k}={x}" for k, x in pol.items()))
    out.print(table)
    out.print(f"{len(views)} default(s)")


@policy_app.command("remove")
def policy_remove(tag: ScopeTagOpt = None, tenant: ScopeTenantOpt = None) -> None:
    """Remove the policy default of a tag or the tenant."""
    _check_scope(tag, tenant)
    scope = _tag(tag)
    with service() as svc:
        d = svc.remove_policy_default(tag=scope, tenant=tenant)
    out.print(f"policy default for {d.scope} removed; {d.affected} credential(s) rescheduled")
