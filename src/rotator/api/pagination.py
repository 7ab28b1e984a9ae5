"""Cursor pagination shared by every list route: ``?limit=N&cursor=C`` in,
``{"items": [...], "next_cursor": C | null}`` out.

A cursor is opaque to clients: base64url (unpadded) of the JSON of the last key shown (a
name, an audit seq, an id). Callers rely on: :func:`decode_cursor` of what
:func:`encode_cursor` made gives the key back; anything else is InvalidInput (a 400), never
a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Generic, TypeVar

from pydantic import BaseModel

from rotator.errors import InvalidInput

T = TypeVar("T")

MAX_CURSOR = 1024  # characters: a key is a name (200) or a number, far below this


class Page(BaseModel, Generic[T]):
    """One page of a list; ``next_cursor`` None on the last page."""

    items: list[T]
    next_cursor: str | None


def encode_cursor(key: str | int) -> str:
    """The opaque cursor of ``key`` (the last key of a page)."""
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(raw: str | None, kind: type[str] | type[int]) -> str | int | None:
    """The key a cursor holds (None for no cursor); InvalidInput("malformed cursor") when
    ``raw`` is not a cursor of a ``kind`` key."""
    if raw is None:
        return None
    malformed = InvalidInput("malformed cursor")
    if not raw or len(raw) > MAX_CURSOR:
        raise malformed
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        key = json.loads(text.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise malformed from None
    # bool is an int to Python, never a key here.
    if isinstance(key, bool) or not isinstance(key, kind):
        raise malformed
    return key
