"""Who owns a rotation: the owner identity, the lease's validation, and what a process that lost
its rotation does to the target. No store, no clock."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from rotator.connectors.base import Strategy
from rotator.domain.model import Stage
from rotator.engine import EngineOptions
from rotator.engine.ownership import owner_dead as _owner_dead
from rotator.engine.ownership import owner_id as _owner_id
from rotator.engine.recovery import repair_action as _repair_action
from rotator.errors import InvalidInput
from rotator.service.rotation import options_from_env


@pytest.fixture(scope="module")
def gone_pid() -> int:
    """The pid of a process of ours that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_owner_names_host_pid_boot_and_pid_namespace() -> None:
    _host, pid, boot, pidns, rand = _owner_id().split(":")
    assert pid == str(os.getpid())
    assert boot
    assert pidns.isdigit()
    assert rand
    assert _owner_id() != _owner_id()


def test_owner_is_dead_only_on_this_host_boot_and_pid_namespace_with_its_pid_gone(
    gone_pid: int,
) -> None:
    host, _, boot, pidns, _ = _owner_id().split(":")
    assert _owner_dead(f"{host}:{gone_pid}:{boot}:{pidns}:x")
    other_boot = boot[::-1] if boot[::-1] != boot else boot + "0"
    for owner in (
        f"{host}:{gone_pid}:{other_boot}:{pidns}:x",  # same host name after a reboot
        f"{host}:{gone_pid}:{boot}:1:x",  # another container with the same host name
        f"elsewhere:{gone_pid}:{boot}:{pidns}:x",  # another machine
        f"{host}:{gone_pid}:x",  # an owner of the old format: only its lease decides
        f"{host}:{os.getpid()}:{boot}:{pidns}:x",  # this very process
        f"{host}:notapid:{boot}:{pidns}:x",
        "",
        None,
    ):
        assert not _owner_dead(owner), owner


@pytest.mark.parametrize("lease", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_a_lease_that_is_not_a_finite_positive_number_is_bad_input(lease: float) -> None:
    with pytest.raises(InvalidInput, match=r"(?i)lease"):
        EngineOptions(lease_s=lease)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "0", "-5"])
def test_rotator_lease_seconds_that_is_not_a_finite_positive_number_is_bad_input(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROTATOR_LEASE_SECONDS", text)
    with pytest.raises(InvalidInput, match=r"(?i)lease"):
        options_from_env()


def test_lease_margin_must_stay_below_the_lease() -> None:
    assert EngineOptions(lease_s=8).margin_s == 2
    with pytest.raises(InvalidInput, match="margin"):
        EngineOptions(lease_s=1, lease_margin_s=1)


S, D, A = Strategy.SINGLE, Strategy.DUAL, Strategy.ALTERNATING


@pytest.mark.parametrize(
    ("strategy", "last_call", "own_stage", "current", "expected"),
    [
        # the new owner is driving our very version: its own steps settle the target
        (S, "set", Stage.PENDING, 1, "none"),
        (D, "set", Stage.PENDING, 1, "none"),
        (A, "rollback", Stage.PENDING, 1, "none"),
        # single: the target must hold the store's CURRENT
        (S, "set", Stage.CURRENT, 2, "none"),  # our value became CURRENT: it agrees
        (S, "set", Stage.PREVIOUS, 3, "assert-current"),  # a newer rotation followed
        (S, "set", Stage.RETIRED, 3, "assert-current"),
        (S, "set", Stage.FAILED, 1, "assert-current"),
        (S, "rollback", Stage.FAILED, 1, "none"),  # the rollback put CURRENT (1) back
        (S, "rollback", Stage.CURRENT, 2, "assert-current"),  # it put 1 back over CURRENT 2
        # dual, alternating: our value valid exactly while the store holds it valid
        (D, "set", Stage.CURRENT, 2, "none"),
        (D, "set", Stage.PREVIOUS, 3, "none"),
        (D, "set", Stage.RETIRED, 3, "remove-own"),  # a revoked key must not come back
        (D, "finish", Stage.FAILED, 1, "remove-own"),
        (D, "rollback", Stage.CURRENT, 2, "restore-own"),  # it removed the CURRENT value
        (D, "rollback", Stage.FAILED, 1, "none"),
        (A, "set", Stage.RETIRED, 3, "remove-own"),
        (A, "set", Stage.PREVIOUS, 3, "none"),
        (A, "rollback", Stage.PREVIOUS, 3, "restore-own"),
    ],
)
def test_repair_after_a_lost_rotation_makes_the_target_agree_with_the_store(
    strategy: Strategy, last_call: str, own_stage: Stage, current: int, expected: str
) -> None:
    # our rotation made version 2 while version 1 was CURRENT
    assert _repair_action(strategy, last_call, own_stage, current, 2, 1) == expected
