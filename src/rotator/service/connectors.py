"""What connectors are installed and what settings each takes (``rotator connector list`` and
``describe``). Read-only, no store and no principal: it describes this installation's code,
not any tenant's data.

Everything comes from the connectors themselves: the registry's kinds (built-ins and the
``rotator.connectors`` entry points), each connector's ``config_model`` (a pydantic model: its
fields' types, defaults and descriptions) and its strategy, or strategies by ``mode`` when it
has ``strategy_for``. A connector added to the registry or installed as a plugin shows up with
no change here.
"""

from __future__ import annotations

import sys
import typing
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticUndefined

from rotator.connectors import base as cbase
from rotator.connectors import registry
from rotator.errors import UnknownConnector

MAX_ERROR_CHARS = 200


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """One ``--set`` setting: ``type`` as JSON Schema names it (``string``, ``integer``,
    ``number``, ``boolean``) or the allowed values joined by ``|``; ``default`` None when
    the setting is required."""

    name: str
    type: str
    required: bool
    default: Any
    description: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "default": self.default,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class StrategyInfo:
    """A strategy the connector offers; ``mode`` the value of its ``mode`` setting that
    selects it (None: the connector has one strategy)."""

    strategy: str
    mode: str | None = None
    default: bool = True  # the one used when ``mode`` is not set

    def to_json(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "mode": self.mode, "default": self.default}


@dataclass(frozen=True, slots=True)
class ConnectorInfo:
    """An installed connector. ``error`` (one line) when it could not be loaded or described
    (a plugin whose module fails to import); then only ``kind`` and ``source`` are known."""

    kind: str
    source: str  # "built-in" or "plugin"
    strategies: tuple[StrategyInfo, ...] = ()
    settings: tuple[SettingInfo, ...] = ()
    summary: str = ""
    error: str | None = None

    @property
    def settings_summary(self) -> str:
        """The required settings by name and how many optional ones there are."""
        required = [s.name for s in self.settings if s.required]
        optional = len(self.settings) - len(required)
        parts = [f"required: {', '.join(required)}"] if required else []
        parts.append(f"{optional} optional")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "strategies": [s.to_json() for s in self.strategies],
            "settings": [s.to_json() for s in self.settings],
            "summary": self.summary,
            "error": self.error,
        }


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _type_of(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "|".join(str(v) for v in schema["enum"])
    if "const" in schema:
        return str(schema["const"])
    if "type" in schema:
        return str(schema["type"])
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return " or ".join(_type_of(o) for o in options)
    return "any"


def _settings(model: type[cbase.ConnectorConfig]) -> tuple[SettingInfo, ...]:
    schema = model.model_json_schema(mode="validation")
    props: dict[str, Any] = schema.get("properties", {})
    out = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        prop = props.get(key, {})
        default = None if info.default is PydanticUndefined else info.default
        out.append(
            SettingInfo(
                name=key,
                type=_type_of(prop),
                required=info.is_required(),
                default=default if isinstance(default, str | int | float | bool) else None,
                description=info.description or "",
            )
        )
    return tuple(out)


def _strategies(impl: cbase.Connector) -> tuple[StrategyInfo, ...]:
    """One strategy, or one per value of the ``mode`` setting for a connector whose strategy
    depends on its settings (``strategy_for``)."""
    per_config = getattr(impl, "strategy_for", None)
    mode = impl.config_model.model_fields.get("mode")
    if per_config is None or mode is None:
        return (StrategyInfo(cbase.Strategy(impl.strategy).value),)
    choices = typing.get_args(mode.annotation) if typing.get_origin(mode.annotation) else ()
    found = []
    for choice in choices:
        # Only the mode is known here (required settings are not): the connector's
        # strategy_for reads the mode alone; one that reads more is shown by its default.
        try:
            strategy = per_config(impl.config_model.model_construct(mode=choice))
        except Exception:
            strategy = None
        if strategy is None:
            continue
        found.append(
            StrategyInfo(cbase.Strategy(strategy).value, str(choice), choice == mode.default)
        )
    return tuple(found) or (StrategyInfo(cbase.Strategy(impl.strategy).value),)


def _summary(impl: cbase.Connector) -> str:
    """The first line of the connector's module docstring (where connectors describe
    themselves), else of its class docstring."""
    module = sys.modules.get(type(impl).__module__)
    for doc in (module.__doc__ if module is not None else None, type(impl).__doc__):
        if doc and doc.strip():
            return doc.strip().splitlines()[0].strip()
    return ""


def _info(kind: str) -> ConnectorInfo:
    source = "built-in" if kind in registry.BUILTIN else "plugin"
    try:
        impl = registry.get_connector(kind)
        return ConnectorInfo(
            kind=kind,
            source=source,
            strategies=_strategies(impl),
            settings=_settings(impl.config_model),
            summary=_summary(impl),
        )
    except UnknownConnector:
        raise
    except Exception as exc:
        # A plugin that fails to import (or is not a connector) is listed with its error, so
        # one broken package does not hide the others.
        return ConnectorInfo(kind=kind, source=source, error=_one_line(exc))


def list_connectors() -> list[ConnectorInfo]:
    """Every installed connector, sorted by kind; a broken one carries its ``error``."""
    return [_info(kind) for kind in registry.available()]


def describe_connector(kind: str) -> ConnectorInfo:
    """One connector's description; UnknownConnector (InvalidInput, naming the installed
    kinds) when no connector of that kind is installed."""
    if kind not in registry.available():
        raise UnknownConnector(
            f"unknown connector {kind!r}: installed are {', '.join(registry.available())}"
        )
    return _info(kind)


__all__ = [
    "ConnectorInfo",
    "SettingInfo",
    "StrategyInfo",
    "describe_connector",
    "list_connectors",
]
