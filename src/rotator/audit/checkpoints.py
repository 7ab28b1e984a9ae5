"""Signed checkpoints of the audit chain, and the verification of a copy of the log.

The keyed chain (:mod:`rotator.audit.chain`) can only be checked by a holder of the master key.
A checkpoint lets anyone else check a copy: it signs, with an Ed25519 key derived from the
audit key in use (:mod:`rotator.crypto.signing`), a running digest that needs no key to
recompute::

    salt(n) = HMAC-SHA-256(audit key of entry n, "rotator/audit-leaf-salt|" + str(n))
    leaf(n) = SHA-256(b"rotator/audit-leaf/v2|" + salt(n) + canonical(entry_n.to_json()))
    D(0)    = 32 zero bytes
    D(n)    = SHA-256(b"rotator/audit-digest/v1|" + D(n-1) + leaf(n))

and the signature is Ed25519 over ``b"rotator/audit-checkpoint/v2|" + canonical(body)`` with
``body = {"v": 2, "seq", "digest" (hex of D(seq)), "head_hash" (the MAC of entry seq),
"key_id", "created_at", "prev_seq", "prev_digest"}`` (the previous checkpoint's seq and
digest; 0 and 64 zeros for the first), so checkpoints chain. A copy of entries 1..seq
(``rotator audit export``: each line carries its ``salt`` in hex) recomputes D(seq); changing,
removing, inserting or reordering any entry changes it. The salt keeps a redacted leaf from
being confirmed by guessing its entry.

The keys rotator trusts are derived from the audit keys it holds (:func:`trusted_keys`), never
read from the store: ``audit_signing_keys`` is a record only, so a database writer cannot
slip in a key and a forged checkpoint for rotator to extend. Making one (:func:`make`)
refuses (AuditChainBroken, nothing written) when a stored checkpoint does not verify under a
derived key or does not chain to the one before it, or when the chain does not verify. The
entries after the last checkpoint are verified and folded first in a read transaction
(:func:`prepare`), then, under the audit head's lock in the caller's write transaction, only
those appended since; the ``audit.checkpoint`` entry is appended there, so the checkpoint and
its entry commit together.

A tenant's export replaces every entry of another tenant by ``{"seq": n, "leaf": "<hex>"}``:
the copy still recomputes the digest and reveals nothing of those entries but their count.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select

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
from rotator.audit.log import _HEAD_LOCKED, append, format_ts, row_to_entry
from rotator.crypto.signing import audit_signing_key, public_key_id, verify_signature
from rotator.errors import AuditChainBroken
from rotator.store.schema import audit_checkpoints, audit_log, audit_signing_keys

CHECKPOINT_ACTION = "audit.checkpoint"
VERSION = 2
ZERO = bytes(32)
LEAF_PREFIX = b"rotator/audit-leaf/v2|"
SALT_PREFIX = b"rotator/audit-leaf-salt|"
DIGEST_PREFIX = b"rotator/audit-digest/v1|"
SIGN_PREFIX = b"rotator/audit-checkpoint/v2|"
_BATCH = 5000


def entry_salt(entry: AuditEntry, keys: AuditKeys) -> bytes:
    """salt(n): HMAC-SHA-256 under the audit key of entry n of ``"rotator/audit-leaf-salt|"
    + seq`` (32 bytes). Only a holder of that audit key can compute it, so a redacted leaf
    cannot be confirmed by guessing its entry. AuditKeyUnavailable when the key is not held."""
    return bytes.fromhex(keys.get(entry.key_id).mac(SALT_PREFIX + str(entry.seq).encode()))


def leaf(body: Mapping[str, Any], salt: bytes) -> bytes:
    """leaf(n) = SHA-256(b"rotator/audit-leaf/v2|" + salt(n) + canonical(entry n)); ``body`` is
    ``to_json()`` of the entry (or a parsed export line without its ``salt``)."""
    return hashlib.sha256(LEAF_PREFIX + salt + canonical(dict(body)).encode()).digest()


def entry_leaf(entry: AuditEntry, keys: AuditKeys) -> bytes:
    """The leaf of a stored entry (its salt computed with the audit keys held)."""
    return leaf(entry.to_json(), entry_salt(entry, keys))


def fold(digest: bytes, leaf_hash: bytes) -> bytes:
    """D(n) from D(n-1) and leaf(n)."""
    return hashlib.sha256(DIGEST_PREFIX + digest + leaf_hash).digest()


def trusted_keys(keys: AuditKeys) -> dict[str, bytes]:
    """The raw public key of every signing key rotator trusts, by id: one derived from each
    audit key held (crypto.signing). Never read from the store: a key inserted there by a
    database writer is not among them."""
    found: dict[str, bytes] = {}
    for ak in keys.held():
        sk = audit_signing_key(ak)
        found[sk.id] = sk.public_raw
    return found


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One signed checkpoint. ``to_json()`` is the whole signed record: what a verifier
    needs besides the public key. ``signature`` is hex. ``prev_seq``/``prev_digest`` name the
    checkpoint before it (0 and 64 zeros for the first) and are signed, so checkpoints chain.
    ``created_by`` is not signed (a record of who asked, shown filtered to other tenants)."""

    seq: int
    digest: str
    head_hash: str
    key_id: str
    signature: str
    created_at: str
    created_by: str
    prev_seq: int = 0
    prev_digest: str = ZERO.hex()

    def body(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "seq": self.seq,
            "digest": self.digest,
            "head_hash": self.head_hash,
            "key_id": self.key_id,
            "created_at": self.created_at,
            "prev_seq": self.prev_seq,
            "prev_digest": self.prev_digest,
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
        prev_seq = data.get("prev_seq")
        if not isinstance(prev_seq, int) or isinstance(prev_seq, bool) or not 0 <= prev_seq < seq:
            raise ValueError("its prev_seq is not an integer from 0 to seq - 1")
        fields: dict[str, str] = {}
        for name in ("digest", "head_hash", "key_id", "signature", "created_at", "prev_digest"):
            value = data.get(name)
            if not isinstance(value, str):
                raise ValueError(f"its {name} is not a string")
            fields[name] = value
        return cls(seq=seq, prev_seq=prev_seq, created_by=str(data.get("created_by", "")), **fields)


def signed_message(body: Mapping[str, Any]) -> bytes:
    return SIGN_PREFIX + canonical(dict(body)).encode()


# -- making a checkpoint (in the store) ---------------------------------------------------


def _row_to_checkpoint(r: Any) -> Checkpoint:
    # A row without prev_* (written before the chained body) cannot verify: it is refused.
    return Checkpoint(
        seq=r.seq,
        digest=r.digest,
        head_hash=r.head_hash,
        key_id=r.key_id,
        signature=r.signature,
        created_at=r.created_at,
        created_by=r.created_by,
        prev_seq=-1 if r.prev_seq is None else r.prev_seq,
        prev_digest=r.prev_digest or "",
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
    """Every signing public key recorded in the store (raw), by id, oldest first. A record
    only: NEVER trusted (anyone who can write the database can add one); see trusted_keys."""
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
            yield row_to_entry(r)
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


def check_checkpoints(cps: list[Checkpoint], trusted: Mapping[str, bytes]) -> None:
    """AuditChainBroken unless every stored checkpoint (oldest first) is signed by a key
    rotator derives (``trusted``) and names the one before it as its previous."""
    prev_seq, prev_digest = 0, ZERO.hex()
    for cp in cps:
        raw = trusted.get(cp.key_id)
        if raw is None:
            raise AuditChainBroken(
                cp.seq, f"checkpoint {cp.seq} is not signed by rotator (key {cp.key_id})"
            )
        if not cp.verifies(raw):
            raise AuditChainBroken(cp.seq, f"the signature of checkpoint {cp.seq} does not verify")
        if (cp.prev_seq, cp.prev_digest) != (prev_seq, prev_digest):
            raise AuditChainBroken(
                cp.seq, f"checkpoint {cp.seq} does not chain to the checkpoint before it"
            )
        prev_seq, prev_digest = cp.seq, cp.digest


@dataclass(frozen=True, slots=True)
class Folded:
    """The chain verified and folded from entry 1 to ``entry`` (None: nothing folded yet),
    over the stored checkpoints ``checked`` (verified, oldest first): ``digest`` is D(entry)."""

    checked: tuple[Checkpoint, ...]
    entry: AuditEntry | None
    digest: bytes


def _fold_from(
    conn: Connection, keys: AuditKeys, start: AuditEntry | None, digest: bytes, until: int
) -> tuple[AuditEntry | None, bytes]:
    last_entry = start
    first = start.seq + 1 if start is not None else 1
    for e in check_range(entries_from(conn, first, until), start, keys, until):
        digest = fold(digest, entry_leaf(e, keys))
        last_entry = e
    return last_entry, digest


def _from_base(
    conn: Connection, keys: AuditKeys, base: Checkpoint | None
) -> tuple[AuditEntry | None, bytes]:
    """The entry of checkpoint ``base`` (checked) and its digest; (None, D(0)) without one."""
    if base is None:
        return None, ZERO
    start = next(entries_from(conn, base.seq, base.seq), None)
    if start is None or start.hash != base.head_hash:
        raise AuditChainBroken(
            base.seq, "the entry of the last checkpoint is missing or was changed"
        )
    check_entry(start, keys)
    return start, bytes.fromhex(base.digest)


def prepare(conn: Connection, *, keys: AuditKeys) -> Folded:
    """Verify the stored checkpoints and fold the entries after the last one up to the
    current end of the log, in a READ transaction: the slow part of :func:`make`, done without
    the audit head's lock (so appends, and on SQLite every writer, are not held up by it).
    AuditChainBroken when they do not verify."""
    cps = checkpoints(conn)
    check_checkpoints(cps, trusted_keys(keys))
    start, digest = _from_base(conn, keys, cps[-1] if cps else None)
    end = conn.execute(select(func.max(audit_log.c.seq))).scalar_one_or_none() or 0
    if start is not None and end <= start.seq:
        return Folded(tuple(cps), start, digest)
    entry, digest = _fold_from(conn, keys, start, digest, end)
    return Folded(tuple(cps), entry, digest)


def make(
    conn: Connection,
    *,
    keys: AuditKeys,
    now: datetime,
    tenant: str,
    actor: str,
    only_if_new: bool = False,
    snapshot: Folded | None = None,
) -> Checkpoint | None:
    """Sign a checkpoint of the chain up to its head, in the caller's (write) transaction,
    and append its ``audit.checkpoint`` entry there; see the module docstring.

    The signing key is derived from the audit key of the head; the previous checkpoint is
    trusted only if it verifies under a key derived from an audit key held (never a key read
    from the store). ``snapshot`` (:func:`prepare`, in an earlier read transaction): when the
    stored checkpoints are still those it checked and its last entry is unchanged, only the
    entries appended since it are verified and folded here, under the lock.

    ``only_if_new``: return None, writing nothing, when no entry but the last checkpoint's own
    ``audit.checkpoint`` entry was added since it (the periodic checkpoint). Without it, a
    head already checkpointed returns that checkpoint. Raises AuditChainBroken (nothing
    written) when the chain, the head row or a stored checkpoint does not verify (a checkpoint
    not signed by rotator, or not chained to the one before it); AuditKeyUnavailable when the
    head's audit key is not held."""
    head = _HEAD_LOCKED.first(conn)
    if head is None:
        raise AuditChainBroken(0, "the audit head is missing")
    head_key = keys.get(head.key_id)
    if head.mac is None or not head_key.verify(
        head_message(head.seq, head.hash, head.key_id), head.mac
    ):
        raise AuditChainBroken(head.seq, "the audit head's MAC does not verify")
    cps = checkpoints(conn)
    if snapshot is None or tuple(cps) != snapshot.checked:
        snapshot = None
        check_checkpoints(cps, trusted_keys(keys))
    prev_cp = cps[-1] if cps else None
    if prev_cp is not None:
        if prev_cp.seq > head.seq:
            raise AuditChainBroken(head.seq, f"the log ends before checkpoint {prev_cp.seq}")
        if prev_cp.seq == head.seq or (only_if_new and head.seq == prev_cp.seq + 1):
            return None if only_if_new else prev_cp
    beyond = conn.execute(select(audit_log.c.seq).where(audit_log.c.seq > head.seq).limit(1))
    if beyond.first() is not None:
        raise AuditChainBroken(head.seq, "entries after the audit head exist (the head was cut)")
    start: AuditEntry | None = None
    digest = ZERO
    if snapshot is not None and snapshot.entry is not None and snapshot.entry.seq <= head.seq:
        again = next(entries_from(conn, snapshot.entry.seq, snapshot.entry.seq), None)
        if again == snapshot.entry:
            check_entry(again, keys)
            start, digest = again, snapshot.digest
        else:  # changed since the snapshot: start over from the checkpoint, under the lock
            snapshot = None
    else:
        snapshot = None
    if snapshot is None:
        start, digest = _from_base(conn, keys, prev_cp)
    last_entry, digest = _fold_from(conn, keys, start, digest, head.seq)
    if last_entry is None or last_entry.seq != head.seq or last_entry.hash != head.hash:
        raise AuditChainBroken(head.seq, "the chain head does not match the last entry")
    signer = audit_signing_key(head_key)
    ts = format_ts(now)
    unsigned = Checkpoint(
        seq=head.seq,
        digest=digest.hex(),
        head_hash=head.hash,
        key_id=signer.id,
        signature="",
        created_at=ts,
        created_by=actor,
        prev_seq=prev_cp.seq if prev_cp is not None else 0,
        prev_digest=prev_cp.digest if prev_cp is not None else ZERO.hex(),
    )
    cp = replace(unsigned, signature=signer.sign(signed_message(unsigned.body())).hex())
    known = conn.execute(
        select(audit_signing_keys.c.id).where(audit_signing_keys.c.id == signer.id)
    ).first()
    if known is None:  # a record for people reading the store; never trusted by rotator
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
            prev_seq=cp.prev_seq,
            prev_digest=cp.prev_digest,
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
    """What :func:`verify_copy` found. ``ok``: entries 1..``covered`` of the copy match the
    signed digests; ``uncovered``: how many entries of the copy follow the last checkpoint;
    ``redacted``: the seqs of the copy's redacted lines (another tenant's entries)."""

    ok: bool
    message: str
    covered: int = 0
    uncovered: int = 0
    redacted: tuple[int, ...] = ()


class BadLine(ValueError):
    """A line of the copy that is not a JSON object (bad input, not a failed verification)."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one key: one tool would hash the last while another shows the first.
    obj: dict[str, Any] = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError("duplicate key")
        obj[k] = v
    return obj


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number out of range")
    return value


def parse_line(text: str) -> Any:
    """A copy's line as strict JSON: no duplicate keys, NaN, Infinity or out-of-range
    numbers. ValueError (or RecursionError, for a line nested too deep) when it is not."""
    return json.loads(
        text, object_pairs_hook=_pairs, parse_constant=_no_constant, parse_float=_finite
    )


def _hex32(value: Any) -> bytes | None:
    if not isinstance(value, str) or len(value) != 64:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def _line_leaf(text: str, lineno: int, expected: int) -> tuple[bytes, bool]:
    """The leaf of one line and whether it is redacted."""
    try:
        obj = parse_line(text)
    except (ValueError, RecursionError):
        raise BadLine(f"line {lineno} is not a JSON object") from None
    if not isinstance(obj, dict):
        raise BadLine(f"line {lineno} is not a JSON object")
    if not isinstance(obj.get("seq"), int) or isinstance(obj["seq"], bool):
        raise ValueError(f"line {lineno} is not an audit entry (no seq)")
    seq = obj["seq"]
    if seq != expected:
        what = "missing" if seq > expected else "repeated or out of order"
        raise ValueError(
            f"line {lineno} holds entry {seq} where entry {expected} belongs "
            f"(entries missing, extra or reordered: {what})"
        )
    if set(obj) == {"seq", "leaf"}:  # an entry of another tenant, redacted
        value = _hex32(obj["leaf"])
        if value is None:
            raise ValueError(f"line {lineno} holds a redacted entry without a 64-hex leaf")
        return value, True
    salt = _hex32(obj.pop("salt", None))
    if salt is None:
        raise ValueError(f"line {lineno} holds an entry without a 64-hex salt")
    return leaf(obj, salt), False


def ranges(seqs: Iterable[int]) -> str:
    """``4, 9-10`` for [4, 9, 10]."""
    out: list[str] = []
    run: list[int] = []
    for n in seqs:
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [n]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(out)


def _check_signatures(cps: list[Checkpoint], by_id: Mapping[str, bytes]) -> str | None:
    """The first problem with the checkpoints' signatures and chaining, or None."""
    several = len(cps) > 1
    for i, cp in enumerate(cps):
        at = f"checkpoint {cp.seq}: " if several else ""
        raw = by_id.get(cp.key_id)
        if raw is None:
            return (
                f"{at}bad signature: the checkpoint names key {cp.key_id}, and the public key "
                f"given is {', '.join(sorted(by_id)) or 'none'}"
            )
        if not cp.verifies(raw):
            return (
                f"{at}bad signature: the checkpoint's signature does not verify with key "
                f"{cp.key_id}"
            )
        if i and cp.seq == cps[i - 1].seq:
            return f"two different checkpoints of entry {cp.seq} were given"
        if i and (
            cp.prev_seq < cps[i - 1].seq
            or (cp.prev_seq == cps[i - 1].seq and cp.prev_digest != cps[i - 1].digest)
        ):
            return (
                f"checkpoint {cp.seq} does not chain to checkpoint {cps[i - 1].seq}: it names "
                f"checkpoint {cp.prev_seq} as its previous"
                + ("" if cp.prev_seq != cps[i - 1].seq else " with another digest")
            )
    return None


def verify_copy(
    lines: Iterable[str],
    checkpoints: Checkpoint | Iterable[Checkpoint],
    public_keys_raw: Iterable[bytes],
    *,
    full: bool = False,
) -> CopyResult:
    """Check a copy of the log (export lines, from entry 1) against one or more signed
    checkpoints and the public keys given: each must be signed by one of them, they must chain
    (each names the one before it, or a later one, as its previous), and the copy's entries
    1..seq must recompute each checkpoint's digest and the digest of its previous checkpoint.
    ``full``: a redacted line fails it. Pure; reads nothing else. BadLine when a line is not
    a JSON object (bad input); every other problem is a result that is not ok."""
    given = [checkpoints] if isinstance(checkpoints, Checkpoint) else list(checkpoints)
    cps = sorted(set(given), key=lambda c: c.seq)
    if not cps:
        return CopyResult(False, "no checkpoint was given")
    by_id = {public_key_id(raw): raw for raw in public_keys_raw}
    problem = _check_signatures(cps, by_id)
    if problem is not None:
        return CopyResult(False, problem)
    want = {cp.seq for cp in cps} | {cp.prev_seq for cp in cps if cp.prev_seq}
    top = cps[-1].seq
    digests: dict[int, bytes] = {0: ZERO}
    digest = ZERO
    n = 0
    lineno = 0
    hidden: list[int] = []
    try:
        for text in lines:
            lineno += 1
            if not text.strip():
                continue
            lf, is_redacted = _line_leaf(text, lineno, n + 1)
            n += 1
            if is_redacted:
                if full:
                    return CopyResult(
                        False,
                        f"line {lineno} (entry {n}) is redacted, and --full refuses redacted lines",
                    )
                hidden.append(n)
            if n <= top:
                digest = fold(digest, lf)
                if n in want:
                    digests[n] = digest
    except BadLine:
        raise
    except ValueError as exc:
        return CopyResult(False, str(exc))
    if n < top:
        return CopyResult(False, f"the copy ends at entry {n}, before the checkpoint's entry {top}")
    for cp in cps:
        if digests[cp.seq].hex() != cp.digest:
            return CopyResult(
                False,
                f"digest mismatch: entries 1..{cp.seq} of the copy do not hash to the "
                "signed digest (an entry was changed, removed, inserted or reordered)",
            )
        if digests[cp.prev_seq].hex() != cp.prev_digest:
            return CopyResult(
                False,
                f"checkpoint {cp.seq} does not chain: entries 1..{cp.prev_seq} of the copy do "
                "not hash to the digest it names for its previous checkpoint",
            )
    last_cp = cps[-1]
    if len(cps) == 1:
        msg = (
            f"ok: entries 1..{top} match the checkpoint signed by key "
            f"{last_cp.key_id} at {last_cp.created_at}"
        )
    else:
        msg = (
            f"ok: entries 1..{top} match {len(cps)} chained checkpoints (of entries "
            f"{', '.join(str(c.seq) for c in cps)}), the last signed by key {last_cp.key_id} "
            f"at {last_cp.created_at}"
        )
    if n == top + 1:
        msg += f"; entry {n} is not covered by it"
    elif n > top:
        msg += f"; entries {top + 1}..{n} are not covered by it"
    msg += f" ({len(hidden)} redacted: {ranges(hidden)})" if hidden else " (none redacted)"
    return CopyResult(True, msg, top, n - top, tuple(hidden))


def raw_id(raw: bytes) -> str:
    return public_key_id(raw)


def export_line(entry: AuditEntry, keys: AuditKeys) -> dict[str, Any]:
    """The export line of an entry the reader may see: ``to_json()`` and its ``salt`` (hex)."""
    return {**entry.to_json(), "salt": entry_salt(entry, keys).hex()}


def redacted(entry: AuditEntry, keys: AuditKeys) -> dict[str, Any]:
    """The export line of an entry another tenant may not read: its seq and leaf only."""
    return {"seq": entry.seq, "leaf": entry_leaf(entry, keys).hex()}
