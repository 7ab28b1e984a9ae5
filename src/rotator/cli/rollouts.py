"""``rotator rollout ...`` and ``rotator rotate --stagger``: durable, staggered rollouts."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from rotator.cli.app import Exit, JsonOpt, app, emit_json, out, service
from rotator.errors import InvalidInput
from rotator.policy.rate import parse_rate
from rotator.policy.rollout import (
    DEFAULT_HALT_PCT,
    DEFAULT_HALT_WINDOW,
    MAX_RATE_PER_MINUTE,
    HaltRule,
    fits,
    parse_halt,
    parse_stagger,
)
from rotator.service import BlockingService, EngineOptions
from rotator.service.rollouts import RolloutView
from rotator.service.rotation import Selection

rollout_app = typer.Typer(
    help="Staggered rollouts: list, status, resume, abort.", no_args_is_help=True
)
app.add_typer(rollout_app, name="rollout")

IdArg = Annotated[str, typer.Argument(metavar="ID", help="The rollout's id.")]


def _rate_text(per_minute: float) -> str:
    if per_minute >= MAX_RATE_PER_MINUTE:
        return "no cap"
    return f"{per_minute:g}/m"


def _summary(v: RolloutView) -> str:
    c = v.counts
    return (
        f"rollout {v.id} {v.status}: {c['rotated']} rotated, {c['failed']} failed, "
        f"{c['pending']} pending, {c['running']} running, {c['skipped']} skipped"
        f" of {v.total}"
    )


def _print_status(v: RolloutView) -> None:
    c = v.counts
    out.print(f"rollout {v.id}")
    out.print(f"  status:       {v.status}")
    sel = v.selector
    what = (
        "all" if sel.get("all") else " ".join(
            [*sel.get("names", []), *(f"--tag {k}={val}" for k, val in sel.get("tags", {}).items())]
        )
    )  # fmt: skip
    out.print(f"  selection:    {what}")
    out.print(f"  stagger:      {v.stagger_s}s, max rate {_rate_text(v.max_per_minute)}")
    out.print(
        "  items:        " + ", ".join(f"{n} {s}" for s, n in c.items()) + f" (total {v.total})"
    )
    nxt = v.next_planned_at.isoformat() if v.next_planned_at else "-"
    out.print(f"  next start:   {nxt}")
    out.print(
        f"  failures:     {sum(v.recent_failed)} of the last {len(v.recent_failed)} finished "
        f"(halts above {v.halt.pct}% of {v.halt.window})"
    )
    if v.halt_reason:
        out.print(f"  halt reason:  {v.halt_reason}")


def start_rollout(
    sel: Selection,
    *,
    stagger: str | None,
    max_rate: str | None,
    halt_at: str | None,
    detach: bool,
    excluded: dict[str, bool],
    options: EngineOptions,
    as_json: bool,
) -> None:
    """``rotate --stagger``: check every option before anything is stored, create the rollout,
    print its id, then run it here unless ``detach``."""
    if stagger is None:
        given = [
            o
            for o, on in (("--max-rate", max_rate), ("--halt-at", halt_at), ("--detach", detach))
            if on
        ]
        raise InvalidInput(f"{given[0]} needs --stagger")
    for opt, on in excluded.items():
        if on:
            raise InvalidInput(f"--stagger excludes {opt}")
    sel.check()
    window = parse_stagger(stagger)
    per_minute = (
        parse_rate(max_rate).per_minute if max_rate is not None else float(MAX_RATE_PER_MINUTE)
    )
    halt = parse_halt(halt_at) if halt_at is not None else HaltRule(
        DEFAULT_HALT_PCT, DEFAULT_HALT_WINDOW
    )  # fmt: skip
    with service(options) as svc:
        view = svc.create_rollout(sel, stagger=window, max_per_minute=per_minute, halt=halt)
        if not as_json:
            out.print(
                f"rollout {view.id}: {view.total} credential(s) over {stagger.strip()}, "
                f"max rate {_rate_text(per_minute)}, halt above {halt.pct}% of the last "
                f"{halt.window}"
            )
            if not fits(view.total, window, per_minute):
                out.print(
                    "note: the rate cap does not let every start fit in the stagger window; "
                    "the rollout runs longer"
                )
            sys.stdout.flush()
        if detach:
            if as_json:
                emit_json(view.to_json())
            else:
                out.print("detached: a worker (rotator worker) carries it on")
            return
        _run_foreground(svc, view, as_json=as_json)


def _run_foreground(svc: BlockingService, view: RolloutView, *, as_json: bool) -> None:
    last = [""]

    def on_tick(v: RolloutView) -> None:
        line = _summary(v)
        if not as_json and v.status == "running" and line != last[0]:
            last[0] = line
            print(line, file=sys.stderr, flush=True)

    try:
        final = svc.run_rollout(view.id, on_tick=on_tick)
    except KeyboardInterrupt:
        print(
            f"rotator: interrupted; rollout {view.id} is kept: `rotator rollout resume "
            f"{view.id}` carries it on",
            file=sys.stderr,
        )
        raise Exit(130) from None
    if as_json:
        emit_json(final.to_json())
    else:
        out.print(_summary(final))
        if final.halt_reason:
            out.print(f"halted: {final.halt_reason}")
    if not final.ok:
        raise Exit(1)


@rollout_app.command("list")
def rollout_list(as_json: JsonOpt = False) -> None:
    """List rollouts, oldest first."""
    with service() as svc:
        found = svc.list_rollouts()
    if as_json:
        emit_json([v.to_json() for v in found])
        return
    from rich.table import Table

    table = Table("ID", "STATUS", "ROTATED", "FAILED", "PENDING", "TOTAL", "CREATED")
    for v in found:
        table.add_row(
            v.id,
            v.status,
            str(v.counts["rotated"]),
            str(v.counts["failed"]),
            str(v.counts["pending"]),
            str(v.total),
            v.created_at.isoformat(timespec="seconds"),
        )
    out.print(table)


@rollout_app.command("status")
def rollout_status(rollout_id: IdArg, as_json: JsonOpt = False) -> None:
    """Counts per state, the next planned start, the failure window and the halt reason."""
    with service() as svc:
        v = svc.rollout_status(rollout_id)
    if as_json:
        emit_json(v.to_json())
    else:
        _print_status(v)


@rollout_app.command("resume")
def rollout_resume(
    rollout_id: IdArg,
    detach: Annotated[
        bool, typer.Option("--detach", help="Clear the halt only; a worker carries it on.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Clear a halt and run the rollout here until it is done or halted again."""
    with service() as svc:
        v = svc.resume_rollout(rollout_id)
        if not as_json:
            out.print(f"resuming rollout {v.id}")
            sys.stdout.flush()
        if detach or v.status != "running":
            if as_json:
                emit_json(v.to_json())
            else:
                out.print(_summary(v))
            if v.status != "running" and not v.ok:
                raise Exit(1)
            return
        _run_foreground(svc, v, as_json=as_json)


@rollout_app.command("abort")
def rollout_abort(rollout_id: IdArg, as_json: JsonOpt = False) -> None:
    """Stop a rollout: its pending items are skipped (items under way finish)."""
    with service() as svc:
        v = svc.abort_rollout(rollout_id)
    if as_json:
        emit_json(v.to_json())
    else:
        out.print(f"aborted rollout {v.id}: {v.counts['skipped']} skipped")
