"""``/v1/credentials``: list, add, describe, change, remove, read values, report usage.

Each route calls one service use case as the caller; access control, validation and audit
are the service's. The fixed suffixes (``/value``, ``/usage``) are declared before the bare
``/{name:path}`` routes, which would otherwise match them as part of a name.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from rotator.api import pagination
from rotator.api.auth import Caller, Service
from rotator.api.models import (
    CredentialCreate,
    CredentialUpdate,
    CredentialView,
    UsageBody,
    UsageView,
    ValueView,
    problems,
)
from rotator.domain import names
from rotator.domain.model import Stage
from rotator.service.views import credential_view

router = APIRouter(prefix="/v1/credentials", tags=["credentials"])

# Every /v1 route: no or a refused token, a role that may not, the rate limit, a body too big.
_COMMON = (401, 403, 413, 422, 429)


@router.get(
    "",
    response_model=pagination.Page[CredentialView],
    responses=problems(400, *_COMMON),
)
async def list_credentials(
    svc: Service,
    principal: Caller,
    tag: Annotated[
        list[str] | None,
        Query(description="Only those with this tag (`KEY=VALUE`); repeat for several."),
    ] = None,
    due: Annotated[bool, Query(description="Only those due for rotation now.")] = False,
    limit: pagination.Limit = pagination.DEFAULT_LIMIT,
    cursor: pagination.Cursor = None,
) -> dict[str, Any]:
    """Credentials the caller may read, by name, a page at a time; never values."""
    tags = names.parse_pairs(tag or [], "tag", names.TAG_KEY)
    after = None if cursor is None else pagination.decode_cursor(cursor, str)
    creds = await svc.list_credentials(tags=tags, due=due, principal=principal)
    # The service has no keyed query yet: the permitted list is sorted and sliced here by
    # name (sorted again in Python so the order does not depend on the database collation).
    rest = sorted((c for c in creds if after is None or c.name > after), key=lambda c: c.name)
    return pagination.page(rest, limit, key=lambda c: c.name, view=credential_view).model_dump()


@router.post(
    "",
    status_code=201,
    response_model=CredentialView,
    responses=problems(400, 404, 409, 502, *_COMMON),
)
async def add_credential(
    body: CredentialCreate, response: Response, svc: Service, principal: Caller
) -> dict[str, Any]:
    """Add a credential (as `rotator credential add`); its URL is in `Location`."""
    cred = await svc.add_credential(
        body.name,
        body.connector,
        settings=body.settings_input(),
        tags=body.tags_input(),
        policy=body.policy_input(),
        value=body.value_input(),
        verify=body.verify,
        sinks=body.sinks or (),
        principal=principal,
    )
    # A name with a "." or ".." (or empty) segment is escaped whole: a client following the
    # URL would resolve the segment to another credential's. Others keep their "/".
    odd = any(part in ("", ".", "..") for part in cred.name.split("/"))
    quoted = urllib.parse.quote(cred.name, safe="" if odd else "/")
    response.headers["Location"] = f"/v1/credentials/{quoted}"
    return credential_view(cred)


@router.get(
    "/{name:path}/value",
    response_model=ValueView,
    responses=problems(400, 404, *_COMMON),
)
async def get_value(
    name: str,
    svc: Service,
    principal: Caller,
    stage: Annotated[
        Literal["CURRENT", "PREVIOUS", "PENDING"], Query(description="Which version's value.")
    ] = "CURRENT",
) -> Response:
    """The value of the newest version in `stage`; counted as one use and audited. Never
    cached (`Cache-Control: no-store`)."""
    value, number = await svc.get_numbered_value(name, Stage(stage), principal=principal)
    # The hottest route: answered as JSON built here (the shape is ValueView's, which
    # response_model documents) instead of validating a dict through pydantic per request.
    body = {"name": name, "version": number, "stage": stage, "value": value.reveal_text()}
    return _json(body, {"Cache-Control": "no-store"})


@router.post(
    "/{name:path}/usage",
    response_model=UsageView,
    responses=problems(400, 404, *_COMMON),
)
async def report_usage(
    name: str, svc: Service, principal: Caller, body: UsageBody | None = None
) -> Response:
    """Record uses an application reports (drives `max_uses`; audited)."""
    count = 1 if body is None else body.count
    cred = await svc.report_usage(name, count, principal=principal)
    return _json({"name": cred.name, "use_count": cred.use_count})


def _json(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    # Compact UTF-8 JSON, as FastAPI's own JSONResponse writes it.
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return Response(text.encode(), media_type="application/json", headers=headers)


@router.get(
    "/{name:path}",
    response_model=CredentialView,
    responses=problems(400, 404, *_COMMON),
)
async def show(name: str, svc: Service, principal: Caller) -> dict[str, Any]:
    """Metadata and versions of one credential; never a value."""
    return credential_view(await svc.show(name, principal=principal))


@router.patch(
    "/{name:path}",
    response_model=CredentialView,
    responses=problems(400, 404, 409, 502, *_COMMON),
)
async def update_credential(
    name: str, body: CredentialUpdate, svc: Service, principal: Caller
) -> dict[str, Any]:
    """Change a credential (as `rotator credential update`); omitted fields are kept."""
    cred = await svc.update_credential(
        name,
        connector=body.connector,
        settings=body.settings_input(),
        tags=body.tags_input(),
        policy=body.policy_input(),
        value=body.value_input(),
        sinks=body.sinks,
        principal=principal,
    )
    return credential_view(cred)


@router.delete(
    "/{name:path}",
    status_code=204,
    response_class=Response,
    responses=problems(400, 404, *_COMMON),
)
async def remove_credential(name: str, svc: Service, principal: Caller) -> Response:
    """Remove a credential and all its versions."""
    await svc.remove_credential(name, principal=principal)
    return Response(status_code=204)
