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
) -> None:
    """Run the engine and scheduler until interrupted: rotate what is due, revoke expired
    values, resume rotations whose process died. Run several on one PostgreSQL to scale."""
    with service(rotation.options_from_env()) as svc:
        svc.serve(poll_s=poll, on_batch=lambda r: out.print(json.dumps(r.to_json())))


@app.command()
def recover() -> None:
    """Resume or roll back rotations whose process died; revoke values whose grace ended."""
    with service(rotation.options_from_env()) as svc:
        results = svc.recover()
    for r in results:
        out.print(f"{r.outcome.value} {r.name}" + (f": {r.error}" if r.error else ""))
    out.print(f"recovered {len(results)} rotation(s)")
