"""The service layer: the use cases every interface calls, and the result types they return."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rotator._lazy import exports

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


__getattr__ = exports(__name__, _LAZY, globals())


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
