"""The service layer: one coroutine per use case. Interfaces (CLI, REST, MCP) call only this.

Every use case validates its whole input before it writes anything, writes the operation and
its audit entry in one transaction, and returns domain objects (never a value, except
``get_value``). Store work runs on worker threads and writes go through the engine's
group-commit writer, so an event loop serving many callers is never blocked by the store;
every connector call (generate, verify, publish a first value, rotate) is made by the engine
(see ``rotator.engine.steps``). Rotation use cases are in ``service.rotation``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from sqlalchemy import Connection

from rotator import audit, crypto
from rotator.audit.chain import AuditEntry, VerifyResult
from rotator.config import Settings
from rotator.domain import names
from rotator.domain.group import Group
from rotator.domain.model import Credential, Stage, Tenant
from rotator.domain.policy import RotationPolicy
from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.domain.secret import Secret
from rotator.engine.options import EngineOptions
from rotator.engine.runtime import Runtime
from rotator.engine.values import Values
from rotator.errors import (
    AlreadyExists,
    AuditChainBroken,
    ConcurrentModification,
    ConnectorError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RotatorError,
    VerificationFailed,
)
from rotator.kernel import Kernel, integrity, utcnow
from rotator.kernel import schedule as kernel_schedule
from rotator.kernel.keyring import rotate_master
from rotator.service.inputs import PolicyInput, ValueInput
from rotator.sinks import describe_sink, parse_sink, sink_host_effect, sink_references
from rotator.store import Database
from rotator.store import credentials as store_creds
from rotator.store import groups as store_groups
from rotator.store import policies as store_pol
from rotator.store import rotations as store_rot
from rotator.store import webhooks as store_wh

if TYPE_CHECKING:
    # Imported where used: connectors.base builds pydantic models at import, the engine
    # imports every part of it; reading a value needs neither.
    from rotator.connectors import base as cbase
    from rotator.engine.engine import Engine

T = TypeVar("T")
log = logging.getLogger(__name__)
# Uses one report may add (a database integer holds far more; no application reports more).
MAX_REPORTED_USES = 1_000_000_000


class RotatorService:
    """The use cases over one store. Open with ``await RotatorService.open(settings)`` (or
    ``init``) inside the event loop that will use it, close with :meth:`aclose`; or use
    ``async with``. Synchronous callers use :class:`rotator.service.BlockingService`."""

    def __init__(self, kernel: Kernel, options: EngineOptions | None = None) -> None:
        self.kernel = kernel
        # The engine's shared state (threads, the group-commit writer) and its counted reads
        # exist from the start; the rest of the engine (rotations, connector calls) is built
        # at its first use (:attr:`engine`), so a use case that only reads a value
        # (``credential get``) neither imports nor builds it.
        self.runtime = Runtime(kernel, options or EngineOptions())
        self.values = Values(self.runtime)
        self._engine: Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open = False

    @property
    def engine(self) -> Engine:
        """The engine, over this service's runtime and reads; built at the first use. Built
        while the service is open, its lease heartbeat starts on the service's loop."""
        if self._engine is None:
            from rotator.engine.engine import Engine

            engine = Engine(self.kernel, runtime=self.runtime, values=self.values)
            self._engine = engine
            if self._open:
                assert self._loop is not None
                try:
                    on_loop = asyncio.get_running_loop() is self._loop
                except RuntimeError:
                    on_loop = False
                if on_loop:
                    engine.leases.start()
                else:
                    self._loop.call_soon_threadsafe(self._start_leases, engine)
        return self._engine

    def _start_leases(self, engine: Engine) -> None:
        # Queued from another thread: the service may have closed meanwhile; then the
        # heartbeat, which aclose would no longer stop, must not start.
        if self._open and self._engine is engine:
            engine.leases.start()

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        options: EngineOptions | None = None,
    ) -> RotatorService:
        """Open an initialized store and load its master key.

        Raises NotInitialized, StoreUnavailable, MasterKeyError or DecryptionError.
        """
        kernel = await asyncio.to_thread(Kernel.open, settings, clock)
        return await cls(kernel, options).start()

    @classmethod
    async def init(
        cls,
        settings: Settings,
        principal: Principal = LOCAL_PRINCIPAL,
        options: EngineOptions | None = None,
    ) -> tuple[RotatorService, bool]:
        """Create the schema, the master key and the principal's tenant. Idempotent.

        Returns the service and whether anything was created (False: it existed already).
        """
        kernel, created = await asyncio.to_thread(Kernel.init, settings, principal)
        return await cls(kernel, options).start(), created

    async def start(self) -> RotatorService:
        if not self._open:
            self._loop = asyncio.get_running_loop()
            if self._engine is not None:
                await self._engine.__aenter__()
            else:
                self.runtime.writer.start()  # as Engine.__aenter__; leases start with it
            self._open = True
        return self

    async def aclose(self) -> None:
        """Finish queued writes, close connector connections and the store. Idempotent."""
        if self._open:
            self._open = False
            if self._engine is not None:
                await self._engine.__aexit__(None, None, None)
            else:
                await self.runtime.aclose()  # as Engine.__aexit__, no leases to stop
            await asyncio.to_thread(self.kernel.close)

    async def __aenter__(self) -> RotatorService:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def db(self) -> Database:
        return self.kernel.db

    @property
    def settings(self) -> Settings:
        return self.kernel.settings

    def clock(self) -> datetime:
        return self.kernel.clock()

    async def ready(self) -> None:
        """Return when the store answers a query; StoreUnavailable (or another StoreError)
        when it does not. For readiness probes: needs no principal and reads nothing."""

        def ping(conn: Connection) -> None:
            conn.exec_driver_sql("SELECT 1")

        await self._read(ping)

    # -- helpers ----------------------------------------------------------------------------

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        return await self.runtime.read(fn)

    async def _write(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` in a write transaction (group-committed with the engine's writes)."""
        return await self.runtime.writer.run(fn)

    async def _thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.runtime.threads, fn)

    async def tenant(self, name: str) -> Tenant:
        """The tenant named ``name``. Never creates one (only ``init`` and
        ``access.add_tenant`` do): NotFound naming the command that adds it."""
        try:
            return await self._thread(partial(self.kernel.find_tenant, name))
        except NotFound:
            raise NotFound(f"no tenant {name!r}: add it with `rotator tenant add {name}`") from None

    async def _existing_tenant(self, principal: Principal) -> Tenant | None:
        """The principal's tenant for a read: None (read as empty) if it does not exist and
        the principal is not the owner; NotFound naming `rotator tenant add` for the owner
        (the one who can name any tenant). Never creates one."""
        try:
            return await self._thread(partial(self.kernel.find_tenant, principal.tenant))
        except NotFound:
            if not principal.owner:
                return None
        return await self.tenant(principal.tenant)

    async def authorize(
        self, principal: Principal, action: Action, name: str | None = None
    ) -> None:
        """Raise PermissionDenied unless ``principal`` may do ``action`` on credential
        ``name`` in its tenant (None: on the tenant as a whole); see
        :mod:`rotator.domain.principal`. Every use case calls this first, before it reads
        anything about ``name`` (so a denial says nothing about whether it exists). A denial
        is audited (``access.denied``) in its own transaction before it is raised."""
        if principal.may(action, name):
            return
        await self._deny(principal, action, name)

    async def authorize_some(self, principal: Principal, action: Action) -> None:
        """Raise PermissionDenied (audited like :meth:`authorize`) unless some grant of
        ``principal`` gives ``action`` at all. A listing calls this, then shows only the names
        ``principal.may(action, name)`` reaches."""
        if principal.may_some(action):
            return
        await self._deny(principal, action, None)

    async def authorize_group(self, principal: Principal, action: Action, group: Group) -> None:
        """:meth:`authorize` ``action`` on every member of ``group``. The denial names the
        group, not the member (its audit entry names the member)."""
        for m in group.members:
            if not principal.may(action, m.name):
                await self._deny(principal, action, m.name, f" on group {group.name!r}")

    async def deny_as_missing(
        self,
        principal: Principal,
        action: Action,
        name: str | None,
        missing: NotFound,
        **details: Any,
    ) -> NoReturn:
        """Audit the denial of ``action`` (``access.denied`` naming ``name`` and ``details``,
        read by the tenant's own auditors) and raise ``missing``: the text an unknown target
        gets, so a caller without the scope learns nothing about whether the target
        exists."""
        await self._audit_denied(principal, action, name, **details)
        raise missing

    async def authorize_tenant(
        self, principal: Principal, tenant: str, action: Action | None = None
    ) -> None:
        """Raise PermissionDenied unless ``principal`` may act in ``tenant``: do ``action``
        there tenant-wide, or (None) act there at all; only the store's owner acts in a
        tenant other than its own. A denial is audited like :meth:`authorize` (in the
        principal's own tenant, naming ``tenant`` and the token id)."""
        if action is None:
            if principal.owner or tenant == principal.tenant:
                return
        elif principal.may(action, None, tenant):
            return
        await self._deny(principal, action, None, f" in tenant {tenant!r}", tenant=tenant)

    async def _audit_denied(
        self, principal: Principal, action: Action | None, name: str | None, **details: Any
    ) -> None:
        # The one audited path of every denial: the entry names the token the caller
        # authenticated with, so a refusal can be traced to it (never the token itself).
        entry: dict[str, Any] = {
            "permission": None if action is None else action.value,
            "token": principal.token_id,
            **details,
        }
        await self._write(lambda conn: self._audit(conn, principal, "access.denied", name, **entry))

    async def _deny(
        self,
        principal: Principal,
        action: Action | None,
        name: str | None,
        target: str | None = None,
        *,
        tenant: str | None = None,
    ) -> None:
        await self._audit_denied(
            principal, action, name, **({} if tenant is None else {"tenant": tenant})
        )
        if target is None:
            target = f" on {name!r}" if name is not None else f" in tenant {principal.tenant!r}"
        what = "act" if action is None else action.value
        raise PermissionDenied(f"permission denied: {principal.name!r} may not {what}{target}")

    def _audit(
        self,
        conn: Connection,
        p: Principal,
        action: str,
        credential: str | None = None,
        /,
        **details: Any,
    ) -> None:
        self.kernel.audit(conn, p, action, credential, None, details)

    # -- credentials ----------------------------------------------------------------------

    async def add_credential(
        self,
        name: str,
        connector: str,
        *,
        settings: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        policy: PolicyInput = PolicyInput(),
        value: ValueInput = ValueInput(),
        verify: bool = False,
        sinks: Sequence[str] = (),
        principal: Principal = LOCAL_PRINCIPAL,
    ) -> Credential:
        """Register a credential, with a first CURRENT value if one is given or generated.

        With ``verify`` the connector first checks its target (role exists, admin secret
        works, host reachable) and VerificationFailed says what is wrong.
        Raises InvalidInput (name, settings, policy), UnknownConnector, AlreadyExists.
        Nothing is stored unless everything is valid. Needs CREDENTIAL_WRITE on ``name``;
        ``sinks`` (they decide where the value is written) need VALUE_READ on ``name``, and
        every credential its settings reference (an admin secret, a CA) needs VALUE_READ on
        that name (see :meth:`_authorize_references`). Settings or sinks that make rotator
        run a command or write a file on its own host (an exec hook, a file sink, a published
        JWK set or certificate) need STORE_ADMIN (the store's owner).
        """
        from rotator.connectors import base as cbase

        names.check_credential_name(name)
        await self.authorize(principal, Action.CREDENTIAL_WRITE, name)
        if sinks:
            await self.authorize(principal, Action.VALUE_READ, name)
        impl = self.engine.connector(connector)
        cfg = cbase.parse_config(impl, dict(settings or {}))
        await self._authorize_references(principal, impl, cfg)
        own = policy.partial()
        tags = dict(tags or {})
        sink_specs = [parse_sink(x, self.kernel.protected_paths()) for x in sinks]
        await self._check_sink_references(principal, sink_specs)
        await self._authorize_host_effects(principal, name, impl, cfg, sink_specs)
        if value.value is not None:
            cbase.check_value(impl, cfg, value.value)
        tenant = await self.tenant(principal.tenant)
        if await self._read(partial(store_creds.credential_id, tenant_id=tenant.id, name=name)):
            raise AlreadyExists(f"credential {name!r} exists already")
        # Merged with the defaults it inherits, the policy must be valid before any value is
        # made or published.
        await self._read(
            partial(
                kernel_schedule.effective,
                tenant_id=tenant.id,
                tenant=tenant.name,
                name=name,
                tags=tags,
                own=own,
            )
        )
        first = await self._new_value(impl, cfg, name, 1, value, principal)
        try:
            if verify:
                await self.engine.verify(
                    impl, cfg, name, first, principal, generated=value.generate
                )
        except ConnectorError as exc:
            raise VerificationFailed(f"{name}: verification failed: {exc}") from exc
        try:
            if first is not None:
                await self.engine.publish_first(impl, cfg, name, first, principal)
        except ConnectorError as exc:
            raise VerificationFailed(f"{name}: cannot publish the first value: {exc}") from exc
        now = self.clock()

        def write(conn: Connection) -> Credential:
            if store_creds.credential_id(conn, tenant.id, name) is not None:
                raise AlreadyExists(f"credential {name!r} exists already")
            cid = store_creds.insert_credential(
                conn,
                tenant_id=tenant.id,
                name=name,
                connector=connector,
                config=cfg.model_dump(mode="json", exclude_defaults=True),
                policy=RotationPolicy(),  # the effective one is written by reschedule below
                tags=tags,
                now=now,
                next_rotation_at=None,
                sinks=sink_specs,
                policy_own=own,
            )
            if first is not None:
                self.kernel.seal_version(conn, tenant, cid, 1, first, Stage.CURRENT, now)
                store_creds.update_credential(conn, cid, now=now, last_rotated_at=now)
            self.kernel.restamp(conn, cid)
            self.kernel.reschedule(conn, [cid], hints={cid: cbase.rotation_hint(impl, cfg, first)})
            cred = store_creds.get_credential(conn, tenant.id, name)
            assert cred is not None
            self._audit(
                conn,
                principal,
                "credential.add",
                name,
                connector=connector,
                tags=tags,
                policy=cred.policy.to_json(),
                policy_own=own,
                version=1 if first is not None else None,
                sinks=[describe_sink(x) for x in sink_specs],
            )
            return cred

        return await self._write(write)

    async def _authorize_references(
        self, principal: Principal, impl: cbase.Connector, cfg: cbase.ConnectorConfig
    ) -> None:
        from rotator.connectors import base as cbase

        # The engine sends a referenced credential's value (an admin secret, a CA key, an
        # auth token) to the target this config names, a host the caller picks: referencing
        # one decides where that secret goes, so it needs a grant that may read it
        # (VALUE_READ); an operator, who may not, cannot make rotator hand it to its host.
        for ref in sorted(cbase.references_of(impl, cfg)):
            await self.authorize(principal, Action.VALUE_READ, ref)

    async def _authorize_host_effects(
        self,
        principal: Principal,
        name: str,
        impl: cbase.Connector | None,
        cfg: cbase.ConnectorConfig | None,
        sink_specs: Sequence[Mapping[str, Any]],
    ) -> None:
        from rotator.connectors import base as cbase

        # A hook, or a file written by rotator (a sink, a published JWK set or certificate),
        # acts on rotator's own host with its OS privileges: a tenant grant holder could write
        # a file that runs code, or a hook that reads the master key. Only the store's owner
        # may set such settings; rotating, reading and tags stay with the tenant's grants.
        effects = [sink_host_effect(dict(spec)) for spec in sink_specs]
        if impl is not None and cfg is not None:
            effects.append(cbase.host_effect(impl, cfg))
        effect = next((e for e in effects if e is not None), None)
        if effect is None or principal.may(Action.STORE_ADMIN):
            return
        await self._deny(
            principal,
            Action.STORE_ADMIN,
            name,
            f" on {name!r}: its settings make rotator {effect} on its own host, which only the "
            "store's owner may set",
        )

    async def _check_sink_references(
        self, principal: Principal, specs: Sequence[Mapping[str, Any]]
    ) -> None:
        # A sink sends the credentials it names (an OpenBao token, an AppRole secret_id) to a
        # host the caller picks: as for a connector's references, naming one needs VALUE_READ
        # on it. It must exist: a pasted value instead of a name is refused without echoing it.
        refs = sorted({ref for spec in specs for ref in sink_references(dict(spec))})
        if not refs:
            return
        tenant = await self.tenant(principal.tenant)
        for ref in refs:
            if not principal.may(Action.VALUE_READ, ref):
                # Neither the message nor the audit entry names it: a pasted secret_id (a
                # UUID) passes as a name, and the denial would put it on screen and on record.
                await self._audit_denied(principal, Action.VALUE_READ, None, sink_reference=True)
                raise PermissionDenied(
                    f"permission denied: {principal.name!r} may not read a credential a --sink "
                    "names as its token or secret_id (give the NAME of one it may read)"
                )
            found = await self._read(
                partial(store_creds.credential_id, tenant_id=tenant.id, name=ref)
            )
            if not found:
                raise InvalidInput(
                    "--sink names a token or secret_id credential that does not exist: give "
                    "the NAME of the credential holding it, never the value"
                )

    async def _new_value(
        self,
        impl: cbase.Connector,
        cfg: cbase.ConnectorConfig,
        name: str,
        number: int,
        value: ValueInput,
        principal: Principal,
    ) -> Secret | None:
        if value.value is not None:
            return value.value
        if value.generate:
            try:
                return await self.engine.generate(impl, cfg, name, number, principal)
            except ConnectorError as exc:
                raise VerificationFailed(f"{name}: cannot generate a value: {exc}") from exc
        return None

    async def list_credentials(
        self,
        *,
        tags: Mapping[str, str] | None = None,
        due: bool = False,
        principal: Principal = LOCAL_PRINCIPAL,
    ) -> list[Credential]:
        """Credentials of the principal's tenant, by name; ``due``: next rotation is now or past.
        Only those the principal may CREDENTIAL_READ (PermissionDenied if its role may not
        read any)."""
        return await self.permitted_credentials(
            principal, Action.CREDENTIAL_READ, tags=tags, due=due
        )

    async def permitted_credentials(
        self,
        principal: Principal,
        action: Action,
        *,
        tags: Mapping[str, str] | None = None,
        due: bool = False,
    ) -> list[Credential]:
        """The credentials of the principal's tenant (matching ``tags``, ``due``) on which it
        may do ``action``; PermissionDenied (audited) if its role may not do it at all. The
        one check of a use case acting on a selection (list, rotate --tag/--all)."""
        await self.authorize_some(principal, action)
        creds = await self.find_credentials(principal, tags=tags, due=due)
        return [c for c in creds if principal.may(action, c.name)]

    async def find_credentials(
        self,
        principal: Principal,
        *,
        tags: Mapping[str, str] | None = None,
        due: bool = False,
    ) -> list[Credential]:
        """Credentials of the principal's tenant, unchecked: for use cases that authorized
        their call already. Creates no tenant."""
        tenant = await self._existing_tenant(principal)
        if tenant is None:
            return []
        due_before = self.clock() if due else None
        return await self._read(
            lambda conn: store_creds.list_credentials(
                conn, tenant.id, tags=tags, due_before=due_before, with_versions=True
            )
        )

    async def show(self, name: str, principal: Principal = LOCAL_PRINCIPAL) -> Credential:
        """Metadata and versions (stages, dates) of one credential; never a value. Needs
        CREDENTIAL_READ on ``name``; NotFound if the principal's tenant has no such one."""
        names.check_credential_name(name)
        await self.authorize(principal, Action.CREDENTIAL_READ, name)
        return await self.find(name, principal)

    async def find(self, name: str, principal: Principal) -> Credential:
        """Credential ``name`` of the principal's tenant, unchecked (for use cases that
        authorized their call already); NotFound if there is none."""
        tenant = await self._existing_tenant(principal)
        cred = (
            None
            if tenant is None
            else await self._read(
                partial(store_creds.get_credential, tenant_id=tenant.id, name=name)
            )
        )
        if cred is None:
            raise NotFound(f"no credential {name!r}")
        return cred

    async def get_value(
        self, name: str, stage: Stage = Stage.CURRENT, principal: Principal = LOCAL_PRINCIPAL
    ) -> Secret:
        """The value of the newest version in ``stage``. Counted as one use and audited
        before it is returned (a crash never loses a recorded read).

        Raises NotFound when the credential or a version in that stage does not exist,
        IntegrityError when its stage map does not verify, DecryptionError when the stored
        ciphertext does not open. Needs VALUE_READ on ``name``.
        """
        return (await self.get_numbered_value(name, stage, principal))[0]

    async def get_numbered_value(
        self, name: str, stage: Stage = Stage.CURRENT, principal: Principal = LOCAL_PRINCIPAL
    ) -> tuple[Secret, int]:
        """As :meth:`get_value`, with the number of the version read (the REST value route
        answers it)."""
        names.check_credential_name(name)
        await self.authorize(principal, Action.VALUE_READ, name)
        return await self.values.read_numbered(principal, name, stage)

    async def report_usage(
        self, name: str, count: int = 1, principal: Principal = LOCAL_PRINCIPAL
    ) -> Credential:
        """Record ``count`` uses of the credential that an application reports (besides the
        reads counted by :meth:`get_value`), audited as ``credential.used``. When the use
        count reaches the effective max uses, the credential becomes due now in the same
        transaction (a running worker picks it up). Raises InvalidInput (count not in
        1..MAX_REPORTED_USES), NotFound. Needs USAGE_REPORT on ``name``."""
        names.check_credential_name(name)
        if isinstance(count, bool) or not 1 <= count <= MAX_REPORTED_USES:
            raise InvalidInput(f"--count must be between 1 and {MAX_REPORTED_USES}")
        await self.authorize(principal, Action.USAGE_REPORT, name)
        tenant = await self._existing_tenant(principal)
        if tenant is None:
            raise NotFound(f"no credential {name!r}")

        def write(conn: Connection) -> Credential:
            cid = store_creds.credential_id(conn, tenant.id, name)
            if cid is None:
                raise NotFound(f"no credential {name!r}")
            total = self.kernel.count_uses(conn, cid, count)
            self._audit(conn, principal, "credential.used", name, count=count, use_count=total)
            cred = store_creds.get_credential(conn, tenant.id, name)
            assert cred is not None
            return cred

        return await self._write(write)

    async def update_credential(
        self,
        name: str,
        *,
        connector: str | None = None,
        settings: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        policy: PolicyInput = PolicyInput(),
        value: ValueInput = ValueInput(),
        sinks: Sequence[str] | None = None,
        principal: Principal = LOCAL_PRINCIPAL,
    ) -> Credential:
        """Change connector, settings (replaced as a whole), tags (replaced), policy (merged), or
        store a new value: it becomes CURRENT and the old CURRENT becomes PREVIOUS for the grace.

        A generated value is made by the connector before the store transaction opens (it may
        read other credentials, e.g. a leaf certificate its CA). The transaction then
        re-checks that the credential did not change in between (no new version, no other
        update) and raises ConcurrentModification if it did; nothing is stored then.
        Needs CREDENTIAL_WRITE on ``name``; VALUE_READ on ``name`` too for ``sinks`` (any
        but none) and, when the credential has a value, for a change of connector or
        settings (they decide where its value is sent); and, when connector or settings
        change, VALUE_READ on every credential the new settings reference; STORE_ADMIN for
        settings or sinks that run a command or write a file on rotator's host (as for add).
        """
        from rotator.connectors import base as cbase

        names.check_credential_name(name)
        await self.authorize(principal, Action.CREDENTIAL_WRITE, name)
        if sinks:
            await self.authorize(principal, Action.VALUE_READ, name)
        cred = await self.find(name, principal)
        if (settings is not None or connector is not None) and cred.versions:
            await self.authorize(principal, Action.VALUE_READ, name)
        kind = connector or cred.connector
        impl = self.engine.connector(kind)
        new_settings = (
            dict(settings) if settings is not None else (cred.config if connector is None else {})
        )
        cfg = cbase.parse_config(impl, new_settings)
        if settings is not None or connector is not None:
            await self._authorize_references(principal, impl, cfg)
        own_patch = policy.partial()
        sink_specs = (
            None if sinks is None else [parse_sink(x, self.kernel.protected_paths()) for x in sinks]
        )
        await self._check_sink_references(principal, sink_specs or ())
        changes_target = settings is not None or connector is not None
        await self._authorize_host_effects(
            principal,
            name,
            impl if changes_target else None,
            cfg if changes_target else None,
            sink_specs or (),
        )
        if value.value is not None:
            cbase.check_value(impl, cfg, value.value)
        tenant = await self.tenant(principal.tenant)

        def check(conn: Connection) -> None:
            kernel_schedule.effective(
                conn,
                tenant_id=tenant.id,
                tenant=tenant.name,
                name=name,
                tags=cred.tags if tags is None else tags,
                own={**store_pol.own_policy(conn, cred.id), **own_patch},
            )

        await self._read(check)  # before a value is generated
        number = max((v.number for v in cred.versions), default=0) + 1
        # No connector call may run inside a store write transaction: generate first.
        new_value = await self._new_value(impl, cfg, name, number, value, principal)
        now = self.clock()

        def write(conn: Connection) -> Credential:
            seen = store_creds.get_credential(conn, tenant.id, name, with_versions=False)
            if (
                seen is None
                or seen.id != cred.id
                or seen.updated_at != cred.updated_at
                or store_creds.next_version_number(conn, cred.id) != number
            ):
                raise ConcurrentModification(
                    f"credential {name!r} changed while the update was prepared; try again"
                )
            # The MAC covers connector, settings and sinks too: check it before they change
            # (an edit made outside rotator must not be sealed), re-stamp it after.
            self.kernel.check_stage_map(conn, cred.id)
            store_creds.update_credential(
                conn,
                cred.id,
                now=now,
                connector=kind,
                config=cfg.model_dump(mode="json", exclude_defaults=True),
                tags=tags,
                last_rotated_at=now if new_value is not None else None,
                use_count=0 if new_value is not None else None,
                sinks=sink_specs,
            )
            own = store_pol.own_policy(conn, cred.id)
            self.kernel.reschedule(
                conn,
                [cred.id],
                own={cred.id: {**own, **own_patch}},
                hints={cred.id: cbase.rotation_hint(impl, cfg, new_value)},
            )
            pol = store_pol.effective_policy(conn, cred.id)
            demoted = None
            if new_value is not None:
                self.kernel.seal_version(
                    conn, tenant, cred.id, number, new_value, Stage.PENDING, now
                )
                demoted = store_creds.promote(conn, cred.id, number, now=now, grace=pol.grace)
            self.kernel.restamp(conn, cred.id)
            changed = {
                "connector": kind if connector else None,
                "settings": sorted(new_settings) if settings is not None else None,
                "tags": tags,
                "policy": pol.to_json() if pol != cred.policy else None,
                "policy_own": own_patch or None,
                "version": number if new_value is not None else None,
                "sinks": None if sink_specs is None else [describe_sink(x) for x in sink_specs],
                "previous_version": demoted,
            }
            self._audit(
                conn,
                principal,
                "credential.update",
                name,
                **{k: v for k, v in changed.items() if v is not None},
            )
            out = store_creds.get_credential(conn, tenant.id, name)
            assert out is not None
            return out

        out = await self._write(write)
        self.values.forget(tenant.name, name)  # rotations read the new value
        return out

    async def remove_credential(self, name: str, principal: Principal = LOCAL_PRINCIPAL) -> None:
        """Delete a credential and all its versions. Raises NotFound if it does not exist.
        Needs CREDENTIAL_WRITE on ``name``."""
        names.check_credential_name(name)
        await self.authorize(principal, Action.CREDENTIAL_WRITE, name)
        cred = await self.find(name, principal)

        def write(conn: Connection) -> None:
            in_groups = store_groups.groups_of_credential(conn, cred.id)
            if in_groups:
                raise InvalidInput(
                    f"credential {name!r} is a member of group {in_groups[0]!r}: "
                    "remove the group first"
                )
            if store_rot.lock_holder(conn, cred.id) is not None:
                raise InvalidInput(f"credential {name!r} is being rotated: try again later")
            store_creds.delete_credential(conn, cred.id)
            self._audit(
                conn,
                principal,
                "credential.remove",
                name,
                versions=[v.number for v in cred.versions],
            )

        await self._write(write)
        self.values.forget(principal.tenant, name)

    # -- groups ---------------------------------------------------------------------------

    async def add_group(self, group: Group, principal: Principal = LOCAL_PRINCIPAL) -> Group:
        """Store a coordinated group; every member must be an existing credential. Needs
        GROUP_WRITE on every member, checked before anything is read (PermissionDenied
        naming the group the caller gave). A name taken by a group of the tenant raises
        AlreadyExists even when the caller may not see that group: the name is taken, and
        saying so reveals only that a group of that name exists in the caller's own tenant
        (names are not secret from a tenant's operators; other tenants' never show)."""
        names.check_credential_name(group.name)
        await self.authorize_group(principal, Action.GROUP_WRITE, group)
        tenant = await self.tenant(principal.tenant)
        now = self.clock()

        def write(conn: Connection) -> None:
            if store_groups.group_id(conn, tenant.id, group.name) is not None:
                raise AlreadyExists(f"group {group.name!r} exists already")
            ids = {}
            for m in group.members:
                cid = store_creds.credential_id(conn, tenant.id, m.name)
                if cid is None:
                    raise NotFound(f"group member {m.name!r} is not a credential")
                ids[m.name] = cid
            store_groups.insert_group(conn, tenant.id, group, ids, now)
            self._audit(
                conn,
                principal,
                "group.add",
                None,
                group=group.name,
                members=[m.name for m in group.members],
                all_or_nothing=group.all_or_nothing,
                min_offset_s=group.min_offset.total_seconds(),
            )

        await self._write(write)
        return group

    async def get_group(self, name: str, principal: Principal = LOCAL_PRINCIPAL) -> Group:
        """Group ``name`` of the principal's tenant; NotFound if none. Needs CREDENTIAL_READ
        on every member."""
        return await self.group_for(principal, Action.CREDENTIAL_READ, name)

    async def group_for(self, principal: Principal, action: Action, name: str) -> Group:
        """Group ``name`` of the principal's tenant once the principal may do ``action`` on
        every member: the one check of a use case acting on a group. PermissionDenied when
        its role may not do ``action`` at all (before the group is looked up), or on some
        member of a group it may see. NotFound, with the same text, when there is no such
        group and when the principal may not see it (may not CREDENTIAL_READ every member,
        as :meth:`list_groups` hides it): the latter is audited as ``access.denied`` naming
        the first member out of scope and the group."""
        await self.authorize_some(principal, action)
        group = await self._find_group(name, principal)
        for m in group.members:
            if not principal.may(Action.CREDENTIAL_READ, m.name):
                await self.deny_as_missing(
                    principal, action, m.name, NotFound(f"no group {name!r}"), group=name
                )
        await self.authorize_group(principal, action, group)
        return group

    async def _find_group(self, name: str, principal: Principal) -> Group:
        tenant = await self._existing_tenant(principal)
        group = (
            None
            if tenant is None
            else await self._read(partial(store_groups.get_group, tenant_id=tenant.id, name=name))
        )
        if group is None:
            raise NotFound(f"no group {name!r}")
        return group

    async def list_groups(self, principal: Principal = LOCAL_PRINCIPAL) -> list[Group]:
        """Groups of the principal's tenant whose every member it may CREDENTIAL_READ
        (PermissionDenied if its role may not read any)."""
        await self.authorize_some(principal, Action.CREDENTIAL_READ)
        tenant = await self._existing_tenant(principal)
        if tenant is None:
            return []
        groups = await self._read(partial(store_groups.list_groups, tenant_id=tenant.id))
        return [
            g
            for g in groups
            if all(principal.may(Action.CREDENTIAL_READ, m.name) for m in g.members)
        ]

    async def remove_group(self, name: str, principal: Principal = LOCAL_PRINCIPAL) -> None:
        """Delete group ``name`` (its credentials stay). Needs GROUP_WRITE on every member."""
        group = await self.group_for(principal, Action.GROUP_WRITE, name)
        tenant = await self.tenant(principal.tenant)

        def write(conn: Connection) -> None:
            gid = store_groups.group_id(conn, tenant.id, group.name)
            if gid is None:
                raise NotFound(f"no group {name!r}")
            store_groups.delete_group(conn, gid)
            self._audit(conn, principal, "group.remove", None, group=name)

        await self._write(write)

    # -- keys -----------------------------------------------------------------------------

    async def rotate_master_key(
        self,
        progress: Callable[[int, int], None] | None = None,
        principal: Principal = LOCAL_PRINCIPAL,
    ) -> tuple[str, str, int]:
        """Re-wrap every data key under a new master key (see keyring.rotate_master). The
        audit chain moves to the new master key's audit key in the transaction that makes the
        new key current (an ``audit.key_link`` entry; see kernel/integrity.py). Runs on a
        worker thread with its own transactions (it holds the store's rotation lock).
        Needs STORE_ADMIN (the store's owner)."""
        await self.authorize(principal, Action.STORE_ADMIN)
        kernel = self.kernel

        def start(old_id: str) -> None:  # under the rotation's lock: a refused run writes none
            with kernel.db.write() as conn:
                self._audit(conn, principal, "keys.rotate_master.start", from_key=old_id)

        def link(conn: Connection, old_key: crypto.MasterKey, new_key: crypto.MasterKey) -> None:
            integrity.link_audit_key(kernel, conn, old_key, new_key, principal)

        def run() -> tuple[str, str, int]:
            old, new, n = rotate_master(
                kernel.db, kernel.settings, kernel.ring, progress, finalize=link, started=start
            )
            kernel.reload_keys()  # outside the next write transaction
            with kernel.db.write() as conn:
                self._audit(
                    conn,
                    principal,
                    "keys.rotate_master.done",
                    from_key=old,
                    to_key=new,
                    rewrapped=n,
                )
            return old, new, n

        return await asyncio.to_thread(run)

    # -- audit ----------------------------------------------------------------------------

    async def audit_entries(
        self,
        credential: str | None = None,
        limit: int | None = None,
        principal: Principal = LOCAL_PRINCIPAL,
        *,
        after: int | None = None,
    ) -> list[AuditEntry]:
        """The entries of the principal's tenant (of ``credential`` if given), in order, the
        newest ``limit``; with ``after`` (a seq), the first ``limit`` after it (a page). Needs
        AUDIT_READ on ``credential`` (without one: tenant-wide)."""
        await self.authorize(principal, Action.AUDIT_READ, credential)
        return await self._read(
            partial(
                audit.entries,
                tenant=principal.tenant,
                credential=credential,
                limit=limit,
                after=after,
            )
        )

    async def audit_verify(
        self,
        expect_head: tuple[int, str] | None = None,
        principal: Principal = LOCAL_PRINCIPAL,
    ) -> VerifyResult:
        """Verify the whole keyed chain (and that it holds ``expect_head``, a (seq, MAC) kept
        outside the store). Does not raise on a broken chain: the result says where. Needs
        AUDIT_READ tenant-wide. The store's owner gets the store-wide result; anyone else
        the same check reported for its tenant only (audit.verify_for_tenant: its own entry
        count, a bad seq only when it is its own entry, ``expect_head`` one of its entries)."""
        await self.authorize(principal, Action.AUDIT_READ)
        if principal.owner:
            check = partial(audit.verify_log, keys=self.kernel.audit_keys, expect_head=expect_head)
        else:
            check = partial(
                audit.verify_for_tenant,
                keys=self.kernel.audit_keys,
                tenant=principal.tenant,
                expect_head=expect_head,
            )
        result = await self._read(check)
        if not result.ok:
            await self._record_verification_failed(principal, result)
        return result

    async def _record_verification_failed(self, principal: Principal, result: VerifyResult) -> None:
        # While a webhook subscribes to audit.verification_failed, a failed verify appends
        # that entry (the webhook runner delivers it like any event). The append chains on the
        # head row, which still works after a break inside the log; where it cannot (the head
        # itself is broken), nothing is appended and the verify result alone reports it.
        # One entry per tenant with a subscribing webhook (a tenant's webhook reads only its
        # tenant's entries), all in one transaction: exactly once per failing verify. An
        # every-tenant webhook subscribing adds the verifier's tenant (it then hears of it
        # once per such tenant).
        def write(conn: Connection) -> None:
            subscribed = [
                w for w in store_wh.list_webhooks(conn) if "audit.verification_failed" in w.events
            ]
            tenants = sorted(
                {w.tenant or principal.tenant for w in subscribed},
                key=lambda t: (t != principal.tenant, t),
            )
            for tenant in tenants:
                # The verifier's name, in that tenant (an entry records tenant and actor).
                actor = Principal(principal.name, tenant, principal.grants, principal.owner)
                self._audit(
                    conn,
                    actor,
                    "audit.verification_failed",
                    None,
                    first_bad_seq=result.first_bad_seq,
                    reason=result.reason,
                    entries=result.entries,
                )

        try:
            await self._write(write)
        except RotatorError as exc:
            log.warning("audit verify: cannot record the failed verification: %s", exc)

    async def audit_head(self, principal: Principal = LOCAL_PRINCIPAL) -> tuple[int, str]:
        """(seq, MAC hex) of the newest audit entry, to keep outside the store as an anchor.
        Raises AuditChainBroken when the head row is missing. Needs AUDIT_READ tenant-wide.
        To anyone but the store's owner: the newest entry of its tenant (NotFound when it has
        none), an anchor for :meth:`audit_verify` all the same, and no store-wide count."""
        await self.authorize(principal, Action.AUDIT_READ)
        if not principal.owner:
            mine = await self._read(partial(audit.tenant_head, tenant=principal.tenant))
            if mine is None:
                raise NotFound("no audit entry of this tenant yet")
            return mine
        head = await self._read(audit.read_head)
        if head is None:
            raise AuditChainBroken(0, "the audit head is missing")
        return head.seq, head.hash


__all__ = ["PolicyInput", "Principal", "RotatorService", "ValueInput"]
