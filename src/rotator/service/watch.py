"""The change feed: each new CURRENT version of the credentials a principal may read.

Source of truth is the audit log: every stage move that makes a version CURRENT writes an
entry in the same transaction (``rotation.complete`` for rotations, emergency ones included,
and ``credential.add`` / ``credential.update`` when they store a value), and an entry's seq
is the feed's cursor. The feed polls the log by seq (every ``poll_s``, 0.2 s by default), so
it sees the rotations of every process on the store, not only this one's, and a consumer that
resumes after the last cursor it handled misses nothing and gets nothing twice.

Who sees what: a subscriber needs VALUE_READ or CREDENTIAL_READ somewhere in its tenant
(PermissionDenied, audited, otherwise) and receives only changes of credentials it may
VALUE_READ or CREDENTIAL_READ (a change names a credential and a version: metadata that
CREDENTIAL_READ shows anyway; VALUE_READ alone counts too, since a reader of the value must
learn when to read it again). Names it may not read are filtered out silently, never refused,
so asking about a name says nothing about whether it exists. Grants are the ones the
principal had when the feed started. Only the principal's tenant is ever read.

Auditing: starting a feed is audited once (``watch.start``); the events it delivers are
metadata and are not audited one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial

from rotator.audit import feed
from rotator.audit.chain import AuditEntry
from rotator.domain import names as names_mod
from rotator.domain.change import Change
from rotator.domain.principal import Action, Principal
from rotator.errors import InvalidInput
from rotator.service.credentials import RotatorService

POLL_S = 0.2  # the issue asks for a new CURRENT within 1 s of its finish
BATCH = 500
MAX_PREFIX = 200
MAX_NAMES = 1000
# The audit actions that make a version CURRENT (with the version in their details).
CURRENT_ACTIONS = frozenset({"rotation.complete", "credential.add", "credential.update"})
_READ = (Action.VALUE_READ, Action.CREDENTIAL_READ)

__all__ = ["Change", "Subscription", "changes", "subscribe"]


def _change(e: AuditEntry) -> Change | None:
    version = e.details.get("version")
    if e.credential is None or not isinstance(version, int) or isinstance(version, bool):
        return None  # an add without a value, an update of settings or tags only
    return Change(
        name=e.credential, version=version, rotation_id=e.rotation_id, at=e.ts, cursor=e.seq
    )


@dataclass
class Subscription:
    """An open feed: iterate it (``async for``) for :class:`Change` objects, until ``stop`` is
    set (None: forever). Made by :func:`subscribe`, which has checked and audited it
    already."""

    svc: RotatorService
    principal: Principal
    names: frozenset[str]
    prefix: str | None
    cursor: int
    poll_s: float = POLL_S
    stop: asyncio.Event | None = None

    def wanted(self, c: Change) -> bool:
        if self.names and c.name not in self.names:
            return False
        if self.prefix is not None and not c.name.startswith(self.prefix):
            return False
        return any(self.principal.may(a, c.name) for a in _READ)

    async def poll(self) -> list[Change]:
        """The changes committed since the last poll (possibly none); advances the cursor."""
        out: list[Change] = []
        while True:
            entries, last = await self.svc._read(
                partial(
                    feed.entries_after,
                    after=self.cursor,
                    tenant=self.principal.tenant,
                    actions=CURRENT_ACTIONS,
                    limit=BATCH,
                )
            )
            self.cursor = last
            out.extend(c for e in entries if (c := _change(e)) is not None and self.wanted(c))
            if len(entries) < BATCH:
                return out

    def __aiter__(self) -> AsyncIterator[Change]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Change]:
        stop = self.stop if self.stop is not None else asyncio.Event()
        while not stop.is_set():
            for c in await self.poll():
                yield c
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)


async def subscribe(
    svc: RotatorService,
    principal: Principal,
    *,
    names: Sequence[str] = (),
    prefix: str | None = None,
    after: int | None = None,
    poll_s: float = POLL_S,
    stop: asyncio.Event | None = None,
) -> Subscription:
    """Check, audit (``watch.start``) and open a feed of new CURRENT versions: of ``names``
    (any, when empty) whose name starts with ``prefix`` (if given), committed after audit seq
    ``after`` (None: from now on). Raises InvalidInput for a bad name, prefix or cursor and
    PermissionDenied when the principal may read no credential at all; never for a name it
    may not read (that one is just never reported). Iteration ends when ``stop`` is set."""
    for n in names:
        names_mod.check_credential_name(n)
    if len(names) > MAX_NAMES:
        raise InvalidInput(f"watch at most {MAX_NAMES} names at once")
    if prefix is not None and (
        len(prefix) > MAX_PREFIX or any(ord(ch) < 32 or ord(ch) == 127 for ch in prefix)
    ):
        raise InvalidInput(
            f"the prefix must be at most {MAX_PREFIX} characters, without control characters"
        )
    if after is not None and (isinstance(after, bool) or not 0 <= after < 2**63):
        raise InvalidInput("the cursor must be a non-negative integer (an event id)")
    if not principal.may_some(Action.VALUE_READ):
        await svc.authorize_some(principal, Action.CREDENTIAL_READ)
    details = {"names": sorted(set(names)) or None, "prefix": prefix, "after": after}
    await svc._write(
        lambda conn: svc._audit(
            conn,
            principal,
            "watch.start",
            None,
            **{k: v for k, v in details.items() if v is not None},
        )
    )
    start = after if after is not None else await svc._read(feed.last_seq)
    return Subscription(svc, principal, frozenset(names), prefix or None, start, poll_s, stop)


async def changes(
    svc: RotatorService,
    principal: Principal,
    *,
    names: Sequence[str] = (),
    prefix: str | None = None,
    after: int | None = None,
    poll_s: float = POLL_S,
) -> AsyncIterator[Change]:
    """Each new CURRENT (see :func:`subscribe`, which checks the arguments at the first
    iteration), in cursor order, forever."""
    sub = await subscribe(svc, principal, names=names, prefix=prefix, after=after, poll_s=poll_s)
    async for c in sub:
        yield c
