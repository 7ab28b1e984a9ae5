"""Bearer tokens to principals, and the service behind a request.

Routes declare ``principal: Caller`` and ``svc: Service``; a missing or malformed
``Authorization`` header is a 401 problem before any use case runs, and a token the service
refuses (unknown, wrong, expired, revoked) is its AuthenticationFailed, audited there. An
authenticated request is charged to its token's rate bucket (api.limits): 429 when empty.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from rotator.api import limits
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
    principal = await access.authenticate(service_of(request), bearer(request))
    # Rate: from here on the request counts against the token the service verified, not
    # the client address it was charged to before (api.limits).
    charge = request.scope.get("state", {}).get(limits.CHARGE_KEY)
    if charge is not None:
        wait = charge(principal)
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            raise HTTPException(
                429, f"rate limit exceeded: retry in {retry} s", headers={"Retry-After": retry}
            )
    request.state.principal = principal
    return principal


Service = Annotated[RotatorService, Depends(_service)]
Caller = Annotated[Principal, Depends(principal_of)]


def bearer(request: Request) -> str:
    """The request's bearer token (AuthenticationFailed when there is none)."""
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationFailed("missing bearer token (Authorization: Bearer rtr_...)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("the Authorization header must be 'Bearer <token>'")
    return token.strip()
