"""Signed audit checkpoints: a copy of the log with its checkpoint verifies with only the
exported public key, in a process that has no store at all (an empty environment); removing,
editing, reordering or truncating entries before the checkpoint, or touching the checkpoint,
fails it. Checkpoints refuse a tampered chain, survive master-key rotations, and the worker
loop makes them periodically. Every test that touches the store runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Connection, Engine, func, select, update
from tests.support.cef import parse_cef

from rotator.audit.chain import canonical
from rotator.config import Settings
from rotator.domain.principal import LOCAL_PRINCIPAL, Grant, Principal, Role
from rotator.errors import InvalidInput, NotFound, PermissionDenied
from rotator.service import BlockingService, RotatorService, ValueInput
from rotator.service import checkpoints as service_cp
from rotator.service.rotation import Selection, serve
from rotator.store.schema import audit_checkpoints, audit_log

ROTATOR = str(Path(sys.executable).parent / "rotator")
DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")},
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
    }
    return subprocess.run(
        [ROTATOR, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def bare(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real console script with an EMPTY environment: no ROTATOR_HOME, no HOME, no PATH."""
    return subprocess.run(
        [ROTATOR, *args], env={}, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@contextmanager
def tamper(raw_db: Engine) -> Iterator[Connection]:
    """A transaction that writes behind rotator's back (skipping PostgreSQL's triggers)."""
    with raw_db.begin() as c:
        if c.dialect.name == "postgresql":
            c.exec_driver_sql("SET LOCAL session_replication_role = replica")
        yield c


def fill(svc: BlockingService) -> None:
    for i in range(3):
        svc.add_credential(f"app/cred-{i}", "local", value=ValueInput(generate=True))
    svc.get_value("app/cred-1")
    svc.rotate(Selection(names=["app/cred-0"]))


def counts(raw_db: Engine) -> tuple[int, int]:
    with raw_db.connect() as c:
        return (
            c.execute(select(func.count()).select_from(audit_log)).scalar_one(),
            c.execute(select(func.count()).select_from(audit_checkpoints)).scalar_one(),
        )


@dataclasses.dataclass
class Shared:
    copy: Path
    checkpoint: Path
    key: Path
    record: dict[str, object]


def share(settings: Settings, tmp_path: Path) -> Shared:
    """What an operator hands an auditor, made with the real commands."""
    made = cli(settings, "audit", "checkpoint", "--json")
    assert made.returncode == 0, made.stderr
    key = cli(settings, "audit", "public-key")
    assert key.returncode == 0, key.stderr
    copy = cli(settings, "audit", "export")
    assert copy.returncode == 0, copy.stderr
    out = tmp_path / "auditor"
    out.mkdir()
    (out / "audit.jsonl").write_text(copy.stdout)
    (out / "checkpoint.json").write_text(made.stdout)
    (out / "keys.pem").write_text(key.stdout)
    return Shared(
        out / "audit.jsonl", out / "checkpoint.json", out / "keys.pem", json.loads(made.stdout)
    )


def verify_bare(shared: Shared, copy: Path | None = None, cp: Path | None = None):  # type: ignore[no-untyped-def]
    return bare(
        "audit",
        "verify-copy",
        str(copy or shared.copy),
        "--checkpoint",
        str(cp or shared.checkpoint),
        "--public-key",
        str(shared.key),
        cwd=shared.copy.parent,
    )


def test_a_copy_with_its_checkpoint_verifies_with_only_the_public_key_in_an_empty_environment(
    svc: BlockingService, settings: Settings, tmp_path: Path
) -> None:
    fill(svc)
    shared = share(settings, tmp_path)
    seq = shared.record["seq"]
    lines = shared.copy.read_text().splitlines()
    # The export holds the checkpoint's own audit entry too, after the checkpoint.
    assert len(lines) == int(str(seq)) + 1
    assert json.loads(lines[-1])["action"] == "audit.checkpoint"

    r = verify_bare(shared)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith(
        f"ok: entries 1..{seq} match the checkpoint signed by key {shared.record['key_id']} "
        f"at {shared.record['created_at']}"
    )
    assert r.stdout.rstrip().endswith(f"; entry {len(lines)} is not covered by it (none redacted)")
    assert not (shared.copy.parent / "rotator.db").exists(), "verify-copy must open no store"


def _resign(record: dict[str, object], **changes: object) -> dict[str, object]:
    """The record re-signed by a key rotator never had (naming that key, unless ``key_id``
    is given among ``changes``)."""
    other = Ed25519PrivateKey.generate()
    raw = other.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    fields = ("v", "seq", "digest", "head_hash", "key_id", "created_at", "prev_seq", "prev_digest")
    body = {k: record[k] for k in fields}
    body.update(changes)
    sig = other.sign(b"rotator/audit-checkpoint/v2|" + canonical(body).encode())
    return {**record, **body, "signature": sig.hex()} | (
        {"key_id": hashlib.sha256(raw).hexdigest()[:16]} if "key_id" not in changes else {}
    )


def test_removing_editing_reordering_or_truncating_entries_or_touching_the_checkpoint_fails(
    svc: BlockingService, settings: Settings, tmp_path: Path
) -> None:
    fill(svc)
    shared = share(settings, tmp_path)
    lines = shared.copy.read_text().splitlines(keepends=True)
    record = shared.record
    seq = int(str(record["seq"]))
    edited = json.loads(lines[3])
    edited["actor"] = "someone-else"

    cases: dict[str, tuple[list[str], dict[str, object] | None, str]] = {
        "an entry line deleted": (
            lines[:2] + lines[3:],
            None,
            "line 3 holds entry 4 where entry 3 belongs",
        ),
        "one field of an entry edited": (
            [*lines[:3], json.dumps(edited, sort_keys=True) + "\n", *lines[4:]],
            None,
            f"digest mismatch: entries 1..{seq} of the copy do not hash to the signed digest",
        ),
        "two lines swapped": (
            [*lines[:2], lines[3], lines[2], *lines[4:]],
            None,
            "line 3 holds entry 4 where entry 3 belongs",
        ),
        "truncated before the checkpoint": (
            lines[: seq - 1],
            None,
            f"the copy ends at entry {seq - 1}, before the checkpoint's entry {seq}",
        ),
        "re-signed with another key": (
            lines,
            _resign(record),
            "bad signature: the checkpoint names key",
        ),
        "re-signed with another key under the genuine key id": (
            lines,
            _resign(record, key_id=record["key_id"]),
            "bad signature: the checkpoint's signature does not verify",
        ),
        "the checkpoint's digest edited": (
            lines,
            {**record, "digest": "0" * 64},
            "bad signature: the checkpoint's signature does not verify",
        ),
    }
    for what, (copy_lines, cp, message) in cases.items():
        copy = tmp_path / "auditor" / "tampered.jsonl"
        copy.write_text("".join(copy_lines))
        cp_path = tmp_path / "auditor" / "tampered-cp.json"
        cp_path.write_text(json.dumps(cp if cp is not None else record))
        r = verify_bare(shared, copy, cp_path)
        assert r.returncode == 1, (what, r.stdout, r.stderr)
        assert r.stdout == "", what
        err = r.stderr.splitlines()
        assert len(err) == 1, (what, r.stderr)
        assert message in err[0], (what, err[0])


def test_a_tenants_export_redacts_other_tenants_entries_and_still_verifies(
    svc: BlockingService, tmp_path: Path
) -> None:
    fill(svc)
    other = LOCAL_PRINCIPAL.with_tenant("team-b")
    svc.add_tenant("team-b")  # tenants are never made on first use
    svc.add_credential(
        "team-b/secret-name", "local", value=ValueInput(generate=True), principal=other
    )
    cp = svc.make_checkpoint()
    auditor = Principal("aud", "team-b", (Grant(Role.AUDITOR),))
    lines = svc.audit_export("jsonl", 0, principal=auditor)
    full = [json.loads(x) for x in lines if "action" in json.loads(x)]
    redacted = [json.loads(x) for x in lines if "action" not in json.loads(x)]
    assert {e["tenant"] for e in full} == {"team-b"}
    assert redacted
    assert all(set(e) == {"seq", "leaf"} for e in redacted)
    assert "app/cred" not in "".join(lines), "another tenant's names must not leak"
    assert [json.loads(x)["seq"] for x in lines] == list(range(1, len(lines) + 1))

    keys = svc.audit_public_keys(principal=auditor)
    (tmp_path / "copy.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "cp.json").write_text(json.dumps(cp.to_json()))
    (tmp_path / "keys.pem").write_text("".join(k.pem for k in keys))
    result = service_cp.verify_copy(
        tmp_path / "copy.jsonl", tmp_path / "cp.json", tmp_path / "keys.pem"
    )
    assert result.ok, result.message
    assert result.covered == cp.seq

    # A changed leaf of a redacted line fails it like a changed entry.
    bad = [json.loads(x) for x in lines]
    i = next(i for i, e in enumerate(bad) if "leaf" in e and e["seq"] <= cp.seq)
    bad[i]["leaf"] = "ab" * 32
    (tmp_path / "copy.jsonl").write_text("".join(json.dumps(e) + "\n" for e in bad))
    result = service_cp.verify_copy(
        tmp_path / "copy.jsonl", tmp_path / "cp.json", tmp_path / "keys.pem"
    )
    assert not result.ok
    assert result.message.startswith("digest mismatch")

    reader = Principal("r", "team-b", (Grant(Role.READER),))
    with pytest.raises(PermissionDenied):
        svc.make_checkpoint(principal=reader)
    with pytest.raises(PermissionDenied):
        svc.audit_export("jsonl", 0, principal=reader)


def test_checkpoints_signed_before_a_master_key_rotation_still_verify_after_it(
    svc: BlockingService, settings: Settings, tmp_path: Path
) -> None:
    fill(svc)
    first = svc.make_checkpoint()
    svc.rotate_master_key()
    svc.add_credential("after/rotation", "local", value=ValueInput(generate=True))
    # A process started after the rotation holds only the new master key.
    svc.close()
    r = cli(settings, "audit", "checkpoint", "--json")
    assert r.returncode == 0, r.stderr
    second = json.loads(r.stdout)
    assert second["key_id"] != first.key_id, "a new master key signs with a new key"
    pem = cli(settings, "audit", "public-key").stdout
    assert f"id {first.key_id}" in pem
    assert f"id {second['key_id']}" in pem
    copy = cli(settings, "audit", "export").stdout
    (tmp_path / "copy.jsonl").write_text(copy)
    (tmp_path / "keys.pem").write_text(pem)
    for cp in (first.to_json(), second):
        (tmp_path / "cp.json").write_text(json.dumps(cp))
        r = bare(
            "audit", "verify-copy", "copy.jsonl", "--checkpoint", "cp.json",
            "--public-key", "keys.pem", cwd=tmp_path,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert f"signed by key {cp['key_id']}" in r.stdout
    listed = json.loads(cli(settings, "audit", "checkpoints", "--json").stdout)
    assert [c["seq"] for c in listed] == [first.seq, second["seq"]]


def test_a_tampered_chain_is_refused_and_nothing_is_signed(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    fill(svc)
    svc.make_checkpoint()
    svc.add_credential("later/one", "local", value=ValueInput(generate=True))
    svc.get_value("later/one")
    svc.close()
    with raw_db.connect() as c:
        target = c.execute(select(func.max(audit_log.c.seq))).scalar_one() - 1
    with tamper(raw_db) as c:
        c.execute(update(audit_log).where(audit_log.c.seq == target).values(actor="intruder"))
    before = counts(raw_db)
    r = cli(settings, "audit", "checkpoint")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.splitlines() == [
        f"rotator: error: audit entry {target} does not verify: its content does not match its MAC"
    ]
    assert counts(raw_db) == before, "a refused checkpoint writes nothing"


def test_a_tampered_chain_without_any_checkpoint_yet_is_refused(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    fill(svc)
    svc.close()
    with tamper(raw_db) as c:
        c.execute(update(audit_log).where(audit_log.c.seq == 2).values(details="{}"))
    before = counts(raw_db)
    r = cli(settings, "audit", "checkpoint")
    assert r.returncode == 1
    assert "audit entry 2 does not verify" in r.stderr
    assert counts(raw_db) == before


def test_export_since_seq_prints_only_later_entries_and_cef_lines_parse(
    svc: BlockingService, settings: Settings
) -> None:
    fill(svc)
    total = len(svc.audit_entries())
    r = cli(settings, "audit", "export", "--since", "3")
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["seq"] for x in r.stdout.splitlines()] == list(range(4, total + 1))
    r = cli(settings, "audit", "export", "--format", "cef")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == total
    for line in lines:
        header, ext = parse_cef(line)
        assert header[:4] == ["CEF:0", "rotator", "rotator", header[3]]
        assert 0 <= int(header[6]) <= 10
        assert ext["act"] == header[4]
    bad = cli(settings, "audit", "export", "--format", "xml")
    assert bad.returncode == 2
    assert len(bad.stderr.splitlines()) == 1


def test_the_docs_standalone_recipe_verifies_a_copy_and_rejects_an_edited_one(
    svc: BlockingService, settings: Settings, tmp_path: Path
) -> None:
    fill(svc)
    shared = share(settings, tmp_path)
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert code is not None
    script = tmp_path / "verify.py"
    script.write_text(code[1])
    assert len(code[1].splitlines()) <= 16
    run = [sys.executable, str(script), str(shared.copy), str(shared.checkpoint), str(shared.key)]
    r = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ok: entries 1..{shared.record['seq']} match"
    lines = shared.copy.read_text().splitlines(keepends=True)
    edited = json.loads(lines[1])
    edited["ts"] = "2020-01-01T00:00:00.000000Z"
    shared.copy.write_text(lines[0] + json.dumps(edited) + "\n" + "".join(lines[2:]))
    r = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode != 0
    assert "does not match the checkpoint" in r.stderr


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_the_periodic_checkpoint_is_made_when_due_and_only_when_entries_were_added(
    svc: BlockingService,
) -> None:
    clock = FakeClock()
    svc.kernel.clock = clock
    fill(svc)

    async def go() -> list[object]:
        periodic = service_cp.PeriodicCheckpoints(svc.service, 3600)
        made: list[object] = []
        clock.now += timedelta(seconds=3599)
        made.append(await periodic.tick())  # not due yet
        clock.now += timedelta(seconds=1)
        made.append(await periodic.tick())  # due, entries added: one
        clock.now += timedelta(seconds=3600)
        made.append(await periodic.tick())  # due, only its own audit.checkpoint entry since
        return made

    made = svc.run(go())
    assert made[0] is None
    assert made[2] is None
    cp = made[1]
    assert cp is not None
    assert [c.seq for c in svc.list_checkpoints()] == [cp.seq]  # type: ignore[attr-defined]


def test_the_worker_loop_makes_a_checkpoint_every_interval_of_its_clock(
    settings: Settings, raw_db: Engine
) -> None:
    BlockingService.init(settings)[0].close()
    clock = FakeClock()
    settings = dataclasses.replace(settings, audit_checkpoint_s=600)

    async def go() -> int:
        svc = await RotatorService.open(settings, clock)
        try:
            await svc.add_credential("w/one", "local", value=ValueInput(generate=True))
            stop = asyncio.Event()
            worker = asyncio.create_task(serve(svc, stop, poll_s=0.05))
            for _ in range(400):  # poll the state; the clock, not the wait, makes it due
                if counts(raw_db)[1]:
                    break
                clock.now += timedelta(seconds=601)
                await asyncio.sleep(0.05)
            stop.set()
            await worker
            return counts(raw_db)[1]
        finally:
            await svc.aclose()

    assert asyncio.run(go()) == 1


def test_evidence_not_found_across_tenants_and_for_bad_ids(svc: BlockingService) -> None:
    fill(svc)
    rid = next(e.rotation_id for e in svc.audit_entries() if e.rotation_id)
    assert rid is not None
    stranger = Principal("aud", "team-b", (Grant(Role.AUDITOR),))
    with pytest.raises(NotFound):
        svc.rotation_evidence(rid, principal=stranger)
    with pytest.raises(NotFound):
        svc.rotation_evidence("0" * 36)
    with pytest.raises(InvalidInput):
        svc.rotation_evidence("not an id")


def test_bad_input_to_the_new_commands_exits_2_with_one_line_and_changes_nothing(
    svc: BlockingService, settings: Settings, raw_db: Engine, tmp_path: Path
) -> None:
    fill(svc)
    shared = share(settings, tmp_path)
    (tmp_path / "not-json.json").write_text("{nope")
    (tmp_path / "not-a-key.pem").write_text(
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    )
    (tmp_path / "no-key.pem").write_text("hello\n")
    before = counts(raw_db)
    verify = ("audit", "verify-copy")
    cases = {
        "missing copy": (*verify, "nope.jsonl", "--checkpoint", str(shared.checkpoint),
                         "--public-key", str(shared.key)),
        "missing checkpoint": (*verify, str(shared.copy), "--checkpoint", "nope.json",
                               "--public-key", str(shared.key)),
        "checkpoint not JSON": (*verify, str(shared.copy), "--checkpoint",
                                str(tmp_path / "not-json.json"), "--public-key", str(shared.key)),
        "checkpoint not a record": (*verify, str(shared.copy), "--checkpoint", str(shared.key),
                                    "--public-key", str(shared.key)),
        "key not a key": (*verify, str(shared.copy), "--checkpoint", str(shared.checkpoint),
                          "--public-key", str(tmp_path / "not-a-key.pem")),
        "key file without a key": (*verify, str(shared.copy), "--checkpoint",
                                   str(shared.checkpoint), "--public-key",
                                   str(tmp_path / "no-key.pem")),
        "export format": ("audit", "export", "--format", "xml"),
        "export since negative": ("audit", "export", "--since", "-1"),
        "evidence bad id": ("report", "evidence", "x y"),
        "evidence unknown id": ("report", "evidence", "0" * 36),
    }  # fmt: skip
    for what, args in cases.items():
        r = cli(settings, *args)
        assert r.returncode == 2, (what, r.stdout, r.stderr)
        assert len(r.stderr.splitlines()) == 1, (what, r.stderr)
        assert r.stderr.startswith("rotator: error: "), (what, r.stderr)
        assert r.stdout == "", what
    assert counts(raw_db) == before
