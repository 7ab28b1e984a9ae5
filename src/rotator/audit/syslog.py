"""Audit entries as syslog messages: RFC 5424 format, RFC 6587 octet-counting framing. Pure.

Written by hand because the standard library's ``SysLogHandler`` speaks RFC 3164. One entry is
one message::

    <PRI>1 TIMESTAMP HOSTNAME rotator - ACTION [rotator@32473 seq="" tenant="" actor=""
    credential="" rotation="" key="" hash=""] MSG

PRI is ``facility * 8 + severity``; the severity comes from the action (:func:`severity`);
MSG is the entry's details as canonical JSON (ASCII, so no BOM is needed).
"""

from __future__ import annotations

from rotator.audit.chain import AuditEntry, canonical
from rotator.audit.formats import to_cef

LOG_AUDIT = 13  # RFC 5424 facility 13: log audit
SD_ID = "rotator@32473"  # 32473: the example private enterprise number of RFC 5612
APP_NAME = "rotator"

ERROR, WARNING, NOTICE, INFORMATIONAL = 3, 4, 5, 6
_FAILURE_WORDS = ("fail", "error", "broken", "rollback", "rolled_back", "tamper")


def severity(action: str) -> int:
    """The RFC 5424 severity of an action: error (3) for failures (``rotation.failed``,
    ``auth.failed``, ``*.error``, a broken chain, a rollback), warning (4) for denials
    (``access.denied``), notice (5) for emergencies and revocations, informational (6)
    otherwise."""
    a = action.lower()
    if any(w in a for w in _FAILURE_WORDS):
        return ERROR
    if "denied" in a or "refused" in a:
        return WARNING
    if "emergency" in a or "revoke" in a:
        return NOTICE
    return INFORMATIONAL


def escape_param(value: str) -> str:
    """An SD-PARAM value with ``"``, ``\\`` and ``]`` escaped (RFC 5424 section 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _token(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` long, or ``-``."""
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return cleaned or "-"


def format_entry(
    entry: AuditEntry, *, hostname: str, facility: int = LOG_AUDIT, body: str = "json"
) -> bytes:
    """One RFC 5424 message (UTF-8) for ``entry``; ValueError for a facility outside 0..23.
    ``body``: the MSG part — ``json`` (the details as canonical JSON) or ``cef`` (the whole
    entry as one CEF line, :func:`rotator.audit.formats.to_cef`)."""
    if not 0 <= facility <= 23:
        raise ValueError(f"syslog facility must be between 0 and 23, not {facility}")
    pri = facility * 8 + severity(entry.action)
    params = (
        ("seq", str(entry.seq)),
        ("tenant", entry.tenant),
        ("actor", entry.actor),
        ("credential", entry.credential or ""),
        ("rotation", entry.rotation_id or ""),
        ("key", entry.key_id or ""),
        ("hash", entry.hash),
    )
    sd = "[" + SD_ID + "".join(f' {k}="{escape_param(v)}"' for k, v in params) + "]"
    header = (
        f"<{pri}>1 {_token(entry.ts, 64)} {_token(hostname, 255)} {APP_NAME} - "
        f"{_token(entry.action, 32)}"
    )
    msg = to_cef(entry) if body == "cef" else canonical(entry.details)
    return f"{header} {sd} {msg}".encode()


def frame(message: bytes) -> bytes:
    """Octet-counting framing for syslog over TCP (RFC 6587 section 3.4.1)."""
    return str(len(message)).encode() + b" " + message
