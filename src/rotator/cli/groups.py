"""``rotator group ...``: coordinated groups."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

import typer

from rotator.cli.app import (
    JsonOpt,
    emit_json,
    group_app,
    out,
    service,
)
from rotator.domain import names
from rotator.domain.group import Group, parse_order
from rotator.domain.policy import format_duration, parse_duration


def group_view(g: Group) -> dict[str, Any]:
    return {
        "name": g.name,
        "all_or_nothing": g.all_or_nothing,
        "min_offset": format_duration(g.min_offset),
        "members": [{"name": m.name, "after": list(m.after)} for m in g.members],
        "levels": g.levels(),
    }


@group_app.command("add")
def group_add(
    name: str,
    member: Annotated[list[str], typer.Option("--member", help="A credential (repeat).")],
    order: Annotated[
        list[str] | None,
        typer.Option("--order", help="FIRST:THEN (repeat); default: members chained as given."),
    ] = None,
    offset: Annotated[
        str | None, typer.Option("--offset", help="Minimum time between members (5s).")
    ] = None,
    all_or_nothing: Annotated[
        bool, typer.Option("--all-or-nothing", help="A failure rolls back every member.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Define a group of credentials rotated together, in dependency order."""
    names.check_credential_name(name)
    for m in member:
        names.check_credential_name(m)
    g = Group(
        name=name,
        members=parse_order(list(member), list(order or [])),
        all_or_nothing=all_or_nothing,
        min_offset=parse_duration(offset, "--offset") if offset else timedelta(0),
    )
    with service() as svc:
        svc.add_group(g)
    if as_json:
        emit_json(group_view(g))
    else:
        out.print(f"added group {name}: " + " -> ".join("+".join(lv) for lv in g.levels()))


@group_app.command("list")
def group_list(as_json: JsonOpt = False) -> None:
    """List groups."""
    with service() as svc:
        found = svc.list_groups()
    if as_json:
        emit_json([group_view(g) for g in found])
        return
    from rich.table import Table

    table = Table("NAME", "ORDER", "ALL-OR-NOTHING", "OFFSET")
    for g in found:
        table.add_row(
            g.name,
            " -> ".join("+".join(lv) for lv in g.levels()),
            "yes" if g.all_or_nothing else "no",
            format_duration(g.min_offset),
        )
    out.print(table)


@group_app.command("show")
def group_show(name: str, as_json: JsonOpt = False) -> None:
    """Show a group's members and order."""
    with service() as svc:
        g = svc.get_group(name)
    if as_json:
        emit_json(group_view(g))
    else:
        out.print(json.dumps(group_view(g), indent=2))


@group_app.command("remove")
def group_remove(name: str) -> None:
    """Remove a group (its credentials stay)."""
    with service() as svc:
        svc.remove_group(name)
    out.print(f"removed group {name}")
