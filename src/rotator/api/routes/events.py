"""``/v1/events``: report a risk event (rotations it decides run before the answer), list
them newest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from rotator.api.auth import Caller, Service
from rotator.api.models import RequestBody
from rotator.api.pagination import Page, decode_cursor, encode_cursor
from rotator.service import events
from rotator.service.events import EventInput

router = APIRouter(prefix="/v1/events", tags=["events"])


class EventBody(RequestBody):
    """A risk signal: exactly one of ``credential`` and ``tags`` selects what it concerns."""

    model_config = ConfigDict(extra="forbid")
    kind: str = Field(max_length=64)
    severity: str = Field(description="low, medium, high or critical")
    credential: str | None = None
    tags: dict[str, str] | None = None
    detail: str | None = Field(None, max_length=1000)


class _Doc(BaseModel):
    """A documented answer (the route returns a plain dict, not filtered through it); strict
    so a drift fails the schema tests."""

    model_config = ConfigDict(extra="forbid")


class DecisionDoc(_Doc):
    name: str
    action: str
    reason: str | None
    duplicate_of: int | None
    outcome: str | None
    version: int | None
    error: str | None


class StillValidDoc(_Doc):
    name: str
    version: int
    error: str | None


class ReportDoc(_Doc):
    """What reporting the event did (service.events.EventReport.to_json)."""

    event_id: int
    kind: str
    severity: str
    decisions: list[DecisionDoc]
    still_valid: list[StillValidDoc]
    sweep_error: str | None = None  # only when the store went away after the rotations


class EventDoc(_Doc):
    """An event as ``rotator event list --json`` prints it."""

    id: int
    kind: str
    severity: str
    selector: dict[str, Any]
    detail: str | None
    reporter: str
    created_at: str
    decisions: list[DecisionDoc]


def event_view(e: Any) -> dict[str, Any]:
    """An event as ``rotator event list --json`` prints it."""
    return {
        "id": e.id,
        "kind": e.kind,
        "severity": e.severity,
        "selector": e.selector,
        "detail": e.detail,
        "reporter": e.reporter,
        "created_at": e.created_at.isoformat().replace("+00:00", "Z"),
        "decisions": [
            {
                "name": d.credential,
                "action": d.action,
                "reason": d.reason,
                "duplicate_of": d.duplicate_of,
                "outcome": d.outcome,
                "version": d.version,
                "error": d.error,
            }
            for d in e.decisions
        ],
    }


@router.post("", status_code=202, response_model=None, responses={202: {"model": ReportDoc}})
async def report_event(body: EventBody, svc: Service, principal: Caller) -> dict[str, Any]:
    """Record the event and act on it by the credentials' risk rules; the report."""
    event = EventInput(body.kind, body.severity, body.credential, body.tags, body.detail)
    return (await events.report_event(svc, event, principal=principal)).to_json()


@router.get("", response_model=None, responses={200: {"model": Page[EventDoc]}})
async def list_events(
    svc: Service,
    principal: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> Page[dict[str, Any]]:
    """The tenant's risk events, newest first, with their decisions."""
    before = decode_cursor(cursor, int)
    assert before is None or isinstance(before, int)
    found = await events.list_events(svc, limit, principal=principal, before=before)
    nxt = encode_cursor(found[-1].id) if len(found) == limit else None
    return Page[dict[str, Any]](items=[event_view(e) for e in found], next_cursor=nxt)
