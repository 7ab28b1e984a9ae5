"""The FastAPI application over one running RotatorService."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from starlette.routing import Route

from rotator import dashboard, mcp
from rotator.api import problems
from rotator.api.limits import Limits, LimitsMiddleware
from rotator.api.routes import (
    audit,
    credentials,
    events,
    health,
    metrics,
    reports,
    rotations,
    watch,
)
from rotator.service import RotatorService
from rotator.service.metrics import SnapshotCache


def create_app(
    svc: RotatorService,
    *,
    limits: Limits | None = None,
    clock: Callable[[], float] | None = None,
    metrics_cache: SnapshotCache | None = None,
) -> FastAPI:
    """The API serving ``svc``. The caller owns ``svc`` (opens it before serving, closes it
    after); the app never closes it. Its lifespan must run (uvicorn ``lifespan="on"``): it
    starts the MCP server mounted at ``/mcp``. ``limits`` (default: from the environment, see
    api.limits; InvalidInput when it is bad) bound body size and request rate; ``clock``
    (monotonic seconds) drives the rate limiter. ``metrics_cache`` (default: from
    ``ROTATOR_METRICS_CACHE_S``, InvalidInput when it is bad) keeps /metrics' store figures."""
    limits = Limits.from_env() if limits is None else limits
    metrics_cache = SnapshotCache.from_env() if metrics_cache is None else metrics_cache
    mcp_endpoint = mcp.McpEndpoint(svc)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with mcp_endpoint.lifespan():
            yield

    app = FastAPI(
        title="rotator",
        version="1",
        description="Credential rotation service. Every /v1 route needs a bearer token "
        "(`Authorization: Bearer rtr_...`, from `rotator token create`). Errors are "
        "application/problem+json. MCP (streamable HTTP) is served at `/mcp` with the same "
        "bearer tokens.",
        lifespan=lifespan,
    )
    app.state.service = svc
    app.state.metrics_cache = metrics_cache
    problems.install(app)
    app.include_router(health.router)
    # Before credentials: its /{name:path} must not swallow /{name:path}/rotate.
    app.include_router(rotations.router)
    app.include_router(events.router)
    app.include_router(audit.router)
    app.include_router(reports.router)
    app.include_router(credentials.router)
    app.include_router(watch.router)
    app.include_router(metrics.router)
    # The dashboard's pages (HTML, at / and below; none under /v1), after the API's routes.
    app.include_router(dashboard.router)
    # A route at the exact path (not a Mount): a Mount would answer /mcp with a redirect to
    # /mcp/. Not in the OpenAPI document (it is not a REST resource).
    app.router.routes.append(Route(mcp.PATH, endpoint=mcp_endpoint, include_in_schema=False))
    if clock is None:
        app.add_middleware(LimitsMiddleware, limits=limits)
    else:
        app.add_middleware(LimitsMiddleware, limits=limits, clock=clock)
    return app
