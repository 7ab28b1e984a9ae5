"""Domain objects: credentials, versions, stages, tenants. No I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rotator.domain.policy import RotationPolicy


class Stage(enum.StrEnum):
    """Label on a version. Exactly one version of a credential is CURRENT once it has a value."""

    CURRENT = "CURRENT"
    PENDING = "PENDING"
    PREVIOUS = "PREVIOUS"
    RETIRED = "RETIRED"
    FAILED = "FAILED"


DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Version:
    """One value of a credential; the value itself is never held here (see Secret)."""

    credential_id: int
    number: int
    stage: Stage
    created_at: datetime
    staged_at: datetime
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Credential:
    """A named secret rotator manages. Holds metadata only, never a value."""

    id: int
    tenant: str
    name: str
    connector: str
    config: dict[str, str]
    tags: dict[str, str]
    policy: RotationPolicy
    created_at: datetime
    updated_at: datetime
    next_rotation_at: datetime | None = None
    last_rotated_at: datetime | None = None
    use_count: int = 0
    versions: tuple[Version, ...] = field(default=())
    sinks: tuple[dict[str, Any], ...] = field(default=())
    # Which policy rule set next_rotation_at (migration 0007), e.g. "every 30d from tag env=prod".
    next_rotation_rule: str | None = None

    def version_in(self, stage: Stage) -> Version | None:
        """The newest version carrying ``stage``, or None."""
        found = [v for v in self.versions if v.stage is stage]
        return max(found, key=lambda v: v.number) if found else None
