"""The rotation engine (asyncio): intents, steps, retries, breakers, recovery, revocation."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # A submodule (``rotator.engine.steps``) reached as an attribute before anything
        # imported it, as it could be when the package imported the whole engine.
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
    "BatchResult",
    "Engine",
    "EngineOptions",
    "Guard",
    "Outcome",
    "RotationRequest",
    "RotationResult",
    "Trigger",
]
