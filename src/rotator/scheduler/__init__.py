"""The scheduler: decides when rotator acts on its own, and hands the work to the engine."""

from rotator.scheduler.loop import SchedulerOptions, run
from rotator.scheduler.pacing import Pacer, Rate, parse_rate

__all__ = ["Pacer", "Rate", "SchedulerOptions", "parse_rate", "run"]
