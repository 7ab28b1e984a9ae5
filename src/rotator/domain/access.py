"""What the store keeps about principals and their API tokens. Pure: no I/O.

A token itself (``rtr_<id>_<secret>``) is never kept: only its id and the SHA-256 of its
secret (see ``rotator.service.access``). Nothing here holds a token or its digest, so these
values may be printed, logged and listed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from rotator.domain.principal import Grant


class PrincipalKind(enum.StrEnum):
    PERSON = "person"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class PrincipalInfo:
    """A stored principal: its name (unique in its tenant), kind and grants."""

    name: str
    tenant: str
    kind: PrincipalKind
    grants: tuple[Grant, ...]
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored token's metadata (never the token or its digest). ``expires_at`` None: no
    expiry; ``revoked_at`` None: not revoked; ``last_used_at`` is recorded at most once a
    minute per token."""

    id: str
    principal: str
    tenant: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    def state(self, now: datetime) -> str:
        """``revoked``, ``expired`` or ``active`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"
