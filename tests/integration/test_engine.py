"""The rotation engine in one process against the test-double target, on both databases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.support import doubles
from tests.support.doubles import DoubleConfig

from rotator import scheduler
from rotator.domain.model import Stage
from rotator.engine import Engine, EngineOptions, Outcome, RotationRequest, Trigger
from rotator.errors import VerificationFailed
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.service.rotation import Selection


@pytest.fixture(autouse=True)
def double_connector() -> Iterator[None]:
    doubles.install()
    doubles.CALLS.clear()
    doubles._RNG.clear()
    doubles._RUN.clear()
    yield
    doubles.MemoryTarget.valid.clear()


FAST = EngineOptions(retry_initial_s=0.001, retry_max_s=0.01)


def add_double(svc: BlockingService, name: str, *, grace: str = "5m", **settings: Any) -> None:
    """A credential on the double target with a first value the target accepts."""
    cfg = {k: str(v) for k, v in settings.items()}
    svc.add_credential(
        name,
        "double",
        settings=cfg,
        policy=PolicyInput(grace=grace),
        value=ValueInput(generate=True),
    )
    value = svc.get_value(name).reveal_text()
    doubles.target_add(DoubleConfig(**settings), name, value)


def valid(svc: BlockingService, name: str, **settings: Any) -> set[str]:
    return doubles.target_values(DoubleConfig(**settings), name)


def run(svc: BlockingService, reqs: list[RotationRequest], opts: EngineOptions = FAST) -> Any:
    async def go() -> Any:
        async with Engine(svc.kernel, opts) as engine:
            return await engine.rotate(reqs)

    return asyncio.run(go())


def test_rotation_makes_new_value_current_and_keeps_old_valid_for_grace(
    svc: BlockingService,
) -> None:
    add_double(svc, "a", grace="10m")
    old = svc.get_value("a").reveal_text()
    result = run(svc, [RotationRequest("a")])
    assert result.to_json()["rotated"] == ["a"]
    new = svc.get_value("a").reveal_text()
    assert new != old
    assert valid(svc, "a") == {old, new}
    cred = svc.show("a")
    assert {v.number: v.stage for v in cred.versions} == {1: Stage.PREVIOUS, 2: Stage.CURRENT}
    actions = [e.action for e in svc.audit_entries(credential="a") if e.rotation_id]
    assert actions == [
        "rotation.create",
        "rotation.set",
        "rotation.test",
        "rotation.finish",
        "rotation.complete",
    ]
    rid = {e.rotation_id for e in svc.audit_entries(credential="a") if e.rotation_id}
    assert len(rid) == 1
    for e in svc.audit_entries(credential="a"):
        if e.rotation_id:
            assert e.details["trigger"] == "manual"


def test_failing_test_step_rolls_back_and_keeps_old_value_current(svc: BlockingService) -> None:
    add_double(svc, "a", fail_test=True)
    old = svc.get_value("a").reveal_text()
    result = run(svc, [RotationRequest("a")])
    data = result.to_json()
    assert data["rolled_back"] == ["a"]
    assert data["failed"][0]["name"] == "a"
    assert "refused the new value" in data["failed"][0]["error"]
    assert svc.get_value("a").reveal_text() == old
    assert valid(svc, "a", fail_test=True) == {old}, "the candidate must be gone from the target"
    stages = {v.number: v.stage for v in svc.show("a").versions}
    assert stages == {1: Stage.CURRENT, 2: Stage.FAILED}
    assert "rotation.rollback" in [e.action for e in svc.audit_entries(credential="a")]


def test_flaky_target_batch_of_500_all_rotate_with_retries_audited(svc: BlockingService) -> None:
    for i in range(500):
        add_double(svc, f"c{i:03d}", fail_rate=0.3, seed=7)
    result = run(
        svc,
        [RotationRequest(f"c{i:03d}") for i in range(500)],
        EngineOptions(
            concurrency=32, per_target=32, retry_attempts=6, retry_initial_s=0.001, retry_max_s=0.01
        ),
    )
    data = result.to_json()
    assert data["failed"] == []
    assert len(data["rotated"]) == 500
    retries = [e for e in svc.audit_entries() if e.action == "rotation.retry"]
    assert len(retries) > 100  # ~30% of ~1,500 calls failed once at least
    assert all("connection reset" in e.details["error"] for e in retries)
    for i in (0, 250, 499):
        name = f"c{i:03d}"
        assert svc.get_value(name).reveal_text() in valid(svc, name, fail_rate=0.3, seed=7)


def test_dead_target_fails_fast_once_breaker_opens_others_succeed(svc: BlockingService) -> None:
    for i in range(20):
        add_double(svc, f"up{i}", target="up")
        add_double(svc, f"down{i}", target="down", down=True)
    before = {f"down{i}": svc.get_value(f"down{i}").reveal_text() for i in range(20)}
    opts = EngineOptions(
        concurrency=4,
        per_target=2,
        retry_attempts=3,
        breaker_threshold=5,
        breaker_reset_s=60,
        retry_initial_s=0.001,
        retry_max_s=0.01,
    )
    reqs = [RotationRequest(f"{t}{i}") for i in range(20) for t in ("down", "up")]
    data = run(svc, reqs, opts).to_json()
    assert sorted(data["rotated"]) == sorted(f"up{i}" for i in range(20))
    failed = {f["name"]: f["error"] for f in data["failed"]}
    assert set(failed) == set(before)
    assert sum("circuit breaker" in e for e in failed.values()) >= 15
    assert doubles.CALLS["down"] < 20 * 3 / 2, "the breaker must stop calls to the dead target"
    for name, value in before.items():
        assert svc.get_value(name).reveal_text() == value


def test_emergency_revokes_old_value_before_returning(svc: BlockingService) -> None:
    add_double(svc, "a", grace="1h")
    old = svc.get_value("a").reveal_text()
    result = run(svc, [RotationRequest("a", trigger=Trigger.EMERGENCY, grace_s=0)])
    assert result.ok
    new = svc.get_value("a").reveal_text()
    assert valid(svc, "a") == {new}
    assert old not in valid(svc, "a")
    assert {v.number: v.stage for v in svc.show("a").versions} == {
        1: Stage.RETIRED,
        2: Stage.CURRENT,
    }


def test_revocation_queue_survives_restart(svc: BlockingService, settings: Any) -> None:
    add_double(svc, "a", grace="10m")
    old = svc.get_value("a").reveal_text()
    run(svc, [RotationRequest("a")])
    svc.close()
    restarted = BlockingService.open(settings)
    later = restarted.clock() + timedelta(minutes=11)
    restarted.kernel.clock = lambda: later

    async def revoke() -> dict[int, bool]:
        async with Engine(restarted.kernel, FAST) as engine:
            return await engine.process_revocations()

    assert list(asyncio.run(revoke()).values()) == [True]
    assert old not in valid(restarted, "a")
    stages = {v.number: v.stage for v in restarted.show("a").versions}
    assert stages == {1: Stage.RETIRED, 2: Stage.CURRENT}
    assert asyncio.run(revoke()) == {}
    restarted.close()


def test_same_credential_twice_in_a_batch_rotates_once(svc: BlockingService) -> None:
    add_double(svc, "a", latency_ms=50)
    result = run(svc, [RotationRequest("a"), RotationRequest("a")])
    assert [r.outcome for r in result.results] == [Outcome.ROTATED, Outcome.ROTATED]
    assert sum(r.joined for r in result.results) == 1
    assert len(svc.show("a").versions) == 2


def test_a_request_joining_a_rotation_its_guard_refused_rotates_on_its_own(
    svc: BlockingService,
) -> None:
    """A scheduler's request (guarded by its claim) and a manual one for the same credential
    in one process: the manual one joins the rotation under way. When the claim's guard
    refuses it (SKIPPED), that says nothing about the manual request: it rotates itself."""
    add_double(svc, "a", latency_ms=20)

    def lost(conn: Any, now: Any) -> str:
        return "its claim ended"

    result = run(
        svc,
        [RotationRequest("a", trigger=Trigger.SCHEDULE, guard=lost), RotationRequest("a")],
    )
    assert [r.outcome for r in result.results] == [Outcome.SKIPPED, Outcome.ROTATED]
    assert [v.number for v in svc.show("a").versions] == [1, 2]


def test_priorities_emergency_before_manual(svc: BlockingService) -> None:
    for i in range(6):
        add_double(svc, f"m{i}")
    add_double(svc, "urgent")
    reqs = [RotationRequest(f"m{i}") for i in range(6)]
    reqs.append(RotationRequest("urgent", trigger=Trigger.EMERGENCY, grace_s=0))
    run(svc, reqs, EngineOptions(concurrency=1, retry_initial_s=0.001))
    creates = [e.credential for e in svc.audit_entries() if e.action == "rotation.create"]
    assert creates[0] == "urgent"


def test_key_pairs_are_generated_in_the_process_pool(svc: BlockingService) -> None:
    svc.add_credential("k", "local", settings={"generator": "ed25519"})
    svc.add_credential("r", "local", settings={"generator": "rsa", "bits": "2048"})
    assert run(svc, [RotationRequest("k"), RotationRequest("r")]).ok
    for name in ("k", "r"):
        assert svc.get_value(name).reveal_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_service_rotate_by_tag_and_dry_run_changes_nothing(svc: BlockingService) -> None:
    svc.add_credential("p1", "local", tags={"env": "prod"}, value=ValueInput(generate=True))
    svc.add_credential("p2", "local", tags={"env": "prod"}, value=ValueInput(generate=True))
    svc.add_credential("d1", "local", tags={"env": "dev"}, value=ValueInput(generate=True))
    audit_before = len(svc.audit_entries())
    steps = svc.plan(Selection(tags={"env": "prod"}))
    assert [(s["order"], s["name"], s["strategy"]) for s in steps] == [
        (1, "p1", "dual"),
        (2, "p2", "dual"),
    ]
    assert len(svc.audit_entries()) == audit_before
    with BlockingService.open(svc.settings, options=FAST) as fast:
        result = fast.rotate(Selection(tags={"env": "prod"}))
    assert sorted(result.to_json()["rotated"]) == ["p1", "p2"]
    assert len(svc.show("d1").versions) == 1


def test_rotation_of_credential_without_value_creates_first_version(svc: BlockingService) -> None:
    svc.add_credential("empty", "local")
    assert run(svc, [RotationRequest("empty")]).ok
    assert [(v.number, v.stage) for v in svc.show("empty").versions] == [(1, Stage.CURRENT)]


def test_unknown_credential_in_batch_fails_alone(svc: BlockingService, tmp_path: Path) -> None:
    add_double(svc, "a")
    result = run(svc, [RotationRequest("a"), RotationRequest("ghost")])
    data = result.to_json()
    assert data["rotated"] == ["a"]
    assert data["failed"] == [{"name": "ghost", "error": "no credential 'ghost'"}]


def test_serve_rotates_due_credentials_and_revokes_after_grace(svc: BlockingService) -> None:
    svc.add_credential(
        "due", "double", policy=PolicyInput(every="1s", grace="1s"), value=ValueInput(generate=True)
    )
    first = svc.get_value("due").reveal_text()
    doubles.target_add(DoubleConfig(), "due", first)
    svc.add_credential(
        "later", "double", policy=PolicyInput(every="1h"), value=ValueInput(generate=True)
    )

    async def go() -> None:
        stop = asyncio.Event()
        async with Engine(svc.kernel, FAST) as engine:
            task = asyncio.create_task(scheduler.run(engine, stop, poll_s=0.1))
            await asyncio.sleep(3.5)
            stop.set()
            await task

    asyncio.run(go())
    versions = svc.show("due").versions
    assert len(versions) >= 3, versions
    assert first not in valid(svc, "due"), "the first value must be revoked after its grace"
    assert versions[0].stage is Stage.RETIRED
    triggers = {
        e.details.get("trigger")
        for e in svc.audit_entries(credential="due")
        if e.action == "rotation.create"
    }
    assert triggers == {"schedule"}
    assert len(svc.show("later").versions) == 1


def test_an_interactive_rotation_is_admitted_ahead_of_queued_batch_work(
    svc: BlockingService, tmp_path: Path
) -> None:
    """With one rotation at a time, a batch holds the only slot; a rotation a person asks
    for meanwhile takes the next free slot, before the batch's queued credentials."""
    gate = tmp_path / "gate"
    gate.mkdir()
    add_double(svc, "b0", barrier=str(gate), barrier_after="set")
    for name in ("b1", "b2", "b3", "z"):
        add_double(svc, name)
    opts = EngineOptions(concurrency=1, retry_initial_s=0.001, retry_max_s=0.01)

    async def go() -> tuple[Any, Any]:
        async with Engine(svc.kernel, opts) as engine:
            batch = asyncio.create_task(
                engine.rotate(
                    [RotationRequest(n, trigger=Trigger.SCHEDULE) for n in ("b0", "b1", "b2", "b3")]
                )
            )
            while not (gate / "set.b0.reached").exists():  # b0 holds the only slot
                await asyncio.sleep(0.01)
            person = asyncio.create_task(
                engine.rotate_one(RotationRequest("z", trigger=Trigger.MANUAL, interactive=True))
            )
            while engine.runtime.admission.waiting < 1:  # z waits for the slot
                await asyncio.sleep(0.01)
            (gate / "release").touch()
            return await batch, await person

    batch, person = asyncio.run(go())
    assert batch.ok
    assert person.outcome is Outcome.ROTATED
    creates = [e.credential for e in svc.audit_entries() if e.action == "rotation.create"]
    assert creates == ["b0", "z", "b1", "b2", "b3"]


def test_an_interactive_rotation_starts_at_once_while_a_batch_fills_the_limit(
    svc: BlockingService, tmp_path: Path
) -> None:
    """The global limit keeps a reserve for interactive requests: while a batch holds the only
    slot (b0 held on its target) and queues the rest, a rotation a person asks for runs to
    its end at once; the batch itself never gets past the limit (b1 starts after b0)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    add_double(svc, "b0", barrier=str(gate), barrier_after="set")
    for name in ("b1", "b2", "z"):
        add_double(svc, name)
    opts = EngineOptions(
        concurrency=1, interactive_reserve=1, retry_initial_s=0.001, retry_max_s=0.01
    )

    async def go() -> tuple[Any, Any]:
        async with Engine(svc.kernel, opts) as engine:
            batch = asyncio.create_task(
                engine.rotate(
                    [RotationRequest(n, trigger=Trigger.SCHEDULE) for n in ("b0", "b1", "b2")]
                )
            )
            while not (gate / "set.b0.reached").exists():  # b0 holds the only slot
                await asyncio.sleep(0.01)
            # Ends while b0 is still held on its target (a hang guard, not a timing check).
            person = await asyncio.wait_for(
                engine.rotate_one(RotationRequest("z", trigger=Trigger.MANUAL, interactive=True)),
                timeout=60,
            )
            assert not batch.done()
            (gate / "release").touch()
            return await batch, person

    batch, person = asyncio.run(go())
    assert batch.ok
    assert person.outcome is Outcome.ROTATED
    creates = [e.credential for e in svc.audit_entries() if e.action == "rotation.create"]
    assert creates == ["b0", "z", "b1", "b2"]


def test_add_with_verify_goes_through_the_engines_breaker_for_its_target(
    svc: BlockingService, settings: Any
) -> None:
    """One breaker per target for every connector call: once rotations found the target
    down and opened its breaker, ``credential add --verify`` on that target fails at once
    without calling it, and a target that is up is still verified."""
    opts = EngineOptions(
        retry_attempts=1, breaker_threshold=3, breaker_window=3, breaker_reset_s=3600
    )
    with BlockingService.open(settings, options=opts) as one:
        for i in range(3):
            one.add_credential(f"d{i}", "double", settings={"target": "t-down", "down": "true"})
        result = one.rotate(Selection(names=[f"d{i}" for i in range(3)]))
        assert not result.ok
        calls = doubles.CALLS["t-down"]
        with pytest.raises(VerificationFailed, match="circuit breaker for target t-down is open"):
            one.add_credential(
                "late", "double", settings={"target": "t-down", "down": "true"}, verify=True
            )
        assert doubles.CALLS["t-down"] == calls  # refused by the breaker, not by the target
        one.add_credential("fine", "double", settings={"target": "t-up"}, verify=True)
        assert doubles.CALLS["t-up"] == 1
    assert "late" not in [c.name for c in svc.list_credentials()]


def test_two_concurrent_revocation_passes_revoke_a_value_once(svc: BlockingService) -> None:
    """The scheduler's pass and a rotation waiting out a grace can process revocations at the
    same time in one engine: the second joins the first, so the target is asked once (two
    at once made PostgreSQL fail with "tuple concurrently updated")."""
    add_double(svc, "a", grace="10m", target="t-rev")
    run(svc, [RotationRequest("a")])
    later = svc.kernel.clock() + timedelta(minutes=11)
    svc.kernel.clock = lambda: later
    before = doubles.CALLS["t-rev"]

    async def go() -> list[dict[int, bool]]:
        async with Engine(svc.kernel, FAST) as engine:
            return list(
                await asyncio.gather(engine.process_revocations(), engine.process_revocations())
            )

    first, second = asyncio.run(go())
    assert list(first.values()) == [True]
    assert list(second.values()) == [True]
    assert doubles.CALLS["t-rev"] == before + 1  # one revoke call on the target
    assert [v.stage for v in svc.show("a").versions] == [Stage.RETIRED, Stage.CURRENT]
