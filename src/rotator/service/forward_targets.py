"""Where a SIEM forwarder sends: an HMAC-signed webhook (httpx) or syslog over TCP or UDP.

Each target's ``send`` returns only once the target acknowledged the batch (see
:mod:`rotator.service.forwarding` for what acknowledged means per kind) and raises
:class:`DeliveryError` otherwise; the runner retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from rotator.audit.chain import AuditEntry
from rotator.audit.syslog import format_entry, frame
from rotator.domain.secret import Secret
from rotator.errors import InvalidInput
from rotator.store import forwarders as store_fwd

# httpx is imported where a webhook is sent: every other command (`credential get`) starts
# without it (tests/integration/test_cli_startup.py).
if TYPE_CHECKING:
    import httpx

SEND_TIMEOUT_S = 10.0


class DeliveryError(Exception):
    """One attempt to deliver a batch failed (retried). The message names the target's answer,
    never a secret."""


def check_webhook_url(url: str, what: str = "--webhook", key: str = "--hmac-credential") -> str:
    """An http(s) URL with a host and no user info, query string or fragment (a secret never
    sits in a URL: the HMAC key is a credential); InvalidInput otherwise. ``what`` and
    ``key`` name the URL argument and the key option in the error lines (the SIEM forwarder's
    by default; ``webhook add`` passes its own)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput(f"{what} must be an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{what} must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidInput(
            f"{what} must not carry user info: put no secret in a URL "
            f"(the HMAC key is a credential, {key})"
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        # The URL is written to the audit log and listings: a token in it would leak there.
        raise InvalidInput(
            f"{what} must not carry a query string or fragment: put no secret in the URL; "
            "the HMAC credential signs the requests"
        )
    if port is not None and not 1 <= port <= 65535:
        raise InvalidInput(f"{what} port must be between 1 and 65535")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidInput(f"{what} must not contain spaces or control characters")
    return url


ALLOW_ENV = "ROTATOR_WEBHOOK_ALLOW"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _allowed() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The operator's ``ROTATOR_WEBHOOK_ALLOW``: comma-separated CIDRs a restricted receiver
    may still be at (e.g. an internal collector's 10.1.2.0/24)."""
    nets = []
    for item in os.environ.get(ALLOW_ENV, "").split(","):
        if item.strip():
            try:
                nets.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise InvalidInput(f"{ALLOW_ENV} must be comma-separated CIDRs") from None
    return nets


def _internal(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
    )


def resolve_public(url: str, what: str = "the webhook URL") -> list[IPAddress]:
    """The addresses ``url``'s host resolves to (blocking: run it in a thread), each one
    checked: InvalidInput when the host is or resolves to a loopback, link-local, private,
    unspecified, multicast or reserved address not covered by ``ROTATOR_WEBHOOK_ALLOW``, or
    does not resolve. Restricted receivers (anyone's but the store owner's) are checked at
    add time and again before each request, and the request goes to the address checked
    (so a DNS answer that changes in between is caught: rebinding)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise InvalidInput(f"{what}: its host does not resolve") from None
    allowed = _allowed()
    found: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if _internal(ip) and not any(ip in net for net in allowed):
            raise InvalidInput(
                f"{what} must not point to a loopback, link-local, private or other internal "
                f"address (ask the operator to allow it in {ALLOW_ENV})"
            )
        found.append(ip)
    return found


def redact_url(url: str) -> str:
    """``scheme://host[:port]/…``: what listings, views and audit entries show of a receiver's
    URL. The path (and any query) can be the credential itself (a Slack incoming webhook's
    path is its token), so it is never shown; the full URL is kept only in the store."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "…"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    rest = "/…" if (parts.path not in ("", "/") or parts.query or parts.fragment) else "/"
    return f"{parts.scheme}://{netloc}{rest}"


def parse_syslog_target(text: str) -> tuple[str, str, int]:
    """``tcp://HOST:PORT`` or ``udp://HOST:PORT`` as (protocol, host, port); InvalidInput
    otherwise."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise InvalidInput("--syslog must be tcp://HOST:PORT or udp://HOST:PORT") from None
    if (
        parts.scheme not in ("tcp", "udp")
        or not parts.hostname
        or port is None
        or not 1 <= port <= 65535
        or parts.username is not None
        or (parts.path not in ("", "/"))
        or parts.query
    ):
        raise InvalidInput("--syslog must be tcp://HOST:PORT or udp://HOST:PORT")
    return parts.scheme, parts.hostname, port


class Target(Protocol):
    async def send(self, entries: Sequence[AuditEntry], row: store_fwd.ForwarderRow) -> None:
        """Deliver the batch; return only when the target acknowledged it. DeliveryError
        otherwise."""

    async def aclose(self) -> None: ...


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """``X-Rotator-Signature``: ``sha256=`` + hex HMAC-SHA256(key, timestamp + "." + body)."""
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def webhook_body(entries: Sequence[AuditEntry]) -> bytes:
    return json.dumps(
        {"entries": [e.to_json() for e in entries]}, sort_keys=True, separators=(",", ":")
    ).encode()


class WebhookTarget:
    """POSTs ``{"entries": [...]}`` batches through the runner's pooled client."""

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        key: Callable[[store_fwd.ForwarderRow], Awaitable[Secret]],
        clock: Callable[[], datetime],
    ) -> None:
        self.url = url
        self._client = client
        self._key = key
        self._clock = clock

    async def send(self, entries: Sequence[AuditEntry], row: store_fwd.ForwarderRow) -> None:
        key = await self._key(row)
        body = webhook_body(entries)
        ts = str(int(self._clock().timestamp()))
        headers = {
            "Content-Type": "application/json",
            "X-Rotator-Signature": sign(key.reveal(), ts, body),
            "X-Rotator-Timestamp": ts,
            "X-Rotator-Delivery": f"{entries[0].seq}-{entries[-1].seq}",
        }
        import httpx

        try:
            resp = await self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= resp.status_code < 300:
            raise DeliveryError(f"the webhook answered HTTP {resp.status_code}")

    async def aclose(self) -> None:
        return None  # the client is the runner's


class SyslogTcpTarget:
    """RFC 5424 messages, octet-counted (RFC 6587), on one kept-open TCP connection."""

    def __init__(
        self, host: str, port: int, facility: int, hostname: str, body: str = "json"
    ) -> None:
        self.host, self.port, self.facility, self.hostname = host, port, facility, hostname
        self.body = body
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def _message(self, e: AuditEntry) -> bytes:
        return format_entry(e, hostname=self.hostname, facility=self.facility, body=self.body)

    async def send(self, entries: Sequence[AuditEntry], row: store_fwd.ForwarderRow) -> None:
        data = b"".join(frame(self._message(e)) for e in entries)
        try:
            if self._reader is not None and self._reader.at_eof():
                await self.aclose()  # the receiver closed (or restarted): a new connection
            writer = self._writer
            if writer is None:
                reader, opened = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), SEND_TIMEOUT_S
                )
                self._reader, self._writer, writer = reader, opened, opened
            writer.write(data)
            await asyncio.wait_for(writer.drain(), SEND_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            await self.aclose()
            raise DeliveryError(f"syslog tcp://{self.host}:{self.port}: {exc!r}") from exc

    async def aclose(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.error: Exception | None = None

    def error_received(self, exc: Exception) -> None:
        self.error = exc


class SyslogUdpTarget:
    """RFC 5424 messages, one per datagram. Sent is all UDP can say: no acknowledgement."""

    def __init__(
        self, host: str, port: int, facility: int, hostname: str, body: str = "json"
    ) -> None:
        self.host, self.port, self.facility, self.hostname = host, port, facility, hostname
        self.body = body
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _UdpProtocol | None = None

    def _message(self, e: AuditEntry) -> bytes:
        return format_entry(e, hostname=self.hostname, facility=self.facility, body=self.body)

    async def send(self, entries: Sequence[AuditEntry], row: store_fwd.ForwarderRow) -> None:
        try:
            if self._transport is None:
                loop = asyncio.get_running_loop()
                self._transport, self._protocol = await loop.create_datagram_endpoint(
                    _UdpProtocol, remote_addr=(self.host, self.port)
                )
            assert self._protocol is not None
            for e in entries:
                self._transport.sendto(self._message(e))
            error, self._protocol.error = self._protocol.error, None
            if error is not None:
                raise error
        except OSError as exc:
            await self.aclose()
            raise DeliveryError(f"syslog udp://{self.host}:{self.port}: {exc!r}") from exc

    async def aclose(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
