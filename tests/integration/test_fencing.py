"""Fencing of rotation ownership with real processes (issue 7, item 1).

A `rotator rotate` is stopped with SIGSTOP while its `set` is under way; its lease runs out; a
second process takes the rotation over and finishes it; a third rotates again; then the first
is let go. Its `set` is either still in the process (``cut``: rotator cuts it) or already sent
and carried out by the target after the newer rotation (``landed``: nothing can recall it).
Either way the first process must not leave its stale value on the target: it finds it lost
the rotation, makes the target agree with the store (one repair call, audited) and makes no
other call.
The target is a third-party connector installed through the ``rotator.connectors`` entry point
(tests/support/fenced_target.py) that logs every call and write with its process and token.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import select
from sqlalchemy.engine import make_url
from tests.support import doubles
from tests.support.doubles import DoubleConfig
from tests.support.fenced_target import fingerprint, locked_state

from rotator.config import Settings
from rotator.connectors import base as cbase
from rotator.domain.model import Stage
from rotator.domain.principal import LOCAL_PRINCIPAL
from rotator.engine import Engine, EngineOptions, Outcome, RotationRequest
from rotator.engine.writer import StoreWriter
from rotator.errors import ConcurrentModification, LostOwnership
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.store import normalize_url
from rotator.store import rotations as store_rot
from rotator.store.schema import rotations

SUPPORT = Path(__file__).resolve().parents[1] / "support"
CLI = [sys.executable, "-c", "import sys; from rotator.cli.main import main; sys.exit(main())"]
LEASE_S = "1"


def install_plugin(where: Path) -> Path:
    """A directory that, on PYTHONPATH, installs ``fenced_target`` as a distribution whose
    entry point registers the ``fenced`` connector."""
    where.mkdir()
    shutil.copy(SUPPORT / "fenced_target.py", where / "fenced_target.py")
    info = where / "fenced_target-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fenced-target\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[rotator.connectors]\nfenced = fenced_target:FencedConnector\n"
    )
    return where


def env_for(settings: Settings, plugin: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
        "ROTATOR_LEASE_SECONDS": LEASE_S,
        "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")]),
        **extra,
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def target_state(path: Path) -> dict[str, Any]:
    with locked_state(str(path)) as data:  # never half a write
        return json.loads(json.dumps(data))  # type: ignore[no-any-return]


def holds_db_transaction(db_url: str) -> bool:
    """True while another process is inside a write transaction on the store (a process
    stopped there would block every other one, which is not what this test is about)."""
    url = make_url(normalize_url(db_url))
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(url.database), timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as pg:
        busy = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state <> 'idle'"
        ).fetchone()
    return bool(busy and busy[0])


def stop_outside_transaction(proc: subprocess.Popen[str], db_url: str) -> None:
    for _ in range(200):
        os.kill(proc.pid, signal.SIGSTOP)
        if not holds_db_transaction(db_url):
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.01)
    pytest.fail("the rotating process never left its store transaction")


def wait_for_lease_to_expire(raw: sqlalchemy.Engine) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with raw.connect() as c:
            leases = (
                c.execute(select(rotations.c.lease_expires_at).where(rotations.c.step == "created"))
                .scalars()
                .all()
            )
        if leases and all(t is not None and t < datetime.now(UTC) for t in leases):
            return
        time.sleep(0.1)
    pytest.fail("the stopped process's lease never ran out")


@pytest.mark.parametrize("strategy", ["single", "dual"])
@pytest.mark.parametrize("stale_set", ["cut", "landed"])
def test_stalled_owner_resumed_after_takeover_leaves_the_target_holding_the_stores_current(
    settings: Settings, raw_db: sqlalchemy.Engine, tmp_path: Path, strategy: str, stale_set: str
) -> None:
    plugin = install_plugin(tmp_path / "plugin")
    state = tmp_path / "target.json"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = env_for(settings, plugin)
    for args in (
        ("init",),
        ("credential", "add", "x", "--connector", "fenced", "--set", f"state={state}",
         "--set", f"strategy={strategy}", "--generate", "--grace", "0s"),
    ):  # fmt: skip
        done = cli(env, *args)
        assert done.returncode == 0, done.stderr

    # 1: rotate, stopped inside set while its lease runs out.
    stale = subprocess.Popen(
        [*CLI, "rotate", "x", "--json"],
        env=env_for(
            settings,
            plugin,
            FENCED_BARRIER=str(barrier),
            FENCED_LATE="1" if stale_set == "landed" else "0",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (barrier / "reached").exists():
            assert stale.poll() is None, stale.communicate()
            assert time.monotonic() < deadline, "rotate never reached set"
            time.sleep(0.02)
        stop_outside_transaction(stale, settings.db_url)
        wait_for_lease_to_expire(raw_db)
        # 2: another process takes the rotation over and finishes it; 3: a new rotation.
        recovered = cli(env, "recover")
        assert recovered.returncode == 0, recovered.stderr
        assert "recovered 1 rotation(s)" in recovered.stdout
        newer = cli(env, "rotate", "x", "--json")
        assert newer.returncode == 0, newer.stderr
        before_resume = len(target_state(state)["log"])
        if stale_set == "landed":  # the target carries out the stale set now
            (barrier / "release").touch()
            while len(target_state(state)["log"]) == before_resume:
                assert time.monotonic() < deadline, "the late write never happened"
                time.sleep(0.02)
    except BaseException:
        stale.kill()
        raise
    finally:
        (barrier / "release").touch()
        os.kill(stale.pid, signal.SIGCONT)
    out, err = stale.communicate(timeout=60)

    svc = BlockingService.open(settings)
    try:
        stages = {v.number: v.stage for v in svc.show("x").versions}
        current = svc.get_value("x").reveal()
    finally:
        svc.close()
    data = target_state(state)
    current_fp = fingerprint(current)
    assert data["valid"] == [current_fp], "the target must hold exactly the store's CURRENT"
    assert list(stages) == [1, 2, 3], f"a version was lost or added: {stages}"
    assert stages[3] is Stage.CURRENT
    assert list(stages.values()).count(Stage.CURRENT) == 1
    assert stale.returncode == 1, err
    failed = json.loads(out)["failed"]
    assert [f["name"] for f in failed] == ["x"]
    assert "taken over by another process" in failed[0]["error"]

    log = data["log"]
    stale_calls = [e for e in log if e["pid"] == stale.pid and e["event"] == "call"]
    after = [e for e in log[before_resume:] if e["pid"] == stale.pid and e["event"] == "call"]
    assert len(after) == 1, log  # after it resumed: the repair, nothing else
    assert [e["op"] for e in stale_calls] == ["set", after[0]["op"]], log
    repair = after[0]
    if strategy == "single":  # CURRENT re-asserted
        assert (repair["op"], repair["fp"]) == ("set", current_fp)
    else:  # its own stale value removed
        assert (repair["op"], repair["fp"]) == ("rollback", stale_calls[0]["fp"])
    # Every ownership had its own token, and the stale one was never accepted again.
    sets = [e for e in log if e["event"] == "call" and e["op"] == "set"]
    tokens = [e["fence"] for e in sets[:3]]
    assert None not in tokens, sets
    assert len(set(tokens)) == 3, sets
    # The set under way when it stalled is usually cut before it writes; when its continuation
    # was already scheduled it writes (no process can recall that), but then before the repair.
    resumed = log[before_resume:]
    stale_writes = [
        i
        for i, e in enumerate(resumed)
        if e["event"] == "write" and e["fp"] == stale_calls[0]["fp"] and not e["drop"]
    ]
    assert all(i < resumed.index(repair) for i in stale_writes), resumed
    if stale_set == "landed":
        assert stale_writes, "the scenario needs the stale value written after the newer one"

    verified = cli(env, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    listed = cli(env, "audit", "list", "--json")
    entries = json.loads(listed.stdout)
    rotation_id = next(e["rotation_id"] for e in entries if e["action"] == "rotation.resume")
    actions = [e["action"] for e in entries if e["rotation_id"] == rotation_id]
    assert "rotation.resume" in actions  # the takeover
    assert actions.count("rotation.lost") == 1
    assert actions.count("rotation.repair") == 1
    assert current.decode() not in listed.stdout
    with raw_db.connect() as c:
        steps = c.execute(select(rotations.c.step)).scalars().all()
    assert sorted(steps) == ["finished", "finished"]


# -- the same rules in one process: store and engine -----------------------------------------


@pytest.fixture
def double() -> Iterator[None]:
    doubles.install()
    doubles.CALLS.clear()
    yield
    doubles.MemoryTarget.valid.clear()


def add_double(svc: BlockingService, name: str, **settings: str) -> int:
    svc.add_credential(
        name,
        "double",
        settings=settings,
        policy=PolicyInput(grace="5m"),
        value=ValueInput(generate=True),
    )
    value = svc.get_value(name).reveal_text()
    doubles.target_add(DoubleConfig.model_validate(settings), name, value)
    return svc.show(name).id


def insert_rotation(
    svc: BlockingService, rid: str, credential: str, fence: str, lease_s: float = 30
) -> None:
    cred = svc.show(credential)
    now = svc.clock()
    with svc.db.write() as c:
        store_rot.insert_rotation(
            c,
            id=rid,
            credential_id=cred.id,
            tenant_id=svc.tenant("default").id,
            credential=credential,
            batch_id=None,
            trigger="manual",
            priority=0,
            grace_s=0,
            owner=f"owner-of-{fence}",
            fence=fence,
            lease_expires_at=now + timedelta(seconds=lease_s),
            now=now,
            version=1,
        )


def step_of(svc: BlockingService, rid: str) -> str:
    with svc.db.read() as c:
        row = store_rot.get_rotation(c, rid)
    assert row is not None
    return row.step


def test_write_under_a_stale_token_fails_alone_and_commits_nothing_of_its_transaction(
    svc: BlockingService, double: None
) -> None:
    add_double(svc, "a")
    b_id = add_double(svc, "b")
    insert_rotation(svc, "ra", "a", "token-a")
    insert_rotation(svc, "rb", "b", "token-b")
    now = svc.clock()

    def good(conn: object) -> None:
        store_rot.set_step(conn, "ra", "set", now, fence="token-a")  # type: ignore[arg-type]

    def stale(conn: object) -> None:
        store_rot.mark_version(conn, b_id, 1, Stage.FAILED, now)  # type: ignore[arg-type]
        store_rot.set_step(conn, "rb", "finished", now, fence="token-of-old-owner")  # type: ignore[arg-type]

    async def go() -> tuple[list[object], int]:
        writer = StoreWriter(svc.db, ThreadPoolExecutor(max_workers=1))
        results = await asyncio.gather(writer.run(good), writer.run(stale), return_exceptions=True)
        await writer.aclose()
        return list(results), writer.batches

    results, batches = asyncio.run(go())
    assert batches == 1, "both writes must share one group commit for this test to mean much"
    assert results[0] is None
    assert isinstance(results[1], LostOwnership)
    assert step_of(svc, "ra") == "set"
    assert step_of(svc, "rb") == "created"
    assert {v.number: v.stage for v in svc.show("b").versions} == {1: Stage.CURRENT}


def run_in_one_group_commit(
    svc: BlockingService, ops: list[Any]
) -> tuple[list[object], int, list[tuple[str, bool]]]:
    """Run ``ops`` through one StoreWriter, all queued before its first batch. Returns each
    one's result (or exception), the number of group commits and the SQL sent (statement,
    executemany?)."""
    sent: list[tuple[str, bool]] = []

    def listen(_c: object, _cur: object, stmt: str, _p: object, _x: object, many: bool) -> None:
        sent.append((" ".join(stmt.split()), many))

    async def go() -> tuple[list[object], int]:
        writer = StoreWriter(svc.db, ThreadPoolExecutor(max_workers=1))
        results = await asyncio.gather(*(writer.run(op) for op in ops), return_exceptions=True)
        await writer.aclose()
        return list(results), writer.batches

    sqlalchemy.event.listen(svc.db.engine, "before_cursor_execute", listen)
    try:
        results, batches = asyncio.run(go())
    finally:
        sqlalchemy.event.remove(svc.db.engine, "before_cursor_execute", listen)
    return results, batches, sent


def set_step_op(rid: str, step: str, fence: str, now: datetime) -> Any:
    return lambda conn: store_rot.set_step(conn, rid, step, now, fence=fence)


def test_a_lost_fence_among_many_operations_of_one_group_commit_fails_that_operation_only(
    svc: BlockingService, double: None, raw_db: sqlalchemy.Engine
) -> None:
    ids = {f"c{i}": add_double(svc, f"c{i}") for i in range(12)}
    for i in range(12):
        insert_rotation(svc, f"r{i}", f"c{i}", f"token-{i}")
    with raw_db.begin() as c:  # another process took r7 over
        c.execute(rotations.update().where(rotations.c.id == "r7").values(fence="newer"))
    now = svc.clock()

    def stage_move_then_step(i: int) -> Any:
        def op(conn: Any) -> None:
            store_rot.mark_version(conn, ids[f"c{i}"], 1, Stage.FAILED, now)
            svc.kernel.restamp(conn, ids[f"c{i}"])
            store_rot.set_step(conn, f"r{i}", "failed", now, fence=f"token-{i}")

        return op

    ops = [set_step_op(f"r{i}", "set", f"token-{i}", now) for i in range(6)]
    ops += [stage_move_then_step(i) for i in range(6, 12)]
    results, batches, _ = run_in_one_group_commit(svc, ops)

    assert batches == 1, "all the writes must share one group commit for this test to mean much"
    lost = results.pop(7)
    assert isinstance(lost, LostOwnership)
    assert lost.rotation_id == "r7"
    assert results == [None] * 11
    assert [step_of(svc, f"r{i}") for i in range(12)] == ["set"] * 6 + ["failed"] + ["created"] + [
        "failed"
    ] * 4
    assert {v.number: v.stage for v in svc.show("c7").versions} == {1: Stage.CURRENT}
    for i in (6, 8, 9, 10, 11):  # moved and re-stamped: the stage maps still verify
        assert {v.number: v.stage for v in svc.show(f"c{i}").versions} == {1: Stage.FAILED}
    with svc.db.read() as conn:
        assert svc.kernel.stage_map_errors(conn, list(ids.values())) == {}


def test_step_writes_of_one_group_commit_go_to_the_database_as_one_statement(
    svc: BlockingService, double: None
) -> None:
    for i in range(8):
        add_double(svc, f"c{i}")
        insert_rotation(svc, f"r{i}", f"c{i}", f"token-{i}")
    now = svc.clock()
    steps = ["set", "tested", "finished", "failed"] * 2
    ops = [set_step_op(f"r{i}", steps[i], f"token-{i}", now) for i in range(8)]

    results, batches, sent = run_in_one_group_commit(svc, ops)

    assert (results, batches) == ([None] * 8, 1)
    updates = [many for stmt, many in sent if stmt.startswith("UPDATE rotations")]
    assert updates == [True]
    assert [step_of(svc, f"r{i}") for i in range(8)] == steps
    with svc.db.read() as conn:
        rows = {r.id: r for r in conn.execute(select(rotations))}
    assert all(rows[f"r{i}"].finished_at is not None for i in (2, 3, 6, 7))
    assert all(rows[f"r{i}"].lease_expires_at is None for i in (2, 3, 6, 7))
    assert all(rows[f"r{i}"].finished_at is None for i in (0, 1, 4, 5))
    assert all(rows[f"r{i}"].lease_expires_at is not None for i in (0, 1, 4, 5))


def test_one_operation_writing_many_steps_names_the_rotation_it_lost_and_commits_nothing(
    svc: BlockingService, double: None, raw_db: sqlalchemy.Engine
) -> None:
    for i in range(5):
        add_double(svc, f"c{i}")
        insert_rotation(svc, f"r{i}", f"c{i}", f"token-{i}")
    with raw_db.begin() as c:
        c.execute(rotations.update().where(rotations.c.id == "r3").values(fence="newer"))
    now = svc.clock()

    def group(conn: Any) -> None:  # as a group's stage move writes every member's step
        for i in range(5):
            store_rot.set_step(conn, f"r{i}", "finished", now, fence=f"token-{i}")

    (result,), _, _ = run_in_one_group_commit(svc, [group])

    assert isinstance(result, LostOwnership)
    assert result.rotation_id == "r3"
    assert [step_of(svc, f"r{i}") for i in range(5)] == ["created"] * 5


def test_an_operation_failing_after_a_lost_step_write_reports_the_lost_ownership(
    svc: BlockingService, double: None
) -> None:
    add_double(svc, "a")
    insert_rotation(svc, "ra", "a", "token-a")
    now = svc.clock()

    def op(conn: Any) -> None:
        store_rot.set_step(conn, "ra", "set", now, fence="token-of-old-owner")
        raise ConcurrentModification("something later in the same operation failed")

    (result,), _, _ = run_in_one_group_commit(svc, [op])

    assert isinstance(result, LostOwnership)
    assert step_of(svc, "ra") == "created"


def test_takeover_gives_a_new_token_and_the_old_owner_can_neither_renew_nor_write(
    svc: BlockingService, double: None
) -> None:
    add_double(svc, "a")
    insert_rotation(svc, "ra", "a", "old", lease_s=-1)  # its lease ran out
    now = svc.clock()
    later = now + timedelta(seconds=30)
    with svc.db.write() as c:
        row = store_rot.get_rotation(c, "ra")
        assert row is not None
        assert row.fence == "old"
        assert store_rot.take_over(c, row, "new-owner", "new", later, now)
    with svc.db.write() as c:
        assert store_rot.renew_leases(c, {"ra": "old"}, later) == {"ra"}
        assert store_rot.renew_leases(c, {"ra": "new"}, later) == set()
        with pytest.raises(LostOwnership):
            store_rot.set_step(c, "ra", "set", now, fence="old")
    with svc.db.write() as c:  # the row as read before cannot be claimed a second time
        assert not store_rot.take_over(c, row, "third", "third", later, later + timedelta(hours=1))
    with svc.db.write() as c:
        store_rot.set_step(c, "ra", "finished", now, fence="new")
        # finished by its owner: still held (not lost), but no longer renewed
        assert store_rot.renew_leases(c, {"ra": "new"}, later) == set()


def test_takeover_is_refused_when_the_owner_renewed_after_the_row_was_read(
    svc: BlockingService, double: None
) -> None:
    add_double(svc, "a")
    insert_rotation(svc, "ra", "a", "old", lease_s=-1)
    now = svc.clock()
    with svc.db.read() as c:
        row = store_rot.get_rotation(c, "ra")
    assert row is not None
    with svc.db.write() as c:  # the owner's heartbeat wins the race
        assert store_rot.renew_leases(c, {"ra": "old"}, now + timedelta(seconds=30)) == set()
    with svc.db.write() as c:
        assert not store_rot.take_over(c, row, "new-owner", "new", now, now)
        # unless its process is known to be gone
        assert store_rot.take_over(c, row, "new-owner", "new", now, now, owner_dead=True)


def test_call_in_flight_is_cut_when_a_renewal_finds_the_rotation_taken_over(
    svc: BlockingService, raw_db: sqlalchemy.Engine, tmp_path: Path, double: None
) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    cfg = {"barrier": str(barrier), "barrier_after": "set", "target": "fenced-mem"}
    add_double(svc, "a", **cfg)
    opts = EngineOptions(lease_s=0.6, step_timeout_s=60, retry_initial_s=0.001)

    async def go() -> object:
        async with Engine(svc.kernel, opts) as engine:
            task = asyncio.create_task(engine.rotate_one(RotationRequest("a")))
            while not list(barrier.glob("set.*.reached")):
                await asyncio.sleep(0.01)
            with raw_db.begin() as c:  # another process took it over
                c.execute(rotations.update().values(owner="elsewhere", fence="theirs"))
            return await asyncio.wait_for(task, timeout=10)  # not the 60 s step timeout

    result = asyncio.run(go())
    assert result.outcome is Outcome.FAILED  # type: ignore[attr-defined]
    assert "taken over by another process" in (result.error or "")  # type: ignore[attr-defined]
    assert doubles.CALLS["fenced-mem"] == 1, "no call after the set that was cut"
    actions = [e.action for e in svc.audit_entries(credential="a")]
    assert "rotation.lost" in actions
    assert "rotation.repair" in actions  # "none": the new owner drives the version
    assert step_of(svc, result.rotation_id) == "created"  # type: ignore[attr-defined]


def test_half_open_trial_ended_by_permanent_error_or_cancellation_frees_the_breaker(
    svc: BlockingService, double: None
) -> None:
    add_double(svc, "a", target="brk")
    now = [0.0]

    async def go() -> None:
        opts = EngineOptions(breaker_threshold=2, breaker_window=2, breaker_reset_s=30)
        async with Engine(svc.kernel, opts) as engine:
            ctx = await engine.loader.prepare(RotationRequest("a"))
            breaker = engine.breaker(ctx.target)
            breaker.clock = lambda: now[0]

            async def permanent() -> None:
                raise cbase.PermanentError("the target refused")

            async def ok() -> str:
                return "ok"

            started = asyncio.Event()

            async def hang() -> None:
                started.set()
                await asyncio.Event().wait()

            for end in ("permanent", "cancelled"):
                breaker.record_failure()
                breaker.record_failure()
                assert breaker.state == "open"
                now[0] += 30  # half-open: the next call is the trial
                if end == "permanent":
                    with pytest.raises(cbase.PermanentError):
                        await engine.steps.call(ctx, "test", permanent)
                else:
                    trial = asyncio.create_task(engine.steps.call(ctx, "test", hang))
                    await started.wait()
                    trial.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await trial
                assert await engine.steps.call(ctx, "test", ok) == "ok", end
                assert breaker.state == "closed"

    asyncio.run(go())


def test_owner_stalled_in_finish_and_overtaken_reports_the_loss_and_removes_its_late_value(
    svc: BlockingService,
    raw_db: sqlalchemy.Engine,
    double: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stalls inside its finish call; its lease runs out; B takes the rotation over and
    finishes it, then rotates again in an emergency (grace 0: every older value revoked).
    A's finish then lands late and publishes its value again. A must find its stage move
    fenced off before it moves anything, report the loss (not raise for the batch), remove
    its own value from the target, and leave the credential free."""
    cfg = DoubleConfig()
    add_double(svc, "a")
    stalled: dict[str, asyncio.Event] = {}
    original = doubles.DoubleConnector.finish

    async def finish(self: doubles.DoubleConnector, req: cbase.FinishRequest) -> None:
        if not stalled["reached"].is_set():  # A's call only; B's calls go through
            stalled["reached"].set()
            await stalled["go"].wait()
            doubles.target_add(cfg, req.credential, req.current.reveal_text())  # lands late
            return
        await original(self, req)

    monkeypatch.setattr(doubles.DoubleConnector, "finish", finish)
    opts = EngineOptions(lease_s=30, retry_initial_s=0.001)

    async def scenario() -> Any:
        stalled["reached"], stalled["go"] = asyncio.Event(), asyncio.Event()
        async with Engine(svc.kernel, opts) as a:
            task = asyncio.create_task(a.rotate([RotationRequest("a")]))
            await asyncio.wait_for(stalled["reached"].wait(), 30)
            with raw_db.begin() as c:  # A's lease has run out
                c.execute(
                    rotations.update().values(lease_expires_at=svc.clock() - timedelta(seconds=60))
                )
            async with Engine(svc.kernel, opts) as b:
                assert [r.outcome for r in await b.recover()] == [Outcome.ROTATED]
                again = await b.rotate_one(RotationRequest("a", grace_s=0))
                assert again.outcome is Outcome.ROTATED, again
            stalled["go"].set()
            return await asyncio.wait_for(task, 60)

    batch = asyncio.run(scenario())
    [result] = batch.results
    assert result.outcome is Outcome.FAILED
    assert result.error is not None
    assert "taken over" in result.error
    assert "repaired" in result.error
    versions = {v.number: v.stage for v in svc.show("a").versions}
    assert versions[3] is Stage.CURRENT
    assert [n for n, s in versions.items() if s is Stage.CURRENT] == [3]
    assert doubles.target_values(cfg, "a") == {svc.get_value("a").reveal_text()}
    actions = [e.action for e in svc.audit_entries(credential="a")]
    assert "rotation.lost" in actions
    assert "rotation.repair" in actions
    with svc.db.read() as c:
        assert store_rot.lock_holder(c, svc.show("a").id) is None
    assert svc.audit_verify().ok


def test_stage_map_edited_mid_rotation_rolls_the_target_back_and_frees_the_credential(
    svc: BlockingService,
    raw_db: sqlalchemy.Engine,
    double: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Someone edits the credential's stage map while its rotation is between set and the
    stage move. The stage move must refuse (integrity), the target must go back to the old
    value, the rotation must end and free the credential (no lock kept by a dead rotation),
    and no stage may move. Once the genuine MAC is back, the credential rotates again."""
    from rotator.store.schema import credentials

    cfg = DoubleConfig()
    cid = add_double(svc, "a")
    old_value = svc.get_value("a").reveal_text()
    saved: dict[str, str] = {}
    original = doubles.DoubleConnector.finish

    async def finish(self: doubles.DoubleConnector, req: cbase.FinishRequest) -> None:
        with raw_db.begin() as c:
            mac = c.execute(
                select(credentials.c.stage_mac).where(credentials.c.id == cid)
            ).scalar_one()
            saved["genuine"] = mac  # what the map's MAC is now, with version 2 PENDING
            c.execute(
                credentials.update()
                .where(credentials.c.id == cid)
                .values(stage_mac=mac.split(":")[0] + ":" + "0" * 64)
            )
        await original(self, req)

    monkeypatch.setattr(doubles.DoubleConnector, "finish", finish)
    opts = EngineOptions(lease_s=30, retry_initial_s=0.001)

    async def rotate() -> Any:
        async with Engine(svc.kernel, opts) as engine:
            return await engine.rotate([RotationRequest("a")])

    [result] = asyncio.run(rotate()).results
    assert result.outcome is Outcome.ROLLED_BACK, result
    assert result.error is not None
    assert "integrity" in result.error
    assert doubles.target_values(cfg, "a") == {old_value}
    with svc.db.read() as c:
        assert store_rot.lock_holder(c, cid) is None
    with raw_db.begin() as c:  # the operator restores the genuine MAC
        c.execute(
            credentials.update().where(credentials.c.id == cid).values(stage_mac=saved["genuine"])
        )
    versions = {v.number: v.stage for v in svc.show("a").versions}
    assert versions == {1: Stage.CURRENT, 2: Stage.PENDING}
    monkeypatch.setattr(doubles.DoubleConnector, "finish", original)
    [again] = asyncio.run(rotate()).results
    assert again.outcome is Outcome.ROTATED, again
    assert doubles.target_values(cfg, "a") >= {svc.get_value("a").reveal_text()}
    assert svc.audit_verify().ok


def test_a_group_commit_locks_the_audit_head_after_every_credential_row(
    svc: BlockingService, double: None
) -> None:
    """Lock order: a group commit writes credential rows (stage MACs, use counts) before it
    locks the audit head, as a value read does, so two writers on PostgreSQL cannot deadlock
    on (credential row, audit head) taken in opposite orders."""
    cid = add_double(svc, "c")
    kernel = svc.kernel
    now = kernel.clock()

    def stage_move(conn: Any) -> None:
        kernel.check_stage_map(conn, cid)
        store_rot.mark_version(conn, cid, 1, Stage.FAILED, now)
        kernel.restamp(conn, cid)
        kernel.audit(conn, LOCAL_PRINCIPAL, "test.stage_move", "c")

    results, batches, sent = run_in_one_group_commit(svc, [stage_move])
    assert results == [None]
    assert batches == 1
    statements = [s for s, _ in sent]
    mac = next(
        i for i, s in enumerate(statements) if s.startswith("UPDATE credentials SET stage_mac")
    )
    head = next(i for i, s in enumerate(statements) if "FROM audit_head" in s)
    assert mac < head, statements
