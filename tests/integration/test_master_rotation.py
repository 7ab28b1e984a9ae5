"""Master-key rotation under concurrency and crashes, with real `rotator keys rotate-master`
processes: whatever happens, every value stays readable with the final master key.

Each test runs on SQLite and PostgreSQL, with a key file and with a passphrase. The processes
run tests/support/run_cli_hooked.py, which patches one store or crypto function to SIGKILL the
process (or wait at a barrier) at its Nth call, so no test hook lives in production code.
Passphrase stores use scrypt n=2^15 (ROTATOR_SCRYPT_N) so that the many runs stay quick.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from rotator import crypto
from rotator.config import Settings
from rotator.domain.secret import Secret
from rotator.errors import ConcurrentModification
from rotator.service import LOCAL_PRINCIPAL, BlockingService, ValueInput
from rotator.store import keys as store_keys

ROOT = Path(__file__).resolve().parents[2]
HOOKED = ROOT / "tests" / "support" / "run_cli_hooked.py"
TIMEOUT_S = 120
FAST_SCRYPT_N = 2**15
TENANTS = ("default", "other")  # two data keys to re-wrap
BUSY = "another master-key rotation is under way"


@dataclass
class Store:
    """A store with known values; ``passphrase`` is the one that opens it now (None: key file)."""

    settings: Settings
    values: dict[tuple[str, str], str]
    passphrase: str | None = None
    next_passphrase: str | None = None
    runs: list[str] = field(default_factory=list)

    def env(self, hook: dict[str, object] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
        env |= {
            "ROTATOR_HOME": str(self.settings.home),
            "ROTATOR_DB": self.settings.db_url,
            "ROTATOR_SCRYPT_N": str(FAST_SCRYPT_N),
        }
        if self.passphrase is not None:
            assert self.next_passphrase is not None
            env["ROTATOR_PASSPHRASE"] = self.passphrase
            env["ROTATOR_NEW_PASSPHRASE"] = self.next_passphrase
        if hook is not None:
            env["ROTATOR_TEST_HOOK"] = json.dumps(hook)
        return env

    def start(self, hook: dict[str, object] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(HOOKED if hook else ROOT / "tests/support/run_cli.py"),
             "keys", "rotate-master"],
            env=self.env(hook),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def rotated(self) -> None:
        """A rotation finished: the new passphrase is now the one that opens the store."""
        if self.passphrase is not None:
            self.passphrase = self.next_passphrase
            self.next_passphrase = f"passphrase-{uuid.uuid4().hex}"

    def final_settings(self) -> Settings:
        """Settings with the key that opens the store now."""
        return replace(
            self.settings,
            passphrase=None if self.passphrase is None else Secret(self.passphrase),
            new_passphrase=None,
        )

    def audit_actions(self) -> list[str]:
        """Every audit entry's action, read with the key that opens the store now."""
        svc = BlockingService.open(self.final_settings())
        try:
            assert svc.audit_verify().ok
            return [e.action for e in svc.audit_entries()]
        finally:
            svc.close()

    def assert_every_value_readable_with_the_final_key(self) -> None:
        final = self.final_settings()
        svc = BlockingService.open(final)
        try:
            got = {
                (t, n): svc.get_value(n, principal=LOCAL_PRINCIPAL.with_tenant(t)).reveal_text()
                for t, n in self.values
            }
            with svc.db.read() as conn:
                master = store_keys.get_meta(conn, "master")
                pending = store_keys.get_meta(conn, "master_next")
        finally:
            svc.close()
        assert got == self.values, "\n".join(self.runs)
        assert pending is None, "a finished rotation left master_next behind"
        if self.passphrase is None:
            assert crypto.read_key_file(final.key_file).id == master["id"]
            assert not final.next_key_file.exists()


@pytest.fixture(params=["key-file", "passphrase"])
def store(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Store:
    passphrase = f"passphrase-{uuid.uuid4().hex}" if request.param == "passphrase" else None
    settings = Settings(
        home=tmp_path / "home",
        db_url=db_url,
        passphrase=None if passphrase is None else Secret(passphrase),
        scrypt_n=FAST_SCRYPT_N,
    )
    svc, _ = BlockingService.init(settings)
    values = {}
    try:
        for tenant in TENANTS:
            if tenant != "default":  # tenants are never made on first use
                svc.add_tenant(tenant)
            for i in range(2):
                name, value = f"app/c{i}", f"value-{tenant}-{i}-{uuid.uuid4().hex}"
                svc.add_credential(
                    name, "local", value=ValueInput(value=Secret(value)),
                    principal=LOCAL_PRINCIPAL.with_tenant(tenant),
                )  # fmt: skip
                values[(tenant, name)] = value
    finally:
        svc.close()
    return Store(
        settings=replace(settings, passphrase=None),
        values=values,
        passphrase=passphrase,
        next_passphrase=None if passphrase is None else f"passphrase-{uuid.uuid4().hex}",
    )


def finish(proc: subprocess.Popen[str], what: str, store: Store) -> tuple[int, str]:
    out, err = proc.communicate(timeout=TIMEOUT_S)
    store.runs.append(f"{what}: exit {proc.returncode}\n{out}{err}")
    return proc.returncode, err


def test_two_concurrent_rotate_master_runs_keep_every_value_readable(
    store: Store, tmp_path: Path
) -> None:
    """Both processes reach the re-wrap together unless one is shut out by the lock; the
    second is let on only after the first has exited (the interleaving that made the second
    clear the master entry)."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    hook = {
        "target": "rotator.store.keys:data_keys_not_wrapped_by",
        "call": 1,
        "action": "barrier",
        "dir": str(barrier),
    }
    procs = [store.start(hook), store.start(hook)]
    deadline = time.monotonic() + TIMEOUT_S
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.02)  # polling real processes for their exit
    (barrier / "release").touch()
    results = [finish(p, f"run {i}", store) for i, p in enumerate(procs)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], "\n".join(store.runs)
    loser = next(err for code, err in results if code == 1)
    assert loser == f"rotator: error: {BUSY}\n", "\n".join(store.runs)
    store.rotated()
    store.assert_every_value_readable_with_the_final_key()
    actions = store.audit_actions()
    # The refused run never started: its audit trail shows one rotation, begun and done.
    assert actions.count("keys.rotate_master.start") == 1
    assert actions.count("keys.rotate_master.done") == 1


# (target, when): every transaction boundary, the uncommitted inside of the first and the last
# transaction, and in key-file mode every step of writing and moving the new key file.
KILL_POINTS = [
    ("rotator.store.db:Database.write", "before"),
    ("rotator.store.keys:begin_master_rotation", "after"),
    ("rotator.store.keys:finish_master_rotation", "after"),
]
KEY_FILE_KILL_POINTS = [
    ("rotator.crypto:write_key_file", "before"),
    ("os:write", "before"),  # the new key file created but still empty
    ("os:fsync", "before"),  # the new key file written but not synced, then each directory sync
    ("rotator.crypto:write_key_file", "after"),
    ("rotator.crypto:replace_key_file", "before"),
    ("rotator.crypto:replace_key_file", "after"),
]


def test_rotate_master_killed_at_every_step_then_rerun_keeps_every_value_readable(
    store: Store,
) -> None:
    points = KILL_POINTS + (KEY_FILE_KILL_POINTS if store.passphrase is None else [])
    kills = 0
    for target, when in points:
        for call in range(1, 50):
            hook = {"target": target, "call": call, "when": when, "action": "kill"}
            code, _ = finish(store.start(hook), f"{target} {when} #{call}", store)
            if code == 0:  # fewer than `call` calls: this run rotated to the end
                store.rotated()
                store.assert_every_value_readable_with_the_final_key()
                break
            assert code == -signal.SIGKILL, "\n".join(store.runs)
            kills += 1
            code, _ = finish(store.start(), f"rerun after {target} {when} #{call}", store)
            assert code == 0, "\n".join(store.runs)
            store.rotated()
            store.assert_every_value_readable_with_the_final_key()
        else:
            pytest.fail(f"{target} was called more than 49 times")
    assert kills >= len(points), "some kill points were never reached"


def opened(store: Store, *, rotating: bool = False) -> BlockingService:
    """An in-process service holding the keys the store has now."""
    settings = store.settings
    if store.passphrase is not None:
        assert store.next_passphrase is not None
        settings = replace(
            settings,
            passphrase=Secret(store.passphrase),
            new_passphrase=Secret(store.next_passphrase) if rotating else None,
        )
    return BlockingService.open(settings)


def test_process_that_loaded_keys_before_a_master_rotation_cannot_make_a_data_key_under_the_old_key(
    store: Store,
) -> None:
    """Its new tenant's data key would be wrapped by a key the store no longer keeps."""
    stale = opened(store)
    try:
        code, _ = finish(store.start(), "rotate-master", store)
        assert code == 0, "\n".join(store.runs)
        store.rotated()
        with pytest.raises(ConcurrentModification, match="master key was rotated"):
            stale.add_tenant("late")
    finally:
        stale.close()
    store.assert_every_value_readable_with_the_final_key()


def test_data_key_made_during_a_master_rotation_is_rewrapped_before_the_swap(
    store: Store,
) -> None:
    stale = opened(store)
    rotating = opened(store, rotating=True)

    def meanwhile(done: int, total: int) -> None:
        if done == total:  # every data key known at the start is re-wrapped already
            stale.add_tenant("late")
            stale.add_credential(
                "late/one", "local", value=ValueInput(value=Secret("late-value")),
                principal=LOCAL_PRINCIPAL.with_tenant("late"),
            )  # fmt: skip

    try:
        rotating.rotate_master_key(progress=meanwhile)
    finally:
        stale.close()
        rotating.close()
    store.values[("late", "late/one")] = "late-value"
    store.rotated()
    store.assert_every_value_readable_with_the_final_key()
