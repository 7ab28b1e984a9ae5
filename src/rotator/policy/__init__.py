"""Policy evaluation: when is a credential due. Pure functions; ``now`` is an argument."""

from rotator.policy.schedule import next_rotation_at

__all__ = ["next_rotation_at"]
