"""The kernel: one open store with its keys. Tenants, data keys, seal/open, stage-map integrity
and the audit append, used alike by the engine and the service (which sits on top of both).

Everything here is synchronous and runs in the caller's thread; callers on an event loop run
it in a worker thread. Methods that take a ``conn`` work inside the caller's transaction, so an
operation and its audit entry commit or roll back together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from rotator import audit, crypto
from rotator.audit.chain import AuditKeys
from rotator.config import Settings
from rotator.crypto.integrity import MacKey, audit_key
from rotator.domain import names
from rotator.domain.model import Stage, Tenant
from rotator.domain.principal import LOCAL_PRINCIPAL, Principal
from rotator.domain.secret import Secret
from rotator.errors import IntegrityError, InvalidInput, NotFound
from rotator.kernel import integrity, schedule
from rotator.kernel.keyring import KeyRing, create_master, load_keyring
from rotator.store import Database
from rotator.store import credentials as store_creds
from rotator.store import keys as store_keys
from rotator.store import policies as store_pol

READABLE_STAGES = (Stage.CURRENT, Stage.PREVIOUS, Stage.PENDING)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Kernel:
    """One store and the keys to it; construct with :meth:`open` or :meth:`init`.

    Caches (data keys, tenants, stage-map keys, audit keys) live as long as the kernel; they
    are safe to share between threads because every entry is immutable once computed."""

    db: Database
    settings: Settings
    ring: KeyRing
    clock: Callable[[], datetime] = utcnow
    _data_keys: dict[int, crypto.DataKey] = field(default_factory=dict)
    _tenants: dict[str, Tenant] = field(default_factory=dict)
    _active_keys: dict[int, int] = field(default_factory=dict)
    _stage_keys: dict[int, tuple[int, MacKey]] = field(default_factory=dict)
    # The last stage map of each credential that verified (or that this process stamped):
    # see integrity._problem.
    _verified_maps: dict[int, store_creds.StageMap] = field(default_factory=dict)
    _defaults: schedule.DefaultsCache = field(default_factory=schedule.DefaultsCache)
    _audit_keys: AuditKeys | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    def init(
        cls, settings: Settings, principal: Principal = LOCAL_PRINCIPAL
    ) -> tuple[Kernel, bool]:
        """Create the schema, the master key and the principal's tenant. Idempotent.

        Returns the kernel and whether anything was created (False: it existed already).
        """
        db = Database(settings.db_url)
        db.migrate()
        created = False
        with db.write() as conn:
            if store_keys.get_meta(conn, "master") is None:
                key = create_master(conn, settings)
                created = True
                # A policy generation from the start, so reschedules may cache the defaults
                # (a store without one reads them every time: see kernel.schedule).
                store_pol.bump_generation(conn)
                audit.append(
                    conn,
                    now=utcnow(),
                    tenant=principal.tenant,
                    actor=principal.name,
                    action="store.init",
                    details={
                        "master_key_id": key.id,
                        "mode": "passphrase" if settings.passphrase else "key-file",
                    },
                    keys=AuditKeys({}, audit_key(key)),
                )
        kernel = cls(db=db, settings=settings, ring=load_keyring(db, settings))
        integrity.upgrade(kernel, principal)
        kernel.load_audit_keys()  # now, not inside a later write transaction
        kernel.tenant(principal.tenant)
        return kernel, created

    @classmethod
    def open(cls, settings: Settings, clock: Callable[[], datetime] = utcnow) -> Kernel:
        """Open an initialized store and load its master key.

        Raises NotInitialized, StoreUnavailable, MasterKeyError or DecryptionError.
        """
        db = Database(settings.db_url)
        db.check_initialized()
        kernel = cls(db=db, settings=settings, ring=load_keyring(db, settings), clock=clock)
        integrity.upgrade(kernel, LOCAL_PRINCIPAL)
        kernel.load_audit_keys()  # now, not inside a later write transaction
        return kernel

    def close(self) -> None:
        self.db.dispose()

    def reload_keys(self) -> None:
        """Reload the master-key ring and the audit keys (after a master-key rotation)."""
        self.ring = load_keyring(self.db, self.settings)
        self.load_audit_keys()

    def protected_paths(self) -> tuple[Path, ...]:
        """rotator's own files and folders, which no sink may write: ``ROTATOR_HOME`` and the
        SQLite store with its journal files (wherever ROTATOR_DB puts it)."""
        paths = [self.settings.home]
        db = self.db.sqlite_path
        if db is not None:
            paths += [db, *(db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal"))]
        return tuple(paths)

    # -- tenants and data keys ------------------------------------------------------------

    def find_tenant(self, name: str) -> Tenant:
        """The tenant named ``name``; NotFound if it does not exist (nothing is created)."""
        if name in self._tenants:
            return self._tenants[name]
        with self.db.read() as conn:
            t = store_keys.get_tenant(conn, name)
        if t is None:
            raise NotFound(f"no tenant {name!r}")
        self._tenants[name] = t
        return t

    def tenant(self, name: str) -> Tenant:
        """The tenant named ``name``, created with its data key if it does not exist. Only
        ``init`` (the default tenant) and ``tenant add`` may create tenants: everything
        else uses :meth:`find_tenant`."""
        try:
            return self.find_tenant(name)
        except NotFound:
            pass
        with self.db.write() as conn:
            t = self.create_tenant(conn, name)
        self._tenants[name] = t
        return t

    def create_tenant(self, conn: Connection, name: str) -> Tenant:
        """In ``conn``'s transaction: the tenant named ``name`` with a data key, each made
        if missing (so a tenant left without a key by an old crash gets one). Raises
        InvalidInput for a bad name."""
        names.check_tenant_name(name)
        now = self.clock()
        t = store_keys.get_tenant(conn, name) or store_keys.insert_tenant(conn, name, now)
        if store_keys.latest_data_key(conn, t.id) is None:
            dk_id = store_keys.reserve_data_key(conn, t.id, self.ring.current_id, now)
            wrapped = crypto.wrap(self.ring.current, crypto.new_data_key_material(), t.id, dk_id)
            store_keys.set_wrapped(conn, dk_id, wrapped, self.ring.current_id)
        return t

    def _data_key(self, conn: Connection, data_key_id: int) -> crypto.DataKey:
        dk = self._data_keys.get(data_key_id)
        if dk is None:
            tenant_id, wrapped, by = store_keys.get_data_key(conn, data_key_id)
            dk = crypto.unwrap(self.ring.get(by), wrapped, tenant_id, data_key_id)
            self._data_keys[data_key_id] = dk
        return dk

    def _active_data_key_id(
        self, conn: Connection, tenant_id: int, tenant_name: str | None = None
    ) -> int:
        # A tenant's active data key changes only when a new one is made (not yet a feature),
        # so its id is cached for the life of the process.
        dk_id = self._active_keys.get(tenant_id)
        if dk_id is None:
            found = store_keys.latest_data_key(conn, tenant_id)
            if found is None:
                raise NotFound(f"tenant {tenant_name or tenant_id!r} has no data key")
            dk_id = self._active_keys[tenant_id] = found[0]
        return dk_id

    # -- values -----------------------------------------------------------------------------

    def open_version(self, conn: Connection, sv: store_creds.SealedVersion) -> Secret:
        """Decrypt a stored version. Raises DecryptionError if it does not open, IntegrityError
        if it is sealed under another tenant's data key than its credential's."""
        dk = self._data_key(conn, sv.data_key_id)
        if dk.tenant_id != sv.tenant_id:
            raise IntegrityError(
                f"integrity check failed: credential {sv.name!r}: "
                "its value is sealed under another tenant's key"
            )
        return crypto.open_(dk, sv.ciphertext, sv.credential_id, sv.number)

    def seal_version(
        self,
        conn: Connection,
        tenant: Tenant,
        credential_id: int,
        number: int,
        value: Secret,
        stage: Stage,
        now: datetime,
    ) -> None:
        """Encrypt ``value`` and store it as version ``number`` in ``stage``."""
        dk = self._data_key(conn, self._active_data_key_id(conn, tenant.id, tenant.name))
        blob = crypto.seal(dk, value, credential_id, number)
        store_creds.insert_version(
            conn,
            credential_id=credential_id,
            number=number,
            stage=stage,
            ciphertext=blob,
            data_key_id=dk.id,
            now=now,
        )

    def read_value(
        self, conn: Connection, principal: Principal, name: str, stage: Stage = Stage.CURRENT
    ) -> Secret:
        """The value of ``name``'s newest version in ``stage`` in the principal's tenant,
        counted as one use and audited (``value.read``) in ``conn``'s transaction, so a read
        returned to a caller is always recorded. Errors as :meth:`find_value`."""
        value, credential_id, number = self.find_value(conn, principal, name, stage)
        self.record_read(conn, principal, name, credential_id, number, stage)
        return value

    def find_value(
        self, conn: Connection, principal: Principal, name: str, stage: Stage = Stage.CURRENT
    ) -> tuple[Secret, int, int]:
        """(value, credential id, version number) of ``name``'s newest version in ``stage``,
        through the stage-map check; writes nothing (see :meth:`record_read`).

        Raises NotFound (no tenant, credential or version in that stage), IntegrityError (the
        stage map does not verify), DecryptionError (the ciphertext does not open)."""
        if stage not in READABLE_STAGES:
            raise InvalidInput(f"--stage must be CURRENT, PREVIOUS or PENDING, not {stage}")
        try:
            tenant = self.find_tenant(principal.tenant)
        except NotFound:
            raise NotFound(f"no credential {name!r}") from None
        found = store_creds.value_read(conn, tenant.id, name, stage)
        if found is None:
            raise NotFound(f"no credential {name!r}")
        stage_map, sv = found
        integrity.check_map(self, conn, stage_map)
        if sv is None:
            raise NotFound(f"credential {name!r} has no {stage.value} version")
        return self.open_version(conn, sv), stage_map.credential_id, sv.number

    def record_read(
        self,
        conn: Connection,
        principal: Principal,
        name: str,
        credential_id: int,
        number: int,
        stage: Stage,
    ) -> None:
        """Count one use of the credential and audit the read, in ``conn``'s transaction.
        Reaching the credential's max uses makes it due now (see kernel.schedule)."""
        self.count_uses(conn, credential_id, 1)
        details = {"version": number, "stage": stage.value}
        self.audit(conn, principal, "value.read", name, details=details)

    # -- schedule (see kernel/schedule.py) -------------------------------------------------

    def reschedule(
        self,
        conn: Connection,
        credential_ids: Sequence[int],
        *,
        own: Mapping[int, Mapping[str, Any]] | None = None,
        hints: Mapping[int, datetime | None] | None = None,
        strict: bool = True,
        rotated: bool = False,
        rotated_at: datetime | None = None,
    ) -> dict[int, tuple[datetime | None, str]]:
        """Effective policy, next rotation time and its rule of each credential, recomputed
        now and stored in ``conn``'s transaction; see :func:`rotator.kernel.schedule.reschedule`.
        Call after anything that changes a credential's policy, tags or last rotation
        (``rotated``: from a rotation's finish; ``rotated_at``: one at that time, whose
        ``last_rotated_at`` and use count the same write records)."""
        return schedule.reschedule(
            conn,
            credential_ids,
            now=self.clock(),
            own=own,
            hints=hints,
            strict=strict,
            rotated=rotated,
            rotated_at=rotated_at,
            cache=self._defaults,
        )

    def count_uses(self, conn: Connection, credential_id: int, n: int) -> int:
        """Add ``n`` uses; reaching the max uses makes the credential due now. Returns the
        new count."""
        return schedule.count_uses(conn, credential_id, n, self.clock())

    # -- integrity (see kernel/integrity.py) ----------------------------------------------

    def check_stage_map(self, conn: Connection, credential_id: int) -> None:
        """Raise IntegrityError unless the credential's stored stage map (tenant, id, name,
        every version's stage, connector, settings, sinks) verifies. Call before using a
        value and before a stage move."""
        integrity.check(self, conn, credential_id)

    def stage_map_errors(
        self, conn: Connection, credential_ids: list[int]
    ) -> dict[int, IntegrityError]:
        """:meth:`check_stage_map` for many credentials at once: the failing ones, by id."""
        return integrity.errors(self, conn, credential_ids)

    def restamp(self, conn: Connection, credential_id: int) -> None:
        """Recompute the credential's stage MAC in ``conn``'s transaction; call after every
        stage move (insert of a version, promote, FAILED, RETIRED) and settings change."""
        integrity.restamp(self, conn, credential_id)

    # -- audit ------------------------------------------------------------------------------

    @property
    def audit_keys(self) -> AuditKeys:
        """The audit keys this process holds (loaded once; reloaded after a master rotation)."""
        if self._audit_keys is None:
            self.load_audit_keys()
        assert self._audit_keys is not None
        return self._audit_keys

    def load_audit_keys(self) -> None:
        """(Re)load the audit keys from the store with the master keys this process holds."""
        with self.db.read() as conn:
            self._audit_keys = integrity.load_audit_keys(conn, self.ring)

    def audit(
        self,
        conn: Connection,
        principal: Principal,
        action: str,
        credential: str | None = None,
        rotation_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append an audit entry in ``conn``'s transaction (never a value in ``details``)."""
        audit.append(
            conn,
            now=self.clock(),
            tenant=principal.tenant,
            actor=principal.name,
            action=action,
            credential=credential,
            rotation_id=rotation_id,
            details=details or {},
            keys=self.audit_keys,
        )
