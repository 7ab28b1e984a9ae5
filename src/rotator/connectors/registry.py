"""Finding connectors: built-ins plus the entry-point group ``rotator.connectors``."""

from __future__ import annotations

import functools
import importlib
import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from rotator.errors import UnknownConnector

if TYPE_CHECKING:
    from rotator.connectors.base import Connector

ENTRY_POINT_GROUP = "rotator.connectors"

log = logging.getLogger(__name__)


# Built-in connectors, imported on first use so one kind's imports never slow another.
BUILTIN = {
    "local": "rotator.connectors.local:LocalConnector",
    "postgres": "rotator.connectors.postgres:PostgresConnector",
    "redis": "rotator.connectors.redis:RedisConnector",
    "http": "rotator.connectors.http:HttpConnector",
    "jwks": "rotator.connectors.jwks:JwksConnector",
    "certificate": "rotator.connectors.certificate:CertificateConnector",
    "ldap": "rotator.connectors.ldap:LdapConnector",
    "exec": "rotator.connectors.exec:ExecConnector",
    "mariadb": "rotator.connectors.mariadb:MariadbConnector",
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
    """A new connector instance for ``kind``, for one-shot use; UnknownConnector naming the
    installed kinds otherwise. A caller that makes calls through it closes it after
    (``base.aclose``): a connector may keep pools open between calls. Long-lived users (the
    engine) hold a ``ConnectorSet`` instead."""
    if _ref(kind) is None:
        raise UnknownConnector(
            f"unknown connector {kind!r}: installed are {', '.join(available())}"
        )
    return _load(kind)()


class ConnectorSet:
    """One connector instance per kind, made on first use and shared by every caller for the
    set's whole life (the engine holds one), so pools and clients a connector keeps per
    target are reused across rotations. ``aclose()`` closes every instance made so far.

    Not thread-safe; use it from one event loop (the connectors' resources belong to it).
    """

    def __init__(self, per_target: int | None = None) -> None:
        self._instances: dict[str, Connector] = {}
        self._per_target = per_target

    def __repr__(self) -> str:
        return f"ConnectorSet({sorted(self._instances)})"

    def get(self, kind: str) -> Connector:
        """The instance for ``kind`` (the same one on every call until ``aclose``, and after
        it too: a closed connector opens again on its next call); UnknownConnector as
        ``get_connector``."""
        found = self._instances.get(kind)
        if found is None:
            found = self._instances[kind] = get_connector(kind)
            # Connectors that pool per target size their pools to the engine's per-target
            # limit (``base.SizesPools``), so a call admitted by it never waits for a session.
            size = getattr(found, "set_pool_size", None)
            if size is not None and self._per_target is not None:
                size(self._per_target)
        return found

    async def aclose(self) -> None:
        """Close every instance that has ``aclose`` (see ``base.Closable``). A failure of one
        is logged (its kind and the error's type, never its text, which may name a target's
        details) and does not stop the others; nothing is raised. Idempotent."""
        for kind, instance in list(self._instances.items()):
            close = getattr(instance, "aclose", None)
            if close is None:
                continue
            try:
                await close()
            except Exception as exc:
                log.warning("closing connector %r failed: %s", kind, type(exc).__name__)

    async def __aenter__(self) -> ConnectorSet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def register(cls: type[Connector]) -> None:
    """Register a connector class at run time (tests, embedding applications)."""
    _kinds()[cls.kind] = cls
    _load.cache_clear()
