"""SIEM forwarding: every audit entry, in seq order, to a webhook (HMAC-signed JSON batches) or
to syslog (RFC 5424 over TCP or UDP). Use cases: add, list, remove and run forwarders.

Wire format. Webhook: ``POST`` with ``Content-Type: application/json`` and body
``{"entries": [AuditEntry.to_json(), ...]}`` (at most ``batch`` entries, in seq order; each
entry with its ``seq``, ``hash``, ``prev_hash`` and ``key_id``, so a receiver can check the
chain's links), and headers ``X-Rotator-Timestamp: <unix seconds>``, ``X-Rotator-Signature:
sha256=<hex HMAC-SHA256(key, timestamp + "." + body)>`` (key: the CURRENT value of the
``--hmac-credential``, read at every batch) and ``X-Rotator-Delivery: <first seq>-<last seq>``.
Syslog: one RFC 5424 message per entry (see :mod:`rotator.audit.syslog`), octet-counted on TCP,
one per datagram on UDP.

Delivery semantics (what a receiver may rely on):

- **In order, nothing skipped.** A forwarder reads the durable log after its ``cursor`` (the
  last seq its target acknowledged), one batch at a time, and sends the batch until the target
  acknowledges it (retrying with capped exponential backoff and jitter, recording
  ``last_error``); only then does the cursor move, in a transaction conditioned on the old
  cursor and on this process still holding the forwarder's lease. A batch is never split,
  skipped or reordered, and a later batch is never sent before an earlier one was
  acknowledged.
- **At least once, not exactly once.** A process killed (or a lease lost) after the target
  acknowledged a batch and before the cursor committed sends that batch again. Every webhook
  request carries ``X-Rotator-Delivery: FIRST-LAST`` (its seq range) and every entry its
  ``seq`` and ``hash``: a receiver that keeps the highest seq it stored and drops entries at
  or below it gets exactly once. Exactly once needs that help from the receiver; rotator
  cannot promise it alone. (The range of a re-sent batch can be longer than the first
  attempt's when entries arrived in between: dedupe by ``seq``, not by delivery id alone.)
- **One process per forwarder.** A forwarder row is leased (``claimed_by``, ``lease_until``)
  and the lease is renewed while its holder sends; several workers on PostgreSQL share the
  forwarders, each worked by one of them at a time.
- **Never in a rotation's way.** A forwarder reads the log at its own pace with one batch in
  memory, in its own short transactions, and writes only its own row: a slow or dead target
  makes its lag grow, never a rotation wait.
- **Acknowledged** means: webhook, a 2xx answer; syslog over TCP, the frames accepted by the
  connection (RFC 5424/6587 have no application acknowledgement, so a receiver that dies with
  frames in its socket buffer loses them); syslog over UDP, the datagrams sent (no delivery
  guarantee at all: use TCP or the webhook where losing an entry matters).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from rotator.audit.chain import AuditEntry
from rotator.audit.syslog import LOG_AUDIT
from rotator.domain import names
from rotator.domain.model import Stage
from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.domain.secret import Secret
from rotator.errors import (
    AlreadyExists,
    AuditError,
    InvalidInput,
    NotFound,
    RotatorError,
)
from rotator.service.credentials import RotatorService
from rotator.service.forward_targets import (
    SEND_TIMEOUT_S,
    DeliveryError,
    SyslogTcpTarget,
    SyslogUdpTarget,
    Target,
    WebhookTarget,
    check_webhook_url,
    parse_syslog_target,
    resolve_public,
)
from rotator.store import forwarders as store_fwd

if TYPE_CHECKING:
    import httpx
    from tenacity import RetryCallState

log = logging.getLogger(__name__)

DEFAULT_BATCH = 100
MAX_BATCH = 10_000
BACKOFF_INITIAL_S = 0.2
BACKOFF_CAP_S = 30.0
FORWARDER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
FORMATS = ("json", "cef")


class ForwardingFailed(AuditError):
    """A forwarder's target kept failing past the allowed attempts."""


class _LostLease(Exception):
    """Another process took the forwarder over (or it was removed) while this one worked it."""


# -- views and inputs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwarderView:
    """A forwarder as ``audit forward list`` shows it. ``lag``: head seq minus cursor."""

    name: str
    tenant: str | None
    kind: str
    target: str
    options: dict[str, Any]
    cursor: int
    head: int
    enabled: bool
    claimed_by: str | None
    lease_until: datetime | None
    last_error: str | None
    last_attempt_at: datetime | None
    delivered: int

    @property
    def lag(self) -> int:
        return max(0, self.head - self.cursor)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tenant": self.tenant,
            "kind": self.kind,
            "target": self.target,
            "options": self.options,
            "cursor": self.cursor,
            "head": self.head,
            "lag": self.lag,
            "enabled": self.enabled,
            "claimed_by": self.claimed_by,
            "lease_until": None if self.lease_until is None else self.lease_until.isoformat(),
            "last_error": self.last_error,
            "last_attempt_at": (
                None if self.last_attempt_at is None else self.last_attempt_at.isoformat()
            ),
            "delivered": self.delivered,
        }


def _view(row: store_fwd.ForwarderRow, head: int) -> ForwarderView:
    return ForwarderView(
        name=row.name,
        tenant=row.tenant,
        kind=row.kind,
        target=row.target,
        options=row.options,
        cursor=row.cursor,
        head=head,
        enabled=row.enabled,
        claimed_by=row.claimed_by,
        lease_until=row.lease_until,
        last_error=row.last_error,
        last_attempt_at=row.last_attempt_at,
        delivered=row.delivered,
    )


def _visible(principal: Principal, row: store_fwd.ForwarderRow) -> bool:
    return principal.owner or row.tenant == principal.tenant


# -- use cases -------------------------------------------------------------------------------


async def add_forwarder(
    svc: RotatorService,
    name: str,
    *,
    webhook: str | None = None,
    hmac_credential: str | None = None,
    syslog: str | None = None,
    fmt: str | None = None,
    facility: int | None = None,
    batch: int | None = None,
    tenant: str | None = None,
    from_now: bool = False,
    principal: Principal = LOCAL_PRINCIPAL,
) -> ForwarderView:
    """Add a forwarder, enabled, starting at seq 0 (all history) or, ``from_now``, after the
    newest entry. ``tenant`` None: the owner's forwarder gets every entry; anyone else's gets
    its own tenant's. Audited (``audit.forward.add``; the entry names the target, which holds
    no secret). Raises InvalidInput, NotFound (tenant, HMAC credential), AlreadyExists,
    PermissionDenied; writes nothing then."""
    await svc.authorize(principal, Action.AUDIT_FORWARD)
    if not FORWARDER_NAME.fullmatch(name):
        raise InvalidInput(
            f"forwarder name {name!r} must match [a-z0-9][a-z0-9._-]* (at most 64 characters)"
        )
    if (webhook is None) == (syslog is None):
        raise InvalidInput("give exactly one of --webhook URL and --syslog tcp|udp://HOST:PORT")
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise InvalidInput(f"--batch must be between 1 and {MAX_BATCH}")
    if tenant is not None:
        names.check_tenant_name(tenant)
        # Another tenant than its own: refused and audited (with the tenant) like every denial.
        await svc.authorize_tenant(principal, tenant, Action.AUDIT_FORWARD)
    elif not principal.owner:
        tenant = principal.tenant
    options: dict[str, Any] = {"batch": batch or DEFAULT_BATCH}
    if webhook is not None:
        if fmt is not None or facility is not None:
            raise InvalidInput("--format and --facility apply to --syslog only")
        check_webhook_url(webhook)
        if not principal.owner:  # anyone but the owner: no internal addresses (as webhooks)
            await asyncio.to_thread(resolve_public, webhook, "--webhook")
        if not hmac_credential:
            raise InvalidInput("--webhook needs --hmac-credential NAME (the signing key)")
        names.check_credential_name(hmac_credential)
        kind, target = "webhook", webhook
        options["hmac_credential"] = hmac_credential
        options["hmac_tenant"] = tenant or principal.tenant
    else:
        assert syslog is not None
        if hmac_credential is not None:
            raise InvalidInput("--hmac-credential applies to --webhook only")
        parse_syslog_target(syslog)
        fmt = fmt or "json"
        if fmt not in FORMATS:
            raise InvalidInput("--format must be json or cef")
        fac = LOG_AUDIT if facility is None else facility
        if not 0 <= fac <= 23:
            raise InvalidInput("--facility must be between 0 and 23")
        kind, target = "syslog", syslog
        options.update(format=fmt, facility=fac)

    tenant_id = None
    if tenant is not None:
        scope = tenant
        tenant_id = (await svc._thread(lambda: svc.kernel.find_tenant(scope))).id
    if kind == "webhook":
        key_principal = Principal(tenant=options["hmac_tenant"], owner=True)
        cred = options["hmac_credential"]
        # Only that it exists and opens: nothing is returned or recorded.
        await svc._read(lambda c: svc.kernel.find_value(c, key_principal, cred)[1])

    # Names are unique per tenant (``"*"``: the owner's every-tenant forwarders), so a clash
    # says nothing about another tenant's forwarders.
    scope_key = tenant or "*"

    def write(conn: Connection) -> ForwarderView | AlreadyExists:
        if store_fwd.get(conn, name, scope_key) is not None:
            return AlreadyExists(f"forwarder {name!r} exists already")
        head = store_fwd.head_seq(conn)
        cursor = head if from_now else 0
        store_fwd.insert_forwarder(
            conn,
            name=name,
            scope_key=scope_key,
            tenant_id=tenant_id,
            kind=kind,
            target=target,
            options=options,
            cursor=cursor,
            now=svc.clock(),
        )
        svc._audit(
            conn,
            principal,
            "audit.forward.add",
            None,
            forwarder=name,
            kind=kind,
            target=target,
            scope=tenant or "*",
            cursor=cursor,
        )
        row = store_fwd.get(conn, name, scope_key)
        assert row is not None
        return _view(row, head + 1)

    out = await svc._write(write)
    if isinstance(out, AlreadyExists):
        raise out
    return out


async def list_forwarders(
    svc: RotatorService, principal: Principal = LOCAL_PRINCIPAL
) -> list[ForwarderView]:
    """The forwarders the principal may see (the owner: all; others: their tenant's), with
    each one's lag behind the head and last error."""
    await svc.authorize(principal, Action.AUDIT_FORWARD)

    def read(conn: Connection) -> list[ForwarderView]:
        head = store_fwd.head_seq(conn)
        return [_view(r, head) for r in store_fwd.list_forwarders(conn) if _visible(principal, r)]

    return await svc._read(read)


async def remove_forwarder(
    svc: RotatorService,
    name: str,
    principal: Principal = LOCAL_PRINCIPAL,
    *,
    tenant: str | None = None,
) -> None:
    """Remove a forwarder (audited). A process working it stops at its next write.

    Names are unique per tenant: a non-owner names one of its own tenant's (NotFound, the
    same text, for any other, ``tenant`` included). The owner names one in any tenant, or
    ``tenant`` ``"*"`` for an every-tenant one; without ``tenant``, the one forwarder of
    that name (InvalidInput naming the tenants when several have it)."""
    await svc.authorize(principal, Action.AUDIT_FORWARD)
    if tenant is not None and tenant != "*":
        await svc.authorize_tenant(principal, tenant, Action.AUDIT_FORWARD)
    missing = NotFound(f"no forwarder {name!r}")

    def write(conn: Connection) -> RotatorError | None:
        if not principal.owner:
            row = (
                store_fwd.get(conn, name, principal.tenant)
                if tenant in (None, principal.tenant)
                else None
            )
        elif tenant is not None:
            row = store_fwd.get(conn, name, tenant)
        else:
            rows = store_fwd.named(conn, name)
            if len(rows) > 1:
                where = ", ".join(r.tenant or "*" for r in rows)
                return InvalidInput(
                    f"forwarder {name!r} exists in several tenants ({where}): "
                    "name one with --tenant T ('*' for the every-tenant one)"
                )
            row = rows[0] if rows else None
        if row is None:
            return missing
        store_fwd.delete_forwarder(conn, row.id)
        svc._audit(
            conn,
            principal,
            "audit.forward.remove",
            None,
            forwarder=name,
            scope=row.tenant or "*",
            cursor=row.cursor,
        )
        return None

    err = await svc._write(write)
    if err is not None:
        raise err


# -- targets ---------------------------------------------------------------------------------
# -- running ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryTiming:
    """Backoff between attempts on one batch: exponential from ``initial`` with jitter, capped
    at ``cap`` seconds. ``sleep`` is injectable (tests)."""

    initial: float = BACKOFF_INITIAL_S
    cap: float = BACKOFF_CAP_S
    sleep: Callable[[float], Awaitable[None]] | None = None


@dataclass
class RunStats:
    delivered: int = 0
    batches: int = 0
    failures: int = 0
    skipped_held: list[str] = field(default_factory=list)


class _Runner:
    def __init__(
        self,
        svc: RotatorService,
        principal: Principal,
        stop: asyncio.Event,
        *,
        once: bool,
        give_up_after: int | None,
        poll_s: float,
        lease_s: float,
        timing: RetryTiming,
    ) -> None:
        self.svc = svc
        self.principal = principal
        self.stop = stop
        self.once = once
        self.give_up_after = give_up_after
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.timing = timing
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.hostname = socket.gethostname()
        self.stats = RunStats()
        self._client: httpx.AsyncClient | None = None
        self._key_seen: dict[int, tuple[int, int]] = {}

    # -- helpers

    async def _wait(self, seconds: float) -> None:
        """Sleep ``seconds`` or until stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _sleep(self, seconds: float) -> None:
        if self.timing.sleep is not None:
            await self.timing.sleep(seconds)
        else:
            await self._wait(seconds)
        if self.stop.is_set():
            raise asyncio.CancelledError

    def _until(self) -> datetime:
        return self.svc.clock() + timedelta(seconds=self.lease_s)

    async def _hmac_key(self, row: store_fwd.ForwarderRow) -> Secret:
        """The webhook's HMAC key: the CURRENT value of its credential, read fresh for every
        batch so a rotation of the key takes effect at the next batch.

        The read is not audited per batch, as the engine's admin-secret reads
        (engine/values.py) are not audited per use: a ``value.read`` entry per delivery would
        feed the log this forwarder sends, forever (each batch would make the next). Instead
        the read of each version is audited once per process (actor ``forwarder:NAME``), so the
        log still shows which key versions a forwarder used."""
        cred, tenant = row.options["hmac_credential"], row.options["hmac_tenant"]
        reader = Principal(name=f"forwarder:{row.name}", tenant=tenant, owner=True)
        kernel = self.svc.kernel
        try:
            value, cid, number = await self.svc._read(lambda c: kernel.find_value(c, reader, cred))
        except NotFound as exc:
            raise DeliveryError(f"the HMAC credential {cred!r}: {exc}") from exc
        if self._key_seen.get(row.id) != (cid, number):
            await self.svc._write(
                lambda c: kernel.record_read(c, reader, cred, cid, number, Stage.CURRENT),
            )
            self._key_seen[row.id] = (cid, number)
        return value

    def _target(self, row: store_fwd.ForwarderRow) -> Target:
        if row.kind == "webhook":
            if self._client is None:
                import httpx  # only when a webhook is worked (see forward_targets)

                self._client = httpx.AsyncClient(timeout=SEND_TIMEOUT_S, follow_redirects=False)
            return WebhookTarget(row.target, self._client, self._hmac_key, self.svc.clock)
        proto, host, port = parse_syslog_target(row.target)
        facility = int(row.options.get("facility", LOG_AUDIT))
        body = str(row.options.get("format", "json"))
        if proto == "tcp":
            return SyslogTcpTarget(host, port, facility, self.hostname, body)
        return SyslogUdpTarget(host, port, facility, self.hostname, body)

    # -- one forwarder

    async def work(self, forwarder_id: int) -> None:
        """Claim the forwarder and deliver until caught up (``once``) or stopped."""
        target: Target | None = None
        held = False
        try:
            while not self.stop.is_set():
                row = await self.svc._write(
                    lambda c: store_fwd.claim(
                        c, forwarder_id, self.owner, self.svc.clock(), self._until()
                    )
                )
                if row is None:
                    held = False
                    gone = await self.svc._read(lambda c: store_fwd.get_by_id(c, forwarder_id))
                    if gone is None or not gone.enabled:
                        return
                    if self.once:
                        self.stats.skipped_held.append(gone.name)
                        return
                    await self._wait(self.poll_s)
                    continue
                held = True
                if target is None:
                    target = self._target(row)
                try:
                    sent = await self._one_batch(row, target)
                except _LostLease:
                    held = False
                    await self._wait(self.poll_s)
                    continue
                if sent == 0:
                    if self.once:
                        return
                    await self._wait(self.poll_s)
        finally:
            if target is not None:
                await target.aclose()
            if held:
                with contextlib.suppress(Exception):
                    await self.svc._write(lambda c: store_fwd.release(c, forwarder_id, self.owner))

    async def _heartbeat(self, forwarder_id: int, lost: asyncio.Event) -> None:
        """Renew the lease while a batch is sent. Any failure to renew (taken over, removed,
        or the store failing) marks the lease lost, so the sender stops before its next send:
        a lease not renewed may run out and another process send the same entries."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                ok = await self.svc._write(
                    lambda c: store_fwd.renew(c, forwarder_id, self.owner, self._until())
                )
            except Exception as exc:
                log.warning("forwarder %d: renewing its lease failed: %s", forwarder_id, exc)
                ok = False
            if not ok:
                lost.set()
                return

    async def _one_batch(self, row: store_fwd.ForwarderRow, target: Target) -> int:
        """Read the next batch after the cursor, send it until acknowledged, advance the
        cursor. Returns how many entries were delivered (0: caught up)."""
        limit = int(row.options.get("batch", DEFAULT_BATCH))
        entries, head = await self.svc._read(
            lambda c: store_fwd.pending(c, row.cursor, row.tenant, limit)
        )
        # Fewer than a batch: every entry up to ``head`` was seen, so the cursor may pass
        # other tenants' entries up to it; a full batch ends at its last entry.
        new_cursor = head if len(entries) < limit else entries[-1].seq
        if not entries:
            if new_cursor > row.cursor:
                await self._advance(row, new_cursor, 0)
            return 0
        lost = asyncio.Event()
        beat = asyncio.create_task(self._heartbeat(row.id, lost), name=f"forward {row.name} lease")
        try:
            await self._send(row, target, entries, lost)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beat
        await self._advance(row, new_cursor, len(entries))
        self.stats.delivered += len(entries)
        self.stats.batches += 1
        return len(entries)

    async def _advance(self, row: store_fwd.ForwarderRow, new: int, n: int) -> None:
        now = self.svc.clock()
        ok = await self.svc._write(
            lambda c: store_fwd.advance(c, row.id, self.owner, row.cursor, new, n, now)
        )
        if not ok:
            raise _LostLease

    async def _send(
        self,
        row: store_fwd.ForwarderRow,
        target: Target,
        entries: Sequence[AuditEntry],
        lost: asyncio.Event,
    ) -> None:
        # Imported here: only a forwarder pays for it, not every command's start-up.
        from tenacity import (
            AsyncRetrying,
            retry_if_exception_type,
            stop_after_attempt,
            stop_never,
            wait_exponential_jitter,
        )

        async def record(state: RetryCallState) -> None:
            self.stats.failures += 1
            exc = state.outcome.exception() if state.outcome is not None else None
            error = f"attempt {state.attempt_number}: {exc}"
            log.warning("forwarder %s: %s", row.name, error)
            now = self.svc.clock()
            await self.svc._write(
                lambda c: store_fwd.record_error(c, row.id, self.owner, error, now)
            )

        stop = stop_never if self.give_up_after is None else stop_after_attempt(self.give_up_after)
        retrying = AsyncRetrying(
            wait=wait_exponential_jitter(
                multiplier=self.timing.initial, max=self.timing.cap, jitter=self.timing.initial
            ),
            stop=stop,
            retry=retry_if_exception_type(DeliveryError),
            sleep=self._sleep,
            before_sleep=record,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if lost.is_set():
                        raise _LostLease
                    await target.send(entries, row)
        except DeliveryError as exc:
            error = f"gave up after {self.give_up_after} attempts: {exc}"
            now = self.svc.clock()
            await self.svc._write(
                lambda c: store_fwd.record_error(c, row.id, self.owner, error, now)
            )
            raise ForwardingFailed(
                f"forwarder {row.name!r}: its target kept failing "
                f"({self.give_up_after} attempts); last error: {exc}"
            ) from exc

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


async def run_forwarders(
    svc: RotatorService,
    stop: asyncio.Event | None = None,
    *,
    once: bool = False,
    give_up_after: int | None = None,
    poll_s: float = 1.0,
    lease_s: float | None = None,
    timing: RetryTiming | None = None,
    principal: Principal = LOCAL_PRINCIPAL,
) -> RunStats:
    """Work the forwarders the principal may see until ``stop`` is set; ``once``: until each
    is caught up (one held by another live process is skipped and named in the result).

    Retries each batch with backoff and jitter, forever, or (``give_up_after``) up to that many
    attempts, then raises ForwardingFailed (the others stop too). New forwarders are picked up
    within ``poll_s``; removed ones are dropped. The lease defaults to the engine's
    (``ROTATOR_LEASE_SECONDS``)."""
    await svc.authorize(principal, Action.AUDIT_FORWARD)
    if give_up_after is not None and give_up_after < 1:
        raise InvalidInput("--give-up-after must be at least 1")
    if not (math.isfinite(poll_s) and poll_s > 0):
        raise InvalidInput("--poll must be a number of seconds above 0")
    stop = stop or asyncio.Event()
    runner = _Runner(
        svc,
        principal,
        stop,
        once=once,
        give_up_after=give_up_after,
        poll_s=poll_s,
        lease_s=lease_s or svc.engine.runtime.opts.lease_s,
        timing=timing or RetryTiming(),
    )
    tasks: dict[int, asyncio.Task[None]] = {}
    try:
        while True:
            try:
                rows = await svc._read(store_fwd.list_forwarders)
            except RotatorError as exc:
                if once:
                    raise
                # The worker keeps forwarding across a store hiccup: look again next poll.
                log.warning("forwarders: cannot list them: %s", exc)
                rows = []
            for r in rows:
                if r.enabled and _visible(principal, r) and r.id not in tasks:
                    tasks[r.id] = asyncio.create_task(
                        runner.work(r.id), name=f"forward {r.name}[{r.id}]"
                    )
            if once:
                await asyncio.gather(*tasks.values())
                return runner.stats
            for fid in [fid for fid, t in tasks.items() if t.done()]:
                failed = tasks.pop(fid)
                err = None if failed.cancelled() else failed.exception()
                if isinstance(err, ForwardingFailed):
                    raise err
                if err is not None:
                    # A store or target hiccup ends one forwarder's task, not the worker: it
                    # is started again at the next poll, from its cursor.
                    log.warning("forwarder task %s failed: %r", failed.get_name(), err)
            await runner._wait(poll_s)
            if stop.is_set():
                return runner.stats
    finally:
        stop.set()
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await runner.aclose()
