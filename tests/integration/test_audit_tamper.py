"""The audit chain: every change, deletion, insertion or reorder of rows is detected and named."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, insert, select, update

from rotator.audit.chain import entry_hash
from rotator.config import Settings
from rotator.domain.secret import Secret
from rotator.service import RotatorService, ValueInput
from rotator.store.schema import audit_head, audit_log


@pytest.fixture
def filled(svc: RotatorService) -> RotatorService:
    for i in range(5):
        svc.add_credential(f"cred-{i}", "local", value=ValueInput(generate=True))
    svc.get_value("cred-1")
    svc.remove_credential("cred-4")
    assert svc.audit_verify().ok
    assert svc.audit_verify().entries == 8
    return svc


def test_untouched_chain_verifies(filled: RotatorService) -> None:
    entries = filled.audit_entries()
    assert [e.seq for e in entries] == list(range(1, 9))
    assert [e.action for e in entries][:2] == ["store.init", "credential.add"]
    for prev, e in itertools.pairwise(entries):
        assert e.prev_hash == prev.hash
        assert entry_hash(e) == e.hash


def test_updated_row_is_named(filled: RotatorService, raw_db: Engine) -> None:
    with raw_db.begin() as c:
        c.execute(update(audit_log).where(audit_log.c.seq == 4).values(actor="mallory"))
    result = filled.audit_verify()
    assert not result.ok
    assert result.first_bad_seq == 4


def test_updated_details_with_recomputed_hash_breaks_the_next_link(
    filled: RotatorService, raw_db: Engine
) -> None:
    e = filled.audit_entries()[2]
    forged = type(e)(**{**e.to_json(), "details": {"forged": True}, "hash": ""})
    with raw_db.begin() as c:
        c.execute(
            update(audit_log)
            .where(audit_log.c.seq == 3)
            .values(details=json.dumps({"forged": True}), hash=entry_hash(forged))
        )
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 4)


def test_deleted_row_is_named(filled: RotatorService, raw_db: Engine) -> None:
    with raw_db.begin() as c:
        c.execute(delete(audit_log).where(audit_log.c.seq == 5))
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 5)


def test_deleted_tail_is_named(filled: RotatorService, raw_db: Engine) -> None:
    with raw_db.begin() as c:
        c.execute(delete(audit_log).where(audit_log.c.seq >= 7))
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 7)


def test_reordered_rows_are_named(filled: RotatorService, raw_db: Engine) -> None:
    with raw_db.begin() as c:
        c.execute(update(audit_log).where(audit_log.c.seq == 3).values(seq=-3))
        c.execute(update(audit_log).where(audit_log.c.seq == 6).values(seq=3))
        c.execute(update(audit_log).where(audit_log.c.seq == -3).values(seq=6))
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_inserted_row_is_named(filled: RotatorService, raw_db: Engine) -> None:
    with raw_db.begin() as c:
        rows = c.execute(select(audit_log).order_by(audit_log.c.seq)).all()
        # Shift entries 4.. up by one and slip a forged entry in at 4.
        for r in reversed(rows[3:]):
            c.execute(update(audit_log).where(audit_log.c.seq == r.seq).values(seq=r.seq + 1))
        c.execute(
            insert(audit_log).values(
                seq=4,
                ts=rows[3].ts,
                tenant="default",
                actor="mallory",
                action="value.read",
                credential="cred-0",
                rotation_id=None,
                details="{}",
                prev_hash=rows[2].hash,
                hash="0" * 64,
            )
        )
        c.execute(update(audit_head).values(seq=len(rows) + 1))
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 4)


def test_cli_audit_verify_exits_1_naming_the_entry(
    filled: RotatorService, raw_db: Engine, settings: Settings
) -> None:
    rotator = str(Path(sys.executable).parent / "rotator")
    env = {**os.environ, "ROTATOR_HOME": str(settings.home), "ROTATOR_DB": settings.db_url}
    ok = subprocess.run(
        [rotator, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert "ok: 8 entries" in ok.stdout
    with raw_db.begin() as c:
        c.execute(update(audit_log).where(audit_log.c.seq == 2).values(action="credential.remove"))
    bad = subprocess.run(
        [rotator, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "rotator: error: audit chain broken at entry 2: its content does not match its hash"
    )


def test_audit_never_holds_a_value(svc: RotatorService, raw_db: Engine) -> None:
    value = "audit-canary-7f3e9b"
    svc.add_credential("x", "local", value=ValueInput(value=Secret(value)))
    svc.update_credential("x", value=ValueInput(value=Secret(value + "-2")))
    svc.get_value("x")
    with raw_db.connect() as c:
        text = json.dumps([list(map(str, r)) for r in c.execute(select(audit_log)).all()])
    assert "audit-canary" not in text
