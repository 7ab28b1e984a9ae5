"""Connectors: one module per target kind, all behind the protocol in ``base``."""

from rotator.connectors.base import Connector, Strategy
from rotator.connectors.registry import ConnectorSet, available, get_connector

__all__ = ["Connector", "ConnectorSet", "Strategy", "available", "get_connector"]
