"""Webhook notifications: events derived from the audit log (see :mod:`rotator.policy.notify`)
POSTed to receivers, HMAC-signed, retried with backoff, dead-lettered after the attempts.
Use cases: add, list, remove, dead letters, retry, run.

Delivery semantics (what a receiver may rely on):

- **From the log, nothing lost.** A webhook reads the durable audit log after its ``cursor``
  (like a SIEM forwarder, :mod:`rotator.service.forwarding`), under a lease, and maps each
  entry to its event types; only those the webhook subscribed to are sent. The cursor moves
  past an entry only after each of its events was acknowledged (2xx) or dead-lettered, in one
  transaction conditioned on the old cursor and on the lease, so a restart resumes where the
  last commit left off and sends nothing acknowledged-and-committed twice.
- **Never blocked by a receiver.** After ``attempts`` failed tries (default 5, exponential
  backoff with jitter) the event goes to ``webhook_dead_letters`` with its exact payload and
  the cursor moves on: a dead receiver never holds up rotations, later events or other
  webhooks. ``webhook retry`` re-sends dead letters; one acknowledged is marked and never sent
  again.
- **Dedupe by delivery id.** A process killed between the receiver's 2xx and its commit sends
  that event again with the same ``X-Rotator-Delivery`` (``wh<webhook>-<seq>-<type>``): a
  receiver that drops repeats of an id it has seen gets every event exactly once.
- **Signed.** ``X-Rotator-Signature: v1=<hex HMAC-SHA256(key, timestamp + "." + body)>`` with
  ``X-Rotator-Timestamp`` (Unix seconds); the key is the CURRENT value of a credential (given
  with ``--secret-ref`` or generated at ``add``, stored encrypted as credential
  ``webhook/<hex>``), read at every delivery. While the credential has a PREVIOUS value (the
  grace after a rotation) the header holds a second ``v1=`` under it (``v1=<cur>,v1=<prev>``):
  a rotation of the key (``rotate --all``, tags, policy) does not break receivers that verify
  any ``v1``, as long as they get the new key within the grace.

``credential.overdue``: while a webhook subscribes to it, the runner of the store's owner (the
one ``rotator serve`` / ``rotator worker`` runs) appends one ``credential.overdue`` audit
entry per credential and due period (the CURRENT value's life) once the credential is past
its due time by more than ``overdue_after``; the mark and the entry commit together under a
primary key, so exactly one entry whatever the number of processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Connection

from rotator.audit.chain import AuditEntry
from rotator.domain import names
from rotator.domain.model import Stage
from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.domain.secret import Secret
from rotator.errors import InvalidInput, NotFound, RotatorError
from rotator.policy import notify
from rotator.service.credentials import RotatorService
from rotator.service.forward_targets import (
    SEND_TIMEOUT_S,
    check_webhook_url,
    redact_url,
    resolve_public,
)
from rotator.service.inputs import ValueInput
from rotator.store import forwarders as store_fwd
from rotator.store import webhooks as store_wh

if TYPE_CHECKING:
    import httpx
    from tenacity import RetryCallState

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 5
BACKOFF_INITIAL_S = 0.5
BACKOFF_CAP_S = 30.0
BATCH = 200
DEFAULT_OVERDUE_AFTER = timedelta(hours=1)
GENERATED_PREFIX = "webhook/"


class DeliveryFailed(Exception):
    """One attempt to deliver an event failed (retried). The message names the receiver's
    answer, never a secret."""


class _LostLease(Exception):
    """Another process took the webhook over (or it was removed) while this one worked it."""


# -- views ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookView:
    """A webhook as ``webhook list`` shows it (no secret: the key is a credential, by name;
    ``url`` is only ``scheme://host[:port]/…``, see :func:`redact_url`). ``lag``: head seq
    minus cursor; ``dead``: dead letters not redelivered yet."""

    id: int
    tenant: str | None
    url: str
    events: list[str]
    format: str
    secret_ref: str
    cursor: int
    head: int
    last_error: str | None
    delivered: int
    dead: int

    @property
    def lag(self) -> int:
        return max(0, self.head - self.cursor)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "url": self.url,
            "events": self.events,
            "format": self.format,
            "secret_ref": self.secret_ref,
            "cursor": self.cursor,
            "lag": self.lag,
            "last_error": self.last_error,
            "delivered": self.delivered,
            "dead": self.dead,
        }


@dataclass(frozen=True, slots=True)
class DeadLetterView:
    id: int
    webhook_id: int
    tenant: str | None
    seq: int
    type: str
    delivery_id: str
    error: str
    attempts: int
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "webhook": self.webhook_id,
            "tenant": self.tenant,
            "seq": self.seq,
            "type": self.type,
            "delivery_id": self.delivery_id,
            "error": self.error,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class AddedWebhook:
    """``add``'s answer: the webhook and, when the key was generated, its value (shown once,
    never stored in clear, never logged; it stays readable as credential ``secret_ref``)."""

    webhook: WebhookView
    generated_secret: Secret | None


@dataclass
class RetryResult:
    delivered: int = 0
    failed: int = 0


def _visible(principal: Principal, tenant: str | None) -> bool:
    return principal.owner or tenant == principal.tenant


def _view(row: store_wh.WebhookRow, head: int, dead: int) -> WebhookView:
    return WebhookView(
        id=row.id,
        tenant=row.tenant,
        url=redact_url(row.url),
        events=row.events,
        format=row.format,
        secret_ref=row.secret_credential,
        cursor=row.cursor,
        head=head,
        last_error=row.last_error,
        delivered=row.delivered,
        dead=dead,
    )


def _dead_view(d: store_wh.DeadLetterRow) -> DeadLetterView:
    return DeadLetterView(
        id=d.id,
        webhook_id=d.webhook_id,
        tenant=d.tenant,
        seq=d.seq,
        type=d.event_type,
        delivery_id=d.delivery_id,
        error=d.error,
        attempts=d.attempts,
        created_at=d.created_at,
    )


# -- use cases -------------------------------------------------------------------------------


async def add_webhook(
    svc: RotatorService,
    url: str,
    *,
    events: str | Sequence[str],
    secret_ref: str | None = None,
    fmt: str | None = None,
    tenant: str | None = None,
    principal: Principal = LOCAL_PRINCIPAL,
) -> AddedWebhook:
    """Add a webhook for ``events`` (``--event`` text or a list of types), starting after the
    newest audit entry (no history is replayed). ``tenant`` None: the owner's webhook gets
    every tenant's events, anyone else's its own tenant's. Without ``secret_ref`` a 32-byte key
    is generated and stored as a new ``local`` credential ``webhook/<hex>`` in the webhook's
    tenant (returned once). Audited (``webhook.add``: id, redacted URL, events, scope; never
    the key nor the URL's path, which can be a credential: a Slack webhook's).
    Raises InvalidInput, NotFound (tenant, secret credential), PermissionDenied; writes nothing
    then."""
    await svc.authorize(principal, Action.WEBHOOK_WRITE)
    check_webhook_url(url, "the webhook URL", "--secret-ref")
    types = notify.parse_event_types(events if isinstance(events, str) else ",".join(events))
    fmt = fmt or "json"
    if fmt not in notify.FORMATS:
        raise InvalidInput("--format must be json or slack")
    if tenant is not None:
        names.check_tenant_name(tenant)
        await svc.authorize_tenant(principal, tenant, Action.WEBHOOK_WRITE)
    elif not principal.owner:
        tenant = principal.tenant
    if secret_ref is not None:
        names.check_credential_name(secret_ref)
    if tenant is not None:
        # A tenant's webhook (anyone's but the owner's every-tenant ones) may not reach
        # internal addresses: checked here and before each request (see resolve_public).
        await asyncio.to_thread(resolve_public, url)
    key_tenant = tenant or principal.tenant
    tenant_id = None
    if tenant is not None:
        scope = tenant
        tenant_id = (await svc._thread(lambda: svc.kernel.find_tenant(scope))).id

    generated: Secret | None = None
    key_principal = principal.with_tenant(key_tenant)
    if secret_ref is None:
        generated = Secret(secrets.token_hex(32).encode())
        secret_ref = f"{GENERATED_PREFIX}{secrets.token_hex(6)}"
        await svc.add_credential(
            secret_ref, "local", value=ValueInput(value=generated), principal=key_principal
        )
    else:
        ref = secret_ref
        opener = Principal(tenant=key_tenant, owner=True)
        # The caller must be allowed to read the key it signs with; then only that it exists
        # and opens: nothing is returned or recorded.
        await svc.authorize(key_principal, Action.VALUE_READ, ref)
        await svc._read(lambda c: svc.kernel.find_value(c, opener, ref)[1])
    key_name = secret_ref

    def write(conn: Connection) -> WebhookView:
        head = store_fwd.head_seq(conn)
        wid = store_wh.insert_webhook(
            conn,
            tenant_id=tenant_id,
            url=url,
            events=types,
            fmt=fmt,
            secret_credential=key_name,
            secret_tenant=key_tenant,
            cursor=head,
            now=svc.clock(),
        )
        svc._audit(
            conn,
            principal,
            "webhook.add",
            None,
            webhook=wid,
            url=redact_url(url),
            events=types,
            format=fmt,
            secret_ref=key_name,
            generated=generated is not None,
            scope=tenant or "*",
        )
        row = store_wh.get(conn, wid)
        assert row is not None
        return _view(row, head + 1, 0)

    view = await svc._write(write)
    return AddedWebhook(view, generated)


async def list_webhooks(
    svc: RotatorService, principal: Principal = LOCAL_PRINCIPAL
) -> list[WebhookView]:
    """The webhooks the principal may see (the owner: all; others: their tenant's), with
    lag, last error and the number of dead letters waiting."""
    await svc.authorize(principal, Action.WEBHOOK_READ)

    def read(conn: Connection) -> list[WebhookView]:
        head = store_fwd.head_seq(conn)
        dead: dict[int, int] = {}
        for d in store_wh.dead_letters(conn):
            dead[d.webhook_id] = dead.get(d.webhook_id, 0) + 1
        return [
            _view(r, head, dead.get(r.id, 0))
            for r in store_wh.list_webhooks(conn)
            if _visible(principal, r.tenant)
        ]

    return await svc._read(read)


async def remove_webhook(
    svc: RotatorService, webhook_id: int, principal: Principal = LOCAL_PRINCIPAL
) -> None:
    """Remove a webhook and its dead letters (audited ``webhook.remove``). Another tenant's
    answers NotFound, the same text as a missing one. A generated key's credential stays (it
    is evidence; remove it with ``credential remove``)."""
    await svc.authorize(principal, Action.WEBHOOK_WRITE)
    missing = NotFound(f"no webhook {webhook_id}")

    def write(conn: Connection) -> NotFound | None:
        row = store_wh.get(conn, webhook_id)
        if row is None or not _visible(principal, row.tenant):
            return missing
        store_wh.delete_webhook(conn, webhook_id)
        svc._audit(
            conn,
            principal,
            "webhook.remove",
            None,
            webhook=webhook_id,
            url=redact_url(row.url),
            scope=row.tenant or "*",
            cursor=row.cursor,
        )
        return None

    err = await svc._write(write)
    if err is not None:
        raise err


async def dead_letters(
    svc: RotatorService, principal: Principal = LOCAL_PRINCIPAL
) -> list[DeadLetterView]:
    """The dead letters not redelivered yet, of the webhooks the principal may see."""
    await svc.authorize(principal, Action.WEBHOOK_READ)
    rows = await svc._read(store_wh.dead_letters)
    return [_dead_view(d) for d in rows if _visible(principal, d.tenant)]


# -- sending ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookTiming:
    """Attempts per event and the backoff between them (exponential from ``initial`` with
    jitter, capped at ``cap``). ``sleep`` is injectable (tests run without sleeping)."""

    attempts: int = DEFAULT_ATTEMPTS
    initial: float = BACKOFF_INITIAL_S
    cap: float = BACKOFF_CAP_S
    sleep: Callable[[float], Awaitable[None]] | None = None


def render(fmt: str, event: dict[str, Any]) -> bytes:
    """The request body of ``event`` in the webhook's format (canonical JSON)."""
    body = notify.slack_payload(event) if fmt == "slack" else event
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class _Sender:
    """Signs and POSTs events; reads each webhook's key (audited once per version and
    process, as forwarders do: an audited read per delivery would feed the log the webhooks
    read, forever)."""

    def __init__(self, svc: RotatorService, timing: WebhookTiming) -> None:
        self.svc = svc
        self.timing = timing
        self._client: httpx.AsyncClient | None = None
        self._key_seen: dict[int, set[tuple[str, int, int]]] = {}

    async def _keys(self, row: store_wh.WebhookRow) -> list[Secret]:
        """The signing keys: the credential's CURRENT value, then its PREVIOUS one while it
        is kept (the grace after a rotation, until the revoker retires it), so a receiver
        still holding the old key verifies until it is given the new one."""
        cred = row.secret_credential
        reader = Principal(name=f"webhook:{row.id}", tenant=row.secret_tenant, owner=True)
        kernel = self.svc.kernel
        keys: list[Secret] = []
        for stage in (Stage.CURRENT, Stage.PREVIOUS):
            try:
                value, cid, number = await self.svc._read(
                    partial(kernel.find_value, principal=reader, name=cred, stage=stage)
                )
            except NotFound as exc:
                if stage is Stage.PREVIOUS:
                    break  # never rotated, or its grace is over: CURRENT alone signs
                raise DeliveryFailed(f"the signing credential {cred!r}: {exc}") from exc
            seen = (stage.value, cid, number)
            if seen not in self._key_seen.get(row.id, set()):
                await self.svc._write(
                    partial(
                        kernel.record_read,
                        principal=reader,
                        name=cred,
                        credential_id=cid,
                        number=number,
                        stage=stage,
                    )
                )
                self._key_seen.setdefault(row.id, set()).add(seen)
            keys.append(value)
        return keys

    async def post(self, row: store_wh.WebhookRow, event: dict[str, Any], delivery: str) -> None:
        """One attempt; returns when the receiver answered 2xx, DeliveryFailed otherwise."""
        import httpx  # only when a webhook is worked: other commands start without it

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=SEND_TIMEOUT_S, follow_redirects=False)
        keys = await self._keys(row)
        body = render(row.format, event)
        ts = str(int(self.svc.clock().timestamp()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "rotator-webhooks/1",
            "X-Rotator-Event": str(event["type"]),
            "X-Rotator-Delivery": delivery,
            "X-Rotator-Timestamp": ts,
            # One v1 per key, CURRENT first: a receiver accepts when any of them verifies.
            "X-Rotator-Signature": ",".join(notify.sign(k.reveal(), ts, body) for k in keys),
        }
        url = row.url
        extensions: dict[str, Any] = {}
        if row.tenant is not None:
            # A tenant's webhook: resolve, check, and connect to the address checked (a DNS
            # answer changed since ``add`` is caught: rebinding); Host and SNI keep the name.
            try:
                ips = await asyncio.to_thread(resolve_public, row.url)
            except InvalidInput as exc:
                raise DeliveryFailed("refused: the receiver's address is internal") from exc
            parts = urlsplit(row.url)
            ip = ips[0]
            host = f"[{ip}]" if ip.version == 6 else str(ip)
            url = urlunsplit(
                parts._replace(netloc=host if parts.port is None else f"{host}:{parts.port}")
            )
            headers["Host"] = parts.netloc
            if parts.scheme == "https":
                extensions["sni_hostname"] = parts.hostname
        try:
            resp = await self._client.post(
                url, content=body, headers=headers, extensions=extensions
            )
        except httpx.HTTPError as exc:
            # Only the category is kept (last_error, dead letters: a tenant admin reads them;
            # transport text would tell open ports from closed ones); the operator's log has
            # the exception's type.
            log.warning("webhook %d: %s", row.id, type(exc).__name__)
            category = "timed out" if isinstance(exc, httpx.TimeoutException) else None
            raise DeliveryFailed(category or "connection failed") from exc
        if not 200 <= resp.status_code < 300:
            raise DeliveryFailed(f"HTTP {resp.status_code}")

    async def deliver(
        self,
        row: store_wh.WebhookRow,
        event: dict[str, Any],
        delivery: str,
        before_attempt: Callable[[], Awaitable[None]] | None = None,
        on_failure: Callable[[str], Awaitable[None]] | None = None,
    ) -> str | None:
        """Send with retries; None once acknowledged, else the last error (after
        ``attempts``)."""
        from tenacity import (
            AsyncRetrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential_jitter,
        )

        async def record(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            error = f"attempt {state.attempt_number}: {exc}"
            log.warning("webhook %d: %s", row.id, error)
            if on_failure is not None:
                await on_failure(error)

        async def sleep(seconds: float) -> None:
            if self.timing.sleep is not None:
                await self.timing.sleep(seconds)
            else:
                await asyncio.sleep(seconds)

        retrying = AsyncRetrying(
            wait=wait_exponential_jitter(
                multiplier=self.timing.initial, max=self.timing.cap, jitter=self.timing.initial
            ),
            stop=stop_after_attempt(self.timing.attempts),
            retry=retry_if_exception_type(DeliveryFailed),
            sleep=sleep,
            before_sleep=record,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if before_attempt is not None:
                        await before_attempt()
                    await self.post(row, event, delivery)
        except DeliveryFailed as exc:
            return f"gave up after {self.timing.attempts} attempts: {exc}"
        return None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _events_of(row: store_wh.WebhookRow, e: AuditEntry) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for t in notify.event_types(e.action, e.details):
        if t in row.events:
            event = notify.payload(
                seq=e.seq,
                event_type=t,
                at=e.ts,
                tenant=e.tenant,
                credential=e.credential,
                rotation_id=e.rotation_id,
                details=e.details,
            )
            out.append((t, event))
    return out


@dataclass
class RunStats:
    delivered: int = 0
    dead: int = 0
    overdue_marked: int = 0
    skipped_held: list[int] = field(default_factory=list)


class _Runner:
    def __init__(
        self,
        svc: RotatorService,
        principal: Principal,
        stop: asyncio.Event,
        *,
        once: bool,
        poll_s: float,
        lease_s: float,
        timing: WebhookTiming,
        overdue_after: timedelta,
    ) -> None:
        self.svc = svc
        self.principal = principal
        self.stop = stop
        self.once = once
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.overdue_after = overdue_after
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.sender = _Sender(svc, timing)
        self.stats = RunStats()
        self._renewed: dict[int, datetime] = {}  # when each held lease was last extended

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    def _until(self) -> datetime:
        return self.svc.clock() + timedelta(seconds=self.lease_s)

    async def work(self, webhook_id: int) -> None:
        """Claim the webhook and deliver until caught up (``once``) or stopped."""
        held = False
        try:
            while not self.stop.is_set():
                row = await self.svc._write(
                    lambda c: store_wh.claim(
                        c, webhook_id, self.owner, self.svc.clock(), self._until()
                    )
                )
                if row is None:
                    held = False
                    gone = await self.svc._read(lambda c: store_wh.get(c, webhook_id))
                    if gone is None:
                        return
                    if self.once:
                        self.stats.skipped_held.append(webhook_id)
                        return
                    await self._wait(self.poll_s)
                    continue
                held = True
                self._renewed[webhook_id] = self.svc.clock()
                try:
                    more = await self._one_batch(row)
                except _LostLease:
                    held = False
                    await self._wait(self.poll_s)
                    continue
                if not more:
                    if self.once:
                        return
                    await self._wait(self.poll_s)
        finally:
            if held:
                with contextlib.suppress(Exception):
                    await self.svc._write(lambda c: store_wh.release(c, webhook_id, self.owner))

    async def _one_batch(self, row: store_wh.WebhookRow) -> bool:
        """Deliver the events of the next entries after the cursor; True when there may be
        more (a full batch was read)."""
        entries, head = await self.svc._read(
            lambda c: store_fwd.pending(c, row.cursor, row.tenant, BATCH)
        )
        cursor = row.cursor
        for e in entries:
            events = _events_of(row, e)
            if not events:
                continue
            dead: list[tuple[str, dict[str, Any], str, str]] = []
            sent = 0
            for t, event in events:
                delivery = notify.delivery_id(row.id, e.seq, t)
                error = await self.sender.deliver(
                    row,
                    event,
                    delivery,
                    before_attempt=lambda: self._renew(row.id),
                    on_failure=lambda err: self._record_error(row.id, err),
                )
                if error is None:
                    sent += 1
                else:
                    dead.append((t, event, delivery, error))
            await self._advance(row.id, cursor, e.seq, sent, dead)
            cursor = e.seq
            self.stats.delivered += sent
            self.stats.dead += len(dead)
        full = len(entries) >= BATCH
        # Fewer than a batch: every entry up to ``head`` was seen (other tenants' included).
        end = entries[-1].seq if full else head
        if end > cursor:
            await self._advance(row.id, cursor, end, 0, [])
        return full

    async def _renew(self, webhook_id: int) -> None:
        """Before each attempt: extend the lease once a third of it has passed (a write per
        attempt would halve the delivery rate), so it never runs out mid-delivery."""
        now = self.svc.clock()
        last = self._renewed.get(webhook_id)
        if last is not None and now - last < timedelta(seconds=self.lease_s / 3):
            return
        ok = await self.svc._write(
            lambda c: store_wh.renew(c, webhook_id, self.owner, self._until())
        )
        if not ok:
            raise _LostLease
        self._renewed[webhook_id] = now

    async def _record_error(self, webhook_id: int, error: str) -> None:
        now = self.svc.clock()
        await self.svc._write(
            lambda c: store_wh.record_error(c, webhook_id, self.owner, error, now)
        )

    async def _advance(
        self,
        webhook_id: int,
        old: int,
        new: int,
        sent: int,
        dead: list[tuple[str, dict[str, Any], str, str]],
    ) -> None:
        now = self.svc.clock()
        attempts = self.sender.timing.attempts

        def write(conn: Connection) -> bool:
            last_error = dead[-1][3] if dead else None
            if not store_wh.advance(conn, webhook_id, self.owner, old, new, sent, now, last_error):
                return False
            for t, event, delivery, error in dead:
                store_wh.add_dead_letter(
                    conn,
                    webhook_id=webhook_id,
                    seq=new,
                    event_type=t,
                    delivery_id=delivery,
                    event=event,
                    error=error,
                    attempts=attempts,
                    now=now,
                )
            return True

        if not await self.svc._write(write):
            raise _LostLease

    async def mark_overdue(self) -> None:
        """Append one ``credential.overdue`` entry per credential and due period, for the
        tenants some webhook subscribes to it in (every tenant: an every-tenant one does)."""
        rows = await self.svc._read(store_wh.list_webhooks)
        wanted = [r for r in rows if "credential.overdue" in r.events]
        if not wanted:
            return
        every = any(r.tenant is None for r in wanted)
        tenants = {r.tenant for r in wanted}
        now = self.svc.clock()
        found = await self.svc._read(
            lambda c: store_wh.overdue_candidates(c, now - self.overdue_after)
        )
        for cand in found:
            if not every and cand.tenant not in tenants:
                continue
            actor = Principal(name="rotator:webhooks", tenant=cand.tenant, owner=True)

            def write(
                conn: Connection,
                cand: store_wh.OverdueCandidate = cand,
                actor: Principal = actor,
            ) -> bool:
                if not store_wh.mark_overdue(conn, cand.credential_id, cand.period, now):
                    return False
                late = now - cand.next_rotation_at
                self.svc.kernel.audit(
                    conn,
                    actor,
                    notify.OVERDUE_ACTION,
                    cand.name,
                    None,
                    {
                        "due_at": cand.next_rotation_at.isoformat(),
                        "overdue_s": int(late.total_seconds()),
                        "period": cand.period,
                        "version": store_wh.current_version(conn, cand.credential_id),
                    },
                )
                return True

            if await self.svc._write(write):
                self.stats.overdue_marked += 1


async def run_webhooks(
    svc: RotatorService,
    stop: asyncio.Event | None = None,
    *,
    once: bool = False,
    poll_s: float = 1.0,
    lease_s: float | None = None,
    timing: WebhookTiming | None = None,
    overdue_after: timedelta = DEFAULT_OVERDUE_AFTER,
    principal: Principal = LOCAL_PRINCIPAL,
) -> RunStats:
    """Work the webhooks the principal may see until ``stop`` is set; ``once``: until each is
    caught up (one held by another live process is skipped, named in the result). The store's
    owner also marks overdue credentials (see the module docstring). New webhooks are picked
    up within ``poll_s``; removed ones are dropped. A failing webhook never stops the others."""
    await svc.authorize(principal, Action.WEBHOOK_WRITE)
    if not (math.isfinite(poll_s) and poll_s > 0):
        raise InvalidInput("--poll must be a number of seconds above 0")
    timing = timing or WebhookTiming()
    if timing.attempts < 1:
        raise InvalidInput("--attempts must be at least 1")
    stop = stop or asyncio.Event()
    runner = _Runner(
        svc,
        principal,
        stop,
        once=once,
        poll_s=poll_s,
        lease_s=lease_s or svc.engine.runtime.opts.lease_s,
        timing=timing,
        overdue_after=overdue_after,
    )
    tasks: dict[int, asyncio.Task[None]] = {}
    try:
        while True:
            try:
                if principal.owner:
                    await runner.mark_overdue()
                rows = await svc._read(store_wh.list_webhooks)
            except RotatorError as exc:
                if once:
                    raise
                log.warning("webhooks: cannot list them: %s", exc)
                rows = []
            for r in rows:
                if _visible(principal, r.tenant) and r.id not in tasks:
                    tasks[r.id] = asyncio.create_task(runner.work(r.id), name=f"webhook {r.id}")
            if once:
                results = await asyncio.gather(*tasks.values(), return_exceptions=True)
                for res in results:
                    if isinstance(res, BaseException):
                        raise res
                return runner.stats
            for wid in [w for w, t in tasks.items() if t.done()]:
                done = tasks.pop(wid)
                err = None if done.cancelled() else done.exception()
                if err is not None:
                    # A store hiccup ends one webhook's task, not the runner: it starts again
                    # at the next poll, from its cursor.
                    log.warning("webhook task %s failed: %r", done.get_name(), err)
            await runner._wait(poll_s)
            if stop.is_set():
                return runner.stats
    finally:
        stop.set()
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await runner.sender.aclose()


async def retry_dead_letters(
    svc: RotatorService,
    dead_id: int | None = None,
    *,
    retry_all: bool = False,
    timing: WebhookTiming | None = None,
    principal: Principal = LOCAL_PRINCIPAL,
) -> RetryResult:
    """Re-send one dead letter (``dead_id``) or, ``retry_all``, every one the principal may
    see, each with the webhook's attempts and backoff, with its original delivery id. One
    acknowledged is marked redelivered and never sent again; one that fails again stays (its
    error and attempts updated). Each is claimed before it is sent (see
    store.webhooks.claim_dead_letter): one another retry holds is skipped. Audited
    (``webhook.retry``: ids and outcome, only those this call marked). NotFound for an
    unknown, already redelivered, being retried or another tenant's id (the same text)."""
    await svc.authorize(principal, Action.WEBHOOK_WRITE)
    if (dead_id is None) == (not retry_all):
        raise InvalidInput("give a dead letter ID or --all")
    if dead_id is None:
        letters = [
            d for d in await svc._read(store_wh.dead_letters) if _visible(principal, d.tenant)
        ]
    else:
        did = dead_id
        found = await svc._read(lambda c: store_wh.get_dead_letter(c, did))
        if (
            found is None
            or found.redelivered_at is not None
            or not _visible(principal, found.tenant)
        ):
            raise NotFound(f"no dead letter {dead_id} waiting")
        letters = [found]
    sender = _Sender(svc, timing or WebhookTiming())
    result = RetryResult()
    done: list[int] = []
    failed: list[int] = []
    lease = timedelta(seconds=svc.engine.runtime.opts.lease_s)
    try:
        for d in letters:
            row = await svc._read(partial(store_wh.get, webhook_id=d.webhook_id))
            if row is None:
                continue
            now = svc.clock()
            # Claimed before it is sent: of two retries at once, one sends it (the other
            # skips it, or answers NotFound for a single ID); a claim lapses after a lease.
            if not await svc._write(
                partial(store_wh.claim_dead_letter, dead_id=d.id, now=now, until=now + lease)
            ):
                if dead_id is not None:
                    raise NotFound(f"no dead letter {dead_id} waiting")
                continue
            error = await sender.deliver(row, d.event, d.delivery_id)
            if error is None:
                marked = await svc._write(
                    partial(store_wh.mark_redelivered, dead_id=d.id, now=svc.clock())
                )
                if marked:  # counted and audited only when this process marked it
                    result.delivered += 1
                    done.append(d.id)
            else:
                await svc._write(partial(store_wh.record_retry_error, dead_id=d.id, error=error))
                result.failed += 1
                failed.append(d.id)
    finally:
        await sender.aclose()
        if done or failed:
            await svc._write(
                lambda c: svc._audit(
                    c, principal, "webhook.retry", None, delivered=done, failed=failed
                )
            )
    return result
