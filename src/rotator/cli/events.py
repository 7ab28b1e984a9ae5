"""``rotator event report|list``: risk events and what they did to each credential."""

from __future__ import annotations

from typing import Annotated

import typer

from rotator.cli.app import Exit, JsonOpt, TagOpt, app, emit_json, out, pairs, use_cases
from rotator.cli.rotate import print_still_valid
from rotator.service import EventInput

event_app = typer.Typer(
    help="Risk events: report one (rotate, emergency or notify per the credentials' rules).",
    no_args_is_help=True,
)
app.add_typer(event_app, name="event")


@event_app.command("report")
def event_report(
    kind: Annotated[
        str, typer.Option("--kind", help="What happened, e.g. leak.github (letters, digits, ._-).")
    ],
    severity: Annotated[str, typer.Option("--severity", help="low, medium, high or critical.")],
    credential: Annotated[
        str | None, typer.Option("--credential", help="The credential concerned.")
    ] = None,
    tag: TagOpt = None,
    detail: Annotated[
        str | None,
        typer.Option(
            "--detail",
            help="Free text, at most 1,000 characters. It is kept in the append-only audit "
            "log, which cannot be edited: never paste a secret or a leaked value here.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Report a risk event; each matched credential's risk rules decide what happens.
    Exit 1 if a rotation it started failed or an old value is still valid."""
    event = EventInput(
        kind=kind,
        severity=severity,
        credential=credential,
        tags=pairs(tag, "--tag") or None,
        detail=detail,
    )
    event.check()  # before opening the store
    with use_cases() as svc:
        report = svc.report_event(event)
    if as_json:
        emit_json(report.to_json())
    else:
        for d in report.decisions:
            if d.outcome is None:
                result = "audited only"
            elif d.error:
                result = f"[red]{d.outcome.value}[/red]: {d.error}"
            else:
                result = f"{d.outcome.value} (version {d.version})"
            out.print(f"{d.name}: {d.action.value} - {d.reason} -> {result}")
        print_still_valid(report.still_valid)
        if report.sweep_error is not None:
            out.print(f"[yellow]warning[/yellow] {report.sweep_error}")
        out.print(
            f"event {report.event_id} ({report.kind}, {report.severity.value}): "
            f"{len(report.decisions)} credential(s) matched"
        )
    if not report.ok:
        raise Exit(1)


@event_app.command("list")
def event_list(
    limit: Annotated[int, typer.Option("--limit", help="Newest N events.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Recent risk events, newest first, with the decision for each credential."""
    with use_cases() as svc:
        events = svc.list_events(limit)
    if as_json:
        emit_json(
            [
                {
                    "id": e.id,
                    "kind": e.kind,
                    "severity": e.severity,
                    "selector": e.selector,
                    "detail": e.detail,
                    "reporter": e.reporter,
                    "created_at": e.created_at.isoformat(),
                    "decisions": [
                        {
                            "name": d.credential,
                            "action": d.action,
                            "reason": d.reason,
                            "duplicate_of": d.duplicate_of,
                            "outcome": d.outcome,
                            "version": d.version,
                            "error": d.error,
                        }
                        for d in e.decisions
                    ],
                }
                for e in events
            ]
        )
        return
    from rich.table import Table

    table = Table("EVENT", "AT", "KIND", "SEVERITY", "CREDENTIAL", "ACTION", "OUTCOME", "REASON")
    for e in events:
        at = e.created_at.isoformat(timespec="seconds")
        if not e.decisions:
            table.add_row(str(e.id), at, e.kind, e.severity, "-", "-", "-", "no credential matched")
        for d in e.decisions:
            table.add_row(
                str(e.id), at, e.kind, e.severity, d.credential, d.action, d.outcome or "-",
                d.reason,
            )  # fmt: skip
    out.print(table)
