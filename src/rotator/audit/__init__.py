"""Tamper-evident audit log: append-only, each entry holds the SHA-256 of the previous one."""

from rotator.audit.chain import AuditEntry, VerifyResult
from rotator.audit.log import append, entries, verify_log

__all__ = ["AuditEntry", "VerifyResult", "append", "entries", "verify_log"]
