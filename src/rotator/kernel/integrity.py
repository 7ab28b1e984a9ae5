"""Keyed integrity of what the store says: stage-map MACs, the audit keys, the keyed upgrade.

**Stage maps.** Each credential row holds ``stage_mac`` = ``"<data key id>:<HMAC-SHA-256 hex>"``
over its tenant id, its immutable id, its name and every version's (number, stage), under a
key derived (HKDF) from its tenant's data key. Values are sealed with an AAD binding tenant,
credential id and version, and opening checks that the data key's tenant is the credential's;
the MAC binds the name (and the stage labels) to that id. So swapping two credentials' names,
moving a credential to another tenant, or relabelling versions in the database makes every
value read of that credential fail with :class:`~rotator.errors.IntegrityError`. The MAC is
recomputed (:func:`restamp`) in the transaction of every stage move, after checking the map
as it was (:func:`check`), so a tampered map is never re-stamped as if it were genuine.

**Audit keys.** The audit key is derived from the master key (see :mod:`rotator.audit.chain`).
When a master-key rotation commits, :func:`link_audit_key` runs in that same transaction: it
appends ``audit.key_link`` (MAC'd under the old audit key, naming the new one), keeps the old
audit key (and every earlier one) wrapped under the new master key in ``audit_keys``, and the
head moves to the new key. A process started before the rotation holds only the old master
key: its data keys keep decrypting until it restarts (they are cached), but every write it
tries fails with :class:`~rotator.errors.AuditKeyUnavailable` (nothing is committed), because
an audit entry must be MAC'd under the head's key, which it cannot derive; restart it with the
new key file or passphrase.

**The keyed upgrade.** Migration 0006 cannot seal existing rows (Alembic never holds the master
key). When it finds audit entries it records the meta row ``integrity_upgrade``; the next
service that opens the store (:func:`upgrade`, from ``Kernel.open``/``init``) then, in
one transaction: refuses if any keyed state exists already, verifies the old unkeyed chain
(a broken one is refused, nothing changes), re-MACs every audit entry under the audit key,
stamps every credential's stage map, appends ``store.integrity_upgrade`` and drops the marker.
After that a NULL MAC is an integrity failure, never "unprotected".

Residual risk: the upgrade seals what it finds. An attacker who could write the database
before the upgrade (or who can later make the store look like one from before it: the marker
row back, every keyed column NULL, an unkeyed chain recomputed) gets that state sealed. The
upgrade is audited, and an anchor kept outside the database (``rotator audit head`` before,
``audit verify --expect-head`` after) detects a rewrite at or before the anchor.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from rotator import audit
from rotator.audit.chain import LINK_ACTION, AuditKeys
from rotator.crypto import MasterKey
from rotator.crypto.integrity import (
    AuditKey,
    MacKey,
    audit_key,
    stage_map_key,
    unwrap_audit_key,
    wrap_audit_key,
)
from rotator.errors import DecryptionError, IntegrityError, RotatorError
from rotator.store import credentials as store_creds
from rotator.store import keys as store_keys
from rotator.store.schema import audit_keys as audit_keys_table
from rotator.store.schema import audit_log, credentials

if TYPE_CHECKING:
    from rotator.domain.principal import Principal
    from rotator.kernel.core import Kernel
    from rotator.kernel.keyring import KeyRing

UPGRADE_MARKER = "integrity_upgrade"
UPGRADE_ACTION = "store.integrity_upgrade"


# json.dumps with these options builds an encoder per call; one, built once, encodes the same.
_STAGE_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def stage_message(m: store_creds.StageMap) -> bytes:
    body = {
        "t": m.tenant_id,
        "c": m.credential_id,
        "n": m.name,
        "v": [list(v) for v in m.stages],
        # Where the values go: edited, they could send a value to another host.
        "k": m.connector,
        "s": m.config,
        "o": m.sinks,
    }
    return b"rotator/stage-map/v2|" + _STAGE_JSON.encode(body).encode()


def stage_key(svc: Kernel, conn: Connection, data_key_id: int) -> tuple[int, MacKey]:
    """(tenant id, MAC key) of a data key; the derived key is cached per data key."""
    hit = svc._stage_keys.get(data_key_id)
    if hit is None:
        dk = svc._data_key(conn, data_key_id)
        hit = svc._stage_keys[data_key_id] = (dk.tenant_id, stage_map_key(dk))
    return hit


def restamp(svc: Kernel, conn: Connection, credential_id: int) -> None:
    """Recompute the stage MAC of a credential from its rows, in the caller's transaction.
    Call after a stage move (and :func:`check` before it). No-op for a deleted credential.
    In a transaction with a stage cache (store/credentials.py; the engine's writer) the rows
    are those the check read plus the moves made since, and the MAC is written at its end."""
    m = store_creds.stage_map(conn, credential_id)
    if m is None:
        return
    dk_id = svc._active_data_key_id(conn, m.tenant_id)
    _, key = stage_key(svc, conn, dk_id)
    mac = f"{dk_id}:{key.mac(stage_message(m))}"
    store_creds.set_stage_mac(conn, credential_id, mac)
    _remember(svc, m.with_mac(mac))


# Verified stage maps remembered per credential: at most this many, then forgotten all at once.
_VERIFIED_MAX = 100_000


def _remember(svc: Kernel, m: store_creds.StageMap) -> None:
    verified = svc._verified_maps
    if len(verified) >= _VERIFIED_MAX and m.credential_id not in verified:
        verified.clear()
    verified[m.credential_id] = m


def _problem(svc: Kernel, conn: Connection, m: store_creds.StageMap) -> str | None:
    # A map equal, field for field and MAC included, to one that verified before (or that
    # this process stamped) verifies again: the check is deterministic in those fields and
    # the stage keys are cached for the process's life. Skipping its JSON and HMAC halves a
    # value read's integrity cost; any edit of a covered field or of the MAC misses here
    # and is checked in full. (Re-stamped maps are remembered even if their transaction
    # rolls back: they are authentic all the same, as the full check would find.)
    if svc._verified_maps.get(m.credential_id) == m:
        return None
    if m.mac is None:
        return "its stage map carries no MAC"
    dk_part, _, tag = m.mac.partition(":")
    if not dk_part.isdigit() or len(tag) != 64:
        return "its stage-map MAC is malformed"
    try:
        tenant_id, key = stage_key(svc, conn, int(dk_part))
    except (RotatorError, SQLAlchemyError):
        return "its stage-map MAC names a data key that does not open"
    if tenant_id != m.tenant_id:
        return "it was moved from another tenant"
    if not key.verify(stage_message(m), tag):
        return (
            "its name, tenant, version stages, connector settings or sinks were changed "
            "outside rotator"
        )
    _remember(svc, m)
    return None


def errors(svc: Kernel, conn: Connection, credential_ids: list[int]) -> dict[int, IntegrityError]:
    """The integrity error of each credential whose stage map does not verify (none: {})."""
    out: dict[int, IntegrityError] = {}
    for cid, m in store_creds.stage_maps(conn, credential_ids).items():
        reason = _problem(svc, conn, m)
        if reason is not None:
            out[cid] = IntegrityError(f"integrity check failed: credential {m.name!r}: {reason}")
    return out


def check_map(svc: Kernel, conn: Connection, m: store_creds.StageMap) -> None:
    """Raise IntegrityError unless the stage map ``m`` (as read by the caller) verifies."""
    reason = _problem(svc, conn, m)
    if reason is not None:
        raise IntegrityError(f"integrity check failed: credential {m.name!r}: {reason}")


def check(svc: Kernel, conn: Connection, credential_id: int) -> None:
    """Raise IntegrityError unless the credential's stored stage map verifies (with a stage
    cache: as first read in this transaction)."""
    found = errors(svc, conn, [credential_id])
    if found:
        raise found[credential_id]


# -- audit keys ---------------------------------------------------------------------------


def load_audit_keys(conn: Connection, ring: KeyRing) -> AuditKeys:
    """The audit keys this process can use: one per master key it holds, plus every earlier
    audit key wrapped under one of them. ``initial`` belongs to the committed master key."""
    held: dict[str, AuditKey] = {}
    for mk in ring.held():
        ak = audit_key(mk)
        held[ak.id] = ak
    for r in conn.execute(select(audit_keys_table)).all():
        try:
            held[r.id] = unwrap_audit_key(ring.get(r.master_key_id), bytes(r.wrapped), r.id)
        except DecryptionError:
            continue  # wrapped under a key this process does not hold: entries stay unverified
    master = store_keys.get_meta(conn, "master")
    committed = master["id"] if master else ring.current_id
    try:
        initial = audit_key(ring.get(committed))
    except DecryptionError:
        initial = audit_key(ring.current)
    return AuditKeys(held, initial)


def link_audit_key(
    svc: Kernel, conn: Connection, old: MasterKey, new: MasterKey, who: Principal
) -> None:
    """The ``finalize`` step of a master-key rotation (inside its final transaction): carry the
    audit chain over to the new master key's audit key. Idempotent within the rotation."""
    new_ak = audit_key(new)
    head = audit.read_head(conn)
    if head is not None and head.key_id == new_ak.id:
        return
    keys = svc.audit_keys.with_key(audit_key(old)).with_key(new_ak)
    current = keys.get(head.key_id if head is not None else None)
    masters = {old.id: old, new.id: new}
    now = svc.clock()
    for r in conn.execute(select(audit_keys_table)).all():
        if r.master_key_id == new.id:
            continue
        by = masters.get(r.master_key_id) or svc.ring.get(r.master_key_id)
        ak = unwrap_audit_key(by, bytes(r.wrapped), r.id)
        conn.execute(
            update(audit_keys_table)
            .where(audit_keys_table.c.id == r.id)
            .values(wrapped=wrap_audit_key(new, ak), master_key_id=new.id)
        )
    stored = conn.execute(
        select(audit_keys_table.c.id).where(audit_keys_table.c.id == current.id)
    ).first()
    if stored is None:
        conn.execute(
            insert(audit_keys_table).values(
                id=current.id,
                wrapped=wrap_audit_key(new, current),
                master_key_id=new.id,
                created_at=now,
            )
        )
    audit.append(
        conn,
        now=now,
        tenant=who.tenant,
        actor=who.name,
        action=LINK_ACTION,
        details={"from_key": current.id, "to_key": new_ak.id, "master_key_id": new.id},
        keys=keys,
    )
    svc._audit_keys = keys


# -- the keyed upgrade ----------------------------------------------------------------------


def upgrade(svc: Kernel, who: Principal) -> bool:
    """Seal a store migrated from before 0006 (see the module docstring). True if it ran.

    Raises IntegrityError when keyed state exists already beside the marker, AuditChainBroken
    when the old chain does not verify; nothing changes then.
    """
    with svc.db.read() as conn:
        if store_keys.get_meta(conn, UPGRADE_MARKER) is None:
            return False
    with svc.db.write() as conn:
        # Locked: two processes opening the store at once must not both re-seal it.
        if store_keys.get_meta_for_update(conn, UPGRADE_MARKER) is None:
            return False  # another process did it
        keyed = (
            conn.execute(select(audit_keys_table.c.id).limit(1)).first()
            or conn.execute(
                select(audit_log.c.seq).where(audit_log.c.key_id.is_not(None)).limit(1)
            ).first()
            or conn.execute(
                select(credentials.c.id).where(credentials.c.stage_mac.is_not(None)).limit(1)
            ).first()
        )
        if keyed is not None:
            raise IntegrityError(
                "integrity check failed: the store asks for the keyed upgrade but holds keyed "
                "data already; refusing to re-seal it"
            )
        keys = load_audit_keys(conn, svc.ring)
        n = audit.reseal(conn, keys.initial)
        ids = store_creds.all_credential_ids(conn)
        for cid in ids:
            restamp(svc, conn, cid)
        store_keys.delete_meta(conn, UPGRADE_MARKER)
        audit.append(
            conn,
            now=svc.clock(),
            tenant=who.tenant,
            actor=who.name,
            action=UPGRADE_ACTION,
            details={"entries": n, "credentials": len(ids), "audit_key_id": keys.initial.id},
            keys=keys,
        )
    return True
