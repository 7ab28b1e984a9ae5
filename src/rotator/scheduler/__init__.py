"""The scheduler: decides when rotator acts on its own, and hands the work to the engine."""

from rotator.scheduler.loop import run

__all__ = ["run"]
