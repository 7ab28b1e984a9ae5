"""What a tenant's auditor or admin learns from ``GET /v1/audit/head``, ``POST
/v1/audit/verify`` and the watch feed's ``ready`` id: its own tenant's entries, never how long
the store-wide log is or where another tenant's entries break it (docs/audit.md).

Against a real ``rotator serve`` subprocess on SQLite and PostgreSQL; tampering is a real SQL
edit of the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select, update
from tests.support.server import ServeProcess, serve_env

from rotator.config import Settings
from rotator.domain.principal import LOCAL_PRINCIPAL, Role
from rotator.service import BlockingService, ValueInput
from rotator.store.schema import audit_log

ACME = LOCAL_PRINCIPAL.with_tenant("acme")


@pytest.fixture
def store(tmp_path: Path, db_url: str) -> Iterator[tuple[Path, str, str]]:
    """(home, db url, the token of acme's admin); the default tenant has many more entries."""
    home = tmp_path / "home"
    svc, _ = BlockingService.init(Settings(home=home, db_url=db_url))
    try:
        svc.add_tenant("acme")
        svc.add_principal("acme-admin", Role.ADMIN, kind="service", principal=ACME)
        token = svc.create_token("acme-admin", principal=ACME)[1]
        svc.add_credential("acme/db", "local", value=ValueInput(generate=True), principal=ACME)
        for i in range(15):
            svc.add_credential(f"other/c{i}", "local", value=ValueInput(generate=True))
    finally:
        svc.close()
    return home, db_url, token


def _acme(raw_db: Engine) -> tuple[list[int], int]:
    """(acme's entry seqs, the store-wide newest seq)."""
    with raw_db.connect() as conn:
        seqs = [
            int(s)
            for (s,) in conn.execute(
                select(audit_log.c.seq)
                .where(audit_log.c.tenant == "acme")
                .order_by(audit_log.c.seq)
            )
        ]
        newest = int(conn.scalar(select(func.max(audit_log.c.seq))) or 0)
    return seqs, newest


def _tamper(raw_db: Engine, seq: int) -> None:
    # Behind rotator's back, as an attacker with the database's superuser can (skipping
    # PostgreSQL's append-only trigger).
    with raw_db.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(actor="mallory"))


def test_a_tenant_admin_sees_its_own_head_and_count_never_the_store_wide_ones(
    store: tuple[Path, str, str], raw_db: Engine
) -> None:
    home, db_url, token = store
    auth = {"Authorization": f"Bearer {token}"}
    with (
        ServeProcess(serve_env(home, db_url)) as srv,
        httpx.Client(base_url=srv.base_url, headers=auth, timeout=30) as c,
    ):
        seqs, newest = _acme(raw_db)
        assert seqs[-1] < newest  # the other tenant wrote since: the figures differ
        head = c.get("/v1/audit/head")
        assert head.status_code == 200, head.text
        assert head.json()["seq"] == seqs[-1]
        anchor = f"{head.json()['seq']}:{head.json()['hash']}"
        ok = c.post("/v1/audit/verify", json={"expect_head": anchor})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["ok"] is True, body
        # Its own count (the verify just made read no new entry of acme's).
        assert body["entries"] == len(_acme(raw_db)[0])
        assert str(newest) not in ok.text
        # An anchor at another tenant's entry is not accepted as acme's head, and says nothing
        # of that entry.
        other = max(s for s in range(1, newest + 1) if s not in seqs)  # after all of acme's
        r = c.post("/v1/audit/verify", json={"expect_head": f"{other}:{'0' * 64}"})
        assert r.json()["ok"] is False
        assert r.json()["first_bad_seq"] is None
        # The feed's ready id: acme's newest entry so far, not the store's.
        with c.stream("GET", "/v1/watch") as resp:
            assert resp.status_code == 200
            lines = []
            for line in resp.iter_lines():
                lines.append(line)
                if line.startswith("event: ready"):
                    break
        assert f"id: {seqs[-1]}" in lines, lines
        # Another tenant's entry rewritten: broken, but where is not acme's to know.
        _tamper(raw_db, other)
        r = c.post("/v1/audit/verify", json={"expect_head": anchor})
        assert r.json()["ok"] is False
        assert r.json()["first_bad_seq"] is None
        assert str(other) not in r.json()["reason"]
        # Acme's own entry rewritten (before the other one): named.
        _tamper(raw_db, seqs[0])
        r = c.post("/v1/audit/verify", json={"expect_head": anchor}).json()
        assert r["ok"] is False
        assert r["first_bad_seq"] == seqs[0]
