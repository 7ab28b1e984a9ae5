"""``/healthz`` (the process answers) and ``/readyz`` (and its store does)."""

from __future__ import annotations

from fastapi import APIRouter

from rotator.api.auth import Service

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process serves requests; needs no token."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "the store does not answer"}})
async def readyz(svc: Service) -> dict[str, str]:
    """200 when the store answers a query, else a 503 problem; needs no token."""
    await svc.ready()
    return {"status": "ready"}
