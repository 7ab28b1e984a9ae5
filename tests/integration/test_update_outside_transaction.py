"""`credential update --generate` runs its connector before, not inside, the store transaction.

A leaf certificate reads its CA through the secret resolver, and that read is itself a write
transaction (use count + audit entry). Generating the leaf inside update_credential's open
write transaction made SQLite wait for its own lock (30 s, then "database is locked").
These tests drive the real CLI in subprocesses on both stores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from rotator.config import Settings
from rotator.connectors import certificate as certs
from rotator.domain.model import Stage
from rotator.errors import ConcurrentModification
from rotator.service import BlockingService, ValueInput

CLI = Path(sys.executable).parent / "rotator"
# Far above a healthy run (a second or two) and above SQLite's 30 s busy timeout, so the old
# code fails with its lock error rather than by this bound.
TIMEOUT_S = 120


def cli(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def ok(args: Sequence[str], env: dict[str, str]) -> str:
    proc = cli(args, env)
    assert proc.returncode == 0, f"$ rotator {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    e = {**base, "ROTATOR_HOME": str(tmp_path / "home"), "ROTATOR_DB": db_url}
    ok(["init"], e)
    ok(
        ["credential", "add", "pki/ca", "--connector", "certificate", "--generate",
         "--set", "role=ca", "--set", "common_name=Internal CA", "--set", "validity=365d"],
        e,
    )  # fmt: skip
    ok(
        ["credential", "add", "svc/tls", "--connector", "certificate", "--generate",
         "--set", "ca=pki/ca", "--set", "common_name=api.internal", "--set", "validity=30d"],
        e,
    )  # fmt: skip
    return e


def leaf_cert(env: dict[str, str], stage: str = "CURRENT") -> x509.Certificate:
    pem = ok(["credential", "get", "svc/tls", "--stage", stage], env)
    return certs.parse_bundle(pem.encode().rstrip(b"\n")).cert


def test_update_generate_of_a_leaf_reads_its_ca_and_succeeds(env: dict[str, str]) -> None:
    old = leaf_cert(env)
    ok(["credential", "update", "svc/tls", "--generate"], env)
    new = leaf_cert(env)
    assert new.serial_number != old.serial_number
    ca = certs.parse_bundle(ok(["credential", "get", "pki/ca"], env).encode().rstrip(b"\n")).cert
    new.verify_directly_issued_by(ca)
    assert leaf_cert(env, "PREVIOUS").serial_number == old.serial_number
    verify = cli(["audit", "verify"], env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_update_fails_when_the_credential_changed_while_its_value_was_generated(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The value is generated outside any transaction; if another writer stored a version
    or changed the credential in between, the update refuses instead of overwriting it."""
    svc, _ = BlockingService.init(Settings(home=tmp_path / "home", db_url=db_url))
    try:
        svc.add_credential("app/key", "local", value=ValueInput(generate=True))
        before = svc.show("app/key")
        service = svc.service
        real = service._new_value
        raced: list[bool] = []

        async def racing(*args: Any, **kwargs: Any) -> Any:
            value = await real(*args, **kwargs)
            if not raced:  # another writer stores a version while this one generates
                raced.append(True)
                await service.update_credential("app/key", value=ValueInput(generate=True))
            return value

        monkeypatch.setattr(service, "_new_value", racing)
        with pytest.raises(ConcurrentModification):
            svc.update_credential("app/key", value=ValueInput(generate=True))
        monkeypatch.undo()
        after = svc.show("app/key")
        assert [v.number for v in after.versions] == [1, 2], "only the other writer's version"
        assert {v.number: v.stage for v in after.versions}[2] is Stage.CURRENT
        assert len(before.versions) == 1
        assert svc.audit_verify().ok
    finally:
        svc.close()


PROBE = Path(__file__).resolve().parents[1] / "support" / "txprobe.py"


def test_no_store_write_transaction_is_open_while_update_generates_a_value(
    tmp_path: Path, db_url: str
) -> None:
    """The rule itself, on both stores: the ``txprobe`` connector's create (which reads a
    referenced credential first, like a leaf its CA) fails if any write transaction is open
    on the store, so `credential add` and `credential update` both generate outside one."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env = {**base, "ROTATOR_HOME": str(tmp_path / "home"), "ROTATOR_DB": db_url}

    def probe_cli(*args: str) -> None:
        proc = subprocess.run(
            [sys.executable, str(PROBE), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        assert proc.returncode == 0, f"$ rotator {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"

    probe_cli("init")
    probe_cli("credential", "add", "base/key", "--connector", "local", "--generate")
    probe_cli(
        "credential", "add", "probe/x", "--connector", "txprobe", "--generate",
        "--set", "ref=base/key",
    )  # fmt: skip
    probe_cli("credential", "update", "probe/x", "--generate")
    probe_cli("credential", "update", "probe/x", "--set", "ref=base/key", "--generate")
