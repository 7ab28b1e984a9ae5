"""Connectors: one module per target kind, all behind the protocol in ``base``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rotator.connectors.registry import ConnectorSet, available, get_connector

if TYPE_CHECKING:
    from rotator.connectors.base import Connector, Strategy


def __getattr__(name: str) -> Any:
    # ``base`` (pydantic) is imported on first use, not by every import of a connectors
    # module: a CLI call that needs no connector (credential get) never pays for it.
    if name in ("Connector", "Strategy"):
        from rotator.connectors import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Connector", "ConnectorSet", "Strategy", "available", "get_connector"]
