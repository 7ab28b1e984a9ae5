"""A rotation's context, and loading it from the store (one credential, or a batch at once)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import Connection

from rotator.connectors import base as cbase
from rotator.domain.model import Credential, Stage, Tenant
from rotator.domain.principal import Principal
from rotator.domain.secret import Secret
from rotator.engine.ownership import Lease
from rotator.engine.runtime import Runtime
from rotator.engine.types import RotationRequest
from rotator.engine.values import ENGINE_ACTOR, Values
from rotator.errors import NotFound, RotatorError
from rotator.store import credentials as store_creds


@dataclass
class Ctx:
    """One rotation under way in this process."""

    req: RotationRequest
    tenant: Tenant
    cred: Credential
    impl: cbase.Connector
    cfg: cbase.ConnectorConfig
    target: str
    current: Secret | None
    current_version: int | None
    grace_s: int
    rotation_id: str = ""
    version: int = 0
    pending: Secret | None = None
    touched_target: bool = False
    # set succeeded (durably recorded): the target holds the candidate until a rollback
    # reaches it, so a rollback that cannot reach it leaves the rotation to recovery.
    set_confirmed: bool = False
    deferred: list[Callable[[Connection], None]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    secrets: cbase.SecretResolver = cbase.NO_SECRETS
    lease: Lease | None = None  # while this process owns the rotation
    last_write: str | None = None  # the last call that may change the target: set/finish/rollback

    def who(self) -> Principal:
        return Principal(name=ENGINE_ACTOR, tenant=self.tenant.name, owner=True)

    @property
    def fence(self) -> str | None:
        return None if self.lease is None else self.lease.fence


class ContextLoader:
    """Builds contexts from the store, through the stage-map check."""

    def __init__(self, rt: Runtime, values: Values) -> None:
        self.rt = rt
        self.values = values

    def _load(
        self, conn: Connection, req: RotationRequest
    ) -> tuple[Tenant, Credential, Secret | None, int | None]:
        kernel = self.rt.kernel
        tenant = kernel.find_tenant(req.tenant)
        cred = store_creds.get_credential(conn, tenant.id, req.name, with_versions=False)
        if cred is None:
            raise NotFound(f"no credential {req.name!r}")
        kernel.check_stage_map(conn, cred.id)
        sv = store_creds.sealed_version(conn, cred.id, stage=Stage.CURRENT)
        current = kernel.open_version(conn, sv) if sv is not None else None
        return tenant, cred, current, sv.number if sv is not None else None

    async def prepare(self, req: RotationRequest) -> Ctx:
        """The context of ``req``, read fresh. NotFound, IntegrityError, DecryptionError."""
        tenant, cred, current, cur_no = await self.rt.read(partial(self._load, req=req))
        return self.context(req, tenant, cred, current, cur_no)

    async def prepare_many(self, reqs: list[RotationRequest]) -> dict[tuple[str, str], Ctx]:
        """Contexts for many requests in a few queries (a batch's prefetch), by (tenant,
        name). Requests that cannot be prepared are left out; preparing them alone reports
        why."""
        out: dict[tuple[str, str], Ctx] = {}
        for i in range(0, len(reqs), 2000):
            out.update(await self.rt.read(partial(self._load_many, reqs=reqs[i : i + 2000])))
        return out

    def _load_many(
        self, conn: Connection, reqs: list[RotationRequest]
    ) -> dict[tuple[str, str], Ctx]:
        kernel = self.rt.kernel
        out: dict[tuple[str, str], Ctx] = {}
        # Credentials on one target mostly have the same settings: parse (validate and
        # compile) each distinct set once. Configs are frozen, so the contexts may share one.
        configs: dict[tuple[str, frozenset[tuple[str, str]]], cbase.ConnectorConfig] = {}
        by_tenant: dict[str, list[RotationRequest]] = {}
        for r in reqs:
            by_tenant.setdefault(r.tenant, []).append(r)
        for tenant_name, group in by_tenant.items():
            try:
                tenant = kernel.find_tenant(tenant_name)
            except NotFound:
                continue
            wanted = {r.name: r for r in group}
            names = list(wanted)
            for i in range(0, len(names), 500):
                creds = store_creds.list_credentials(conn, tenant.id, names=names[i : i + 500])
                current = store_creds.current_versions(conn, [c.id for c in creds])
                tampered = kernel.stage_map_errors(conn, [c.id for c in creds])
                for cred in creds:
                    sv = current.get(cred.id)
                    try:
                        if cred.id in tampered:  # preparing it alone reports the failure
                            raise tampered[cred.id]
                        value = kernel.open_version(conn, sv) if sv is not None else None
                        ctx = self.context(
                            wanted[cred.name],
                            tenant,
                            cred,
                            value,
                            sv.number if sv is not None else None,
                            configs,
                        )
                    except RotatorError:
                        continue
                    out[(tenant_name, cred.name)] = ctx
        return out

    def context(
        self,
        req: RotationRequest,
        tenant: Tenant,
        cred: Credential,
        current: Secret | None,
        cur_no: int | None,
        configs: dict[tuple[str, frozenset[tuple[str, str]]], cbase.ConnectorConfig] | None = None,
    ) -> Ctx:
        """``configs``: parsed settings by (connector, settings), filled and reused (a batch's
        prefetch passes one for the whole batch)."""
        impl = self.rt.connectors.get(cred.connector)
        if configs is None:
            cfg = cbase.parse_config(impl, dict(cred.config))
        else:
            try:
                key = (cred.connector, frozenset(cred.config.items()))
            except TypeError:  # a value that is no string (settings are str -> str): no sharing
                cfg = cbase.parse_config(impl, dict(cred.config))
            else:
                found = configs.get(key)
                if found is None:
                    found = configs[key] = cbase.parse_config(impl, dict(cred.config))
                cfg = found
        grace = req.grace_s if req.grace_s is not None else int(cred.policy.grace.total_seconds())
        return Ctx(
            req=req,
            tenant=tenant,
            cred=cred,
            impl=impl,
            cfg=cfg,
            target=impl.target_key(cfg),
            current=current,
            current_version=cur_no,
            grace_s=grace,
            secrets=self.values.resolver(tenant.name),
        )
