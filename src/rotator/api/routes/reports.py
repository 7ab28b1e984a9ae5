"""``/v1/reports``: the compliance report (json, csv, html) and rotation evidence."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from rotator.api.auth import Caller, Service
from rotator.service import evidence, reports

router = APIRouter(prefix="/v1/reports", tags=["reports"])

MEDIA = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "html": "text/html; charset=utf-8",
}


@router.get(
    "/compliance",
    response_class=Response,
    responses={
        200: {
            "content": {m.split(";")[0]: {} for m in MEDIA.values()},
            "description": "The report in the format asked for.",
        }
    },
)
async def compliance(
    svc: Service,
    principal: Caller,
    format: Annotated[Literal["json", "csv", "html"], Query()] = "json",
    since: Annotated[str, Query(max_length=20, description="Period counted: 90d, 12h.")] = "90d",
) -> Response:
    """The tenant's compliance report (as ``rotator report compliance``)."""
    report = await reports.compliance_report(
        svc, since=reports.parse_since(since), principal=principal
    )
    return Response(reports.render(report, format), media_type=MEDIA[format])


@router.get("/evidence/{rotation_id}")
async def rotation_evidence(rotation_id: str, svc: Service, principal: Caller) -> dict[str, Any]:
    """The evidence record of one rotation (as ``rotator report evidence``)."""
    return (await evidence.evidence(svc, rotation_id, principal=principal)).to_json()
