"""Crash safety with real processes: the CLI is killed with SIGKILL between two steps, then a
new process recovers. No credential is left without a CURRENT value that works on its target,
and no version is lost. Also: two concurrent `rotator rotate X` make exactly one new version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from tests.support import doubles
from tests.support.doubles import DoubleConfig

from rotator.config import Settings
from rotator.domain.model import Stage
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.store.schema import rotations

RUN_CLI = Path(__file__).resolve().parents[1] / "support" / "run_cli.py"
RUN_CLI_HOOKED = RUN_CLI.with_name("run_cli_hooked.py")
NAMES = ["app/c0", "app/c1", "app/c2"]


@pytest.fixture(autouse=True)
def _double() -> None:
    doubles.install()


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
        **extra,
    }


def cli(settings: Settings, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN_CLI), *args],
        env=cli_env(settings, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def target(tmp_path: Path) -> dict[str, str]:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    return {"state": str(tmp_path / "target.json"), "barrier": str(barrier)}


def setup_store(settings: Settings, cfg: dict[str, str]) -> dict[str, str]:
    svc, _ = BlockingService.init(settings)
    initial = {}
    for name in NAMES:
        svc.add_credential(
            name,
            "double",
            settings=cfg,
            policy=PolicyInput(grace="1h"),
            value=ValueInput(generate=True),
        )
        initial[name] = svc.get_value(name).reveal_text()
        doubles.target_add(DoubleConfig(**cfg), name, initial[name])
    svc.close()
    return initial


def start_and_kill_at_barrier(settings: Settings, cfg: dict[str, str], step: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(RUN_CLI), "rotate", *NAMES, "--json", "--concurrency", "3"],
        env=cli_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    barrier = Path(cfg["barrier"])
    deadline = time.monotonic() + 60
    while len(list(barrier.glob(f"{step}.*.reached"))) < len(NAMES):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"rotate did not reach the {step} barrier: rc={proc.returncode} {err}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (barrier / "release").touch()


def assert_consistent(
    settings: Settings, cfg: dict[str, str], initial: dict[str, str], raw: Engine
) -> None:
    svc = BlockingService.open(settings)
    try:
        for name in NAMES:
            cred = svc.show(name)
            stages = {v.number: v.stage for v in cred.versions}
            assert list(stages) == [1, 2], f"{name}: a version was lost or duplicated: {stages}"
            assert list(stages.values()).count(Stage.CURRENT) == 1
            current = svc.get_value(name).reveal_text()
            accepted = doubles.target_values(DoubleConfig(**cfg), name)
            assert current in accepted, f"{name}: CURRENT does not work on the target"
            if stages[2] is Stage.CURRENT:  # resumed forward: old value still valid for grace
                assert stages[1] is Stage.PREVIOUS
                assert initial[name] in accepted
                assert svc.get_value(name, Stage.PREVIOUS).reveal_text() == initial[name]
            else:  # rolled back: old value CURRENT, candidate gone from the target
                assert (stages[1], stages[2]) == (Stage.CURRENT, Stage.FAILED)
                assert current == initial[name]
        with raw.connect() as c:
            steps = c.execute(select(rotations.c.credential, rotations.c.step)).all()
        assert {s for _, s in steps} <= {"finished", "rolled_back", "failed"}, steps
        assert svc.audit_verify().ok
        resumed = [e for e in svc.audit_entries() if e.action == "rotation.resume"]
        assert len(resumed) == len(NAMES)
    finally:
        svc.close()


@pytest.mark.parametrize("step", ["set", "test"])
def test_kill_9_between_steps_then_recover(
    settings: Settings, target: dict[str, str], raw_db: Engine, step: str
) -> None:
    cfg = {**target, "barrier_after": step}
    initial = setup_store(settings, cfg)
    start_and_kill_at_barrier(settings, cfg, step)
    # The dead process left active rotations with PENDING versions behind.
    with raw_db.connect() as c:
        steps = c.execute(select(rotations.c.step)).scalars().all()
    assert sorted(steps) == (["created"] * 3 if step == "set" else ["set"] * 3)
    result = cli(settings, "recover")
    assert result.returncode == 0, result.stderr
    assert "recovered 3 rotation(s)" in result.stdout
    assert_consistent(settings, cfg, initial, raw_db)


def test_rotation_owned_by_another_host_waits_for_its_lease_but_not_for_one_from_a_clock_days_ahead(
    settings: Settings, target: dict[str, str], raw_db: Engine
) -> None:
    cfg = {**target, "barrier_after": "set"}
    initial = setup_store(settings, cfg)
    start_and_kill_at_barrier(settings, cfg, "set")
    far = BlockingService.open(settings)
    future = far.clock() + timedelta(hours=1)  # a lease a live owner elsewhere may hold
    far.close()
    with raw_db.begin() as c:  # as if the dead owner ran on another machine: pid unknowable
        c.execute(update(rotations).values(owner="elsewhere:1:x", lease_expires_at=future))
    early = cli(settings, "recover")
    assert early.returncode == 0, early.stderr
    assert "recovered 0 rotation(s)" in early.stdout
    # Three days ahead: longer than any lease is granted for (a day at most), so it was taken
    # by a clock far ahead of ours (or one that stepped back since): not waited for.
    with raw_db.begin() as c:
        c.execute(update(rotations).values(lease_expires_at=future + timedelta(days=3)))
    late = cli(settings, "recover")
    assert "recovered 3 rotation(s)" in late.stdout, late.stderr
    assert_consistent(settings, cfg, initial, raw_db)


def test_rotate_after_crash_recovers_first_then_rotates_again(
    settings: Settings, target: dict[str, str], raw_db: Engine
) -> None:
    cfg = {**target, "barrier_after": "set"}
    setup_store(settings, cfg)
    start_and_kill_at_barrier(settings, cfg, "set")
    result = cli(settings, "rotate", *NAMES, "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(result.stdout)["rotated"]) == NAMES
    svc = BlockingService.open(settings)
    for name in NAMES:
        stages = {v.number: v.stage for v in svc.show(name).versions}
        assert stages == {1: Stage.PREVIOUS, 2: Stage.PREVIOUS, 3: Stage.CURRENT}
        assert svc.get_value(name).reveal_text() in doubles.target_values(DoubleConfig(**cfg), name)
    svc.close()


def test_two_concurrent_rotate_processes_make_exactly_one_version(
    settings: Settings, target: dict[str, str]
) -> None:
    cfg = {"state": target["state"], "latency_ms": "400"}
    svc, _ = BlockingService.init(settings)
    svc.add_credential("x", "double", settings=cfg, value=ValueInput(generate=True))
    doubles.target_add(DoubleConfig(**cfg), "x", svc.get_value("x").reveal_text())
    svc.close()
    # Both processes are held at the start of their batch and released together: how long
    # each takes to start (imports, a loaded machine) must not decide whether they overlap.
    gate = settings.home.parent / "gate"
    gate.mkdir()
    hook = {
        "target": "rotator.engine.context:ContextLoader.prepare_many",
        "call": 1,
        "action": "gate",
        "dir": str(gate),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(RUN_CLI_HOOKED), "rotate", "x", "--json"],
            env=cli_env(settings, ROTATOR_TEST_HOOK=json.dumps(hook)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 120
    while len(list(gate.glob("arrived-*"))) < 2:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline, "the two rotate processes never reached the gate"
        time.sleep(0.02)
    (gate / "release").touch()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert json.loads(out)["rotated"] == ["x"]
    svc = BlockingService.open(settings)
    versions = svc.show("x").versions
    assert [(v.number, v.stage) for v in versions] == [(1, Stage.PREVIOUS), (2, Stage.CURRENT)]
    creates = [e for e in svc.audit_entries() if e.action == "rotation.create"]
    assert len(creates) == 1
    svc.close()


def test_all_or_nothing_group_killed_midway_is_rolled_back_on_recovery(
    settings: Settings, target: dict[str, str], raw_db: Engine
) -> None:
    plain = {"state": target["state"]}
    stop = {**plain, "barrier": target["barrier"], "barrier_after": "set"}
    svc, _ = BlockingService.init(settings)
    initial = {}
    for name, cfg in (("db", plain), ("app", stop)):
        svc.add_credential(name, "double", settings=cfg, value=ValueInput(generate=True))
        initial[name] = svc.get_value(name).reveal_text()
        doubles.target_add(DoubleConfig(**cfg), name, initial[name])
    svc.close()
    added = cli(
        settings, "group", "add", "pair", "--member", "db", "--member", "app", "--all-or-nothing"
    )
    assert added.returncode == 0, added.stderr
    proc = subprocess.Popen(
        [sys.executable, str(RUN_CLI), "rotate", "--group", "pair", "--json"],
        env=cli_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    barrier = Path(target["barrier"])
    deadline = time.monotonic() + 60
    while not list(barrier.glob("set.app.reached")):
        assert time.monotonic() < deadline, "app never reached its barrier"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    (barrier / "release").touch()
    # db was set and tested, app was set: neither may finish alone.
    result = cli(settings, "recover")
    assert result.returncode == 0, result.stderr
    assert "recovered 2 rotation(s)" in result.stdout
    svc = BlockingService.open(settings)
    for name in ("db", "app"):
        assert svc.get_value(name).reveal_text() == initial[name]
        stages = {v.number: v.stage for v in svc.show(name).versions}
        assert stages == {1: Stage.CURRENT, 2: Stage.FAILED}
        assert doubles.target_values(DoubleConfig(**plain), name) == {initial[name]}
    svc.close()
