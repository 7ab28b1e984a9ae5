"""Domain objects and value types. No I/O; time is passed in."""

from rotator.domain.model import DEFAULT_TENANT, Credential, Stage, Tenant, Version
from rotator.domain.policy import RotationPolicy, parse_duration
from rotator.domain.secret import Secret

__all__ = [
    "DEFAULT_TENANT",
    "Credential",
    "RotationPolicy",
    "Secret",
    "Stage",
    "Tenant",
    "Version",
    "parse_duration",
]
