"""Policy evaluation: when is a credential due. Pure functions; ``now`` is an argument."""

from rotator.policy.schedule import earliest, next_rotation_at

__all__ = ["earliest", "next_rotation_at"]
