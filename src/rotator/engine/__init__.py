"""The rotation engine (asyncio): intents, steps, retries, breakers, recovery, revocation."""

from rotator.engine.engine import Engine, EngineOptions
from rotator.engine.types import (
    BatchResult,
    Guard,
    Outcome,
    RotationRequest,
    RotationResult,
    Trigger,
)

__all__ = [
    "BatchResult",
    "Engine",
    "EngineOptions",
    "Guard",
    "Outcome",
    "RotationRequest",
    "RotationResult",
    "Trigger",
]
