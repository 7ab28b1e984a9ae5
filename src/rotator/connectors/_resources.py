"""Per-target resources of one connector instance (pools, clients): the shared mechanics of
the ``Closable`` contract in ``connectors.base``.

A resource sits in a *slot* (which target, and every setting that makes two resources differ)
together with a *version* (e.g. an HMAC fingerprint of the admin value it logs in with). A
call whose version differs from the slot's replaces the resource and closes the old one, so a
rotated admin value gets a new pool and the old pool's idle sessions are closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from rotator.domain.secret import Secret

R = TypeVar("R")

log = logging.getLogger(__name__)


class Fingerprints:
    """HMAC-SHA256 of secret values under a random key of this object: equal values give
    equal fingerprints within one instance, and a fingerprint tells nothing about a value
    (the key never leaves memory, changes per instance, and has no repr)."""

    __slots__ = ("_key",)

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def of(self, value: Secret) -> bytes:
        return hmac.new(self._key, value.reveal(), hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "Fingerprints()"


class Resources(Generic[R]):
    """Resources by slot, made on first use, bound to the event loop that made them.

    ``get`` returns the slot's resource, making it (``make``) when there is none or when its
    version differs (the old one is closed first); ``drop`` closes and forgets one resource
    (a pool whose login was refused); ``aclose`` closes them all and is idempotent. Used from
    another event loop than the one that made them, the existing resources are forgotten
    unclosed (their loop is gone, and with it what could close them) and made again.
    """

    def __init__(self, close: Callable[[R], Awaitable[None]]) -> None:
        self._close = close
        self._items: dict[Hashable, tuple[bytes, R]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:  # slots may name targets; versions are never shown
        return f"Resources({len(self._items)} open)"

    def _bind(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._lock is None:
            self._items = {}
            self._loop = loop
            self._lock = asyncio.Lock()
        return self._lock

    async def get(self, slot: Hashable, version: bytes, make: Callable[[], Awaitable[R]]) -> R:
        async with self._bind():
            found = self._items.get(slot)
            if found is not None and found[0] == version:
                return found[1]
            if found is not None:
                del self._items[slot]
                await self._quietly_close(found[1])
            made = await make()
            self._items[slot] = (version, made)
            return made

    async def drop(self, slot: Hashable, resource: R) -> None:
        """Close ``resource`` and forget it, unless the slot already holds another one."""
        async with self._bind():
            found = self._items.get(slot)
            if found is not None and found[1] is resource:
                del self._items[slot]
        await self._quietly_close(resource)

    async def aclose(self) -> None:
        if self._loop is not asyncio.get_running_loop():
            self._items, self._loop, self._lock = {}, None, None
            return
        items, self._items = list(self._items.values()), {}
        for _, resource in items:
            await self._quietly_close(resource)

    async def _quietly_close(self, resource: R) -> None:
        # Closing releases what can be released; a failure here (a peer already gone) must
        # not stop the other closes nor fail the call that replaced the resource.
        try:
            await self._close(resource)
        except Exception as exc:
            log.warning("closing a connector resource failed: %s", type(exc).__name__)

    def __len__(self) -> int:
        return len(self._items)
