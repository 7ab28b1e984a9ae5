"""What review found in signed checkpoints and verify-copy, each shown against the real store,
the real console script and real files: a checkpoint forged by a database writer is refused,
checkpoints chain, redacted leaves are salted, verify-copy names its redactions and refuses
them with --full, the chain is folded outside the audit head's lock, malformed lines are bad
input, and checkpoint listings do not show other tenants' principal names. Every test that
touches the store runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine, delete, insert, select, update
from tests.integration.test_audit_checkpoints import bare, cli, counts, fill, share, tamper

from rotator.audit import checkpoints as audit_cp
from rotator.audit.chain import canonical
from rotator.config import Settings
from rotator.crypto.signing import public_pem
from rotator.domain.principal import LOCAL_PRINCIPAL, Grant, Principal, Role
from rotator.service import BlockingService, ValueInput
from rotator.service import checkpoints as service_cp
from rotator.store.schema import audit_checkpoints, audit_log, audit_signing_keys

ZERO = "0" * 64


def digests(lines: list[str]) -> Iterator[str]:
    """D(1), D(2), ... of an export, computed here from the documented recipe."""
    d = bytes(32)
    for line in lines:
        e = json.loads(line)
        if set(e) == {"seq", "leaf"}:
            leaf = bytes.fromhex(e["leaf"])
        else:
            salt = bytes.fromhex(e.pop("salt"))
            leaf = hashlib.sha256(b"rotator/audit-leaf/v2|" + salt + canonical(e).encode()).digest()
        d = hashlib.sha256(b"rotator/audit-digest/v1|" + d + leaf).digest()
        yield d.hex()


def sign(key: Ed25519PrivateKey, **body: Any) -> dict[str, Any]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    body = {"v": 2, "key_id": hashlib.sha256(raw).hexdigest()[:16], **body}
    sig = key.sign(b"rotator/audit-checkpoint/v2|" + canonical(body).encode())
    return {**body, "signature": sig.hex(), "created_by": "x"}


def test_a_checkpoint_forged_under_a_key_inserted_in_the_store_is_refused_never_extended(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    # attack1.sh: a database writer without the master key hides a value read by editing the
    # log, inserts its own signing key and a checkpoint over the edited log; rotator must not
    # sign on top of it, nor export that key as its own.
    svc.add_credential("prod/db", "local", value=ValueInput(generate=True))
    svc.make_checkpoint()
    pinned = cli(settings, "audit", "public-key").stdout
    svc.get_value("prod/db")
    svc.add_credential("prod/other", "local", value=ValueInput(generate=True))
    svc.close()
    insider = Ed25519PrivateKey.generate()
    raw = insider.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with tamper(raw_db) as c:
        c.execute(
            update(audit_log).where(audit_log.c.action == "value.read").values(action="x.show")
        )
        seq, head_hash = c.execute(
            select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
        ).one()
        prev = c.execute(select(audit_checkpoints)).one()
        forged = sign(
            insider, seq=seq, digest="ab" * 32, head_hash=head_hash,
            created_at="2026-11-28T17:00:00.000000Z", prev_seq=prev.seq,
            prev_digest=prev.digest,
        )  # fmt: skip
        c.execute(
            insert(audit_signing_keys).values(
                id=forged["key_id"], public_key=raw, created_at=svc.kernel.clock()
            )
        )
        c.execute(
            insert(audit_checkpoints).values(
                {k: forged[k] for k in ("seq", "digest", "head_hash", "key_id", "signature")}
                | {"created_at": forged["created_at"], "created_by": "local"}
            )
        )
    keys = cli(settings, "audit", "public-key").stdout
    assert forged["key_id"] not in keys, "a key from the store is never exported as rotator's"
    assert keys == pinned
    before = counts(raw_db)
    r = cli(settings, "audit", "checkpoint")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.splitlines() == [
        f"rotator: error: audit entry {seq} does not verify: checkpoint {seq} is not signed "
        f"by rotator (key {forged['key_id']})"
    ]
    assert counts(raw_db) == before, "nothing is signed over a forged checkpoint"


def test_a_checkpoint_removed_from_the_store_breaks_the_chain_of_checkpoints(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    fill(svc)
    first = svc.make_checkpoint()
    svc.add_credential("later/one", "local", value=ValueInput(generate=True))
    second = svc.make_checkpoint()
    assert (second.prev_seq, second.prev_digest) == (first.seq, first.digest)
    assert (first.prev_seq, first.prev_digest) == (0, ZERO)
    svc.add_credential("later/two", "local", value=ValueInput(generate=True))
    svc.close()
    with tamper(raw_db) as c:
        c.execute(delete(audit_checkpoints).where(audit_checkpoints.c.seq == first.seq))
    before = counts(raw_db)
    r = cli(settings, "audit", "checkpoint")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"checkpoint {second.seq} does not chain to the checkpoint before it" in r.stderr
    assert counts(raw_db) == before


def test_several_checkpoints_given_to_verify_copy_are_each_checked_and_must_chain(
    svc: BlockingService, settings: Settings, tmp_path: Path
) -> None:
    fill(svc)
    first = svc.make_checkpoint()
    svc.add_credential("later/one", "local", value=ValueInput(generate=True))
    shared = share(settings, tmp_path)
    (tmp_path / "first.json").write_text(json.dumps(first.to_json()))
    args = ("audit", "verify-copy", str(shared.copy), "--public-key", str(shared.key))
    r = bare(*args, "--checkpoint", str(tmp_path / "first.json"), "--checkpoint",
             str(shared.checkpoint), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    second = shared.record["seq"]
    assert r.stdout.startswith(
        f"ok: entries 1..{second} match 2 chained checkpoints (of entries {first.seq}, {second})"
    )

    # Checkpoints that do not chain, signed by a key the verifier was given.
    lines = shared.copy.read_text().splitlines()
    d = list(digests(lines))
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    (tmp_path / "other.pem").write_text(public_pem(raw))
    at = "2026-01-01T00:00:00.000000Z"

    def cp(seq: int, prev_seq: int, prev_digest: str) -> Path:
        record = sign(key, seq=seq, digest=d[seq - 1], head_hash=json.loads(lines[seq - 1])[
            "hash"], created_at=at, prev_seq=prev_seq, prev_digest=prev_digest)  # fmt: skip
        path = tmp_path / f"cp-{seq}-{prev_seq}-{prev_digest[:4]}.json"
        path.write_text(json.dumps(record))
        return path

    cases = {
        "chained": ((cp(3, 0, ZERO), cp(6, 3, d[2])), 0, "match 2 chained checkpoints"),
        "the later names an older previous": (
            (cp(3, 0, ZERO), cp(6, 2, d[1])), 1,
            "checkpoint 6 does not chain to checkpoint 3: it names checkpoint 2 as its previous",
        ),
        "the later names another digest for the earlier": (
            (cp(3, 0, ZERO), cp(6, 3, d[1])), 1,
            "checkpoint 6 does not chain to checkpoint 3: it names checkpoint 3 as its previous "
            "with another digest",
        ),
        "a previous digest the copy does not give": (
            (cp(6, 2, "cd" * 32),), 1,
            "checkpoint 6 does not chain: entries 1..2 of the copy do not hash to the digest",
        ),
        "a first checkpoint with a nonzero previous digest": (
            (cp(4, 0, "ef" * 32),), 1, "checkpoint 4 does not chain",
        ),
    }  # fmt: skip
    for what, (paths, code, message) in cases.items():
        opts = [x for p in paths for x in ("--checkpoint", str(p))]
        r = bare("audit", "verify-copy", str(shared.copy), "--public-key",
                 str(tmp_path / "other.pem"), *opts, cwd=tmp_path)  # fmt: skip
        assert r.returncode == code, (what, r.stdout, r.stderr)
        assert message in (r.stdout + r.stderr), (what, r.stdout, r.stderr)
        if code:
            assert len(r.stderr.splitlines()) == 1, what
            assert r.stdout == "", what


def test_a_redacted_leaf_is_salted_so_knowing_the_whole_entry_does_not_confirm_it(
    svc: BlockingService,
) -> None:
    # leak.py: another tenant's auditor guessed a redacted value.read from its neighbours. Even
    # the exact entry, known here in full to the owner, must not reproduce its leaf.
    svc.add_tenant("a")  # tenants are never made on first use
    svc.add_tenant("b")
    a, b = LOCAL_PRINCIPAL.with_tenant("a"), LOCAL_PRINCIPAL.with_tenant("b")
    svc.add_credential("app/one", "local", value=ValueInput(generate=True), principal=a)
    svc.add_credential("prod/payments/db", "local", value=ValueInput(generate=True), principal=b)
    svc.get_value("prod/payments/db", principal=b)
    auditor = Principal("carol", "a", (Grant(Role.AUDITOR),))
    theirs = [json.loads(x) for x in svc.audit_export("jsonl", 0, principal=auditor)]
    full = [json.loads(x) for x in svc.audit_export("jsonl", 0)]
    read = dict(next(e for e in full if e["action"] == "value.read"))
    hidden = theirs[read["seq"] - 1]
    assert set(hidden) == {"seq", "leaf"}
    salt = bytes.fromhex(read.pop("salt"))
    assert len(salt) == 32
    entry = canonical(read).encode()
    assert hidden["leaf"] != hashlib.sha256(entry).hexdigest()
    assert hidden["leaf"] != hashlib.sha256(b"rotator/audit-leaf/v2|" + entry).hexdigest()
    assert hidden["leaf"] == hashlib.sha256(b"rotator/audit-leaf/v2|" + salt + entry).hexdigest()
    assert all("salt" in e for e in theirs if "leaf" not in e)
    assert len({e["salt"] for e in full}) == len(full), "a salt per entry"


def test_verify_copy_says_which_lines_were_redacted_and_full_refuses_any(
    svc: BlockingService, settings: Settings, tmp_path: Path
) -> None:
    fill(svc)
    svc.add_tenant("team-b")  # tenants are never made on first use
    b = LOCAL_PRINCIPAL.with_tenant("team-b")
    svc.add_credential("team-b/one", "local", value=ValueInput(generate=True), principal=b)
    cp = svc.make_checkpoint()
    auditor = Principal("aud", "team-b", (Grant(Role.AUDITOR),))
    lines = svc.audit_export("jsonl", 0, principal=auditor)
    hidden = [json.loads(x)["seq"] for x in lines if "leaf" in json.loads(x)]
    runs: list[list[int]] = []
    for n in hidden:
        if runs and runs[-1][-1] == n - 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    expected = ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
    assert len(runs) >= 2, "the test needs several runs of redacted lines"
    (tmp_path / "copy.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "full.jsonl").write_text("\n".join(svc.audit_export("jsonl", 0)) + "\n")
    (tmp_path / "cp.json").write_text(json.dumps(cp.to_json()))
    (tmp_path / "keys.pem").write_text("".join(k.pem for k in svc.audit_public_keys()))
    verify = ("audit", "verify-copy", "--checkpoint", "cp.json", "--public-key", "keys.pem")

    r = bare(*verify, "copy.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith(f" ({len(hidden)} redacted: {expected})")

    r = bare(*verify, "copy.jsonl", "--full", cwd=tmp_path)
    assert r.returncode == 1, r.stdout
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        f"rotator: error: line {hidden[0]} (entry {hidden[0]}) is redacted, and --full refuses "
        "redacted lines"
    ]

    r = bare(*verify, "full.jsonl", "--full", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith(" (none redacted)")


def test_the_first_checkpoint_folds_the_log_outside_the_head_lock_and_only_the_rest_inside(
    svc: BlockingService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fill(svc)
    for i in range(20):
        svc.add_credential(f"bulk/{i}", "local", value=ValueInput(generate=True))
    kernel = svc.kernel
    phase = ["none"]
    checked: dict[str, int] = {"read": 0, "write": 0}
    real_prepare, real_check = audit_cp.prepare, audit_cp.check_range

    def prepare(conn: Any, **kw: Any) -> audit_cp.Folded:
        phase[0] = "read"
        folded = real_prepare(conn, **kw)
        phase[0] = "write"
        return folded

    def check_range(*args: Any, **kw: Any) -> Iterator[Any]:
        for e in real_check(*args, **kw):
            checked[phase[0]] += 1
            yield e

    real_read = kernel.db.read

    def read() -> Any:
        # After the read transaction of the snapshot ends, before the write one: an append
        # made by another writer in between, which the write transaction must fold itself.
        cm = real_read()
        if phase[0] != "none":
            return cm

        class Wrap:
            def __enter__(self) -> Any:
                return cm.__enter__()

            def __exit__(self, *exc: Any) -> Any:
                out = cm.__exit__(*exc)
                if phase[0] == "write":
                    with kernel.db.write() as c:
                        kernel.audit(c, LOCAL_PRINCIPAL, "test.between")
                return out

        return Wrap()

    monkeypatch.setattr(audit_cp, "prepare", prepare)
    monkeypatch.setattr(audit_cp, "check_range", check_range)
    monkeypatch.setattr(kernel.db, "read", read)
    total = len(svc.audit_entries())
    cp = svc.make_checkpoint()
    monkeypatch.undo()
    assert checked == {"read": total, "write": 1}
    assert cp.seq == total + 1, "the entry appended between the two transactions is covered"
    (tmp_path / "copy.jsonl").write_text("\n".join(svc.audit_export("jsonl", 0)) + "\n")
    (tmp_path / "cp.json").write_text(json.dumps(cp.to_json()))
    (tmp_path / "keys.pem").write_text("".join(k.pem for k in svc.audit_public_keys()))
    result = service_cp.verify_copy(
        tmp_path / "copy.jsonl", tmp_path / "cp.json", tmp_path / "keys.pem"
    )
    assert result.ok, result.message


def test_a_line_that_is_not_strict_json_is_bad_input_exit_2_with_one_line(
    svc: BlockingService, settings: Settings, tmp_path: Path
) -> None:
    fill(svc)
    shared = share(settings, tmp_path)
    lines = shared.copy.read_text().splitlines()
    entry = json.loads(lines[1])
    genuine = json.dumps(entry["action"])
    # A duplicate key: the first value is what most tools show, the last what would be hashed.
    dup = lines[1].replace('"action": ', '"action": "nothing.happened", "action": ', 1)
    assert dup != lines[1]
    cases = {
        "nested too deep": "[" * 200000 + "]" * 200000,
        "NaN": lines[1].replace(f'"action": {genuine}', '"action": NaN', 1),
        "1e999": lines[1].replace('"seq": 2', '"seq": 2, "n": 1e999', 1),
        "Infinity": '{"seq": 2, "leaf": Infinity}',
        "a duplicate key": dup,
        "an array": "[1, 2]",
    }
    for what, bad in cases.items():
        assert bad != lines[1], what
        copy = tmp_path / "bad.jsonl"
        copy.write_text("\n".join([lines[0], bad, *lines[2:]]) + "\n")
        r = bare("audit", "verify-copy", str(copy), "--checkpoint", str(shared.checkpoint),
                 "--public-key", str(shared.key), cwd=tmp_path)  # fmt: skip
        assert r.returncode == 2, (what, r.stdout, r.stderr[-500:])
        assert r.stdout == "", what
        assert r.stderr.splitlines() == ["rotator: error: line 2 is not a JSON object"], what


def test_checkpoint_listings_show_other_tenants_principal_names_only_to_the_owner(
    svc: BlockingService, settings: Settings
) -> None:
    svc.add_tenant("a")  # tenants are never made on first use
    svc.add_tenant("b")
    a, b = LOCAL_PRINCIPAL.with_tenant("a"), LOCAL_PRINCIPAL.with_tenant("b")
    svc.add_credential("x/one", "local", value=ValueInput(generate=True), principal=a)
    svc.add_credential("y/one", "local", value=ValueInput(generate=True), principal=b)
    bob = Principal("bob-admin-of-b", "b", (Grant(Role.ADMIN),))
    alice = Principal("alice-auditor-of-a", "a", (Grant(Role.AUDITOR),))
    svc.make_checkpoint(principal=bob)
    svc.add_credential("x/two", "local", value=ValueInput(generate=True), principal=a)
    svc.make_checkpoint(principal=alice)
    svc.add_credential("x/three", "local", value=ValueInput(generate=True), principal=a)
    svc.make_checkpoint()
    by = {
        who: [c.created_by for c in svc.list_checkpoints(principal=p)]
        for who, p in {"owner": LOCAL_PRINCIPAL, "a": alice, "b": bob}.items()
    }
    assert by == {
        "owner": ["bob-admin-of-b", "alice-auditor-of-a", "local"],
        "a": ["-", "alice-auditor-of-a", "local"],
        "b": ["bob-admin-of-b", "-", "local"],
    }
    # created_by is not signed: a listed checkpoint with "-" still verifies.
    listed = svc.list_checkpoints(principal=alice)[0]
    raw = audit_cp.trusted_keys(svc.kernel.audit_keys)[listed.key_id]
    assert listed.verifies(raw)
