"""``GET /v1/watch``: new CURRENT versions as server-sent events (service.watch)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from rotator.api.auth import Caller, Service, bearer
from rotator.errors import InvalidInput
from rotator.service import access, watch

router = APIRouter(prefix="/v1", tags=["watch"])

PING_S = 15  # a comment line this often keeps proxies and clients from timing the stream out


def _cursor(raw: str, what: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise InvalidInput(f"{what} must be an event id (a non-negative integer)")
    return int(raw)


@router.get(
    "/watch",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def watch_changes(
    request: Request,
    svc: Service,
    principal: Caller,
    name: Annotated[list[str] | None, Query(description="Only these credentials.")] = None,
    prefix: Annotated[str | None, Query(description="Only names starting with this.")] = None,
    after: Annotated[
        str | None, Query(description="Replay every change after this event id.")
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(description="Resume after this event id (wins over ?after=)."),
    ] = None,
) -> EventSourceResponse:
    """A stream of ``current`` events, one per new CURRENT version of a credential the caller
    may read (VALUE_READ or CREDENTIAL_READ): ``id`` is the cursor (monotonic), ``data`` is
    ``{"name", "version", "rotation_id", "at"}``. The first event is ``ready`` (data ``{}``)
    with the starting cursor as its id, so a reconnect resumes from there. With
    ``Last-Event-ID`` or ``?after=`` every change after that id is replayed first, none
    missed. A comment line every 15 s. The stream ends (the client sees it close; its next
    request is a 401) within the authentication cache's TTL plus 2 s of its token being
    revoked or expiring or its principal being removed; grants changed since it started
    apply from then on too."""
    resume = (
        _cursor(last_event_id, "Last-Event-ID")
        if last_event_id is not None
        else (_cursor(after, "after") if after is not None else None)
    )
    # Checked and audited before the response starts, so a refusal is a problem+json answer.
    # The server's stop event (api/server.py): open streams end with the server, or its
    # shutdown would wait for them forever.
    stop = getattr(request.app.state, "stopping", None)
    # The token is authenticated again every few seconds (through the service's cache): the
    # stream ends once it is revoked or expires, or its principal is removed.
    sub = await watch.subscribe(
        svc,
        principal,
        names=name or (),
        prefix=prefix,
        after=resume,
        stop=stop,
        recheck=partial(access.authenticate, svc, bearer(request)),
    )

    async def events() -> AsyncIterator[ServerSentEvent]:
        # First a ``ready`` event carrying the starting cursor as its id: a client that
        # reconnects before any change still resumes from where this feed began.
        yield ServerSentEvent(data="{}", event="ready", id=str(sub.cursor))
        async for c in sub:
            yield ServerSentEvent(data=json.dumps(c.to_json()), event="current", id=str(c.cursor))

    return EventSourceResponse(events(), ping=PING_S, headers={"Cache-Control": "no-store"})
