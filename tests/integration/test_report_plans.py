"""The compliance report's store queries use the tenant indexes of migration 0012
(``audit_log(tenant, action, ts)``, ``rotations(tenant_id, created_at)``) instead of scanning
the whole log: each query store/reports.py runs is captured and EXPLAINed on SQLite and
PostgreSQL. PostgreSQL's planner picks a sequential scan for a table this small whatever its
indexes, so its plans are taken with ``enable_seqscan`` off: that shows the index can serve
the query's conditions, which is what the index is for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, event, select

from rotator.service import BlockingService, ValueInput
from rotator.service.rotation import Selection
from rotator.store import reports as store_reports
from rotator.store.schema import tenants


def plans(raw_db: Engine) -> list[tuple[str, str]]:
    """(statement, plan) of every query the report's store reads run."""
    captured: list[tuple[str, Any]] = []
    with raw_db.connect() as conn:
        tenant_id = conn.execute(
            select(tenants.c.id).where(tenants.c.name == "default")
        ).scalar_one()

        def capture(
            _c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool
        ) -> None:
            captured.append((statement, params))

        event.listen(conn, "before_cursor_execute", capture)
        since = datetime.now(UTC) - timedelta(days=30)
        store_reports.credential_facts(conn, tenant_id, "default", since)
        store_reports.denials(conn, "default", since)
        event.remove(conn, "before_cursor_execute", capture)
        pg = conn.dialect.name == "postgresql"
        if pg:
            conn.exec_driver_sql("SET enable_seqscan = off")
        out = []
        for statement, params in captured:
            explain = "EXPLAIN " if pg else "EXPLAIN QUERY PLAN "
            rows = conn.exec_driver_sql(explain + statement, params).all()
            out.append((statement, "\n".join(" ".join(map(str, r)) for r in rows)))
        conn.rollback()
    return out


def test_the_compliance_reports_queries_use_the_tenant_indexes_not_a_scan_of_the_log(
    svc: BlockingService, raw_db: Engine
) -> None:
    for i in range(3):
        svc.add_credential(f"app/c{i}", "local", value=ValueInput(generate=True))
        svc.get_value(f"app/c{i}")
    svc.rotate(Selection(names=["app/c0", "app/c1"]))
    found = plans(raw_db)
    on_log = [(s, p) for s, p in found if "FROM audit_log" in s]
    on_rotations = [(s, p) for s, p in found if "FROM rotations" in s]
    assert len(on_log) == 2, found  # reads by actor; denials
    assert len(on_rotations) == 2, found  # results by step and trigger; the last rotation
    for statement, plan in on_log:
        assert "ix_audit_log_tenant_action_ts" in plan, (statement, plan)
    for statement, plan in on_rotations:
        assert "ix_rotations_tenant_created" in plan, (statement, plan)
