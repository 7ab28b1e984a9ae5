"""Reading credential values: the one path every read takes (a person's ``credential get``,
a connector's admin secret), counted and audited through the group-commit writer.

A read returns only after its use count and its ``value.read`` audit entry have committed, so
a crash of rotator never loses a read it returned; concurrent reads share one write
transaction. On SQLite those commits are relaxed (see ``Database.write``): safe from a crash
of the process, flushed to disk with the next full commit, so an OS crash or power loss of the
machine may lose the newest read records (never a rotation's intent or stage move).
"""

from __future__ import annotations

import time

from sqlalchemy import Connection

from rotator.domain.model import Stage
from rotator.domain.principal import Principal
from rotator.domain.secret import Secret
from rotator.engine.runtime import Runtime
from rotator.errors import NotFound, RotatorError
from rotator.telemetry import metrics

SECRETS_TTL_S = 30.0
ENGINE_ACTOR = "engine"  # the actor of every read and step the engine makes


class Values:
    """Counted, audited reads, and the connectors' secret resolvers (one per tenant)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._resolvers: dict[str, TenantSecrets] = {}

    async def read(self, principal: Principal, name: str, stage: Stage = Stage.CURRENT) -> Secret:
        """See :meth:`rotator.kernel.Kernel.read_value` (same errors)."""
        return (await self.read_numbered(principal, name, stage))[0]

    async def read_numbered(
        self, principal: Principal, name: str, stage: Stage = Stage.CURRENT
    ) -> tuple[Secret, int]:
        """As :meth:`read`, with the number of the version read."""
        kernel = self.rt.kernel

        def op(conn: Connection) -> tuple[Secret, int] | RotatorError:
            # A refused read (no such credential, an edited stage map) has written nothing:
            # it is returned, not raised, which would roll back and replay its whole batch.
            try:
                value, credential_id, number = kernel.find_value(conn, principal, name, stage)
            except RotatorError as exc:
                return exc
            kernel.record_read(conn, principal, name, credential_id, number, stage)
            return value, number

        out = await self.rt.writer.run(op, durable=False)
        if isinstance(out, RotatorError):
            raise out
        metrics.value_read(principal.tenant)
        return out

    def reader(self, principal: Principal) -> CallerSecrets:
        """A resolver for calls made on behalf of ``principal`` outside a rotation (generate,
        verify, publish at ``credential add``): every read fresh, audited as that principal."""
        return CallerSecrets(self, principal)

    def resolver(self, tenant: str) -> TenantSecrets:
        """The secret resolver rotations get for credentials of ``tenant`` (cached reads)."""
        found = self._resolvers.get(tenant)
        if found is None:
            found = self._resolvers[tenant] = TenantSecrets(self, tenant)
        return found

    def forget(self, tenant: str, name: str) -> None:
        """Drop a cached value (after rotating it, or when a target refused it)."""
        found = self._resolvers.get(tenant)
        if found is not None:
            found.forget(name)


class TenantSecrets:
    """Connector access to other credentials' CURRENT values (admin secrets, CA keys).

    Each read is audited and counted as a use, and cached for ``ttl`` seconds so a batch of
    1,000 rotations against one server reads its admin secret once, not 1,000 times; the
    engine drops an entry when it rotates that credential itself.
    """

    def __init__(self, values: Values, tenant: str, ttl: float = SECRETS_TTL_S) -> None:
        self._values = values
        self._principal = Principal(name=ENGINE_ACTOR, tenant=tenant, owner=True)
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Secret]] = {}

    async def get(self, name: str) -> Secret:
        hit = self._cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        try:
            value = await self._values.read(self._principal, name)
        except NotFound as exc:
            from rotator.connectors.base import PermanentError  # pydantic: only when needed

            raise PermanentError(f"referenced credential {name!r}: {exc}") from exc
        self._cache[name] = (time.monotonic(), value)
        return value

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)


class CallerSecrets:
    """Uncached reads of other credentials' CURRENT values, audited as the caller."""

    def __init__(self, values: Values, principal: Principal) -> None:
        self._values = values
        self._principal = principal

    async def get(self, name: str) -> Secret:
        try:
            return await self._values.read(self._principal, name)
        except NotFound as exc:
            from rotator.connectors.base import PermanentError  # pydantic: only when needed

            raise PermanentError(f"referenced credential {name!r}: {exc}") from exc
