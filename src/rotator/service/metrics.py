"""The figures behind ``GET /metrics``: the process's engine metrics plus, per tenant, the
number of credentials, how many are overdue and the age of the oldest CURRENT version.

Owner-internal (the scrape needs no token): no principal, and only aggregate numbers per
tenant leave here, never a credential name or a value. Overdue is the compliance report's
flag (past the next rotation time, or older than the policy allows), computed by the same
pure code (``rotator.policy.compliance.credential_row``) at the service clock's now.
"""

from __future__ import annotations

from sqlalchemy import Connection

from rotator.policy import compliance
from rotator.service.credentials import RotatorService
from rotator.store import principals as store_principals
from rotator.store import reports as store_reports
from rotator.telemetry import metrics
from rotator.telemetry.metrics import TenantCredentials

CONTENT_TYPE = metrics.CONTENT_TYPE
"""The media type of :func:`exposition` (Prometheus text format 0.0.4)."""


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


async def exposition(svc: RotatorService) -> bytes:
    """The Prometheus text exposition of this process's metrics and :func:`snapshot`."""
    return metrics.render(await snapshot(svc))
