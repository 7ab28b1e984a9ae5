"""``GET /metrics``: Prometheus text format, no token (bind the server to a trusted address
or put it behind a proxy that limits who scrapes); the store figures come through the app's
SnapshotCache (``app.state.metrics_cache``), so scrapes do not each read every credential."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from rotator.api.auth import Service
from rotator.service import metrics

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def scrape(svc: Service, request: Request) -> Response:
    """This process's rotation, step, admission, breaker and read metrics, and per tenant
    the credential count, overdue count and oldest CURRENT's age; needs no token. No label
    or sample holds a credential name or a value. The per-tenant figures are read from the
    store at most once per ``ROTATOR_METRICS_CACHE_S`` (the app's cache); the rest is live."""
    cache: metrics.SnapshotCache = request.app.state.metrics_cache
    return Response(await metrics.exposition(svc, cache), media_type=metrics.CONTENT_TYPE)
