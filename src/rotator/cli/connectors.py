"""``rotator connector ...``: the installed connectors and their settings (list, describe).

Reads no store: it describes the code installed here (built-ins and ``rotator.connectors``
entry-point plugins), through rotator.service.connectors.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rotator.cli.app import Exit, JsonOpt, connector_app, emit_json, fail, out

if TYPE_CHECKING:
    from rotator.service.connectors import ConnectorInfo


def _strategies(info: ConnectorInfo) -> str:
    shown = []
    for s in info.strategies:
        text = (
            s.strategy
            if s.mode is None or s.mode == s.strategy
            else f"{s.strategy} (mode={s.mode})"
        )
        shown.append(f"{text} (default)" if s.default and len(info.strategies) > 1 else text)
    return ", ".join(shown)


def _default(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower()


@connector_app.command("list")
def connector_list(as_json: JsonOpt = False) -> None:
    """List the installed connectors (built-in and plugins), their strategies and settings."""
    # A plugin that cannot be loaded is listed with its error; the exit status is 0 all the
    # same (one broken package must not hide the others).
    # Imported here, not at start-up: only this command needs the connectors' models.
    from rotator.service.connectors import list_connectors

    found = list_connectors()
    if as_json:
        emit_json([info.to_json() for info in found])
        return
    from rich.table import Table
    from rich.text import Text

    table = Table("KIND", "SOURCE", "STRATEGY", "SETTINGS")
    for info in found:
        if info.error is not None:
            row = (info.kind, info.source, "-", f"cannot be loaded: {info.error}")
        else:
            row = (info.kind, info.source, _strategies(info), info.settings_summary)
        # Text cells: a plugin's error or name is shown as it is, never read as markup.
        table.add_row(*(Text(cell) for cell in row))
    out.print(table)
    out.print(f"{len(found)} connector(s); `rotator connector describe KIND` for the settings")


@connector_app.command("describe")
def connector_describe(
    kind: Annotated[str, typer.Argument(help="The connector's kind, e.g. postgres.")],
    as_json: JsonOpt = False,
) -> None:
    """Print a connector's settings (type, default, required, description) and strategies."""
    # Unknown kind: exit 2 naming the installed ones; a plugin that cannot be loaded: exit 1
    # with its error.
    from rotator.service.connectors import describe_connector

    info = describe_connector(kind)
    if as_json:
        emit_json(info.to_json())
        if info.error is not None:
            raise Exit(1)
        return
    if info.error is not None:
        fail(f"connector {info.kind!r} cannot be loaded: {info.error}", 1)
    lines = [f"{info.kind} ({info.source}): {info.summary}".rstrip(": ")]
    lines.append(f"strategy: {_strategies(info)}")
    lines.append("settings (--set KEY=VALUE):")
    for s in info.settings:
        need = "required" if s.required else f"default {_default(s.default)}"
        desc = f" - {s.description}" if s.description else ""
        lines.append(f"  {s.name}: {s.type}, {need}{desc}")
    for line in lines:
        out.print(line, markup=False)
