"""Signed checkpoints of the audit chain, and the verification of a copy of the log.

The keyed chain (:mod:`rotator.audit.chain`) can only be checked by a holder of the master key.
A checkpoint lets anyone else check a copy: it signs, with an Ed25519 key derived from the
master key (:mod:`rotator.crypto.signing`), a running digest that needs no key to recompute::

    leaf(n) = SHA-256(canonical(entry_n.to_json()))            # chain.canonical, UTF-8
    D(0)    = 32 zero bytes
    D(n)    = SHA-256(b"rotator/audit-digest/v1|" + D(n-1) + leaf(n))

and the signature is Ed25519 over ``b"rotator/audit-checkpoint/v1|" + canonical(body)`` with
``body = {"v": 1, "seq", "digest" (hex of D(seq)), "head_hash" (the MAC of entry seq),
"key_id", "created_at"}``. A copy of entries 1..seq (``rotator audit export``) recomputes
D(seq); changing, removing, inserting or reordering any entry changes it.

Making one (:func:`make`) is incremental: from the last checkpoint (its seq and digest, whose
signature is checked first) it reads only the entries after it, checks their MACs and links
and the head row's MAC with the audit keys the process holds, and refuses (AuditChainBroken,
nothing written) to sign a chain that does not verify. It runs under the audit head's lock
in the caller's transaction and appends an ``audit.checkpoint`` entry there, so the
checkpoint and its entry commit together.

A tenant's export replaces every entry of another tenant by ``{"seq": n, "leaf": "<hex>"}``:
the copy still recomputes the digest and reveals nothing of those entries but their count.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from rotator.audit.chain import (
    GENESIS,
    INIT_ACTION,
    AuditEntry,
    AuditKeys,
    canonical,
    entry_message,
    head_message,
    next_key_id,
)
from rotator.audit.log import _HEAD_LOCKED, _row_to_entry, append, format_ts
from rotator.crypto.signing import SigningKey, public_key_id, verify_signature
from rotator.errors import AuditChainBroken
from rotator.store.schema import audit_checkpoints, audit_log, audit_signing_keys

CHECKPOINT_ACTION = "audit.checkpoint"
VERSION = 1
ZERO = bytes(32)
DIGEST_PREFIX = b"rotator/audit-digest/v1|"
SIGN_PREFIX = b"rotator/audit-checkpoint/v1|"
_BATCH = 5000


def leaf(entry: AuditEntry | Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical JSON of an entry (``to_json()``, or a parsed export line)."""
    body = entry.to_json() if isinstance(entry, AuditEntry) else entry
    return hashlib.sha256(canonical(body).encode()).digest()


def fold(digest: bytes, leaf_hash: bytes) -> bytes:
    """D(n) from D(n-1) and leaf(n)."""
    return hashlib.sha256(DIGEST_PREFIX + digest + leaf_hash).digest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One signed checkpoint. ``to_json()`` is the whole signed record: what a verifier
    needs besides the public key. ``signature`` is hex."""

    seq: int
    digest: str
    head_hash: str
    key_id: str
    signature: str
    created_at: str
    created_by: str

    def body(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "seq": self.seq,
            "digest": self.digest,
            "head_hash": self.head_hash,
            "key_id": self.key_id,
            "created_at": self.created_at,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": self.signature, "created_by": self.created_by}

    def verifies(self, public_raw: bytes) -> bool:
        """Whether the signature verifies with ``public_raw`` and that key is the one named."""
        if public_key_id(public_raw) != self.key_id:
            return False
        try:
            sig = bytes.fromhex(self.signature)
        except ValueError:
            return False
        return verify_signature(public_raw, sig, signed_message(self.body()))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Parse a checkpoint record; ValueError naming the first bad field."""
        if data.get("v") != VERSION:
            raise ValueError(f"its version is not {VERSION}")
        seq = data.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError("its seq is not a positive integer")
        fields: dict[str, str] = {}
        for name in ("digest", "head_hash", "key_id", "signature", "created_at"):
            value = data.get(name)
            if not isinstance(value, str):
                raise ValueError(f"its {name} is not a string")
            fields[name] = value
        return cls(seq=seq, created_by=str(data.get("created_by", "")), **fields)


def signed_message(body: Mapping[str, Any]) -> bytes:
    return SIGN_PREFIX + canonical(dict(body)).encode()


# -- making a checkpoint (in the store) ---------------------------------------------------


def _row_to_checkpoint(r: Any) -> Checkpoint:
    return Checkpoint(
        seq=r.seq,
        digest=r.digest,
        head_hash=r.head_hash,
        key_id=r.key_id,
        signature=r.signature,
        created_at=r.created_at,
        created_by=r.created_by,
    )


def last(conn: Connection) -> Checkpoint | None:
    """The newest checkpoint, or None."""
    r = conn.execute(
        select(audit_checkpoints).order_by(audit_checkpoints.c.seq.desc()).limit(1)
    ).first()
    return None if r is None else _row_to_checkpoint(r)


def checkpoints(conn: Connection) -> list[Checkpoint]:
    """Every checkpoint, oldest first."""
    rows = conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.seq)).all()
    return [_row_to_checkpoint(r) for r in rows]


def first_covering(conn: Connection, seq: int) -> Checkpoint | None:
    """The oldest checkpoint at or after entry ``seq``, or None."""
    r = conn.execute(
        select(audit_checkpoints)
        .where(audit_checkpoints.c.seq >= seq)
        .order_by(audit_checkpoints.c.seq)
        .limit(1)
    ).first()
    return None if r is None else _row_to_checkpoint(r)


def public_keys(conn: Connection) -> dict[str, bytes]:
    """Every recorded signing public key (raw), by id, oldest first."""
    rows = conn.execute(
        select(audit_signing_keys).order_by(
            audit_signing_keys.c.created_at, audit_signing_keys.c.id
        )
    ).all()
    return {r.id: bytes(r.public_key) for r in rows}


def entries_from(conn: Connection, first: int, until: int | None = None) -> Iterator[AuditEntry]:
    """Entries ``first``..``until`` (None: to the end) in seq order, streamed in batches."""
    after = first - 1
    while True:
        q = select(audit_log).where(audit_log.c.seq > after)
        if until is not None:
            q = q.where(audit_log.c.seq <= until)
        rows = conn.execute(q.order_by(audit_log.c.seq).limit(_BATCH)).all()
        if not rows:
            return
        for r in rows:
            yield _row_to_entry(r)
        after = rows[-1].seq


def check_range(
    entries: Iterable[AuditEntry], start: AuditEntry | None, keys: AuditKeys, until: int
) -> Iterator[AuditEntry]:
    """Yield ``entries`` (the ones after ``start``; None: from seq 1) while checking that each
    links to the one before and its MAC verifies under the key in use; raises AuditChainBroken
    at the first that does not, or when the range ends before ``until``. ``start`` itself must
    be checked by the caller (its MAC covers its own link)."""
    if start is None:
        prev, key_id, expected = GENESIS, None, 1
    else:
        prev, key_id, expected = start.hash, next_key_id(start, start.key_id or ""), start.seq + 1
    for e in entries:
        if e.seq != expected:
            raise AuditChainBroken(
                min(e.seq, expected), f"expected entry {expected}, found {e.seq}"
            )
        if e.seq == 1 and (e.action != INIT_ACTION or e.prev_hash != GENESIS):
            raise AuditChainBroken(1, "the log does not start with the store's init entry")
        if e.prev_hash != prev:
            raise AuditChainBroken(e.seq, "does not link to the entry before it")
        if e.key_id is None or (key_id is not None and e.key_id != key_id):
            raise AuditChainBroken(e.seq, "it is not MAC'd under the audit key in use")
        key = keys.find(e.key_id)
        if key is None:
            raise AuditChainBroken(e.seq, f"audit key {e.key_id} is not held by this process")
        if not key.verify(entry_message(e), e.hash):
            raise AuditChainBroken(e.seq, "its content does not match its MAC")
        yield e
        prev, key_id, expected = e.hash, next_key_id(e, e.key_id), expected + 1
    if expected - 1 < until:
        raise AuditChainBroken(expected, f"entries {expected}..{until} are missing")


def check_entry(e: AuditEntry, keys: AuditKeys) -> None:
    """AuditChainBroken unless ``e``'s MAC verifies under its key (held by this process)."""
    key = keys.find(e.key_id)
    if key is None or not key.verify(entry_message(e), e.hash):
        raise AuditChainBroken(e.seq, "its content does not match its MAC")


def make(
    conn: Connection,
    *,
    keys: AuditKeys,
    signer: SigningKey,
    now: datetime,
    tenant: str,
    actor: str,
    only_if_new: bool = False,
) -> Checkpoint | None:
    """Sign a checkpoint of the chain up to its head, in the caller's (write) transaction,
    and append its ``audit.checkpoint`` entry there; see the module docstring.

    ``only_if_new``: return None, writing nothing, when no entry but the last checkpoint's own
    ``audit.checkpoint`` entry was added since it (the periodic checkpoint). Without it, a
    head already checkpointed returns that checkpoint. Raises AuditChainBroken (nothing
    written) when the chain since the last checkpoint, the head row or the last checkpoint
    itself does not verify; AuditKeyUnavailable when the head's audit key is not held."""
    head = _HEAD_LOCKED.first(conn)
    if head is None:
        raise AuditChainBroken(0, "the audit head is missing")
    head_key = keys.get(head.key_id)
    if head.mac is None or not head_key.verify(
        head_message(head.seq, head.hash, head.key_id), head.mac
    ):
        raise AuditChainBroken(head.seq, "the audit head's MAC does not verify")
    prev_cp = last(conn)
    if prev_cp is not None:
        if prev_cp.seq > head.seq:
            raise AuditChainBroken(head.seq, f"the log ends before checkpoint {prev_cp.seq}")
        raw = public_keys(conn).get(prev_cp.key_id)
        if raw is None or not prev_cp.verifies(raw):
            raise AuditChainBroken(prev_cp.seq, "the last checkpoint's signature does not verify")
        if prev_cp.seq == head.seq or (only_if_new and head.seq == prev_cp.seq + 1):
            return None if only_if_new else prev_cp
    start: AuditEntry | None = None
    digest = ZERO
    if prev_cp is not None:
        start = next(entries_from(conn, prev_cp.seq, prev_cp.seq), None)
        if start is None or start.hash != prev_cp.head_hash:
            raise AuditChainBroken(
                prev_cp.seq, "the entry of the last checkpoint is missing or was changed"
            )
        check_entry(start, keys)
        digest = bytes.fromhex(prev_cp.digest)
    beyond = conn.execute(select(audit_log.c.seq).where(audit_log.c.seq > head.seq).limit(1))
    if beyond.first() is not None:
        raise AuditChainBroken(head.seq, "entries after the audit head exist (the head was cut)")
    last_entry = start
    first = start.seq + 1 if start is not None else 1
    for e in check_range(entries_from(conn, first, head.seq), start, keys, head.seq):
        digest = fold(digest, leaf(e))
        last_entry = e
    if last_entry is None or last_entry.seq != head.seq or last_entry.hash != head.hash:
        raise AuditChainBroken(head.seq, "the chain head does not match the last entry")
    ts = format_ts(now)
    body = {
        "v": VERSION,
        "seq": head.seq,
        "digest": digest.hex(),
        "head_hash": head.hash,
        "key_id": signer.id,
        "created_at": ts,
    }
    cp = Checkpoint(
        seq=head.seq,
        digest=digest.hex(),
        head_hash=head.hash,
        key_id=signer.id,
        signature=signer.sign(signed_message(body)).hex(),
        created_at=ts,
        created_by=actor,
    )
    known = conn.execute(
        select(audit_signing_keys.c.id).where(audit_signing_keys.c.id == signer.id)
    ).first()
    if known is None:
        conn.execute(
            insert(audit_signing_keys).values(
                id=signer.id, public_key=signer.public_raw, created_at=now
            )
        )
    conn.execute(
        insert(audit_checkpoints).values(
            seq=cp.seq,
            digest=cp.digest,
            head_hash=cp.head_hash,
            key_id=cp.key_id,
            signature=cp.signature,
            created_at=cp.created_at,
            created_by=cp.created_by,
        )
    )
    append(
        conn,
        now=now,
        tenant=tenant,
        actor=actor,
        action=CHECKPOINT_ACTION,
        details={"seq": cp.seq, "key_id": cp.key_id, "digest": cp.digest},
        keys=keys,
    )
    return cp


# -- verifying a copy (no store, no key but the public one) ----------------------------------


@dataclass(frozen=True, slots=True)
class CopyResult:
    """What :func:`verify_copy` found. ``ok``: entries 1..``checkpoint.seq`` of the copy match
    the signed digest; ``uncovered``: how many entries of the copy follow the checkpoint."""

    ok: bool
    message: str
    covered: int = 0
    uncovered: int = 0


def _line_leaf(text: str, lineno: int, expected: int) -> bytes:
    try:
        obj = json.loads(text)
    except ValueError:
        raise ValueError(f"line {lineno} is not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("seq"), int):
        raise ValueError(f"line {lineno} is not an audit entry (no seq)")
    seq = obj["seq"]
    if seq != expected:
        what = "missing" if seq > expected else "repeated or out of order"
        raise ValueError(
            f"line {lineno} holds entry {seq} where entry {expected} belongs "
            f"(entries missing, extra or reordered: {what})"
        )
    if set(obj) == {"seq", "leaf"}:  # an entry of another tenant, redacted
        value = obj["leaf"]
        if not isinstance(value, str) or len(value) != 64:
            raise ValueError(f"line {lineno} holds a redacted entry without a 64-hex leaf")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise ValueError(
                f"line {lineno} holds a redacted entry without a 64-hex leaf"
            ) from None
    return leaf(obj)


def verify_copy(
    lines: Iterable[str], checkpoint: Checkpoint, public_keys_raw: Iterable[bytes]
) -> CopyResult:
    """Check a copy of the log (export lines, from entry 1) against a signed checkpoint and
    the public keys given: the checkpoint must be signed by one of them, and the copy's
    entries 1..checkpoint.seq must recompute its digest. Pure; reads nothing else."""
    by_id = {public_key_id(raw): raw for raw in public_keys_raw}
    raw = by_id.get(checkpoint.key_id)
    if raw is None:
        return CopyResult(
            False,
            f"bad signature: the checkpoint names key {checkpoint.key_id}, and the public key "
            f"given is {', '.join(sorted(by_id)) or 'none'}",
        )
    if not checkpoint.verifies(raw):
        return CopyResult(
            False,
            f"bad signature: the checkpoint's signature does not verify with key {raw_id(raw)}",
        )
    digest = ZERO
    n = 0
    lineno = 0
    try:
        for text in lines:
            lineno += 1
            if not text.strip():
                continue
            lf = _line_leaf(text, lineno, n + 1)
            n += 1
            if n <= checkpoint.seq:
                digest = fold(digest, lf)
    except ValueError as exc:
        return CopyResult(False, str(exc))
    if n < checkpoint.seq:
        return CopyResult(
            False, f"the copy ends at entry {n}, before the checkpoint's entry {checkpoint.seq}"
        )
    if digest.hex() != checkpoint.digest:
        return CopyResult(
            False,
            f"digest mismatch: entries 1..{checkpoint.seq} of the copy do not hash to the "
            "signed digest (an entry was changed, removed, inserted or reordered)",
        )
    msg = (
        f"ok: entries 1..{checkpoint.seq} match the checkpoint signed by key "
        f"{checkpoint.key_id} at {checkpoint.created_at}"
    )
    if n == checkpoint.seq + 1:
        msg += f"; entry {n} is not covered by it"
    elif n > checkpoint.seq:
        msg += f"; entries {checkpoint.seq + 1}..{n} are not covered by it"
    return CopyResult(True, msg, checkpoint.seq, n - checkpoint.seq)


def raw_id(raw: bytes) -> str:
    return public_key_id(raw)


def redacted(entry: AuditEntry) -> dict[str, Any]:
    """The export line of an entry another tenant may not read: its seq and leaf only."""
    return {"seq": entry.seq, "leaf": leaf(entry).hex()}
