"""The master-key ring: which master keys this process holds, and master-key rotation.

State lives in two meta rows: ``master`` (id and, in passphrase mode, scrypt parameters of the
current key) and ``master_next`` (the key a rotation is moving to, while one is under way).
Key files: ``master.key`` and, during a rotation, ``master.key.next``. Every step is ordered so
that an interrupted rotation can be run again and finishes; normal commands keep working in
between because the ring then holds both keys.

One rotation at a time: :func:`rotate_master` holds the store's ``master-rotation`` lock for its
whole run (a second run fails at once), ``master_next`` is only ever inserted (never
overwritten), and the final swap is a compare-and-swap. So the stored scrypt parameters of a
key that wraps data keys are never lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from rotator import crypto
from rotator.config import Settings
from rotator.crypto import KdfParams, MasterKey
from rotator.crypto.keys import DEFAULT_SCRYPT_N, check_home
from rotator.errors import DecryptionError, MasterKeyError
from rotator.store import Database
from rotator.store import keys as store_keys


class KeyRing:
    """Master keys by id. ``current`` wraps new data keys; any held key unwraps."""

    def __init__(self, keys: dict[str, MasterKey], current_id: str) -> None:
        self._keys = keys
        self.current_id = current_id

    @property
    def current(self) -> MasterKey:
        return self._keys[self.current_id]

    def get(self, key_id: str) -> MasterKey:
        """The master key with ``key_id``; DecryptionError if this process does not hold it."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise DecryptionError(
                "this data key is wrapped by a master key this process does not hold"
            ) from None

    def held(self) -> list[MasterKey]:
        """Every master key this ring holds."""
        return list(self._keys.values())

    def with_key(self, key: MasterKey) -> KeyRing:
        """A ring that also holds ``key`` and makes it current."""
        return KeyRing({**self._keys, key.id: key}, key.id)

    def __repr__(self) -> str:
        return f"KeyRing(ids={sorted(self._keys)}, current={self.current_id!r})"


MASTER_ROTATION_LOCK = "master-rotation"
MASTER_ROTATION_BUSY = "another master-key rotation is under way"

# Called inside the transaction that makes the new master key current, with (conn, old, new).
Finalize = Callable[[Connection, MasterKey, MasterKey], None]


def create_master(conn: Connection, settings: Settings) -> MasterKey:
    """Create (or adopt an existing key file as) the master key of a new store."""
    check_home(settings.home)
    if settings.passphrase is not None:
        params = KdfParams.fresh(settings.scrypt_n or DEFAULT_SCRYPT_N)
        key = crypto.derive_master_key(settings.passphrase.reveal_text(), params)
        store_keys.set_meta(conn, "master", {"id": key.id, "kdf": params.to_json()})
        return key
    if settings.key_file.exists():
        key = crypto.read_key_file(settings.key_file)
    else:
        key = MasterKey.generate()
        crypto.write_key_file(settings.key_file, key)
    store_keys.set_meta(conn, "master", {"id": key.id, "kdf": None})
    return key


def load_keyring(db: Database, settings: Settings) -> KeyRing:
    """Load the master key(s) this store needs. Finishes a rotation's last file step if due.

    Raises DecryptionError when the key file or passphrase is not the one this store was made
    with, MasterKeyError when it is missing or unusable.
    """
    with db.read() as conn:
        master = store_keys.get_meta(conn, "master")
        nxt = store_keys.get_meta(conn, "master_next")
    if master is None:
        from rotator.errors import NotInitialized

        raise NotInitialized(f"no master key recorded in {db.safe_url}: run `rotator init`")
    check_home(settings.home)
    wanted = {master["id"]} | ({nxt["id"]} if nxt else set())
    held: dict[str, MasterKey] = {}
    passphrase_mode = master.get("kdf") is not None
    if passphrase_mode:
        # Either passphrase may open either entry: after a rotation the process may still be
        # given the old passphrase as ROTATOR_PASSPHRASE and the new one as the new.
        given = [p for p in (settings.passphrase, settings.new_passphrase) if p is not None]
        if not given:
            raise MasterKeyError("this store uses a passphrase: set ROTATOR_PASSPHRASE")
        for entry in (master, nxt):
            for pw in given if entry is not None else ():
                k = crypto.derive_master_key(pw.reveal_text(), KdfParams.from_json(entry["kdf"]))
                if k.id == entry["id"]:
                    held[k.id] = k
                    break
    else:
        for path in (settings.key_file, settings.next_key_file):
            if path == settings.key_file or path.exists():
                k = crypto.read_key_file(path)
                if k.id in wanted:
                    held[k.id] = k
        # A rotation that committed but was stopped before moving the new key file into place.
        if settings.next_key_file.exists() and master["id"] in held and nxt is None:
            _move_next_key_file(settings, master["id"])
    if not held:
        what = "ROTATOR_PASSPHRASE" if passphrase_mode else f"master key file {settings.key_file}"
        raise DecryptionError(f"{what} does not open this store (wrong passphrase or key file)")
    current = nxt["id"] if nxt and nxt["id"] in held else master["id"]
    if current not in held:
        raise DecryptionError(
            "the current master key is not available: wrong passphrase or key file"
        )
    return KeyRing(held, current)


def rotate_master(
    db: Database,
    settings: Settings,
    ring: KeyRing,
    progress: Callable[[int, int], None] | None = None,
    finalize: Finalize | None = None,
    started: Callable[[str], None] | None = None,
) -> tuple[str, str, int]:
    """Re-wrap every data key under a new master key; values are not re-encrypted.

    One run at a time per store: holds the store's master-rotation lock (SQLite: a file lock
    beside the database; PostgreSQL: an advisory lock) for the whole run and raises
    ConcurrentModification("another master-key rotation is under way") at once if another
    process holds it. Safe to interrupt (even by SIGKILL) and run again: the new key is made
    durable (key file or stored scrypt parameters) before the first re-wrap, each data key is
    re-wrapped in its own transaction, a rerun picks up the same new key, and the last step is
    a compare-and-swap (``master`` still the old id and ``master_next`` the new one, else
    ConcurrentModification) that also re-wraps data keys made meanwhile under the old key.
    ``started(old_id)`` runs once the lock is held, before anything changes (a run refused
    by the lock never calls it); ``finalize(conn, old_key, new_key)`` runs inside that last
    transaction (its error undoes the swap). ``ring`` is reloaded under the lock (another run
    may have finished meanwhile). Returns (old id, new id, data keys re-wrapped). In
    passphrase mode ROTATOR_NEW_PASSPHRASE gives the new passphrase.
    """
    del ring  # what it holds may be stale by the time the lock is ours
    with db.exclusive_lock(MASTER_ROTATION_LOCK, MASTER_ROTATION_BUSY):
        ring = load_keyring(db, settings)
        with db.read() as conn:
            master = store_keys.get_meta(conn, "master")
            nxt = store_keys.get_meta(conn, "master_next")
        old_id = master["id"]
        if started is not None:
            started(old_id)
        new = _prepare_next(db, settings, master, nxt)
        ring = ring.with_key(new)
        with db.read() as conn:
            todo = store_keys.data_keys_not_wrapped_by(conn, new.id)
        for i, (dk_id, tenant_id, wrapped, by) in enumerate(todo, 1):
            rewrapped = crypto.rewrap(ring.get(by), new, wrapped, tenant_id, dk_id)
            with db.write() as conn:
                store_keys.set_wrapped(conn, dk_id, rewrapped, new.id, expect_master_key_id=by)
            if progress is not None:
                progress(i, len(todo))
        with db.write() as conn:
            store_keys.lock_data_keys(conn)
            # Data keys a process made meanwhile with a ring loaded before this rotation began.
            late = store_keys.data_keys_not_wrapped_by(conn, new.id)
            for dk_id, tenant_id, wrapped, by in late:
                rewrapped = crypto.rewrap(ring.get(by), new, wrapped, tenant_id, dk_id)
                store_keys.set_wrapped(conn, dk_id, rewrapped, new.id, expect_master_key_id=by)
            store_keys.finish_master_rotation(conn, old_id, new.id)
            if finalize is not None:
                finalize(conn, ring.get(old_id), new)
        if master.get("kdf") is None:
            _move_next_key_file(settings, new.id)
    return old_id, new.id, len(todo) + len(late)


def _move_next_key_file(settings: Settings, new_id: str) -> None:
    """Move ``master.key.next`` over ``master.key`` once the store names it the master key.
    Idempotent: another process may have moved it already."""
    try:
        if crypto.read_key_file(settings.next_key_file).id == new_id:
            crypto.replace_key_file(settings.next_key_file, settings.key_file)
    except MasterKeyError:
        if settings.next_key_file.exists():
            raise
        # Moved by another process between our look and our move: the key file is the new key.


def _new_scrypt_n(settings: Settings, master: dict[str, Any]) -> int:
    # Rotation never lowers the cost: a legacy 2^15 store moves up to the default.
    if settings.scrypt_n is not None:
        return settings.scrypt_n
    return max(DEFAULT_SCRYPT_N, KdfParams.from_json(master["kdf"]).n)


def _prepare_next(
    db: Database, settings: Settings, master: dict[str, Any], nxt: dict[str, Any] | None
) -> MasterKey:
    """The key this rotation moves to: the interrupted rotation's (``nxt``) if there is one,
    else a new one, recorded as ``master_next`` before any data key is re-wrapped."""
    if master.get("kdf") is not None:
        if settings.new_passphrase is None:
            raise MasterKeyError("set ROTATOR_NEW_PASSPHRASE to the new passphrase")
        if nxt is not None:
            key = crypto.derive_master_key(
                settings.new_passphrase.reveal_text(), KdfParams.from_json(nxt["kdf"])
            )
            if key.id != nxt["id"]:
                raise DecryptionError(
                    "ROTATOR_NEW_PASSPHRASE is not the one the interrupted rotation started with"
                )
            return key
        params = KdfParams.fresh(_new_scrypt_n(settings, master))
        key = crypto.derive_master_key(settings.new_passphrase.reveal_text(), params)
        entry: dict[str, Any] = {"id": key.id, "kdf": params.to_json()}
    else:
        if nxt is not None:
            if not settings.next_key_file.exists():
                raise MasterKeyError(
                    f"the interrupted master-key rotation's new key file "
                    f"{settings.next_key_file} is missing"
                )
            key = crypto.read_key_file(settings.next_key_file)
            if key.id != nxt["id"]:
                raise MasterKeyError(
                    f"{settings.next_key_file} is not the key the interrupted master-key "
                    "rotation started with"
                )
            return key
        if settings.next_key_file.exists():
            # Left by a run stopped before it recorded the key: adopt it (it wraps nothing yet).
            key = crypto.read_key_file(settings.next_key_file)
        else:
            key = MasterKey.generate()
            crypto.write_key_file(settings.next_key_file, key)
        entry = {"id": key.id, "kdf": None}
    if key.id == master["id"]:
        raise MasterKeyError("the new master key is the same as the current one")
    with db.write() as conn:
        store_keys.begin_master_rotation(conn, master["id"], entry)
    return key
