"""The service layer: the use cases every interface calls, and the result types they return."""

from rotator.domain.principal import LOCAL_PRINCIPAL, Principal
from rotator.engine.options import EngineOptions
from rotator.engine.types import BatchResult, Outcome, RotationResult, StillValid, Trigger
from rotator.service.blocking import BlockingService
from rotator.service.credentials import RotatorService
from rotator.service.events import EventInput, EventReport
from rotator.service.inputs import PolicyInput, ValueInput

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
