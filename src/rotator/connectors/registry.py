"""Finding connectors: built-ins plus the entry-point group ``rotator.connectors``."""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from rotator.connectors.base import Connector
from rotator.errors import UnknownConnector

ENTRY_POINT_GROUP = "rotator.connectors"


@functools.cache
def _kinds() -> dict[str, type[Connector]]:
    from rotator.connectors.local import LocalConnector

    found: dict[str, type[Connector]] = {LocalConnector.kind: LocalConnector}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            continue
        cls = ep.load()
        found[ep.name] = cls
    return found


def available() -> list[str]:
    """Kinds of every installed connector, sorted."""
    return sorted(_kinds())


def get_connector(kind: str) -> Connector:
    """A connector instance for ``kind``; UnknownConnector naming the installed kinds otherwise."""
    try:
        cls = _kinds()[kind]
    except KeyError:
        raise UnknownConnector(
            f"unknown connector {kind!r}: installed are {', '.join(available())}"
        ) from None
    return cls()


def register(cls: type[Connector]) -> None:
    """Register a connector class at run time (tests, embedding applications)."""
    _kinds()[cls.kind] = cls
