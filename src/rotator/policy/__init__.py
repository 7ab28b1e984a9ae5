"""Policy evaluation: when is a credential due, and which defaults apply. Pure functions;
``now`` is an argument."""

from rotator.policy.defaults import Resolved, check_partial, resolve
from rotator.policy.schedule import earliest, next_rotation, next_rotation_at, usage_due

__all__ = [
    "Resolved",
    "check_partial",
    "earliest",
    "next_rotation",
    "next_rotation_at",
    "resolve",
    "usage_due",
]
