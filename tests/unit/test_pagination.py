"""The REST API's cursors: opaque, round-trip their key, and anything else is bad input."""

from __future__ import annotations

import pytest

from rotator.api.pagination import Page, decode_cursor, encode_cursor
from rotator.errors import InvalidInput


@pytest.mark.parametrize("key", ["prod/payments/db", "", 0, 1, 2**53, 2**63 - 1, "ünï/cödé"])
def test_a_cursor_gives_back_the_key_it_was_made_from(key: str | int) -> None:
    cursor = encode_cursor(key)
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_cursor(cursor, type(key)) == key


def test_no_cursor_is_the_first_page() -> None:
    assert decode_cursor(None, int) is None


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "%%%",
        "not*a*cursor",
        "A",  # not base64 of anything
        encode_cursor("a-name"),  # a name where a seq is wanted
        "dHJ1ZQ",  # JSON true: a bool is no key
        "eyJhIjoxfQ",  # a JSON object
        "x" * 5000,
        encode_cursor(2**63),  # past a signed 64-bit key: SQLite would overflow
        encode_cursor(99999999999999999999999),
        encode_cursor(-1),  # keys are never negative
        "aTrCsg",  # "i:²": a digit to str.isdigit(), not to int()
        "aTrZoQ",  # "i:" and ARABIC-INDIC DIGIT ONE: not ours either
    ],
)
def test_a_malformed_cursor_is_invalid_input_naming_it(raw: str) -> None:
    with pytest.raises(InvalidInput, match=r"^malformed cursor$"):
        decode_cursor(raw, int)


def test_a_page_serializes_its_items_and_next_cursor() -> None:
    page = Page[int](items=[1, 2], next_cursor=encode_cursor(2))
    assert page.model_dump() == {"items": [1, 2], "next_cursor": encode_cursor(2)}
