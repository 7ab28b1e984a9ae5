"""Validation of names that appear in the public contract."""

from __future__ import annotations

import re
from collections.abc import Mapping

from rotator.errors import InvalidInput

CREDENTIAL_NAME = re.compile(r"[a-z0-9][a-z0-9._/-]{0,199}")
TAG_KEY = re.compile(r"[a-z0-9][a-z0-9._/-]{0,62}")
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
CONFIG_KEY = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
PRINCIPAL_NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,99}")
SCOPE_GLOB = re.compile(r"[a-z0-9._/*?\[\]-]{1,200}")


def check_credential_name(name: str) -> str:
    """Return ``name`` if it is a valid credential name, else raise InvalidInput naming it."""
    if not CREDENTIAL_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid credential name {name!r}: use 1-200 characters of a-z 0-9 . _ / -, "
            "starting with a letter or digit"
        )
    return name


def check_tenant_name(name: str) -> str:
    """Return ``name`` if it is a valid tenant name, else raise InvalidInput."""
    if not TENANT_NAME.fullmatch(name):
        raise InvalidInput(f"invalid tenant name {name!r}")
    return name


def check_principal_name(name: str) -> str:
    """Return ``name`` if it is a valid principal name, else raise InvalidInput naming it."""
    if not PRINCIPAL_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid principal name {name!r}: use 1-100 characters of a-z 0-9 . _ @ -, "
            "starting with a letter or digit"
        )
    return name


def check_scope(scope: str) -> str:
    """Return ``scope`` if it is a valid grant scope (a name glob), else raise InvalidInput."""
    if not SCOPE_GLOB.fullmatch(scope):
        raise InvalidInput(
            f"invalid scope {scope!r}: use 1-200 characters of a-z 0-9 . _ / - * ? [ ]"
        )
    return scope


def parse_pairs(
    items: list[str] | tuple[str, ...], what: str, key_re: re.Pattern[str]
) -> dict[str, str]:
    """Parse ``KEY=VALUE`` items (``--set``, ``--tag``) into a dict.

    Raises InvalidInput naming the flag and the bad item. Values may be empty; keys may not repeat.
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key_re.fullmatch(key):
            raise InvalidInput(
                f"malformed {what} {item!r}: expected KEY=VALUE with KEY like {key_re.pattern}"
            )
        if key in out:
            raise InvalidInput(f"{what} {key!r} given twice")
        _check_value(value, what, key)
        out[key] = value
    return out


def check_tag_filter(tags: Mapping[str, str], what: str = "--tag") -> None:
    """InvalidInput unless ``tags`` (a selector: rotate, events) is what ``--tag`` accepts:
    keys like TAG_KEY, values of at most 1024 characters without NUL."""
    for key, value in tags.items():
        if not TAG_KEY.fullmatch(key):
            raise InvalidInput(
                f"malformed {what} key {key[:40]!r}: expected a key like {TAG_KEY.pattern}"
            )
        _check_value(value, what, key)


def _check_value(value: str, what: str, key: str) -> None:
    if len(value) > 1024:
        raise InvalidInput(f"{what} {key!r}: value longer than 1024 characters")
    # PostgreSQL stores no NUL in text or JSON (SQLite would): refused on both alike.
    if "\x00" in value:
        raise InvalidInput(f"{what} {key!r}: value holds a NUL character")
    # Bytes that are not UTF-8 reach here as lone surrogates (the command line's
    # surrogateescape); no store can hold them. The value is not echoed.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} {key!r}: value is not valid UTF-8") from None
