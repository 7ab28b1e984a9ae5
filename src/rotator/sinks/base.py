"""What the engine hands a sink that writes over the network, and the errors it may raise.

A sink with an async ``write(SinkRequest)`` (``openbao``, ``exec``) gets the new CURRENT value, the
value it replaced (to recognise what the sink itself wrote last time) and the engine's secret
resolver (its auth token or AppRole secret_id is another credential, read and audited like a
connector's admin secret). The ``file`` sink keeps its synchronous ``write``.

A write may run after a later rotation of the same credential has finished (the stage move
frees the credential before its sinks are written): ``still_current()`` tells the sink, right
before it writes, whether ``value`` is still the credential's CURRENT; when it is not, the
sink writes nothing and raises SinkSuperseded (the later rotation writes its own value).
``earlier()`` returns the values the credential held before ``previous`` (newest first): a
destination holding one of them was last written by rotator, not by someone else (a missed
write, a value set by ``credential update --value``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
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
    CURRENT (what an ``exec`` hook is told), ``still_current`` and ``earlier`` as the module
    docstring says (by default: always current, no earlier values)."""

    value: Secret
    previous: Secret | None
    secrets: SecretResolver
    credential: str = ""
    version: int = 0
    still_current: Callable[[], Awaitable[bool]] = field(default=lambda: _true())
    earlier: Callable[[], Awaitable[Sequence[Secret]]] = field(default=lambda: _none())


async def _true() -> bool:
    return True


async def _none() -> Sequence[Secret]:
    return ()


class SinkError(RotatorError):
    """The sink was not written (the message names no value). Reported, not retried."""

    reason = "error"


class SinkUnavailable(SinkError):
    """The sink could not be reached or answered 5xx/429: the engine retries the write."""

    reason = "unavailable"


class SinkSuperseded(SinkError):
    """Not written: a later rotation made another value CURRENT before this write (the
    later rotation's own write puts that value there). Audited as ``sink.skipped``."""

    reason = "superseded"


class SinkDenied(SinkError):
    """The sink refused the credential it was given (HTTP 403): the engine re-reads that
    credential once (a cached token may have been replaced) and retries."""

    reason = "denied"


class SinkConflict(SinkError):
    """Someone else wrote the sink's destination since rotator last did: not overwritten,
    not retried."""

    reason = "conflict"
