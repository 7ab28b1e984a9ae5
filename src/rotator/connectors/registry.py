"""Finding connectors: built-ins plus the entry-point group ``rotator.connectors``."""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from rotator.errors import UnknownConnector

if TYPE_CHECKING:
    from rotator.connectors.base import Connector

ENTRY_POINT_GROUP = "rotator.connectors"


# Built-in connectors, imported on first use so one kind's imports never slow another.
BUILTIN = {
    "local": "rotator.connectors.local:LocalConnector",
    "postgres": "rotator.connectors.postgres:PostgresConnector",
    "redis": "rotator.connectors.redis:RedisConnector",
    "http": "rotator.connectors.http:HttpConnector",
    "jwks": "rotator.connectors.jwks:JwksConnector",
    "certificate": "rotator.connectors.certificate:CertificateConnector",
}


@functools.cache
def _kinds() -> dict[str, str | type[Connector]]:
    found: dict[str, str | type[Connector]] = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def available() -> list[str]:
    """Kinds of every installed connector, sorted."""
    return sorted(_kinds())


def _ref(kind: str) -> str | type[Connector] | None:
    # A built-in kind needs no entry-point scan (it reads every installed distribution's
    # metadata: slow) while nothing was registered (register() fills _kinds): built-ins win
    # over entry points anyway.
    if kind in BUILTIN and _kinds.cache_info().currsize == 0:
        return BUILTIN[kind]
    return _kinds().get(kind)


@functools.cache
def _load(kind: str) -> type[Connector]:
    ref = _ref(kind)
    assert ref is not None  # get_connector checked
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    cls: type[Connector] = getattr(importlib.import_module(module), attr)
    return cls


def get_connector(kind: str) -> Connector:
    """A connector instance for ``kind``; UnknownConnector naming the installed kinds otherwise."""
    if _ref(kind) is None:
        raise UnknownConnector(
            f"unknown connector {kind!r}: installed are {', '.join(available())}"
        )
    return _load(kind)()


def register(cls: type[Connector]) -> None:
    """Register a connector class at run time (tests, embedding applications)."""
    _kinds()[cls.kind] = cls
    _load.cache_clear()
