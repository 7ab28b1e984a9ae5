"""The rotation engine (asyncio): intents, steps, retries, breakers, recovery, revocation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rotator._lazy import exports

if TYPE_CHECKING:
    from rotator.engine.engine import Engine
    from rotator.engine.options import EngineOptions
    from rotator.engine.types import (
        BatchResult,
        Guard,
        Outcome,
        RotationRequest,
        RotationResult,
        Trigger,
    )

# Each name is imported from its module on first use (PEP 562), so importing one part of the
# engine (``rotator.engine.options``, the writer a value read goes through) does not import
# the whole engine: ``credential get`` pays at start-up only for what it runs.
_LAZY = {
    "Engine": "rotator.engine.engine",
    "EngineOptions": "rotator.engine.options",
    "BatchResult": "rotator.engine.types",
    "Guard": "rotator.engine.types",
    "Outcome": "rotator.engine.types",
    "RotationRequest": "rotator.engine.types",
    "RotationResult": "rotator.engine.types",
    "Trigger": "rotator.engine.types",
}


__getattr__ = exports(__name__, _LAZY, globals())


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
