"""Rotations as background jobs: ``POST /v1/credentials/{name}/rotate``, ``POST
/v1/rotations`` (by selector, or a dry run), ``GET /v1/rotations[/{id}]``.

A rotation request is accepted (202, ``Location`` of the job) once the service has authorized
it and stored the job; it runs on the accepting process, and every process sharing the store
answers ``GET /v1/rotations/{id}`` (service.jobs).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from rotator.api.auth import Caller, Service
from rotator.api.models import RequestBody
from rotator.api.pagination import Page, decode_cursor, encode_cursor
from rotator.service import jobs, rotation
from rotator.service.rotation import Selection

router = APIRouter(tags=["rotations"])


class RotateBody(RequestBody):
    """Options of a rotation of one credential."""

    model_config = ConfigDict(extra="forbid")
    emergency: bool = Field(
        False, description="Highest priority, grace 0: the old value is revoked at once."
    )


class RotationsBody(RequestBody):
    """Which credentials to rotate: ``names``, ``tags`` (all must match), or ``all``."""

    model_config = ConfigDict(extra="forbid")
    names: list[str] = Field(default_factory=list, max_length=10_000)
    tags: dict[str, str] = Field(default_factory=dict)
    all: bool = False
    emergency: bool = False
    dry_run: bool = Field(False, description="Answer 200 with the plan; rotate nothing.")


class _Doc(BaseModel):
    """A documented answer: the OpenAPI schema of what a route returns as a plain dict (the
    route is not filtered through it), strict so a drift fails the schema tests."""

    model_config = ConfigDict(extra="forbid")


class FailedDoc(_Doc):
    name: str
    error: str | None


class SkippedDoc(_Doc):
    name: str
    reason: str | None


class WarningDoc(_Doc):
    name: str
    warning: str


class StillValidDoc(_Doc):
    name: str
    version: int
    error: str | None


class BatchDoc(_Doc):
    """As `rotator rotate --json`; ``still_valid`` only after an emergency."""

    rotated: list[str]
    failed: list[FailedDoc]
    rolled_back: list[str]
    skipped: list[SkippedDoc]
    duration_s: float
    warnings: list[WarningDoc]
    still_valid: list[StillValidDoc] = Field(default_factory=list)


class JobDoc(_Doc):
    """A rotation job (service.jobs.JobView.to_json)."""

    id: str
    status: Literal["running", "done", "interrupted"]
    requested_by: str
    selector: dict[str, Any]
    emergency: bool
    created_at: str
    finished_at: str | None
    total: int
    result: BatchDoc | None
    error: str | None


class PlanDoc(_Doc):
    """``dry_run``: the plan, as `rotate --dry-run --json`."""

    dry_run: Literal[True]
    plan: list[dict[str, Any]]


class Accepted(BaseModel):
    id: str
    status: str
    href: str


def _accepted(job: jobs.JobView, response: Response) -> Accepted:
    href = f"/v1/rotations/{job.id}"
    response.headers["Location"] = href
    return Accepted(id=job.id, status=job.status, href=href)


@router.post("/v1/credentials/{name:path}/rotate", status_code=202, response_model=Accepted)
async def rotate_credential(
    name: str,
    svc: Service,
    principal: Caller,
    response: Response,
    body: Annotated[RotateBody | None, Body()] = None,
) -> Accepted:
    """Rotate one credential now, in the background: 202 with the job to poll."""
    emergency = body.emergency if body is not None else False
    job = await jobs.start_job(
        svc, Selection(names=[name]), emergency=emergency, principal=principal
    )
    return _accepted(job, response)


@router.post(
    "/v1/rotations",
    status_code=202,
    response_model=Accepted,
    responses={200: {"model": PlanDoc, "description": "dry_run: the plan"}},
)
async def rotate_selection(
    body: RotationsBody, svc: Service, principal: Caller, response: Response
) -> Any:
    """Rotate a selection in the background (202 with the job), or with ``dry_run`` answer
    the plan (200) and rotate nothing."""
    sel = Selection(names=body.names, tags=body.tags or None, all=body.all)
    if body.dry_run:
        steps = await rotation.plan(svc, sel, emergency=body.emergency, principal=principal)
        return JSONResponse({"dry_run": True, "plan": steps}, status_code=200)
    job = await jobs.start_job(svc, sel, emergency=body.emergency, principal=principal)
    return _accepted(job, response)


@router.get("/v1/rotations/{job_id}", response_model=None, responses={200: {"model": JobDoc}})
async def get_rotation(job_id: str, svc: Service, principal: Caller) -> dict[str, Any]:
    """A rotation job: ``running``, ``done`` (with the ``rotate --json`` result) or
    ``interrupted`` (its process stopped; ``error`` says so)."""
    return (await jobs.get_job(svc, job_id, principal=principal)).to_json()


@router.get("/v1/rotations", response_model=None, responses={200: {"model": Page[JobDoc]}})
async def list_rotations(
    svc: Service,
    principal: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> Page[dict[str, Any]]:
    """The tenant's rotation jobs, oldest first."""
    after = decode_cursor(cursor, str)
    assert after is None or isinstance(after, str)
    found = await jobs.list_jobs(svc, limit=limit, after=after, principal=principal)
    nxt = encode_cursor(found[-1].id) if len(found) == limit else None
    return Page[dict[str, Any]](items=[j.to_json() for j in found], next_cursor=nxt)
