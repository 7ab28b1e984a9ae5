"""``rotator serve``: the REST API, the scheduler and the engine in one process."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rotator.cli.app import app, service
from rotator.service import rotation


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8200,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate chain: serve HTTPS.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="PEM private key of --tls-cert.")
    ] = None,
    poll: Annotated[
        float, typer.Option("--poll", min=0.1, help="Scheduler's longest sleep, seconds.")
    ] = 5.0,
    no_scheduler: Annotated[
        bool,
        typer.Option(
            "--no-scheduler", help="Serve the API only (another process runs the scheduler)."
        ),
    ] = False,
) -> None:
    """Serve the REST API (``/v1``, ``/openapi.json``, ``/healthz``, ``/readyz``) and run the
    scheduler and engine in the same process, until interrupted. Several on one PostgreSQL
    behave as one service; on SQLite one process at a time runs the scheduler."""
    from rotator.api.server import ServeOptions
    from rotator.api.server import serve as serve_api

    opts = ServeOptions(
        host=host,
        port=port,
        certfile=tls_cert,
        keyfile=tls_key,
        scheduler=not no_scheduler,
        poll_s=poll,
    )
    with service(rotation.options_from_env(), fast_loop=True) as svc, svc.until_signal() as stop:
        svc.run(serve_api(svc.service, stop, opts, on_ready=_ready))


def _ready(url: str) -> None:
    # One line on stderr, flushed: scripts and tests wait for it (and read the port from it).
    print(f"rotator: serving on {url}", file=sys.stderr, flush=True)
