"""``rotator principal ...``, ``rotator token ...`` and ``rotator tenant ...``.

``token create`` prints the token alone on standard output (it is shown this once); no other
command prints a token, and listings never do.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated, Any

import typer

from rotator.cli.app import (
    JsonOpt,
    emit_json,
    out,
    principal_app,
    service,
    tenant_app,
    token_app,
)
from rotator.domain.access import PrincipalInfo, TokenInfo
from rotator.domain.policy import parse_duration


def _ts(d: datetime | None) -> str | None:
    return None if d is None else d.isoformat()


def _principal_view(p: PrincipalInfo) -> dict[str, Any]:
    return {
        "name": p.name,
        "tenant": p.tenant,
        "kind": p.kind.value,
        "grants": [{"role": g.role.value, "scope": g.scope} for g in p.grants],
        "created_at": _ts(p.created_at),
        "created_by": p.created_by,
    }


def _token_view(t: TokenInfo, now: datetime) -> dict[str, Any]:
    return {
        "id": t.id,
        "principal": t.principal,
        "tenant": t.tenant,
        "state": t.state(now),
        "created_at": _ts(t.created_at),
        "created_by": t.created_by,
        "expires_at": _ts(t.expires_at),
        "revoked_at": _ts(t.revoked_at),
        "last_used_at": _ts(t.last_used_at),
    }


# -- principals ------------------------------------------------------------------------------


@principal_app.command("add")
def principal_add(
    name: Annotated[str, typer.Argument(help="Principal name, e.g. alice or ci@deploy.")],
    role: Annotated[str, typer.Option("--role", help="admin, operator, auditor, reader or app.")],
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Its tenant (default: yours).")
    ] = None,
    scope: Annotated[
        str, typer.Option("--scope", help="Credential names the role covers (a glob).")
    ] = "*",
    kind: Annotated[str, typer.Option("--kind", help="person or service.")] = "person",
    as_json: JsonOpt = False,
) -> None:
    """Add a principal with a role over the credentials its scope matches."""
    with service() as svc:
        p = svc.add_principal(name, role, scope=scope, kind=kind, tenant=tenant)
    if as_json:
        emit_json(_principal_view(p))
        return
    g = p.grants[0]
    out.print(f"principal {p.name} added to tenant {p.tenant}: {g.role.value} on {g.scope}")


@principal_app.command("list")
def principal_list(as_json: JsonOpt = False) -> None:
    """List the principals of the tenant with their grants."""
    with service() as svc:
        found = svc.list_principals()
    if as_json:
        emit_json([_principal_view(p) for p in found])
        return
    from rich.table import Table

    table = Table("NAME", "KIND", "GRANTS", "CREATED", "BY")
    for p in found:
        grants = ", ".join(f"{g.role.value}:{g.scope}" for g in p.grants)
        table.add_row(p.name, p.kind.value, grants, _ts(p.created_at) or "-", p.created_by)
    out.print(table)
    out.print(f"{len(found)} principal(s)")


@principal_app.command("remove")
def principal_remove(name: str) -> None:
    """Remove a principal; its tokens stop working at once."""
    with service() as svc:
        svc.remove_principal(name)
    out.print(f"principal {name} removed")


# -- tokens ----------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    principal: Annotated[str, typer.Argument(help="The principal the token acts as.")],
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime, e.g. 90d (default: none).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token; it is printed alone on standard output, this once."""
    lifetime = None if expires is None else parse_duration(expires, "--expires")
    with service() as svc:
        info, token = svc.create_token(principal, expires=lifetime)
    if as_json:
        emit_json({"id": info.id, "token": token, "expires_at": _ts(info.expires_at)})
        return
    # Plain write, not rich: nothing may wrap or style the one thing on the line.
    sys.stdout.write(token + "\n")


@token_app.command("list")
def token_list(
    principal: Annotated[
        str | None, typer.Option("--principal", help="Only this principal's tokens.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List tokens (their ids and dates; never a token)."""
    with service() as svc:
        found = svc.list_tokens(principal)
        now = svc.clock()
    views = [_token_view(t, now) for t in found]
    if as_json:
        emit_json(views)
        return
    from rich.table import Table

    table = Table("ID", "PRINCIPAL", "STATE", "CREATED", "EXPIRES", "LAST USED")
    for v in views:
        table.add_row(
            v["id"],
            v["principal"],
            v["state"],
            v["created_at"],
            v["expires_at"] or "-",
            v["last_used_at"] or "-",
        )
    out.print(table)
    out.print(f"{len(views)} token(s)")


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Revoke a token: it is refused from now on."""
    with service() as svc:
        info = svc.revoke_token(token_id)
    out.print(f"token {info.id} of {info.principal} revoked")


# -- tenants ---------------------------------------------------------------------------------


@tenant_app.command("add")
def tenant_add(name: str) -> None:
    """Add a tenant with its own data key."""
    with service() as svc:
        t = svc.add_tenant(name)
    out.print(f"tenant {t.name} added")


@tenant_app.command("list")
def tenant_list(as_json: JsonOpt = False) -> None:
    """List the tenants."""
    with service() as svc:
        found = svc.list_tenants()
    if as_json:
        emit_json([{"name": t.name, "created_at": _ts(t.created_at)} for t in found])
        return
    from rich.table import Table

    table = Table("NAME", "CREATED")
    for t in found:
        table.add_row(t.name, _ts(t.created_at) or "-")
    out.print(table)
    out.print(f"{len(found)} tenant(s)")
