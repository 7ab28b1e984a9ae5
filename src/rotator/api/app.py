"""The FastAPI application over one running RotatorService."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from rotator.api import problems
from rotator.api.limits import Limits, LimitsMiddleware
from rotator.api.routes import credentials, health
from rotator.service import RotatorService


def create_app(
    svc: RotatorService,
    *,
    limits: Limits | None = None,
    clock: Callable[[], float] | None = None,
) -> FastAPI:
    """The API serving ``svc``. The caller owns ``svc`` (opens it before serving, closes it
    after); the app never closes it. ``limits`` (default: from the environment, see
    api.limits; InvalidInput when it is bad) bound body size and request rate; ``clock``
    (monotonic seconds) drives the rate limiter."""
    limits = Limits.from_env() if limits is None else limits
    app = FastAPI(
        title="rotator",
        version="1",
        description="Credential rotation service. Every /v1 route needs a bearer token "
        "(`Authorization: Bearer rtr_...`, from `rotator token create`). Errors are "
        "application/problem+json.",
    )
    app.state.service = svc
    problems.install(app)
    app.include_router(health.router)
    app.include_router(credentials.router)
    if clock is None:
        app.add_middleware(LimitsMiddleware, limits=limits)
    else:
        app.add_middleware(LimitsMiddleware, limits=limits, clock=clock)
    return app
