"""The FastAPI application over one running RotatorService."""

from __future__ import annotations

from fastapi import FastAPI

from rotator.api import problems
from rotator.api.routes import credentials, health, metrics
from rotator.service import RotatorService


def create_app(svc: RotatorService) -> FastAPI:
    """The API serving ``svc``. The caller owns ``svc`` (opens it before serving, closes it
    after); the app never closes it."""
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
    app.include_router(metrics.router)
    return app
