"""Webhook notifications: which audit entries are which events, and what a receiver gets.
Pure: no I/O, no clock.

Events are derived from audit entries only (the log is the one durable record, read by seq),
so a notification is also evidence and nothing is lost across restarts. The mapping:

==========================  ==============================================================
audit action                event type(s)
==========================  ==============================================================
``rotation.create``         ``rotation.started`` (and ``emergency`` when its trigger is
                            ``emergency``)
``rotation.complete``       ``rotation.succeeded``
``rotation.failed``         ``rotation.failed``
``rotation.rollback``       ``rotation.rolled_back``
``credential.overdue``      ``credential.overdue`` (appended by the webhook runner, once per
                            credential per due period)
``risk.reported``           ``risk.event``
``audit.verification_failed``  ``audit.verification_failed`` (appended by ``audit verify``)
==========================  ==============================================================

Every other action is no event. Payloads carry the entry's metadata only: audit entries hold
no value, and nothing here adds one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from rotator.errors import InvalidInput

EVENT_TYPES: tuple[str, ...] = (
    "rotation.started",
    "rotation.succeeded",
    "rotation.failed",
    "rotation.rolled_back",
    "credential.overdue",
    "emergency",
    "risk.event",
    "audit.verification_failed",
)
FORMATS = ("json", "slack")
OVERDUE_ACTION = "credential.overdue"
VERIFY_FAILED_ACTION = "audit.verification_failed"

_BY_ACTION: dict[str, tuple[str, ...]] = {
    "rotation.create": ("rotation.started",),
    "rotation.complete": ("rotation.succeeded",),
    "rotation.failed": ("rotation.failed",),
    "rotation.rollback": ("rotation.rolled_back",),
    OVERDUE_ACTION: ("credential.overdue",),
    "risk.reported": ("risk.event",),
    VERIFY_FAILED_ACTION: ("audit.verification_failed",),
}


def event_types(action: str, details: Mapping[str, Any]) -> tuple[str, ...]:
    """The event types an audit entry with ``action`` and ``details`` stands for, in a fixed
    order (empty: none)."""
    found = _BY_ACTION.get(action, ())
    if action == "rotation.create" and details.get("trigger") == "emergency":
        found = (*found, "emergency")
    return found


def parse_event_types(text: str | None) -> list[str]:
    """``--event TYPE[,TYPE...]`` as a sorted, de-duplicated list; ``*`` or ``all``: every
    type. InvalidInput (one line naming the unknown type and the known ones) otherwise."""
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    if not parts:
        raise InvalidInput(f"--event needs at least one type: {', '.join(EVENT_TYPES)}")
    if any(p in ("*", "all") for p in parts):
        return list(EVENT_TYPES)
    for p in parts:
        if p not in EVENT_TYPES:
            raise InvalidInput(
                f"unknown event type {p[:64]!r}: use one or more of {', '.join(EVENT_TYPES)}"
            )
    return sorted(set(parts), key=EVENT_TYPES.index)


def event_id(tenant: str, seq: int) -> str:
    """The event's id: ``<tenant>:<seq>`` of the audit entry it comes from."""
    return f"{tenant}:{seq}"


def delivery_id(webhook_id: int, seq: int, event_type: str) -> str:
    """``X-Rotator-Delivery``: the same for every attempt (and a ``webhook retry``) of one
    event to one webhook, different for anything else, so a receiver dedupes on it."""
    return f"wh{webhook_id}-{seq}-{event_type}"


def payload(
    *,
    seq: int,
    event_type: str,
    at: str,
    tenant: str,
    credential: str | None,
    rotation_id: str | None,
    details: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON body of a ``json`` webhook (metadata only: the entry's details hold no
    value)."""
    return {
        "id": event_id(tenant, seq),
        "type": event_type,
        "at": at,
        "tenant": tenant,
        "credential": credential,
        "rotation_id": rotation_id,
        "details": dict(details),
    }


def slack_payload(event: Mapping[str, Any]) -> dict[str, Any]:
    """The body of a ``slack`` webhook: ``{"text": "<one line>"}`` (Slack incoming-webhook
    compatible)."""
    what = event["type"]
    parts = [f"[rotator] {what}"]
    if event.get("credential"):
        parts.append(f"credential {event['credential']}")
    parts.append(f"tenant {event['tenant']}")
    if event.get("rotation_id"):
        parts.append(f"rotation {event['rotation_id']}")
    details = event.get("details") or {}
    for key in ("error", "severity", "kind", "reason", "due_at"):
        if details.get(key) is not None:
            parts.append(f"{key} {str(details[key])[:200]}")
    parts.append(f"at {event['at']}")
    text = " · ".join(parts).replace("\n", " ").replace("\r", " ")
    return {"text": text}


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """``X-Rotator-Signature``: ``v1=`` + hex HMAC-SHA256(key, timestamp + "." + body)."""
    return "v1=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(
    key: bytes, timestamp: str, body: bytes, signature: str, now: float, window_s: float = 300.0
) -> bool:
    """The receiver's check (documented in docs/webhooks.md): the signature matches and the
    timestamp is within ``window_s`` of ``now`` (Unix seconds), so a captured request cannot
    be replayed later."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > window_s:
        return False
    return hmac.compare_digest(sign(key, timestamp, body), signature)
