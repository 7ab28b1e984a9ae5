"""What the engine hands a sink that writes over the network, and the errors it may raise.

A sink with an async ``write(SinkRequest)`` (``openbao``, ``exec``) gets the new CURRENT value, the
value it replaced (to recognise what the sink itself wrote last time) and the engine's secret
resolver (its auth token or AppRole secret_id is another credential, read and audited like a
connector's admin secret). The ``file`` sink keeps its synchronous ``write``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rotator.errors import RotatorError

if TYPE_CHECKING:
    from rotator.connectors.base import SecretResolver
    from rotator.domain.secret import Secret


@dataclass(frozen=True, slots=True)
class SinkRequest:
    """One write: ``value`` the new CURRENT value, ``previous`` the value it replaced (None
    on a credential's first value), ``secrets`` the resolver for the sink's credentials,
    ``credential`` the credential's name and ``version`` the number of its version now
    CURRENT (what an ``exec`` hook is told)."""

    value: Secret
    previous: Secret | None
    secrets: SecretResolver
    credential: str = ""
    version: int = 0


class SinkError(RotatorError):
    """The sink was not written (the message names no value). Reported, not retried."""

    reason = "error"


class SinkUnavailable(SinkError):
    """The sink could not be reached or answered 5xx/429: the engine retries the write."""

    reason = "unavailable"


class SinkConflict(SinkError):
    """Someone else wrote the sink's destination since rotator last did: not overwritten,
    not retried."""

    reason = "conflict"
