"""``rotator rotate``: rotate a selection or a group now, or print the plan."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rotator.cli.app import (
    Exit,
    JsonOpt,
    TagOpt,
    app,
    emit_json,
    out,
    pairs,
    remote_url,
    service,
    use_cases,
)
from rotator.domain import names
from rotator.errors import (
    InvalidInput,
)
from rotator.service import (
    BatchResult,
    Outcome,
    RotationResult,
    StillValid,
    rotation,
)
from rotator.service.rotation import Selection

if TYPE_CHECKING:
    from rotator.cli.port import UseCases


@app.command()
def rotate(
    names_: Annotated[
        list[str] | None, typer.Argument(metavar="[NAME]...", help="Credentials.")
    ] = None,
    tag: TagOpt = None,
    group: Annotated[str | None, typer.Option("--group", help="A coordinated group.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every credential.")] = False,
    emergency: Annotated[
        bool, typer.Option("--emergency", help="Highest priority; revoke the old value at once.")
    ] = False,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="Rotations at once (default 16).")
    ] = None,
    per_target: Annotated[
        int | None, typer.Option("--per-target", help="Rotations at once per target.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change nothing.")
    ] = False,
    stagger: Annotated[
        str | None,
        typer.Option("--stagger", help="A durable rollout: spread the starts over DURATION."),
    ] = None,
    max_rate: Annotated[
        str | None, typer.Option("--max-rate", help="With --stagger: at most N/m (or /s, /h).")
    ] = None,
    halt_at: Annotated[
        str | None,
        typer.Option(
            "--halt-at", help="With --stagger: halt above P% failed of the last N (20%/10)."
        ),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="With --stagger: create it; a worker runs it.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rotate credentials now: create -> set -> test -> finish, rolling back on failure.

    With --stagger: create a durable rollout (see `rotator rollout`) and run it here until it
    is done or halted (Ctrl-C leaves it resumable), or with --detach only create it."""

    sel = Selection(names=names_ or (), tags=pairs(tag, "--tag") or None, all=all_)
    if remote_url() is not None:
        local_only = {
            "--group": group is not None,
            "--stagger": stagger is not None,
            "--max-rate": max_rate is not None,
            "--halt-at": halt_at is not None,
            "--detach": detach,
            "--concurrency": concurrency is not None,
            "--per-target": per_target is not None,
        }
        for flag, given in local_only.items():
            if given:
                raise InvalidInput(
                    f"`rotator rotate {flag}` runs on the server's host; unset ROTATOR_URL to "
                    "run it locally"
                )
    if stagger is not None or max_rate is not None or halt_at is not None or detach:
        from rotator.cli.rollouts import start_rollout

        start_rollout(
            sel,
            stagger=stagger,
            max_rate=max_rate,
            halt_at=halt_at,
            detach=detach,
            excluded={"--group": group is not None, "--emergency": emergency, "--dry-run": dry_run},
            options=rotation.options_from_env(concurrency, per_target),
            as_json=as_json,
        )
        return
    if group is not None:
        if names_ or tag or all_:
            raise InvalidInput("--group excludes NAMEs, --tag and --all")
        names.check_credential_name(group)
    else:
        sel.check()
    options = rotation.options_from_env(concurrency, per_target)
    if group is not None:
        with service(options) as local:
            if dry_run:
                _print_plan(local.plan_group(group, emergency=emergency), as_json)
                return
            result = local.rotate_group(group, emergency=emergency)
        _print_result(result, as_json)
        return
    with use_cases(options) as svc:
        if dry_run:
            _print_plan(svc.plan(sel, emergency=emergency), as_json)
            return
        result = _rotate_with_progress(svc, sel, emergency, show=not as_json)
    _print_result(result, as_json)


def _print_plan(steps: list[dict[str, Any]], as_json: bool) -> None:
    """The plan as `rotate --dry-run` prints it."""
    if as_json:
        emit_json({"dry_run": True, "plan": steps})
        return
    from rich.table import Table

    table = Table(
        "ORDER", "LEVEL", "NAME", "CONNECTOR", "TARGET", "STRATEGY", "TRIGGER", "GRACE",
        "AFTER",
    )  # fmt: skip
    for p in steps:
        table.add_row(
            str(p["order"]),
            str(p["level"]) if p.get("level") is not None else "refused",
            p["name"],
            p["connector"],
            p["target"],
            p["strategy"],
            p["trigger"],
            f"{p['grace_s']}s",
            ", ".join(p.get("after") or []) or "-",
        )
    out.print(table)
    refused = [p for p in steps if p.get("refused")]
    for p in refused:
        out.print(f"[red]refused[/red] {p['name']}: {p['refused']}")
    out.print(f"dry run: {len(steps) - len(refused)} credential(s) would rotate; nothing changed")


def _print_result(result: BatchResult, as_json: bool) -> None:
    """The result as `rotate` prints it; exit 1 unless it is ok."""
    if as_json:
        emit_json(result.to_json())
    else:
        data = result.to_json()
        for f in data["failed"]:
            out.print(f"[red]failed[/red] {f['name']}: {f['error']}")
        for k in data["skipped"]:
            out.print(f"skipped {k['name']}: {k['reason']}")
        for w in data["warnings"]:
            out.print(f"[yellow]warning[/yellow] {w['name']}: {w['warning']}")
        print_still_valid(result.still_valid or ())
        if result.sweep_error is not None:
            out.print(f"[yellow]warning[/yellow] {result.sweep_error}")
        out.print(
            f"rotated {len(data['rotated'])}, failed {len(data['failed'])} "
            f"({len(data['rolled_back'])} rolled back) in {data['duration_s']:.2f}s"
            + (
                f"; {len(data['still_valid'])} old value(s) still valid"
                if data.get("still_valid")
                else ""
            )
        )
    if not result.ok:
        raise Exit(1)


def print_still_valid(values: Iterable[StillValid]) -> None:
    """One line per old value still valid on its target after an emergency: its revocation
    failed (with the connector's message), or it is queued but was not attempted yet."""
    for v in values:
        if v.error is None:
            why = "not revoked yet; queued for revocation"
        else:
            why = f"revocation failed ({v.error}); queued for retry"
        out.print(f"[red]still valid[/red] {v.name} version {v.version}: {why}")


def _rotate_with_progress(
    svc: UseCases, sel: Selection, emergency: bool, *, show: bool
) -> BatchResult:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    err = Console(stderr=True)
    if not (show and err.is_terminal):
        return svc.rotate(sel, emergency=emergency)
    columns = (
        TextColumn("rotating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f}/s  failed {task.fields[failed]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("rotate", total=None, rate=0.0, failed=0)
        started = time.monotonic()
        failed = 0

        def on_selected(n: int) -> None:
            bar.update(task, total=n)

        def on_result(r: RotationResult) -> None:
            nonlocal failed
            failed += r.outcome is not Outcome.ROTATED
            done = bar.tasks[0].completed + 1
            bar.update(
                task, advance=1, failed=failed, rate=done / max(time.monotonic() - started, 1e-6)
            )

        return svc.rotate(
            sel,
            emergency=emergency,
            progress=on_result,
            on_selected=on_selected,
        )
