"""The service layer: the use cases every interface calls, and the result types they return."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rotator.domain.principal import LOCAL_PRINCIPAL, Principal
    from rotator.engine.options import EngineOptions
    from rotator.engine.types import BatchResult, Outcome, RotationResult, StillValid, Trigger
    from rotator.service.blocking import BlockingService
    from rotator.service.credentials import RotatorService
    from rotator.service.events import EventInput, EventReport
    from rotator.service.inputs import PolicyInput, ValueInput

# Each name is imported from its module on first use (PEP 562): an interface that needs one
# use case (``credential get``) does not import every other one at start-up.
_LAZY = {
    "LOCAL_PRINCIPAL": "rotator.domain.principal",
    "Principal": "rotator.domain.principal",
    "EngineOptions": "rotator.engine.options",
    "BatchResult": "rotator.engine.types",
    "Outcome": "rotator.engine.types",
    "RotationResult": "rotator.engine.types",
    "StillValid": "rotator.engine.types",
    "Trigger": "rotator.engine.types",
    "BlockingService": "rotator.service.blocking",
    "RotatorService": "rotator.service.credentials",
    "EventInput": "rotator.service.events",
    "EventReport": "rotator.service.events",
    "PolicyInput": "rotator.service.inputs",
    "ValueInput": "rotator.service.inputs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # A use-case module (``rotator.service.rotation``) reached as an attribute before
        # anything imported it: import it now, as ``BlockingService`` does at a first call.
        if not name.startswith("_"):
            try:
                return importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "LOCAL_PRINCIPAL",
    "BatchResult",
    "BlockingService",
    "EngineOptions",
    "EventInput",
    "EventReport",
    "Outcome",
    "PolicyInput",
    "Principal",
    "RotationResult",
    "RotatorService",
    "StillValid",
    "Trigger",
    "ValueInput",
]
