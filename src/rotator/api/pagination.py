"""Cursor pagination shared by every list route: ``?limit=N&cursor=C`` ->
``{"items": [...], "next_cursor": "..." | null}``.

A cursor is the base64url (no padding) of the last key a page returned, tagged with its kind
(``s:`` a name, ``i:`` a number), so a cursor of one list is refused by a list keyed
differently. Callers rely on: ``decode_cursor`` raises the service's InvalidInput (a 400
problem) for anything it did not make, and never echoes the raw cursor.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, Literal, TypeVar, overload

from fastapi import Query
from pydantic import BaseModel, Field

from rotator.errors import InvalidInput

T = TypeVar("T")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_MAX_CURSOR = 600  # characters: a base64url name of 200 characters fits with room to spare
_MALFORMED = "malformed cursor"
_SEQ = re.compile(r"[0-9]{1,19}")
_MAX_SEQ = 2**63 - 1

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1..{MAX_LIMIT}.")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=_MAX_CURSOR,
        description="The `next_cursor` of the previous page (opaque); none for the first.",
    ),
]


class Page(BaseModel, Generic[T]):
    """One page of a list; ``next_cursor`` is null on the last page."""

    items: list[T] = Field(description="This page's items, in the list's order.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null when this is the last one."
    )


def encode_cursor(key: str | int) -> str:
    """The opaque cursor of ``key`` (the last key of a page)."""
    tagged = f"i:{key}" if isinstance(key, int) else f"s:{key}"
    return base64.urlsafe_b64encode(tagged.encode("utf-8")).rstrip(b"=").decode("ascii")


@overload
def decode_cursor(raw: None, kind: type[str] | type[int]) -> None: ...
@overload
def decode_cursor(raw: str, kind: type[str]) -> str: ...
@overload
def decode_cursor(raw: str, kind: type[int]) -> int: ...
@overload
def decode_cursor(raw: str | None, kind: type[str]) -> str | None: ...
@overload
def decode_cursor(raw: str | None, kind: type[int]) -> int | None: ...
def decode_cursor(raw: str | None, kind: type[str] | type[int]) -> str | int | None:
    """The key a cursor of :func:`encode_cursor` holds (None for no cursor: the first page);
    InvalidInput("malformed cursor") for anything else (not base64url, not ours, another
    kind of key)."""
    if raw is None:
        return None
    bad = InvalidInput(_MALFORMED)
    if len(raw) > _MAX_CURSOR:
        raise bad
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    want: Literal["i:", "s:"] = "i:" if kind is int else "s:"
    if not text.startswith(want) or encode_cursor(_key(text[2:], kind)) != raw:
        raise bad
    return _key(text[2:], kind)


def _key(text: str, kind: type[str] | type[int]) -> str | int:
    if kind is int:
        # ASCII digits only ("²".isdigit() is true), and a key the stores can bind: SQLite
        # overflows past a signed 64-bit integer.
        if not _SEQ.fullmatch(text) or int(text) > _MAX_SEQ:
            raise InvalidInput(_MALFORMED)
        return int(text)
    return text


def page(
    items: Sequence[Any],
    limit: int,
    key: Callable[[Any], str | int],
    view: Callable[[Any], T] = lambda x: x,
) -> Page[T]:
    """The first ``limit`` of ``items`` (already sorted by ``key`` and starting after the
    cursor) as a Page; ``next_cursor`` is set when more items follow."""
    chosen = list(items[:limit])
    more = len(items) > limit
    return Page[T](
        items=[view(x) for x in chosen],
        next_cursor=encode_cursor(key(chosen[-1])) if more and chosen else None,
    )
