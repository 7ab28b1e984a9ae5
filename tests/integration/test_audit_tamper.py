"""The audit chain: every change, deletion, insertion or reorder of rows is detected and named;
so are the attacks of someone who can write the database but does not hold the master key
(rewrite-and-recompute, a cut tail with a consistent head, an emptied log), and a rollback to an
older copy of the store when an anchor kept outside (``audit head``) is given to ``verify``.

Every test runs on SQLite and PostgreSQL. On PostgreSQL the audit table refuses UPDATE, DELETE
and TRUNCATE by trigger; the tampering here runs as the database superuser with
``session_replication_role = replica``, which skips triggers, as an attacker with that power can.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, Engine, delete, insert, select, update

from rotator import crypto
from rotator.audit.chain import AuditEntry, entry_hash, entry_mac, entry_message, head_message
from rotator.config import Settings
from rotator.crypto.integrity import audit_key
from rotator.domain.secret import Secret
from rotator.errors import AuditChainBroken, AuditKeyUnavailable
from rotator.service import BlockingService, ValueInput
from rotator.store.schema import audit_head, audit_log

ROTATOR = str(Path(sys.executable).parent / "rotator")


@contextmanager
def tamper(raw_db: Engine) -> Iterator[Connection]:
    """A transaction that writes behind rotator's back (skipping PostgreSQL's triggers)."""
    with raw_db.begin() as c:
        if c.dialect.name == "postgresql":
            c.exec_driver_sql("SET LOCAL session_replication_role = replica")
        yield c


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")},
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
    }
    return subprocess.run(
        [ROTATOR, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def filled(svc: BlockingService) -> BlockingService:
    for i in range(5):
        svc.add_credential(f"cred-{i}", "local", value=ValueInput(generate=True))
    svc.get_value("cred-1")
    svc.remove_credential("cred-4")
    svc.get_value("cred-2")
    assert svc.audit_verify().ok
    assert svc.audit_verify().entries == 9
    return svc


def rows(raw_db: Engine) -> list[sa.Row[tuple[object, ...]]]:
    with raw_db.connect() as c:
        return list(c.execute(select(audit_log).order_by(audit_log.c.seq)).all())


def as_entry(r: sa.Row[tuple[object, ...]], **changes: object) -> AuditEntry:
    fields = {k: getattr(r, k) for k in AuditEntry.__slots__ if k != "details"}
    fields["details"] = json.loads(str(r.details))
    fields.update(changes)
    return AuditEntry(**fields)  # type: ignore[arg-type]


def rewrite_chain(
    raw_db: Engine, keep: list[AuditEntry], mac: object, key_id: str | None, head_mac: object
) -> None:
    """Replace the whole log by ``keep``, renumbered and re-chained with ``mac(entry)``, and
    store a matching head; what an attacker without the key can do at best."""
    prev = "0" * 64
    out = []
    for seq, e in enumerate(keep, 1):
        e = AuditEntry(**{**e.to_json(), "seq": seq, "prev_hash": prev, "key_id": key_id})
        prev = mac(e)  # type: ignore[operator]
        out.append({**e.to_json(), "hash": prev, "details": json.dumps(e.details, sort_keys=True)})
    with tamper(raw_db) as c:
        c.execute(delete(audit_log))
        c.execute(insert(audit_log), out)
        c.execute(
            update(audit_head).values(
                seq=len(out), hash=prev, key_id=key_id, mac=head_mac(len(out), prev, key_id)
            )
        )  # type: ignore[operator]


def test_untouched_chain_is_keyed_under_the_master_keys_audit_key(
    filled: BlockingService, settings: Settings
) -> None:
    key = audit_key(crypto.read_key_file(settings.key_file))
    entries = filled.audit_entries()
    assert [e.seq for e in entries] == list(range(1, 10))
    assert [e.action for e in entries][:2] == ["store.init", "credential.add"]
    for prev, e in itertools.pairwise(entries):
        assert e.prev_hash == prev.hash
    for e in entries:
        assert e.key_id == key.id
        assert entry_mac(key, e) == e.hash
        assert entry_hash(e) != e.hash, "the unkeyed SHA-256 must not be the entry's MAC"


def test_updated_row_is_named(filled: BlockingService, raw_db: Engine) -> None:
    with tamper(raw_db) as c:
        c.execute(update(audit_log).where(audit_log.c.seq == 4).values(actor="mallory"))
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 4)


def test_updated_details_with_a_recomputed_unkeyed_hash_is_named(
    filled: BlockingService, raw_db: Engine
) -> None:
    r = rows(raw_db)[2]
    forged = as_entry(r, details={"forged": True})
    with tamper(raw_db) as c:
        c.execute(
            update(audit_log)
            .where(audit_log.c.seq == 3)
            .values(details=json.dumps({"forged": True}), hash=entry_hash(forged))
        )
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_deleted_row_is_named(filled: BlockingService, raw_db: Engine) -> None:
    with tamper(raw_db) as c:
        c.execute(delete(audit_log).where(audit_log.c.seq == 5))
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 5)


def test_deleted_tail_is_named(filled: BlockingService, raw_db: Engine) -> None:
    with tamper(raw_db) as c:
        c.execute(delete(audit_log).where(audit_log.c.seq >= 7))
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 7)


def test_reordered_rows_are_named(filled: BlockingService, raw_db: Engine) -> None:
    with tamper(raw_db) as c:
        c.execute(update(audit_log).where(audit_log.c.seq == 3).values(seq=-3))
        c.execute(update(audit_log).where(audit_log.c.seq == 6).values(seq=3))
        c.execute(update(audit_log).where(audit_log.c.seq == -3).values(seq=6))
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_inserted_row_is_named(filled: BlockingService, raw_db: Engine) -> None:
    all_rows = rows(raw_db)
    with tamper(raw_db) as c:
        # Shift entries 4.. up by one and slip a forged entry in at 4.
        for r in reversed(all_rows[3:]):
            c.execute(update(audit_log).where(audit_log.c.seq == r.seq).values(seq=r.seq + 1))
        c.execute(
            insert(audit_log).values(
                seq=4,
                ts=all_rows[3].ts,
                tenant="default",
                actor="mallory",
                action="value.read",
                credential="cred-0",
                rotation_id=None,
                details="{}",
                prev_hash=all_rows[2].hash,
                hash="0" * 64,
                key_id=all_rows[2].key_id,
            )
        )
        c.execute(update(audit_head).values(seq=len(all_rows) + 1))
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 4)


def test_removing_every_value_read_and_recomputing_with_sha256_fails(
    filled: BlockingService, raw_db: Engine
) -> None:
    keep = [as_entry(r) for r in rows(raw_db) if r.action != "value.read"]
    assert len(keep) == 7

    def sha(e: AuditEntry) -> str:
        return entry_hash(e)

    def sha_head(seq: int, h: str, k: str | None) -> str:
        return hashlib.sha256(head_message(seq, h, k or "")).hexdigest()

    real_key_id = keep[0].key_id
    rewrite_chain(raw_db, keep, sha, real_key_id, sha_head)
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 1)
    assert "MAC" in (result.reason or "")
    rewrite_chain(raw_db, keep, sha, None, sha_head)  # and as an "unkeyed" log
    assert not filled.audit_verify().ok


def test_removing_every_value_read_and_recomputing_with_a_guessed_key_fails(
    filled: BlockingService, raw_db: Engine
) -> None:
    keep = [as_entry(r) for r in rows(raw_db) if r.action != "value.read"]
    guess = hashlib.sha256(b"a guessed audit key").digest()

    def mac(e: AuditEntry) -> str:
        return hmac.new(guess, entry_message(e), hashlib.sha256).hexdigest()

    def head_mac(seq: int, h: str, k: str | None) -> str:
        return hmac.new(guess, head_message(seq, h, k or ""), hashlib.sha256).hexdigest()

    rewrite_chain(raw_db, keep, mac, keep[0].key_id, head_mac)
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 1)


def test_cut_tail_with_a_consistent_head_fails_and_refuses_later_writes(
    filled: BlockingService, raw_db: Engine
) -> None:
    all_rows = rows(raw_db)
    last_kept = all_rows[5]  # drop entries 7..9
    with tamper(raw_db) as c:
        old_head_mac = c.execute(select(audit_head.c.mac)).scalar_one()
        c.execute(delete(audit_log).where(audit_log.c.seq > last_kept.seq))
        c.execute(
            update(audit_head).values(
                seq=last_kept.seq, hash=last_kept.hash, key_id=last_kept.key_id, mac=old_head_mac
            )
        )
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert "head" in (result.reason or "")
    # A write now must not chain over the cut (that would make it verify again).
    with pytest.raises(AuditChainBroken):
        filled.get_value("cred-0")
    assert len(rows(raw_db)) == 6


def test_emptied_log_fails(filled: BlockingService, raw_db: Engine) -> None:
    with tamper(raw_db) as c:
        c.execute(delete(audit_log))
    result = filled.audit_verify()
    assert not result.ok
    assert result.first_bad_seq == 1


def test_emptied_log_with_its_head_deleted_fails(filled: BlockingService, raw_db: Engine) -> None:
    with tamper(raw_db) as c:
        c.execute(delete(audit_log))
        c.execute(delete(audit_head))
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 1)
    assert "empty" in (result.reason or "")
    with pytest.raises(AuditChainBroken, match="head is missing"):
        filled.get_value("cred-0")


def test_deleted_head_fails(filled: BlockingService, raw_db: Engine) -> None:
    with tamper(raw_db) as c:
        c.execute(delete(audit_head))
    result = filled.audit_verify()
    assert not result.ok
    assert "head is missing" in (result.reason or "")


def test_log_not_starting_with_store_init_fails(filled: BlockingService, raw_db: Engine) -> None:
    with tamper(raw_db) as c:
        c.execute(update(audit_log).where(audit_log.c.seq == 1).values(action="credential.add"))
    result = filled.audit_verify()
    assert (result.ok, result.first_bad_seq) == (False, 1)
    assert "init" in (result.reason or "")


def test_cli_audit_verify_exits_1_naming_the_entry(
    filled: BlockingService, raw_db: Engine, settings: Settings
) -> None:
    ok = cli(settings, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "ok: 9 entries" in ok.stdout
    with tamper(raw_db) as c:
        c.execute(update(audit_log).where(audit_log.c.seq == 2).values(action="credential.remove"))
    bad = cli(settings, "audit", "verify")
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "rotator: error: audit chain broken at entry 2: its content does not match its MAC"
    )


def test_cli_audit_head_prints_seq_and_mac_of_the_last_entry(
    filled: BlockingService, raw_db: Engine, settings: Settings
) -> None:
    out = cli(settings, "audit", "head")
    assert out.returncode == 0, out.stderr
    last = rows(raw_db)[-1]
    assert out.stdout == f"{last.seq}:{last.hash}\n"
    ok = cli(settings, "audit", "verify", "--expect-head", out.stdout.strip())
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    "anchor", ["9", "x:" + "0" * 64, "9:abc", "0:" + "0" * 64, "9:" + "g" * 64, ""]
)
def test_cli_expect_head_in_a_bad_format_exits_2_with_one_line(
    filled: BlockingService, settings: Settings, anchor: str
) -> None:
    out = cli(settings, "audit", "verify", "--expect-head", anchor)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "--expect-head" in lines[0], out.stderr


def test_expect_head_detects_a_rollback_to_an_older_copy_and_a_rewrite(
    filled: BlockingService, raw_db: Engine, settings: Settings
) -> None:
    # An older copy of the log and head (a consistent keyed state, e.g. from a backup).
    with raw_db.connect() as c:
        old_rows = [dict(r._mapping) for r in c.execute(select(audit_log))]
        old_head = dict(c.execute(select(audit_head)).one()._mapping)
    filled.get_value("cred-0")
    filled.get_value("cred-3")
    anchor = cli(settings, "audit", "head").stdout.strip()
    assert anchor.startswith("11:")
    # Roll the log back to the older copy: on its own it verifies ...
    with tamper(raw_db) as c:
        c.execute(delete(audit_log))
        c.execute(insert(audit_log), old_rows)
        c.execute(update(audit_head).values(**old_head))
    assert cli(settings, "audit", "verify").returncode == 0
    # ... the anchor kept outside says it was truncated.
    cut = cli(settings, "audit", "verify", "--expect-head", anchor)
    assert cut.returncode == 1
    assert "truncated" in cut.stderr
    assert len(cut.stderr.strip().splitlines()) == 1
    # New writes on the rolled-back copy reach seq 11 again, with other content: rewritten.
    filled.get_value("cred-1")
    filled.get_value("cred-1")
    again = cli(settings, "audit", "verify", "--expect-head", anchor)
    assert again.returncode == 1
    assert "entry 11" in again.stderr
    assert "rewritten" in again.stderr


def test_rotate_master_links_the_chain_to_the_new_audit_key(
    filled: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    old = audit_key(crypto.read_key_file(settings.key_file))
    filled.rotate_master_key()
    filled.get_value("cred-0")
    new = audit_key(crypto.read_key_file(settings.key_file))
    assert new.id != old.id
    entries = filled.audit_entries()
    link = next(e for e in entries if e.action == "audit.key_link")
    assert link.key_id == old.id
    assert link.details["to_key"] == new.id
    assert all(e.key_id == old.id for e in entries if e.seq <= link.seq)
    assert all(e.key_id == new.id for e in entries if e.seq > link.seq)
    assert entries[-1].action == "value.read"
    # A fresh process holding only the new key verifies the whole log, old entries included.
    assert cli(settings, "audit", "verify").returncode == 0
    reopened = BlockingService.open(settings)
    assert reopened.audit_verify().ok
    reopened.close()
    # The old audit key is kept, wrapped under the new master key (never stored in clear).
    with raw_db.connect() as c:
        kept = c.execute(sa.text("SELECT id, master_key_id FROM audit_keys")).all()
    assert [tuple(k) for k in kept] == [(old.id, crypto.read_key_file(settings.key_file).id)]


def test_two_master_rotations_keep_the_oldest_entries_verifiable(
    filled: BlockingService, settings: Settings
) -> None:
    filled.rotate_master_key()
    filled.get_value("cred-0")
    filled.rotate_master_key()
    filled.get_value("cred-1")
    assert sum(e.action == "audit.key_link" for e in filled.audit_entries()) == 2
    out = cli(settings, "audit", "verify")
    assert out.returncode == 0, out.stderr


def test_a_process_started_before_a_master_rotation_cannot_write_after_it(
    filled: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    stale = BlockingService.open(settings)
    stale.get_value("cred-0")
    filled.rotate_master_key()
    n = len(rows(raw_db))
    with pytest.raises(AuditKeyUnavailable, match="restart it"):
        stale.get_value("cred-0")
    assert len(rows(raw_db)) == n
    stale.close()


def test_audit_never_holds_a_value(svc: BlockingService, raw_db: Engine) -> None:
    value = "audit-canary-7f3e9b"
    svc.add_credential("x", "local", value=ValueInput(value=Secret(value)))
    svc.update_credential("x", value=ValueInput(value=Secret(value + "-2")))
    svc.get_value("x")
    with raw_db.connect() as c:
        text = json.dumps([list(map(str, r)) for r in c.execute(select(audit_log)).all()])
    assert "audit-canary" not in text


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 9",
        "TRUNCATE audit_log",
    ],
)
def test_postgresql_refuses_update_delete_and_truncate_of_audit_rows(
    filled: BlockingService, raw_db: Engine, statement: str
) -> None:
    if raw_db.dialect.name != "postgresql":
        pytest.skip("the append-only trigger exists on PostgreSQL only")
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), raw_db.begin() as c:
        c.exec_driver_sql(statement)
    assert filled.audit_verify().ok
    assert len(rows(raw_db)) == 9


def test_rotate_master_in_passphrase_mode_links_the_chain(settings: Settings) -> None:
    first = dataclasses.replace(settings, passphrase=Secret("first passphrase"))
    svc, _ = BlockingService.init(first)
    svc.add_credential("a", "local", value=ValueInput(generate=True))
    svc.close()
    moving = dataclasses.replace(first, new_passphrase=Secret("second passphrase"))
    svc = BlockingService.open(moving)
    svc.rotate_master_key()
    svc.close()
    second = BlockingService.open(
        dataclasses.replace(settings, passphrase=Secret("second passphrase"))
    )
    second.get_value("a")
    result = second.audit_verify()
    assert result.ok, result.reason
    actions = [e.action for e in second.audit_entries()]
    assert actions.count("audit.key_link") == 1
    assert actions[-1] == "value.read"
    second.close()
