"""Tamper-evident audit log: append-only, each entry MAC'd (HMAC-SHA-256, audit key derived
from the master key) over the previous entry's MAC."""

from rotator.audit.chain import AuditEntry, AuditKeys, Head, VerifyResult
from rotator.audit.log import (
    append,
    entries,
    read_head,
    reseal,
    tenant_head,
    verify_for_tenant,
    verify_log,
)

__all__ = [
    "AuditEntry",
    "AuditKeys",
    "Head",
    "VerifyResult",
    "append",
    "entries",
    "read_head",
    "reseal",
    "tenant_head",
    "verify_for_tenant",
    "verify_log",
]
