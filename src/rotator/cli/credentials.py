"""``rotator init`` and ``rotator credential ...``: add, list, show, get, update, remove."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from rotator.cli import session
from rotator.cli.app import (
    TOKEN_ENV,
    BlackoutOpt,
    CronOpt,
    EveryOpt,
    GenOpt,
    GraceOpt,
    JitterOpt,
    JsonOpt,
    MaxAgeOpt,
    MaxUsesOpt,
    OnRiskOpt,
    RiskCooldownOpt,
    SetOpt,
    SinkOpt,
    StdinOpt,
    TagOpt,
    TzOpt,
    WindowOpt,
    app,
    credential_app,
    emit_json,
    out,
    pairs,
    policy_input,
    use_cases,
    value_input,
)
from rotator.config import Settings
from rotator.domain import names
from rotator.errors import (
    InvalidInput,
)
from rotator.service import BlockingService
from rotator.service.views import credential_view


@app.command()
def init() -> None:
    """Create the store and the master key (idempotent)."""
    if os.environ.get(TOKEN_ENV):
        raise InvalidInput(f"rotator init is the store owner's: unset {TOKEN_ENV}")
    settings = Settings.from_env()
    svc, created = BlockingService.init(settings)
    try:
        where = svc.db.safe_url
        if created:
            how = (
                "passphrase (ROTATOR_PASSPHRASE)"
                if settings.passphrase
                else f"key file {settings.key_file}"
            )
            out.print(f"initialized rotator store at {where}; master key: {how}")
        else:
            out.print(f"rotator store at {where} is initialized already")
    finally:
        svc.close()


@credential_app.command("add")
def credential_add(
    name: Annotated[str, typer.Argument(help="Credential name, e.g. prod/payments/db.")],
    connector: Annotated[str, typer.Option("--connector", "-c", help="Connector kind.")],
    set_: SetOpt = None,
    tag: TagOpt = None,
    every: EveryOpt = None,
    cron: CronOpt = None,
    window: WindowOpt = None,
    grace: GraceOpt = None,
    max_uses: MaxUsesOpt = None,
    on_risk: OnRiskOpt = None,
    risk_cooldown: RiskCooldownOpt = None,
    jitter: JitterOpt = None,
    blackout: BlackoutOpt = None,
    tz: TzOpt = None,
    max_age: MaxAgeOpt = None,
    value_stdin: StdinOpt = False,
    generate: GenOpt = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the target before storing anything.")
    ] = False,
    sink: SinkOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a credential. The value comes only from --value-stdin or --generate."""
    names.check_credential_name(name)
    settings, tags = pairs(set_, "--set"), pairs(tag, "--tag")
    policy = policy_input(
        every=every,
        cron=cron,
        window=window,
        grace=grace,
        max_uses=max_uses,
        on_risk=on_risk,
        risk_cooldown=risk_cooldown,
        jitter=jitter,
        blackout=blackout,
        tz=tz,
        max_age=max_age,
    )  # checked before reading stdin
    value = value_input(value_stdin, generate)
    with use_cases() as svc:
        cred = svc.add_credential(
            name,
            connector,
            settings=settings,
            tags=tags,
            policy=policy,
            value=value,
            verify=verify,
            sinks=sink or (),
        )
    if as_json:
        emit_json(credential_view(cred))
    else:
        v = credential_view(cred)["current_version"]
        out.print(
            f"added {cred.name} ({cred.connector})"
            + (f", version {v} CURRENT" if v else ", no value yet")
        )


@credential_app.command("list")
def credential_list(
    tag: TagOpt = None,
    due: Annotated[bool, typer.Option("--due", help="Only those due now.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List credentials (metadata only)."""
    tags = pairs(tag, "--tag")
    with use_cases() as svc:
        creds = svc.list_credentials(tags=tags, due=due)
    views = [credential_view(c) for c in creds]
    if as_json:
        emit_json(views)
        return
    from rich.table import Table

    table = Table("NAME", "CONNECTOR", "VERSION", "POLICY", "NEXT ROTATION", "TAGS")
    for c, v in zip(creds, views, strict=True):
        table.add_row(
            c.name,
            c.connector,
            str(v["current_version"] or "-"),
            c.policy.describe(),
            v["next_rotation_at"] or "-",
            ",".join(f"{k}={x}" for k, x in c.tags.items()),
        )
    out.print(table)
    out.print(f"{len(creds)} credential(s)")


@credential_app.command("show")
def credential_show(name: str, as_json: JsonOpt = False) -> None:
    """Show a credential's metadata and versions with stages, never values."""
    with use_cases() as svc:
        cred = svc.show(name)
    v = credential_view(cred)
    if as_json:
        emit_json(v)
        return
    for key in (
        "name",
        "tenant",
        "connector",
        "created_at",
        "updated_at",
        "last_rotated_at",
        "next_rotation_at",
        "next_rotation_rule",
        "use_count",
    ):
        out.print(f"{key:17} {v[key] if v[key] is not None else '-'}")
    out.print(f"{'policy':17} {cred.policy.describe()}")
    out.print(f"{'settings':17} {json.dumps(v['settings'])}")
    out.print(f"{'tags':17} {json.dumps(v['tags'])}")
    from rich.table import Table

    table = Table("VERSION", "STAGE", "CREATED", "EXPIRES")
    for ver in v["versions"]:
        table.add_row(
            str(ver["version"]), ver["stage"], ver["created_at"], ver["expires_at"] or "-"
        )
    out.print(table)


@credential_app.command("get")
def credential_get(
    name: str,
    stage: Annotated[
        str, typer.Option("--stage", help="CURRENT, PREVIOUS or PENDING.")
    ] = "CURRENT",
) -> None:
    """Print a credential's value (audited)."""
    # The console script runs the plain form of this command in rotator.cli.fast, through
    # the same session functions.
    st = session.parse_stage(stage)
    with use_cases() as svc:
        value = svc.get_value(name, st)
    session.write_value(value)


@credential_app.command("update")
def credential_update(
    name: str,
    connector: Annotated[
        str | None, typer.Option("--connector", "-c", help="Connector kind.")
    ] = None,
    set_: SetOpt = None,
    tag: TagOpt = None,
    every: EveryOpt = None,
    cron: CronOpt = None,
    window: WindowOpt = None,
    grace: GraceOpt = None,
    max_uses: MaxUsesOpt = None,
    on_risk: OnRiskOpt = None,
    risk_cooldown: RiskCooldownOpt = None,
    jitter: JitterOpt = None,
    blackout: BlackoutOpt = None,
    tz: TzOpt = None,
    max_age: MaxAgeOpt = None,
    value_stdin: StdinOpt = False,
    generate: GenOpt = False,
    sink: SinkOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a credential; --set and --tag replace all settings / tags when given."""
    names.check_credential_name(name)
    settings = pairs(set_, "--set") if set_ else None
    tags = pairs(tag, "--tag") if tag else None
    policy = policy_input(
        every=every,
        cron=cron,
        window=window,
        grace=grace,
        max_uses=max_uses,
        on_risk=on_risk,
        risk_cooldown=risk_cooldown,
        jitter=jitter,
        blackout=blackout,
        tz=tz,
        max_age=max_age,
    )  # checked before reading stdin
    value = value_input(value_stdin, generate)
    with use_cases() as svc:
        cred = svc.update_credential(
            name,
            connector=connector,
            settings=settings,
            tags=tags,
            policy=policy,
            value=value,
            sinks=sink,
        )
    if as_json:
        emit_json(credential_view(cred))
    else:
        out.print(f"updated {cred.name}")


@credential_app.command("used")
def credential_used(
    name: str,
    count: Annotated[int, typer.Option("--count", help="How many uses to record.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Record uses an application reports (drives --max-uses; audited)."""
    names.check_credential_name(name)
    with use_cases() as svc:
        cred = svc.report_usage(name, count)
    if as_json:
        emit_json(credential_view(cred))
        return
    due = credential_view(cred)["next_rotation_at"] or "-"
    out.print(f"{cred.name}: {cred.use_count} use(s); next rotation {due}")


@credential_app.command("remove")
def credential_remove(name: str) -> None:
    """Remove a credential and all its versions."""
    with use_cases() as svc:
        svc.remove_credential(name)
    out.print(f"removed {name}")
