"""``/v1/audit``: the tenant's audit entries (paged by seq), the head, and verification."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from rotator.api.auth import Caller, Service
from rotator.api.pagination import Page, decode_cursor, encode_cursor
from rotator.domain import names
from rotator.errors import InvalidInput

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class VerifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expect_head: str | None = Field(
        None, max_length=100, description="SEQ:HASH from GET /v1/audit/head, kept elsewhere."
    )


class HeadDoc(BaseModel):
    """The audit chain's newest entry (documented answer of ``GET /v1/audit/head``)."""

    model_config = ConfigDict(extra="forbid")
    seq: int
    hash: str


class VerifyDoc(BaseModel):
    """The chain check (documented answer of ``POST /v1/audit/verify``)."""

    model_config = ConfigDict(extra="forbid")
    ok: bool
    entries: int
    first_bad_seq: int | None
    reason: str | None


def _parse_head(text: str) -> tuple[int, str]:
    seq, sep, mac = text.strip().partition(":")
    if not (sep and seq.isascii() and seq.isdigit() and len(seq) <= 18 and int(seq) >= 1):
        raise InvalidInput("expect_head must be SEQ:HASH as GET /v1/audit/head gives it")
    if len(mac) != 64 or any(c not in "0123456789abcdef" for c in mac.lower()):
        raise InvalidInput("expect_head must be SEQ:HASH with a 64-digit hex HASH")
    return int(seq), mac.lower()


@router.get("")
async def list_entries(
    svc: Service,
    principal: Caller,
    credential: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> Page[dict[str, Any]]:
    """Audit entries oldest first (as ``rotator audit list --json``), ``limit`` a page."""
    if credential is not None:
        names.check_credential_name(credential)
    after = decode_cursor(cursor, int)
    assert after is None or isinstance(after, int)
    found = await svc.audit_entries(
        credential=credential, limit=limit, principal=principal, after=after or 0
    )
    nxt = encode_cursor(found[-1].seq) if len(found) == limit else None
    return Page[dict[str, Any]](items=[e.to_json() for e in found], next_cursor=nxt)


@router.get("/head", response_model=None, responses={200: {"model": HeadDoc}})
async def head(svc: Service, principal: Caller) -> dict[str, Any]:
    """The newest entry's seq and MAC: keep it outside the store for ``expect_head``."""
    seq, mac = await svc.audit_head(principal=principal)
    return {"seq": seq, "hash": mac}


@router.post("/verify", response_model=None, responses={200: {"model": VerifyDoc}})
async def verify(svc: Service, principal: Caller, body: VerifyBody | None = None) -> dict[str, Any]:
    """Verify the keyed chain (and that it still holds ``expect_head``); ``ok`` false names
    the first entry that does not verify. A broken chain is a 200 answer, not an error."""
    expected = None
    if body is not None and body.expect_head is not None:
        expected = _parse_head(body.expect_head)
    result = await svc.audit_verify(expected, principal=principal)
    return {
        "ok": result.ok,
        "entries": result.entries,
        "first_bad_seq": result.first_bad_seq,
        "reason": result.reason,
    }
