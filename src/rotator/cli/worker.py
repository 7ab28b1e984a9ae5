"""``rotator worker`` and ``rotator recover``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from rotator.cli.app import (
    app,
    out,
    service,
)
from rotator.service import (
    rotation,
)


@app.command()
def worker(
    poll: Annotated[float, typer.Option("--poll", min=0.1, help="Longest sleep, seconds.")] = 5.0,
    catch_up_window: Annotated[
        str | None,
        typer.Option(
            "--catch-up-window",
            help="Spread credentials found overdue (after downtime) over this long, e.g. 1h "
            "(default 1h).",
        ),
    ] = None,
    max_rate: Annotated[
        str | None,
        typer.Option(
            "--max-rate",
            help="Start at most this many scheduled rotations per second, minute or hour, "
            "e.g. 100/m (default 600/m; per worker).",
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch", help="Due credentials claimed at once (default twice --concurrency)."
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="Rotations under way at once.")
    ] = None,
) -> None:
    """Run the engine and scheduler until interrupted: rotate what is due, revoke expired
    values, resume rotations whose process died. Run several on one PostgreSQL to scale
    (each claims due credentials before it rotates them); on SQLite one worker at a time."""
    opts = rotation.scheduler_options(
        catch_up_window=catch_up_window, max_rate=max_rate, batch=batch
    )
    with service(rotation.options_from_env(concurrency)) as svc:
        svc.serve(
            poll_s=poll,
            on_batch=lambda r: out.print(json.dumps(r.to_json())),
            options=opts,
        )


@app.command()
def recover() -> None:
    """Resume or roll back rotations whose process died; revoke values whose grace ended."""
    with service(rotation.options_from_env()) as svc:
        results = svc.recover()
    for r in results:
        out.print(f"{r.outcome.value} {r.name}" + (f": {r.error}" if r.error else ""))
    out.print(f"recovered {len(results)} rotation(s)")
