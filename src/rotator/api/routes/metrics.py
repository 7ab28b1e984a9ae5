"""``GET /metrics``: Prometheus text format, no token (bind the server to a trusted address
or put it behind a proxy that limits who scrapes)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from rotator.api.auth import Service
from rotator.service import metrics

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def scrape(svc: Service) -> Response:
    """This process's rotation, step, admission, breaker and read metrics, and per tenant
    the credential count, overdue count and oldest CURRENT's age; needs no token. No label
    or sample holds a credential name or a value."""
    return Response(await metrics.exposition(svc), media_type=metrics.CONTENT_TYPE)
