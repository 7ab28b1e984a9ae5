"""The figures behind ``GET /metrics``: the process's engine metrics plus, per tenant, the
number of credentials, how many are overdue and the age of the oldest CURRENT version.

Owner-internal (the scrape needs no token): no principal, and only aggregate numbers per
tenant leave here, never a credential name or a value. Overdue is the compliance report's
flag (past the next rotation time, or older than the policy allows), computed by the same
pure code (``rotator.policy.compliance.credential_row``) at the service clock's now.

The store figures cost one read of every credential's facts: :class:`SnapshotCache` keeps
them for ``ROTATOR_METRICS_CACHE_S`` seconds (default 10) and lets concurrent scrapes share
one read; the engine's own metrics (counters, gauges) are rendered live at every scrape.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Mapping

from sqlalchemy import Connection

from rotator.errors import InvalidInput
from rotator.policy import compliance
from rotator.service.credentials import RotatorService
from rotator.store import principals as store_principals
from rotator.store import reports as store_reports
from rotator.telemetry import metrics
from rotator.telemetry.metrics import TenantCredentials

CONTENT_TYPE = metrics.CONTENT_TYPE
"""The media type of :func:`exposition` (Prometheus text format 0.0.4)."""

CACHE_ENV = "ROTATOR_METRICS_CACHE_S"
DEFAULT_CACHE_S = 10.0
MAX_CACHE_S = 3600.0


async def snapshot(svc: RotatorService) -> list[TenantCredentials]:
    """Per tenant, in name order: credentials, overdue credentials, oldest CURRENT's age.
    One read transaction; writes nothing, audits nothing (no value is read)."""
    now = svc.clock()

    def read(conn: Connection) -> list[TenantCredentials]:
        out = []
        for tenant_id, name, _ in store_principals.list_tenants(conn):
            # since=now: the report's period counts (rotations, reads) are not needed here.
            rows = [
                compliance.credential_row(f, now)
                for f in store_reports.credential_facts(conn, tenant_id, name, now)
            ]
            ages = [r.age.total_seconds() for r in rows if r.age is not None]
            out.append(
                TenantCredentials(
                    tenant=name,
                    credentials=len(rows),
                    overdue=sum(1 for r in rows if r.overdue),
                    max_age_s=max(ages, default=None),
                )
            )
        return out

    return await svc.engine.runtime.read(read)


class SnapshotCache:
    """:func:`snapshot` of one service, kept ``ttl_s`` seconds of ``clock`` (monotonic
    seconds) after the read that made it; 0 reads the store at every call. Concurrent callers
    share one read: a caller arriving while a read is under way waits for that read's result
    instead of starting its own. A failed read is not kept (the next caller reads again).
    Used from one event loop."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._value: list[TenantCredentials] | None = None
        self._read_at = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SnapshotCache:
        """A cache whose TTL is ``ROTATOR_METRICS_CACHE_S`` (seconds, 0 to 3600; default 10);
        InvalidInput naming the variable when it is bad."""
        env = os.environ if env is None else env
        raw = (env.get(CACHE_ENV) or "").strip()
        if not raw:
            return cls(DEFAULT_CACHE_S)
        try:
            ttl = float(raw) if len(raw) <= 20 else -1.0
        except ValueError:
            ttl = -1.0
        if not (math.isfinite(ttl) and 0 <= ttl <= MAX_CACHE_S):
            raise InvalidInput(f"{CACHE_ENV} must be a number of seconds from 0 to {MAX_CACHE_S:g}")
        return cls(ttl)

    async def get(self, svc: RotatorService) -> list[TenantCredentials]:
        """The cached snapshot while fresh, else a new one (one read however many wait)."""
        async with self._lock:
            if self._value is not None and self._clock() - self._read_at < self.ttl_s:
                return self._value
            value = await snapshot(svc)
            # Stamped after the read: a slow read still serves ttl_s from when it ended.
            self._value, self._read_at = value, self._clock()
            return value


async def exposition(svc: RotatorService, cache: SnapshotCache | None = None) -> bytes:
    """The Prometheus text exposition of this process's metrics (live) and :func:`snapshot`
    (through ``cache`` when given, else read now)."""
    tenants = await (snapshot(svc) if cache is None else cache.get(svc))
    return metrics.render(tenants)
