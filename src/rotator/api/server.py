"""Run the API (uvicorn) and the scheduler in one event loop: ``rotator serve``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sse_starlette.sse
import uvicorn

from rotator.api.app import create_app
from rotator.errors import InvalidInput
from rotator.service import RotatorService, jobs, rotation

log = logging.getLogger("rotator.api")
# Seconds an idle keep-alive connection stays open (uvicorn's default, made explicit): the SDK
# drops its idle connections sooner (rotator.client.client.KEEPALIVE_EXPIRY_S), so it never
# sends a request on a connection the server is closing.
KEEP_ALIVE_S = 5


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8200
    certfile: Path | None = None
    keyfile: Path | None = None
    scheduler: bool = True
    poll_s: float = 5.0


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (IPv6 when ``host`` is an IPv6 address); InvalidInput when it
    cannot be bound (busy port, unknown address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


async def serve(
    svc: RotatorService,
    stop: asyncio.Event,
    opts: ServeOptions,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the API on ``opts.host:opts.port`` (TLS when a certificate and key are given)
    and run the scheduler (rotation.serve) beside it, until ``stop`` is set or either ends
    with an error. The port is bound before this returns control to the loop's other work,
    so a busy port is InvalidInput, raised at once. ``on_ready`` gets the base URL
    (``http://127.0.0.1:8200``; the real port when ``opts.port`` is 0) once requests are
    served."""
    if (opts.certfile is None) != (opts.keyfile is None):
        raise InvalidInput("TLS needs both --tls-cert and --tls-key")
    if opts.certfile is not None and opts.keyfile is not None:
        _check_tls(opts.certfile, opts.keyfile)
    with contextlib.ExitStack() as held:
        if opts.scheduler:
            held.enter_context(rotation.worker_slot(svc))
        await _serve(svc, stop, opts, on_ready)


def _check_tls(certfile: Path, keyfile: Path) -> None:
    """InvalidInput (one line naming the file) when the certificate or key cannot be loaded:
    uvicorn would fail later with a traceback."""

    def no_pass_phrase() -> str:
        # Only called for an encrypted key: without a callback OpenSSL prompts on the
        # terminal (or reads stdin) and serve hangs. ssl re-raises this from load_cert_chain,
        # so uvicorn never gets such a key.
        raise InvalidInput(f"the TLS key {keyfile} is encrypted: give an unencrypted key")

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            certfile, keyfile, password=no_pass_phrase
        )
    except OSError as exc:
        raise InvalidInput(
            f"cannot load the TLS certificate {certfile} or key {keyfile}: "
            f"{exc.strerror or exc.__class__.__name__}"
        ) from None


async def _serve(
    svc: RotatorService,
    stop: asyncio.Event,
    opts: ServeOptions,
    on_ready: Callable[[str], None] | None,
) -> None:
    sock = _listen(opts.host, opts.port)
    app = create_app(svc)
    app.state.stopping = stop  # open /v1/watch streams end when it is set
    config = uvicorn.Config(
        app,
        host=opts.host,
        port=opts.port,
        ssl_certfile=str(opts.certfile) if opts.certfile else None,
        ssl_keyfile=str(opts.keyfile) if opts.keyfile else None,
        log_config=None,
        access_log=False,
        lifespan="on",  # runs the app's lifespan: the MCP session manager (api.app)
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        # The rate limiter keys unauthenticated requests on the client address: it must be
        # the socket peer, not an X-Forwarded-For header any client can write.
        proxy_headers=False,
    )
    server = uvicorn.Server(config)

    async def run_api() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit:  # uvicorn's way of saying it could not start
            raise InvalidInput(f"cannot serve on {opts.host}:{opts.port}") from None
        finally:
            sock.close()

    api = asyncio.create_task(run_api(), name="api")
    while not server.started and not api.done():
        await asyncio.sleep(0.01)
    if api.done():
        api.result()  # raises the start-up error
        return
    bound = sock.getsockname()
    scheme = "https" if opts.certfile else "http"
    host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    url = f"{scheme}://{host}:{bound[1]}"
    log.info("serving on %s", url)
    if on_ready is not None:
        on_ready(url)
    tasks = [api]
    if opts.scheduler:
        tasks.append(
            asyncio.create_task(
                rotation.serve(svc, stop, poll_s=opts.poll_s, slot_held=True), name="scheduler"
            )
        )
    stopping = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopping:
                task.result()  # an error of the API or the scheduler ends the server
    finally:
        stop.set()
        server.should_exit = True
        stopping.cancel()
        for task in tasks:
            # The error that ended the server (if any) is already on its way out.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Rotation jobs this process runs end recorded as interrupted (their rotations are
        # resumed by the engine's recovery), not left running until their lease runs out.
        await jobs.stop_jobs(svc)
        await _end_sse_watcher()


async def _end_sse_watcher() -> None:
    """End sse_starlette's shutdown watcher: one task per loop, started by the first event
    stream, that polls for uvicorn's SIGTERM handler and so never sees our stop (serve
    installs its own handler); left pending, it is "destroyed but pending" on stderr when
    the loop closes."""
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        if getattr(coro, "cr_code", None) is sse_starlette.sse._shutdown_watcher.__code__:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
