"""A rollback that cannot reach the target after a set was attempted leaves the rotation to
recovery (in-process, with the test double as target): the candidate may be valid on the
target, so the rotation must not end FAILED until a rollback or a finish reached it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import ClassVar

import pytest
import sqlalchemy
from tests.support import doubles
from tests.support.doubles import DoubleConfig, DoubleConnector

from rotator.connectors import base as cb
from rotator.connectors.registry import register
from rotator.domain.model import Stage
from rotator.engine import Engine, EngineOptions, Outcome, RotationRequest
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.store.schema import rotations

# The faults of the target, switched by each test: a test step that fails after a confirmed
# set, and a target that refuses every rollback (down for rollbacks).
FAULTS: dict[str, bool] = {"test_fails": False, "rollback_down": False}
OPTS = EngineOptions(retry_initial_s=0.001, retry_max_s=0.01, retry_attempts=2, lease_s=30.0)


class FlakyTarget(DoubleConnector):
    kind: ClassVar[str] = "flaky-target"

    async def test(self, req: cb.TestRequest) -> None:
        if FAULTS["test_fails"]:
            raise cb.PermanentError("test: the new value was refused")
        await super().test(req)

    async def rollback(self, req: cb.RollbackRequest) -> None:
        if FAULTS["rollback_down"]:
            raise cb.TransientError("rollback: connection refused")
        await super().rollback(req)


@pytest.fixture
def flaky() -> Iterator[None]:
    register(FlakyTarget)
    FAULTS.update(test_fails=False, rollback_down=False)
    yield
    FAULTS.update(test_fails=False, rollback_down=False)
    doubles.MemoryTarget.valid.clear()


def add(svc: BlockingService, name: str, **settings: str) -> DoubleConfig:
    cfg = DoubleConfig.model_validate({"target": f"flaky-{name}", **settings})
    svc.add_credential(
        name,
        "flaky-target",
        settings={"target": cfg.target, **settings},
        policy=PolicyInput(grace="1h"),
        value=ValueInput(generate=True),
    )
    doubles.target_add(cfg, name, svc.get_value(name).reveal_text())
    return cfg


def stages(svc: BlockingService, name: str) -> dict[int, Stage]:
    return {v.number: v.stage for v in svc.show(name).versions}


def open_rotations(raw_db: sqlalchemy.Engine) -> dict[str, str]:
    """{credential: step} of the rotations not ended."""
    with raw_db.connect() as c:
        rows = c.execute(sqlalchemy.select(rotations.c.credential, rotations.c.step)).all()
    ended = ("finished", "failed", "rolled_back")
    return {r.credential: r.step for r in rows if r.step not in ended}


def expire_leases(
    svc: BlockingService,
    raw_db: sqlalchemy.Engine,
    ends_in: timedelta = timedelta(hours=-1),
    owner: str | None = None,
) -> None:
    """The owner's lease runs out (as if its process stalled): recovery may take over; or,
    ``ends_in`` days, it ends beyond recovery's horizon (taken by a clock far ahead).
    ``owner``: as if another one held it (e.g. a process of another host)."""
    values: dict[str, object] = {"lease_expires_at": svc.clock() + ends_in}
    if owner is not None:
        values["owner"] = owner
    with raw_db.begin() as c:
        c.execute(rotations.update().values(**values))


def resumes(svc: BlockingService, name: str) -> list[dict[str, object]]:
    return [e.details for e in svc.audit_entries(credential=name) if e.action == "rotation.resume"]


def test_a_confirmed_set_then_rollback_unreachable_is_left_to_recovery_which_finishes_it(
    svc: BlockingService, raw_db: sqlalchemy.Engine, flaky: None
) -> None:
    cfg = add(svc, "s")
    old = svc.get_value("s").reveal_text()
    FAULTS.update(test_fails=True, rollback_down=True)

    async def rotate() -> list[object]:
        async with Engine(svc.kernel, OPTS) as engine:
            r = await engine.rotate([RotationRequest("s", "default")])
            return list(r.results)

    (result,) = asyncio.run(rotate())
    assert result.outcome is Outcome.FAILED  # type: ignore[attr-defined]
    assert "left to recovery" in (result.error or "")  # type: ignore[attr-defined]
    candidate = max(stages(svc, "s"))
    assert stages(svc, "s")[candidate] is Stage.PENDING, "not ended: the target may hold it"
    assert open_rotations(raw_db) == {"s": "set"}  # the credential stays locked
    assert len(doubles.target_values(cfg, "s")) == 2  # the candidate is valid there
    actions = [e.action for e in svc.audit_entries(credential="s")]
    assert "rotation.rollback_deferred" in actions
    assert "rotation.failed" not in actions

    FAULTS.update(test_fails=False, rollback_down=False)  # the target answers again
    # Held by a process of another host (whether it lives cannot be told): its lease decides.
    expire_leases(svc, raw_db, owner="elsewhere:1:x")

    async def recover() -> list[object]:
        async with Engine(svc.kernel, OPTS) as engine:
            return list(await engine.recover())

    (resumed,) = asyncio.run(recover())
    assert resumed.outcome is Outcome.ROTATED  # type: ignore[attr-defined]
    [taken] = resumes(svc, "s")
    assert taken["previous_owner"] == "elsewhere:1:x"
    assert "reason" not in taken, "an ordinary takeover: the lease ran out"
    assert stages(svc, "s")[candidate] is Stage.CURRENT
    assert open_rotations(raw_db) == {}
    new = svc.get_value("s").reveal_text()
    assert new != old
    assert doubles.target_values(cfg, "s") == {old, new}  # the old one until its grace ends


def test_a_takeover_only_because_the_lease_ends_beyond_the_horizon_is_audited_as_such(
    svc: BlockingService, raw_db: sqlalchemy.Engine, flaky: None
) -> None:
    add(svc, "h")
    FAULTS.update(test_fails=True, rollback_down=True)

    async def rotate_then_recover() -> list[object]:
        async with Engine(svc.kernel, OPTS) as engine:
            await engine.rotate([RotationRequest("h", "default")])
            FAULTS.update(test_fails=False, rollback_down=False)
            # Its lease ends in three days: a clock far ahead (more than the longest lease).
            expire_leases(svc, raw_db, ends_in=timedelta(days=3))
            return list(await engine.recover())

    (resumed,) = asyncio.run(rotate_then_recover())
    assert resumed.outcome is Outcome.ROTATED  # type: ignore[attr-defined]
    [taken] = resumes(svc, "h")
    assert taken["reason"] == "lease beyond horizon"
