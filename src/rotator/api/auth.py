"""Bearer tokens to principals, and the service behind a request.

Routes declare ``principal: Caller`` and ``svc: Service``; a missing or malformed
``Authorization`` header is a 401 problem before any use case runs, and a token the service
refuses (unknown, wrong, expired, revoked) is its AuthenticationFailed, audited there.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rotator.domain.principal import Principal
from rotator.errors import AuthenticationFailed
from rotator.service import RotatorService, access


def service_of(request: Request) -> RotatorService:
    svc: RotatorService = request.app.state.service
    return svc


async def _service(request: Request) -> RotatorService:
    # A coroutine on purpose: FastAPI runs a plain-function dependency in its thread pool,
    # one thread hop (and often a new thread) per request, which cost the GET value route
    # about a third of its event-loop time.
    return service_of(request)


async def principal_of(request: Request) -> Principal:
    """The principal of the request's bearer token (AuthenticationFailed when there is
    none or the service refuses it)."""
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationFailed("missing bearer token (Authorization: Bearer rtr_...)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("the Authorization header must be 'Bearer <token>'")
    principal = await access.authenticate(service_of(request), token.strip())
    request.state.principal = principal
    return principal


Service = Annotated[RotatorService, Depends(_service)]
Caller = Annotated[Principal, Depends(principal_of)]
