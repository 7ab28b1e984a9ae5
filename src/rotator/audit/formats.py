"""Export formats of audit entries. Pure; no I/O.

:func:`to_cef` renders one entry as an ArcSight Common Event Format (CEF:0) line::

    CEF:0|rotator|rotator|<version>|<action>|<name>|<severity>|<extension>

Header fields escape ``\\`` and ``|``; extension values escape ``\\``, ``=`` and line breaks
(``\\n``, ``\\r``), as the CEF specification asks. Severity (0-10) comes from the action:
denials and failures rank above routine reads and steps. A header or value never holds a raw
line break, so one entry is always one line.
"""

from __future__ import annotations

from datetime import datetime

from rotator import __version__
from rotator.audit.chain import AuditEntry, canonical

VENDOR = "rotator"
PRODUCT = "rotator"

# Checked in order; the first match wins.
_SEVERITY: tuple[tuple[str, int], ...] = (
    ("access.denied", 8),
    ("auth.failed", 8),
    ("token.refused", 8),
    ("rotation.lost", 7),
    ("rotation.repair_failed", 7),
    ("rotation.revoke_failed", 7),
    ("rotation.failed", 7),
    ("sink.failed", 6),
    ("rotation.rollback", 6),
    ("risk.", 6),
    ("keys.", 5),
    ("store.", 5),
    ("principal.", 5),
    ("token.", 5),
    ("tenant.", 5),
    ("credential.remove", 5),
    ("rotation.retry", 4),
    ("value.read", 3),
)
DEFAULT_SEVERITY = 2


def severity(action: str) -> int:
    """The CEF severity (0-10) of an audit action: denials and failures highest."""
    for prefix, level in _SEVERITY:
        if action == prefix or (prefix.endswith(".") and action.startswith(prefix)):
            return level
    if action.endswith((".failed", "_failed", ".denied")):
        return 7
    return DEFAULT_SEVERITY


def escape_header(text: str) -> str:
    """A CEF header field: backslash and pipe escaped; line breaks as ``\\n``/``\\r``."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")


def escape_value(text: str) -> str:
    """A CEF extension value: backslash, equals and line breaks escaped."""
    return text.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")


def _epoch_ms(ts: str) -> str:
    try:
        return str(int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000))
    except ValueError:
        return "0"


def to_cef(entry: AuditEntry) -> str:
    """One CEF:0 line (no trailing newline) for ``entry``; the details as canonical JSON."""
    ext = [
        ("rt", _epoch_ms(entry.ts)),
        ("suser", entry.actor),
        ("act", entry.action),
        ("externalId", str(entry.seq)),
        ("cs1Label", "tenant"),
        ("cs1", entry.tenant),
        ("cs2Label", "credential"),
        ("cs2", entry.credential or ""),
        ("cs3Label", "rotation_id"),
        ("cs3", entry.rotation_id or ""),
        ("cs4Label", "details"),
        ("cs4", canonical(entry.details)),
        ("cs5Label", "hash"),
        ("cs5", entry.hash),
        ("cs6Label", "prev_hash"),
        ("cs6", entry.prev_hash),
    ]
    header = [
        "CEF:0",
        escape_header(VENDOR),
        escape_header(PRODUCT),
        escape_header(__version__),
        escape_header(entry.action),
        escape_header(f"rotator {entry.action}"),
        str(severity(entry.action)),
    ]
    return "|".join(header) + "|" + " ".join(f"{k}={escape_value(v)}" for k, v in ext)


__all__ = ["escape_header", "escape_value", "severity", "to_cef"]
