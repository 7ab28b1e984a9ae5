"""``/v1/credentials``: list, describe and read values (more verbs land with issue 11)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from rotator.api.auth import Caller, Service
from rotator.domain.model import Stage
from rotator.service.views import credential_view

router = APIRouter(prefix="/v1/credentials", tags=["credentials"])


@router.get("/{name:path}/value")
async def get_value(
    name: str,
    svc: Service,
    principal: Caller,
    stage: Annotated[Stage, Query(description="Which version's value.")] = Stage.CURRENT,
) -> dict[str, Any]:
    """The value of the newest version in ``stage``; counted as one use and audited."""
    value = await svc.get_value(name, stage, principal=principal)
    return {"name": name, "stage": stage.value, "value": value.reveal_text()}


@router.get("/{name:path}")
async def show(name: str, svc: Service, principal: Caller) -> dict[str, Any]:
    """Metadata and versions of one credential; never a value."""
    return credential_view(await svc.show(name, principal=principal))
