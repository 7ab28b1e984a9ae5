"""The audit chain: canonical encoding and verification. Pure; no I/O.

Each entry's ``hash`` is an HMAC-SHA-256, under the audit key named by its ``key_id``, over the
canonical JSON of its fields, the previous entry's MAC and the key id; so changing, deleting,
inserting or reordering any entry breaks every MAC after it, and nobody without the audit key
(derived from the master key) can recompute them. The chain must start with the store's
``store.init`` entry (seq 1). The key changes only right after an ``audit.key_link`` entry
(MAC'd under the old key) that names the new key: that is how a master-key rotation carries
the chain over. The head row (last seq, last MAC, key id) carries its own MAC, so a head copied
from an older entry after the tail was cut does not verify.

``entry_hash`` (unkeyed SHA-256) remains only to verify a store written before the keyed chain,
once, before the keyed upgrade re-seals it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rotator.crypto.integrity import AuditKey
from rotator.errors import AuditKeyUnavailable

GENESIS = "0" * 64
INIT_ACTION = "store.init"
LINK_ACTION = "audit.key_link"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit entry. ``details`` holds metadata only; never a value or a value-derived string."""

    seq: int
    ts: str
    tenant: str
    actor: str
    action: str
    credential: str | None
    rotation_id: str | None
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""
    key_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "tenant": self.tenant,
            "actor": self.actor,
            "action": self.action,
            "credential": self.credential,
            "rotation_id": self.rotation_id,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "key_id": self.key_id,
        }


@dataclass(frozen=True, slots=True)
class Head:
    """The head row: last seq, last MAC, the audit key in use and the head's own MAC."""

    seq: int
    hash: str
    key_id: str | None
    mac: str | None


class AuditKeys:
    """The audit keys a process holds, by id. ``initial`` starts a new log (store.init)."""

    def __init__(self, keys: Mapping[str, AuditKey], initial: AuditKey) -> None:
        self._keys = {initial.id: initial, **keys}
        self.initial = initial

    def get(self, key_id: str | None) -> AuditKey:
        """The key with ``key_id``; AuditKeyUnavailable if this process does not hold it."""
        key = self._keys.get(key_id or "")
        if key is None:
            raise AuditKeyUnavailable(
                f"this process does not hold audit key {key_id}: the master key was rotated "
                "since it started; restart it with the current master key"
            )
        return key

    def find(self, key_id: str | None) -> AuditKey | None:
        return self._keys.get(key_id or "")

    def held(self) -> list[AuditKey]:
        """Every audit key this process holds (the current one and every older one)."""
        return list(self._keys.values())

    def with_key(self, key: AuditKey) -> AuditKeys:
        return AuditKeys({**self._keys, key.id: key}, self.initial)

    def __repr__(self) -> str:
        return f"AuditKeys(ids={sorted(self._keys)})"


# What json.dumps builds for these arguments on every call (it reuses an encoder only for
# its defaults); encoding is the same.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, ASCII only. Stable across processes and DBs."""
    return _CANONICAL.encode(value)


def _body(e: AuditEntry) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "ts": e.ts,
        "tenant": e.tenant,
        "actor": e.actor,
        "action": e.action,
        "credential": e.credential,
        "rotation_id": e.rotation_id,
        "details": e.details,
        "prev_hash": e.prev_hash,
    }


def entry_hash(e: AuditEntry) -> str:
    """Unkeyed SHA-256 (hex) of the entry: the chain of stores made before migration 0006."""
    return hashlib.sha256(canonical(_body(e)).encode()).hexdigest()


def entry_message(e: AuditEntry) -> bytes:
    """What an entry's MAC covers: its fields, the previous MAC and its key id."""
    return b"rotator/audit-entry/v1|" + canonical({**_body(e), "key_id": e.key_id}).encode()


def entry_mac(key: AuditKey, e: AuditEntry) -> str:
    return key.mac(entry_message(e))


def head_message(seq: int, last_hash: str, key_id: str) -> bytes:
    return f"rotator/audit-head/v1|{seq}|{last_hash}|{key_id}".encode()


def next_key_id(e: AuditEntry | Mapping[str, Any], current: str) -> str:
    """The key id that MACs the entry after ``e`` (changes only after a link entry)."""
    action = e.action if isinstance(e, AuditEntry) else e["action"]
    details = e.details if isinstance(e, AuditEntry) else e["details"]
    if action == LINK_ACTION:
        return str(details.get("to_key"))
    return current


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head: tuple[int, str] | None = None


def verify(
    entries: Iterable[AuditEntry],
    head: Head | None,
    keys: AuditKeys,
    expect_head: tuple[int, str] | None = None,
) -> VerifyResult:
    """Check that the entries (in seq order) form an unbroken keyed chain from ``store.init``
    to ``head``, and (``expect_head``) that the entry at that seq is unchanged and present.

    Names the first entry that does not verify. An empty log, a missing head, a head whose MAC
    does not verify, an entry under a key no link moved to, and a log shorter than an
    expected head all fail.
    """
    prev = GENESIS
    expected = 1
    n = 0
    key_id: str | None = None
    expect_seen = expect_head is None

    def bad(seq: int, reason: str) -> VerifyResult:
        return VerifyResult(False, n, seq, reason)

    for e in entries:
        n += 1
        if e.seq != expected:
            return bad(min(e.seq, expected), f"expected entry {expected}, found {e.seq}")
        if expected == 1 and (e.action != INIT_ACTION or e.prev_hash != GENESIS):
            return bad(1, "the log does not start with the store's init entry")
        if e.prev_hash != prev:
            return bad(e.seq, "does not link to the entry before it")
        if e.key_id is None:
            return bad(e.seq, "it carries no audit key (an unprotected entry)")
        if key_id is not None and e.key_id != key_id:
            return bad(e.seq, f"it is MAC'd under audit key {e.key_id}, not the key in use")
        key = keys.find(e.key_id)
        if key is None:
            return bad(e.seq, f"audit key {e.key_id} is not held by this process")
        if not key.verify(entry_message(e), e.hash):
            return bad(e.seq, "its content does not match its MAC")
        if expect_head is not None and e.seq == expect_head[0]:
            if e.hash != expect_head[1]:
                return bad(e.seq, "it is not the entry of the expected head (rewritten)")
            expect_seen = True
        key_id = next_key_id(e, e.key_id)
        prev = e.hash
        expected += 1
    last = expected - 1
    if n == 0:
        return bad(1, "the log is empty: it must start with the store's init entry")
    if head is None:
        return bad(last, "the audit head is missing")
    if head.seq > last:
        return bad(last + 1, f"entries {last + 1}..{head.seq} are missing")
    if head.seq != last or head.hash != prev or head.key_id != key_id:
        return bad(head.seq, "the chain head does not match the last entry")
    hk = keys.find(head.key_id)
    if (
        hk is None
        or head.mac is None
        or not hk.verify(head_message(head.seq, head.hash, head.key_id or ""), head.mac)
    ):
        return bad(last, "the chain head's MAC does not verify (entries after it were removed?)")
    if not expect_seen:
        assert expect_head is not None
        return bad(
            last + 1,
            f"the log ends at entry {last}, before the expected head {expect_head[0]} "
            "(it was truncated)",
        )
    return VerifyResult(True, n, head=(last, prev))


def verify_unkeyed(entries: Iterable[AuditEntry], head: tuple[int, str] | None) -> VerifyResult:
    """Check a chain written before the keyed chain (unkeyed SHA-256): only for the upgrade."""
    prev_hash = GENESIS
    expected_seq = 1
    n = 0
    for e in entries:
        n += 1
        if e.seq != expected_seq:
            bad = min(e.seq, expected_seq)
            return VerifyResult(False, n, bad, f"expected entry {expected_seq}, found {e.seq}")
        if e.prev_hash != prev_hash:
            return VerifyResult(False, n, e.seq, "does not link to the entry before it")
        if entry_hash(e) != e.hash:
            return VerifyResult(False, n, e.seq, "its content does not match its hash")
        prev_hash = e.hash
        expected_seq += 1
    last_seq = expected_seq - 1
    if head is None or head[0] != last_seq or head[1] != prev_hash:
        if head is not None and head[0] > last_seq:
            return VerifyResult(
                False, n, last_seq + 1, f"entries {last_seq + 1}..{head[0]} are missing"
            )
        return VerifyResult(False, n, last_seq, "the chain head does not match the last entry")
    return VerifyResult(True, n)
