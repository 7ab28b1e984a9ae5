"""The change feed: each new CURRENT version of the credentials a principal may read.

Source of truth is the audit log: every stage move that makes a version CURRENT writes an
entry in the same transaction (``rotation.complete`` for rotations, emergency ones included,
and ``credential.add`` / ``credential.update`` when they store a value), and an entry's seq
is the feed's cursor. The feed polls the log by seq (every ``poll_s``, 0.2 s by default), so
it sees the rotations of every process on the store, not only this one's, and a consumer that
resumes after the last cursor it handled misses nothing and gets nothing twice.

One poller per service: however many feeds are open in a process, one task reads the log
(every tenant's CURRENT-making entries, every 0.2 s, only while a feed is open) and hands
each batch to every open feed, which keeps what its own principal may see. A feed reads the
store itself only to catch up: at its start (the replay after ``after``), and when it fell
behind (it joined between polls, or did not keep up and its pending batches were dropped).
So the store's load does not grow with the number of open streams.

Who sees what: a subscriber needs VALUE_READ or CREDENTIAL_READ somewhere in its tenant
(PermissionDenied, audited, otherwise) and receives only changes of credentials it may
VALUE_READ or CREDENTIAL_READ (a change names a credential and a version: metadata that
CREDENTIAL_READ shows anyway; VALUE_READ alone counts too, since a reader of the value must
learn when to read it again). Names it may not read are filtered out silently, never refused,
so asking about a name says nothing about whether it exists. Only the principal's tenant is
ever read. Grants are the ones the principal had when the feed started, unless the feed has
a ``recheck`` (the API gives it one: authenticate the stream's token again): then every
``recheck_s`` (2 s) the feed asks it again, takes the grants it answers, and ENDS when it
raises AuthenticationFailed (token revoked or expired, principal removed). With the
service's authentication cache (service.access, TTL 5 s by default) an open stream so ends
within the TTL plus ``recheck_s`` of a revocation anywhere, at once plus ``recheck_s`` when
revoked through the same process.

Auditing: starting a feed is audited once (``watch.start``); the events it delivers are
metadata and are not audited one by one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from rotator.audit import feed
from rotator.audit.chain import AuditEntry
from rotator.domain import names as names_mod
from rotator.domain.change import Change
from rotator.domain.principal import Action, Principal
from rotator.errors import AuthenticationFailed, InvalidInput
from rotator.service.credentials import RotatorService

POLL_S = 0.2  # the issue asks for a new CURRENT within 1 s of its finish
RECHECK_S = 2.0  # how often a feed with a recheck asks it again (see the module docstring)
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
    # Not in the repr: the API's recheck holds the stream's bearer token.
    recheck: Callable[[], Awaitable[Principal]] | None = field(default=None, repr=False)
    recheck_s: float = RECHECK_S

    async def still_allowed(self) -> bool:
        """Ask ``recheck`` (if any) again: False when it refuses the principal now (the
        feed must end), else True, with the principal's current grants adopted."""
        if self.recheck is None:
            return True
        try:
            now = await self.recheck()
        except AuthenticationFailed:
            return False
        if now.tenant != self.principal.tenant or now.name != self.principal.name:
            return False
        self.principal = now
        return True

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
        hub = _hub_of(self.svc)
        # Join before the first read: a batch polled after that read is in the inbox, and
        # whatever the inbox repeats of that read is skipped by its seq.
        inbox = hub.join()
        try:
            for c in await self.poll():
                yield c
            loop = asyncio.get_running_loop()
            check_at = loop.time() + self.recheck_s
            while not stop.is_set():
                if loop.time() >= check_at:
                    if not await self.still_allowed():
                        return
                    check_at = loop.time() + self.recheck_s
                batch = await inbox.next(stop, min(self.poll_s, self.recheck_s))
                if batch is None:
                    continue
                if batch.after > self.cursor:
                    # Behind the poller (joined between polls, or batches were dropped): catch
                    # up from the store. Complete, it has seen every entry up to batch.after,
                    # since entries become visible in seq order (audit.feed).
                    for c in await self.poll():
                        yield c
                    self.cursor = max(self.cursor, batch.after)
                for e in batch.entries:
                    if e.seq <= self.cursor or e.tenant != self.principal.tenant:
                        continue
                    self.cursor = e.seq
                    if (change := _change(e)) is not None and self.wanted(change):
                        yield change
        finally:
            hub.leave(inbox)


@dataclass(frozen=True)
class _Batch:
    after: int  # the poller's cursor before this read
    entries: list[AuditEntry]  # every tenant's, seq > after, in seq order


class _Inbox:
    """One feed's pending batches. Bounded: a feed that does not keep up loses its pending
    batches and catches up from the store instead (the next batch's ``after`` tells it)."""

    MAX_PENDING = 64

    def __init__(self) -> None:
        self.pending: collections.deque[_Batch | Exception] = collections.deque()
        self.ready = asyncio.Event()

    def put(self, item: _Batch | Exception) -> None:
        if len(self.pending) >= self.MAX_PENDING and isinstance(item, _Batch):
            self.pending.clear()
        self.pending.append(item)
        self.ready.set()

    async def next(self, stop: asyncio.Event, timeout_s: float) -> _Batch | None:
        """The next batch; None when ``stop`` is set or ``timeout_s`` passes first. Raises
        the poller's error (the store did not answer)."""
        if not self.pending:
            self.ready.clear()
            waits = [asyncio.ensure_future(self.ready.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if not self.pending:
                return None
        item = self.pending.popleft()
        if isinstance(item, Exception):
            raise item
        return item


class _Hub:
    """The one poller of a service (see the module docstring); runs while a feed is open."""

    def __init__(self, svc: RotatorService, loop: asyncio.AbstractEventLoop) -> None:
        self.svc = svc
        self.loop = loop
        self.inboxes: set[_Inbox] = set()
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.polls = 0  # reads of the log so far (for tests and metrics)

    def join(self) -> _Inbox:
        inbox = _Inbox()
        self.inboxes.add(inbox)
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._run(), name="rotator-watch-poller")
        return inbox

    def leave(self, inbox: _Inbox) -> None:
        self.inboxes.discard(inbox)
        if not self.inboxes:
            self.wake.set()  # the poller ends now, not at its next poll

    async def _run(self) -> None:
        try:
            cursor = await self.svc._read(feed.last_seq)
            while self.inboxes:
                self.wake.clear()  # before the read: a leave() during it still wakes us
                entries, last = await self.svc._read(
                    partial(
                        feed.entries_after,
                        after=cursor,
                        tenant=None,
                        actions=CURRENT_ACTIONS,
                        limit=BATCH,
                    )
                )
                self.polls += 1
                if entries:
                    batch = _Batch(cursor, entries)
                    for inbox in list(self.inboxes):
                        inbox.put(batch)
                cursor = last
                if len(entries) == BATCH:
                    continue  # more to read now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), POLL_S)
        except Exception as exc:  # the store did not answer: every open feed ends with it
            for inbox in list(self.inboxes):
                inbox.put(exc)


_hubs: weakref.WeakKeyDictionary[RotatorService, _Hub] = weakref.WeakKeyDictionary()


def _hub_of(svc: RotatorService) -> _Hub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(svc)
    if hub is None or hub.loop is not loop:
        hub = _hubs[svc] = _Hub(svc, loop)
    return hub


async def subscribe(
    svc: RotatorService,
    principal: Principal,
    *,
    names: Sequence[str] = (),
    prefix: str | None = None,
    after: int | None = None,
    poll_s: float = POLL_S,
    stop: asyncio.Event | None = None,
    recheck: Callable[[], Awaitable[Principal]] | None = None,
) -> Subscription:
    """Check, audit (``watch.start``) and open a feed of new CURRENT versions: of ``names``
    (any, when empty) whose name starts with ``prefix`` (if given), committed after audit seq
    ``after`` (None: from now on). Raises InvalidInput for a bad name, prefix or cursor and
    PermissionDenied when the principal may read no credential at all; never for a name it
    may not read (that one is just never reported). Iteration ends when ``stop`` is set, or
    when ``recheck`` refuses the principal (see the module docstring)."""
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
    # The start before the watch.start entry: that entry is the caller's tenant's, and its
    # seq would tell the tenant how long the store-wide log is.
    if after is not None:
        start = after
    elif principal.owner:
        start = await svc._read(feed.last_seq)
    else:  # the tenant's newest seq: the store-wide one would tell how long the log is
        start = await svc._read(partial(feed.last_seq_of, tenant=principal.tenant))
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
    return Subscription(
        svc, principal, frozenset(names), prefix or None, start, poll_s, stop, recheck
    )


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
