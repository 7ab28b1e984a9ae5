"""Disaster recovery: backup, restore, and escrow of the master key (see docs/recovery.md).

* :func:`backup` writes a consistent snapshot of the whole store (store/snapshot.py), its body
  encrypted and the file signed under keys derived from the master key (crypto/snapshot.py).
* :func:`restore` verifies a backup completely before it writes anything, then loads it into an
  EMPTY store (no rotator schema) in one transaction, treats every lease in it as run out (their
  holders ran on the old machine) and appends ``store.restore`` to the restored audit chain.
* :func:`export_shares` splits the master key into SLIP-0039 Shamir shares (Trezor's
  ``shamir-mnemonic``); :func:`import_shares` rebuilds it into ``ROTATOR_HOME/master.key``.

Values are never decrypted by any of these: credential values stay sealed as stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from rotator import __version__, audit, crypto
from rotator.config import Settings
from rotator.crypto import snapshot as sealed
from rotator.crypto.keys import KdfParams, MasterKey, stage_private_file
from rotator.domain.model import DEFAULT_TENANT
from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.errors import DecryptionError, InvalidInput, MasterKeyError
from rotator.kernel import integrity, utcnow
from rotator.kernel.keyring import KeyRing
from rotator.service.credentials import RotatorService
from rotator.store import Database
from rotator.store import keys as store_keys
from rotator.store import snapshot as snap_store

MAX_BACKUP_BYTES = 4 << 30  # read whole into memory: refuse what cannot be one of ours


@dataclass(frozen=True, slots=True)
class BackupResult:
    """What ``rotator backup`` wrote."""

    path: Path
    tables: int
    rows: int
    bytes: int
    audit_head_seq: int
    revision: str


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What ``rotator restore`` loaded."""

    tables: int
    rows: int
    revision: str
    backup_created_at: str
    audit_head_seq: int
    leases_expired: int


# -- backup ------------------------------------------------------------------------------


def _current_master(conn: Connection, what: str) -> dict[str, Any]:
    master = store_keys.get_meta(conn, "master")
    if master is None:
        raise InvalidInput("this store has no master key recorded: run `rotator init`")
    if store_keys.get_meta(conn, "master_next") is not None:
        raise InvalidInput(
            f"a master-key rotation is under way: finish it with `rotator keys rotate-master` "
            f"before {what}"
        )
    return dict(master)


def snapshot_master(snap: snap_store.Snapshot, what: str) -> dict[str, Any]:
    """The ``master`` meta row held in ``snap``; InvalidInput when it has none or also holds
    ``master_next`` (a master-key rotation under way: its data keys are wrapped under two keys,
    and the snapshot restores into a store no single key opens)."""
    meta = {r["key"]: r["value"] for r in snap.rows("meta")}
    master = meta.get("master")
    if not isinstance(master, dict) or not isinstance(master.get("id"), str):
        raise InvalidInput(f"{what} holds no master key record")
    if meta.get("master_next") is not None:
        raise InvalidInput(
            f"{what} was taken during a master-key rotation: finish it with "
            "`rotator keys rotate-master`, then back up again"
        )
    return dict(master)


def _head_seq(snap: snap_store.Snapshot) -> int:
    heads = snap.rows("audit_head")
    return int(heads[0]["seq"]) if heads else 0


def seal_snapshot(
    master: MasterKey,
    snap: snap_store.Snapshot,
    *,
    now: datetime,
    backend: str,
    kdf: dict[str, Any] | None,
) -> tuple[dict[str, Any], bytes]:
    """(what the file says of itself, file bytes) of the backup of ``snap`` sealed under
    ``master``. Checks nothing: :func:`backup` checks that ``master`` is the snapshot's own
    master key. The plain header holds only what is needed before decryption (which key, its
    scrypt parameters) and when and by which version the file was made; the revision, the
    audit head and every table with its digest are in the encrypted body: a per-table row
    count or unkeyed digest in the clear would tell what small tables hold."""
    header: dict[str, Any] = {
        "created_at": now.isoformat(),
        "rotator_version": __version__,
        "kdf": kdf,
    }
    inner: dict[str, Any] = {
        "revision": snap.revision,
        "source_backend": backend,
        "audit_head_seq": _head_seq(snap),
    }
    body_doc = {
        **inner,
        "tables": {
            name: {"columns": t.columns, "kinds": t.kinds, "rows": t.rows, "sha256": t.digest()}
            for name, t in snap.tables.items()
        },
    }
    data = sealed.seal(master, header, zlib.compress(sealed.canonical(body_doc), 6))
    return {**sealed.read_header(data, "backup"), **inner}, data


async def backup(
    svc: RotatorService, path: Path, *, force: bool = False, principal: Principal = LOCAL_PRINCIPAL
) -> BackupResult:
    """Write a backup of the whole store to ``path`` (mode 0600, atomically: ``path`` holds
    the whole file or what it held before), taken online. Refuses (InvalidInput) an existing
    ``path`` unless ``force``, and a snapshot taken during a master-key rotation (checked in
    the snapshot itself: a rotation may begin while the backup runs). Appends ``store.backup``
    (file digest, rows, the audit head seq it captured) to the audit log before the file is
    put in place: when the append fails, ``path`` is left as it was. Needs STORE_ADMIN (the
    store's owner)."""
    await svc.authorize(principal, Action.STORE_ADMIN)
    if path.is_dir():
        raise InvalidInput(f"backup file {path} is a folder")
    if path.exists() and not force:
        raise InvalidInput(f"backup file {path} exists: use --force to replace it")
    if not path.parent.is_dir():
        raise InvalidInput(f"backup file {path}: folder {path.parent} does not exist")
    await svc._read(lambda c: _current_master(c, "a backup"))  # refuse early, cheaply
    snap = await svc._thread(lambda: snap_store.dump(svc.db))
    # The check above ran in a transaction of its own: a `keys rotate-master` may have begun
    # (or even finished) before the dump. Only the snapshot itself tells which key its data
    # keys are wrapped under, so the sealing key is chosen from, and checked against, it.
    master_meta = snapshot_master(snap, "this backup")
    try:
        master = svc.kernel.ring.get(master_meta["id"])
    except DecryptionError:
        raise InvalidInput(
            "the master key changed while the backup was taken: run `rotator backup` again"
        ) from None
    header, data = await svc._thread(
        lambda: seal_snapshot(
            master, snap, now=svc.clock(), backend=svc.db.dialect, kdf=master_meta.get("kdf")
        )
    )
    rows = sum(len(t.rows) for t in snap.tables.values())
    details = {
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "rows": rows,
        "revision": snap.revision,
        "audit_head_seq": header["audit_head_seq"],
        "master_key_id": master.id,
    }
    # The file is written whole under a temporary name, the audit entry appended, and only
    # then the file put in place: a failed append leaves no backup the log does not record
    # (and, with --force, the file it would have replaced).
    tmp = await svc._thread(lambda: _stage_file(path, data))
    try:
        await svc._write(lambda c: svc.kernel.audit(c, principal, "store.backup", details=details))
        await svc._thread(lambda: _place_file(tmp, path, force=force))
    finally:
        tmp.unlink(missing_ok=True)
    return BackupResult(
        path, len(snap.tables), rows, len(data), header["audit_head_seq"], snap.revision
    )


def _stage_file(path: Path, data: bytes) -> Path:
    """``data`` in a new temporary file (mode 0600, fsynced) beside ``path``; its path."""
    return stage_private_file(path, data)


def _place_file(tmp: Path, path: Path, *, force: bool) -> None:
    """Put the staged ``tmp`` at ``path``: link (refuses an existing file) or, with
    ``force``, rename over it; then fsync the folder. The caller removes ``tmp``."""
    if force:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise InvalidInput(f"backup file {path} exists: use --force to replace it") from None
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- restore -----------------------------------------------------------------------------


def _read_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BACKUP_BYTES + 1)
    except FileNotFoundError:
        raise InvalidInput(f"backup file {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidInput(f"backup file {path} is a folder") from None
    except OSError as exc:
        raise InvalidInput(f"backup file {path} cannot be read: {exc.strerror}") from None
    if len(data) > MAX_BACKUP_BYTES:
        raise InvalidInput(f"backup file {path} is larger than any rotator backup")
    return data


def _restore_key(settings: Settings, header: dict[str, Any]) -> tuple[MasterKey, bool]:
    """(master key, from a key file) to open the backup: ``ROTATOR_HOME/master.key`` when it
    exists, else ROTATOR_PASSPHRASE with the backup's scrypt parameters."""
    if settings.key_file.exists():
        return crypto.read_key_file(settings.key_file), True
    if settings.passphrase is not None and header.get("kdf"):
        params = KdfParams.from_json(header["kdf"])
        return crypto.derive_master_key(settings.passphrase.reveal_text(), params), False
    raise MasterKeyError(
        f"no master key: {settings.key_file} is missing (rebuild it with `rotator keys import`"
        + (", or set ROTATOR_PASSPHRASE)" if header.get("kdf") else ")")
    )


def verify_backup(
    settings: Settings, path: Path
) -> tuple[dict[str, Any], snap_store.Snapshot, MasterKey, bool, bytes]:
    """Read and check the backup at ``path`` completely (format, signature, decryption, each
    table's digest, one master key: the one that opened it) with the master key at hand;
    writes nothing. Returns (the header with the body's ``revision``, ``source_backend`` and
    ``audit_head_seq``, snapshot, key, whether from a key file, file bytes). InvalidInput (one
    line) for anything wrong with the file; MasterKeyError without a key."""
    what = f"backup file {path}"
    data = _read_file(path)
    header = sealed.read_header(data, what)
    master, from_file = _restore_key(settings, header)
    header, body = sealed.open_(master, data, what)
    try:
        doc = json.loads(zlib.decompress(body))
        tables = {
            name: (
                snap_store.TableDump(list(t["columns"]), list(t["kinds"]), list(t["rows"])),
                t["sha256"],
            )
            for name, t in doc["tables"].items()
        }
        info = {k: doc[k] for k in ("revision", "source_backend", "audit_head_seq")}
        changed = [name for name, (t, digest) in tables.items() if digest != t.digest()]
    except (zlib.error, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise InvalidInput(f"{what} has a body that is not a snapshot") from None
    if changed:
        raise InvalidInput(f"{what}: table {changed[0]!r} does not match its digest")
    revision = info["revision"]
    if not isinstance(revision, str):
        raise InvalidInput(f"{what} names no schema revision")
    header = {**header, **info}
    snap = snap_store.Snapshot(revision, {name: t for name, (t, _) in tables.items()})
    try:
        held = snapshot_master(snap, what)
    except (ValueError, TypeError, KeyError):
        raise InvalidInput(f"{what} has a body that is not a snapshot") from None
    if held["id"] != master.id:
        # Its data keys are wrapped under another key than the one that opened it: restored,
        # no value would open.
        raise InvalidInput(
            f"{what} holds a store whose master key is {str(held['id'])[:16]!r}, not the key "
            f"{master.id!r} it was sealed with"
        )
    return header, snap, master, from_file, data


def restore(
    settings: Settings, path: Path, clock: Callable[[], datetime] = utcnow
) -> RestoreResult:
    """Restore the backup at ``path`` into the store of ``settings``, which must be empty (no
    rotator schema: not initialized; a store made by ``rotator init`` is refused too, it holds a
    tenant and a master key of its own). The backup is verified completely before anything is
    written (:func:`verify_backup`). Then, in one transaction: the schema at the backup's
    revision, every row, the migrations up to the newest, every lease ended (rotations in flight
    are resumed or rolled back by the next ``rotator recover``/rotate/worker without waiting),
    a store restored with a key file instead of a passphrase switched to key-file mode, and a
    ``store.restore`` audit entry. InvalidInput (nothing written) for a bad file or a store
    that is not empty."""
    header, snap, master, from_file, data = verify_backup(settings, path)
    db = Database(settings.db_url)
    try:
        if not snap_store.is_empty(db):
            raise InvalidInput(
                f"restore needs an empty store, and {db.safe_url} holds a rotator store: "
                "point ROTATOR_DB at a new database (or remove this one)"
            )
        now = clock()
        expired = 0
        # Claims push a credential's next rotation to their lease's end: due again now.
        claimed = {r["credential_id"]: r["lease_until"] for r in snap.rows("credential_claims")}

        def fix(table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            nonlocal expired
            if table == "credential_claims":
                expired += len(rows)
                return []
            if table == "credentials" and claimed:
                for r in rows:
                    if r["id"] in claimed and r.get("next_rotation_at") == claimed[r["id"]]:
                        r["next_rotation_at"] = now
            if table == "meta" and from_file:
                for r in rows:
                    if r["key"] == "master" and isinstance(r["value"], dict):
                        r["value"] = {**r["value"], "kdf": None}
            for col in snap_store.LEASE_COLUMNS:
                for r in rows:
                    until = r.get(col)
                    if isinstance(until, datetime) and until > now:
                        r[col] = now
                        expired += 1
            return rows

        def finish(conn: Connection) -> None:
            keys = integrity.load_audit_keys(conn, KeyRing({master.id: master}, master.id))
            verified = audit.verify_log(conn, keys).ok
            audit.append(
                conn,
                now=now,
                tenant=DEFAULT_TENANT,
                actor=LOCAL_PRINCIPAL.name,
                action="store.restore",
                details={
                    "backup_created_at": header.get("created_at"),
                    "backup_sha256": hashlib.sha256(data).hexdigest(),
                    "revision": snap.revision,
                    "audit_head_seq": header.get("audit_head_seq"),
                    "chain_verified": verified,
                    "leases_expired": expired,
                    "master_key_id": master.id,
                },
                keys=keys,
            )

        rows = snap_store.load(db, snap, fix=fix, finish=finish)
    finally:
        db.dispose()
    return RestoreResult(
        tables=len(snap.tables),
        rows=rows,
        revision=snap.revision,
        backup_created_at=str(header.get("created_at")),
        audit_head_seq=int(header.get("audit_head_seq") or 0),
        leases_expired=expired,
    )


# -- escrow ------------------------------------------------------------------------------


def parse_split(text: str) -> tuple[int, int]:
    """``"3-of-5"`` -> (3, 5); InvalidInput unless 2 <= threshold <= shares <= 16."""
    parts = text.strip().lower().split("-of-")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        raise InvalidInput("--split must be THRESHOLD-of-SHARES, e.g. 3-of-5")
    k, n = int(parts[0]), int(parts[1])
    if not 2 <= k <= n <= 16:
        raise InvalidInput("--split needs 2 <= THRESHOLD <= SHARES <= 16 (e.g. 3-of-5)")
    return k, n


async def export_shares(
    svc: RotatorService, split: str, principal: Principal = LOCAL_PRINCIPAL
) -> tuple[str, list[str]]:
    """(master key id, SLIP-0039 shares) of the store's master key: any THRESHOLD of them
    rebuild it (:func:`import_shares`). In passphrase mode the key split is the one scrypt
    derives from the passphrase (its import writes a key file). The shares are secrets: they are
    returned, never logged; the audit entry (``keys.export``) records only the split and the key
    id. Needs STORE_ADMIN (the store's owner)."""
    import shamir_mnemonic

    threshold, count = parse_split(split)
    await svc.authorize(principal, Action.STORE_ADMIN)
    meta = await svc._read(lambda c: _current_master(c, "an export"))
    key = svc.kernel.ring.get(meta["id"])
    groups = shamir_mnemonic.generate_mnemonics(1, [(threshold, count)], key.material)
    details = {"threshold": threshold, "shares": count, "master_key_id": key.id}
    await svc._write(lambda c: svc.kernel.audit(c, principal, "keys.export", details=details))
    return key.id, groups[0]


def import_shares(settings: Settings, shares: list[str]) -> tuple[str, bool]:
    """Rebuild the master key from SLIP-0039 ``shares`` and write it to
    ``ROTATOR_HOME/master.key`` (0600). Returns (key id, whether the file was written; False:
    the same key was there already). More shares than the threshold are fine (THRESHOLD
    distinct ones are used). InvalidInput (one line, quoting no share) for a share that does
    not decode (a mistyped word fails its checksum: it is named, even when enough good shares
    remain, so that a damaged escrow copy is noticed; leave it out and import again), too few
    distinct shares, two different shares claiming the same member, shares of different keys,
    an existing different key file, or, when ROTATOR_DB holds a store, a key that is not that
    store's (or a passphrase store: use its passphrase)."""
    import shamir_mnemonic
    from shamir_mnemonic.share import Share

    words = [" ".join(s.split()) for s in shares if s.strip()]
    if not words:
        raise InvalidInput("no shares given: name share files, or pipe the shares in")
    decoded = []
    for i, w in enumerate(words, 1):
        try:
            decoded.append(Share.from_mnemonic(w))
        except shamir_mnemonic.MnemonicError:
            raise InvalidInput(
                f"share {i} is not a valid share (a mistyped or missing word fails its checksum)"
            ) from None
    if len({(s.identifier, s.member_threshold, s.group_index) for s in decoded}) != 1:
        raise InvalidInput("the shares belong to different splits")
    # SLIP-0039 combines exactly THRESHOLD shares of a group: keep one per member index (the
    # same share given twice counts once) and the first THRESHOLD of those.
    by_index: dict[int, tuple[int, str]] = {}
    for i, (share, w) in enumerate(zip(decoded, words, strict=True), 1):
        first = by_index.setdefault(share.index, (i, w))
        if first[1] != w:
            raise InvalidInput(
                f"shares {first[0]} and {i} are the same member of the split but differ: "
                "one of them is damaged"
            )
    need = decoded[0].member_threshold
    if len(by_index) < need:
        raise InvalidInput(f"{len(by_index)} distinct share(s) given; this key needs {need}")
    chosen = [w for _, (_, w) in sorted(by_index.items())[:need]]
    try:
        material = shamir_mnemonic.combine_mnemonics(chosen)
    except shamir_mnemonic.MnemonicError:
        raise InvalidInput("the shares do not rebuild a key: they do not belong together") from None
    try:
        key = MasterKey(material)
    except MasterKeyError:
        raise InvalidInput("the shares rebuild a secret that is not a rotator master key") from None
    _check_store_key(settings, key)
    if settings.key_file.exists() or settings.key_file.is_symlink():
        existing = crypto.read_key_file(settings.key_file)
        if existing.id != key.id:
            raise InvalidInput(
                f"{settings.key_file} holds another master key ({existing.id}): "
                "refusing to overwrite it"
            )
        return key.id, False
    crypto.write_key_file(settings.key_file, key)
    return key.id, True


def _check_store_key(settings: Settings, key: MasterKey) -> None:
    """When ROTATOR_DB holds a store: the rebuilt key must be its master key."""
    db = Database(settings.db_url)
    try:
        if snap_store.is_empty(db):
            return
        with db.read() as conn:
            master = store_keys.get_meta(conn, "master")
    finally:
        db.dispose()
    if master is None:
        return
    if master.get("kdf") is not None:
        raise InvalidInput(
            "this store uses a passphrase (ROTATOR_PASSPHRASE): a key file would not be used; "
            "import the shares on a new home and `rotator restore` a backup there"
        )
    if master["id"] != key.id:
        raise InvalidInput(
            f"the rebuilt key {key.id} is not this store's master key ({master['id']})"
        )


__all__ = [
    "BackupResult",
    "RestoreResult",
    "backup",
    "export_shares",
    "import_shares",
    "parse_split",
    "restore",
    "verify_backup",
]
