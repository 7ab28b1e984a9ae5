"""Staggered, durable rollouts (``rotator rotate --stagger``, ``rotator rollout ...``) against a
real HTTP API with several keys per account (tests/support/api_server.py), on SQLite and
PostgreSQL.

Time passes through the kernel's clock (``svc.kernel.clock``) in the tests that call
``rotator.scheduler.rollouts.advance`` themselves; the tests that run the real console script
use short windows and poll the store for the state they wait for. "Rotated once" is checked on
the target: every key the API was asked to add is recorded with its credential's name, so a
credential rotated twice (or a value created twice) shows as two distinct keys.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.support.api_server import ApiServer, running

from rotator.config import Settings
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.scheduler.rollouts import advance
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.service.rotation import Selection
from rotator.store.schema import audit_log, rollout_items, rollouts

CLI = Path(sys.executable).parent / "rotator"
ACCOUNT = "acme"
ADMIN = "admin-token-0123456789abcdef"
PROD = Selection(tags={"env": "prod"})
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with running() as server:
        server.add_account(ACCOUNT, ADMIN)
        yield server


class Clock:
    """The kernel clock of one or more services, moved by the test."""

    def __init__(self, *services: BlockingService, start: datetime = T0) -> None:
        self.now = start
        for s in services:
            s.kernel.clock = lambda: self.now

    def tick(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


def add_fleet(svc: BlockingService, api: ApiServer, n: int) -> list[str]:
    """``api/admin`` plus ``n`` http credentials tagged env=prod, each with a first key."""
    svc.add_credential("api/admin", "local", value=ValueInput(value=Secret(ADMIN)))
    names = [f"svc/api{i:03d}" for i in range(n)]
    for i, name in enumerate(names):
        first = f"first-key-{i:04d}"
        api.add_key(ACCOUNT, first)
        svc.add_credential(
            name,
            "http",
            settings={
                "base_url": api.url,
                "allow_insecure_http": "true",
                "auth": "api/admin",
                "set_path": "/keys",
                "set_body": '{"key": "$value", "label": "$credential"}',
                "test_path": "/whoami",
                "revoke_path": "/keys/$value",
                "timeout_s": "5",
            },
            tags={"env": "prod"},
            policy=PolicyInput(grace="1h"),
            value=ValueInput(value=Secret(first)),
        )
    return names


def keys_added(api: ApiServer) -> Counter[str]:
    """Distinct keys the API was asked to add, per credential."""
    seen: dict[str, set[str]] = {}
    for r in api.seen("POST", "/keys"):
        body = json.loads(r.body)
        seen.setdefault(body["label"], set()).add(body["key"])
    return Counter({label: len(keys) for label, keys in seen.items()})


def versions(svc: BlockingService, name: str) -> dict[int, Stage]:
    return {v.number: v.stage for v in svc.show(name).versions}


def step(svc: BlockingService, now: datetime, rollout_id: str | None = None) -> int:
    return svc.run(advance(svc.service.engine, now, rollout_id=rollout_id))


def item_rows(raw_db: sa.Engine, rollout_id: str) -> list[sa.Row[tuple[object, ...]]]:
    with raw_db.connect() as conn:
        return list(
            conn.execute(
                sa.select(rollout_items)
                .where(rollout_items.c.rollout_id == rollout_id)
                .order_by(rollout_items.c.position)
            )
        )


def as_utc(t: object) -> datetime:
    assert isinstance(t, datetime)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def audit_actions(svc: BlockingService) -> list[str]:
    return [e.action for e in svc.audit_entries() if e.action.startswith("rollout.")]


def test_rollout_advanced_with_a_moving_clock_rotates_every_item_once_spread_and_capped(
    svc: BlockingService, api: ApiServer, raw_db: sa.Engine
) -> None:
    names = add_fleet(svc, api, 12)
    clock = Clock(svc)
    view = svc.create_rollout(PROD, stagger=timedelta(minutes=2), max_per_minute=4)
    assert view.status == "running"
    assert view.counts["pending"] == 12
    assert keys_added(api) == Counter(), "creating a rollout rotates nothing"
    planned = [as_utc(r.planned_at) for r in item_rows(raw_db, view.id)]
    # 4/m caps the 10 s an even spread over 2 minutes would give at 15 s between starts.
    assert [(t - T0).total_seconds() for t in planned] == [15.0 * i for i in range(12)]

    started = 0
    for _ in range(40):  # 40 ticks of 7 s: past the planned end (165 s)
        started += step(svc, clock.now)
        clock.tick(timedelta(seconds=7))

    assert started == 12
    final = svc.rollout_status(view.id)
    assert final.status == "done", final
    assert final.counts == {"pending": 0, "running": 0, "rotated": 12, "failed": 0, "skipped": 0}
    assert keys_added(api) == Counter({n: 1 for n in names})
    for n in names:
        assert versions(svc, n) == {1: Stage.PREVIOUS, 2: Stage.CURRENT}
    rows = item_rows(raw_db, view.id)
    starts = sorted(as_utc(r.started_at) for r in rows)
    assert all(as_utc(r.started_at) >= as_utc(r.planned_at) for r in rows)
    for i, t in enumerate(starts):  # never more than 4 in any 60 seconds
        assert sum(1 for u in starts[: i + 1] if u > t - timedelta(seconds=60)) <= 4
    assert all(r.rotation_id for r in rows)
    assert audit_actions(svc) == ["rollout.created", "rollout.done"]
    assert svc.audit_verify().ok


def test_rollout_halts_when_the_target_starts_failing_and_resume_finishes_it(
    svc: BlockingService, api: ApiServer
) -> None:
    names = add_fleet(svc, api, 15)
    clock = Clock(svc)
    view = svc.create_rollout(PROD, stagger=timedelta(minutes=15), max_per_minute=60)
    for _ in range(5):
        assert step(svc, clock.now) == 1
        clock.tick(timedelta(minutes=1))
    api.whoami_status = 403  # the target refuses every new key from now on
    for _ in range(3):
        assert step(svc, clock.now) == 1
        clock.tick(timedelta(minutes=1))

    halted = svc.rollout_status(view.id)
    assert halted.status == "halted"
    assert halted.counts == {"pending": 7, "running": 0, "rotated": 5, "failed": 3, "skipped": 0}
    assert halted.halt_reason is not None
    assert "3 of the last 8 finished rotations failed" in halted.halt_reason
    assert "20%" in halted.halt_reason
    # Halted means halted: time passing starts nothing.
    assert step(svc, clock.tick(timedelta(hours=1))) == 0
    assert svc.rollout_status(view.id).counts["pending"] == 7
    for n in names[5:8]:  # rolled back: the old key is still the one in use
        assert versions(svc, n)[1] is Stage.CURRENT
    assert [e.details["reason"] for e in svc.audit_entries() if e.action == "rollout.halted"] == [
        halted.halt_reason
    ]

    api.whoami_status = None  # the target is fixed
    resumed = svc.resume_rollout(view.id)
    assert resumed.status == "running"
    assert resumed.recent_failed == [], "resume starts the failure window afresh"
    # All 7 overdue and under the 60/m cap, but a pass starts at most the 3 failures 20%/10
    # tolerates (2) plus the one that would trip it: the clock need not move for the rest.
    assert [step(svc, clock.now) for _ in range(3)] == [3, 3, 1]
    done = svc.rollout_status(view.id)
    assert done.status == "done"
    assert done.counts == {"pending": 0, "running": 0, "rotated": 12, "failed": 3, "skipped": 0}
    added = keys_added(api)
    assert all(added[n] == 1 for n in names), added
    assert audit_actions(svc) == [
        "rollout.created",
        "rollout.halted",
        "rollout.resumed",
        "rollout.done",
    ]


def test_rate_cap_holds_when_items_are_overdue_after_downtime(
    svc: BlockingService, api: ApiServer, raw_db: sa.Engine
) -> None:
    add_fleet(svc, api, 6)
    clock = Clock(svc)
    view = svc.create_rollout(PROD, stagger=timedelta(minutes=1), max_per_minute=2)
    # Nobody advanced it for an hour: every item is overdue, but only 2 start per minute.
    later = clock.tick(timedelta(hours=1))
    assert step(svc, later) == 2
    assert step(svc, later + timedelta(seconds=30)) == 0
    assert step(svc, later + timedelta(seconds=61)) == 2
    assert svc.rollout_status(view.id).counts["rotated"] == 4


@pytest.mark.parametrize("per_minute", [60, 1_000_000])
def test_a_failing_target_halts_an_overdue_rollout_after_the_thresholds_worth_of_failures(
    svc: BlockingService, api: ApiServer, per_minute: int
) -> None:
    names = add_fleet(svc, api, 15)
    clock = Clock(svc)
    view = svc.create_rollout(PROD, stagger=timedelta(minutes=15), max_per_minute=per_minute)
    api.whoami_status = 403  # the target refuses every new key
    # Nobody advanced it for an hour: all 15 are overdue and the rate would let them all start.
    assert step(svc, clock.tick(timedelta(hours=1))) == 3
    halted = svc.rollout_status(view.id)
    assert halted.status == "halted"
    assert halted.counts == {"pending": 12, "running": 0, "rotated": 0, "failed": 3, "skipped": 0}
    assert halted.halt_reason is not None
    assert "3 of the last 3 finished rotations failed" in halted.halt_reason
    assert step(svc, clock.tick(timedelta(hours=1))) == 0
    assert all(versions(svc, n) == {1: Stage.CURRENT} for n in names[3:]), "never started"


def test_a_rate_below_one_a_minute_holds_after_downtime(
    svc: BlockingService, api: ApiServer, raw_db: sa.Engine
) -> None:
    add_fleet(svc, api, 6)
    clock = Clock(svc)
    # 30/h: one start every 2 minutes, however overdue the items are.
    view = svc.create_rollout(PROD, stagger=timedelta(minutes=1), max_per_minute=0.5)
    later = clock.tick(timedelta(hours=1))
    assert step(svc, later) == 1
    assert step(svc, later + timedelta(seconds=61)) == 0
    assert step(svc, later + timedelta(seconds=119)) == 0
    assert step(svc, later + timedelta(seconds=120)) == 1
    assert step(svc, later + timedelta(seconds=200)) == 0
    starts = sorted(as_utc(r.started_at) for r in item_rows(raw_db, view.id) if r.started_at)
    assert starts == [later, later + timedelta(seconds=120)]


def test_two_concurrent_advance_calls_never_rotate_an_item_twice(
    svc: BlockingService, api: ApiServer, settings: Settings
) -> None:
    names = add_fleet(svc, api, 24)
    other = BlockingService.open(settings)
    try:
        clock = Clock(svc, other)
        # 3 per minute: each call claims a few items, so the two processes' claims interleave.
        view = svc.create_rollout(PROD, stagger=timedelta(seconds=1), max_per_minute=3)
        api.delay_s = 0.02  # rotations overlap between the two
        barrier = threading.Barrier(2)
        results: list[int] = []
        errors: list[BaseException] = []

        def go(s: BlockingService) -> None:
            try:
                for minute in range(12):  # both call at once, minute after minute
                    barrier.wait(timeout=120)
                    results.append(step(s, clock.now + timedelta(seconds=61 * minute)))
            except BaseException as exc:  # reported below
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=go, args=(s,)) for s in (svc, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        assert sum(results) == 24, results
        assert keys_added(api) == Counter({n: 1 for n in names})
        assert svc.rollout_status(view.id).status == "done"
        assert all(versions(svc, n) == {1: Stage.PREVIOUS, 2: Stage.CURRENT} for n in names)
    finally:
        other.close()


# ------------------------------------------------------------------- the real console script


# Restores SIGINT's default disposition, then runs the command line given after it.
FOREGROUND = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env.update(ROTATOR_HOME=str(settings.home), ROTATOR_DB=settings.db_url, **extra)
    return env


def cli(
    args: Sequence[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sigkill_during_a_foreground_rollout_leaves_it_resumable_and_nothing_rotated_twice(
    svc: BlockingService, api: ApiServer, settings: Settings
) -> None:
    names = add_fleet(svc, api, 10)
    env = cli_env(settings, ROTATOR_LEASE_SECONDS="1")
    api.delay_s = 0.15  # each rotation takes a while: the kill lands in the middle of one
    proc = subprocess.Popen(
        [str(CLI), "rotate", "--tag", "env=prod", "--stagger", "4s", "--max-rate", "600/m"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(api.seen("POST", "/keys")) >= 4, "4 keys added")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    rollout_id = out.split()[1].rstrip(":")
    killed = svc.rollout_status(rollout_id)
    assert killed.status == "running"
    # Killed mid-rotation (a key added, not yet tested), before the end.
    assert killed.counts["running"] >= 1, killed
    assert killed.counts["rotated"] < 10, killed
    api.delay_s = 0

    resumed = cli(["rollout", "resume", rollout_id, "--json"], env)
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout[resumed.stdout.index("{") :])
    assert final["status"] == "done"
    assert final["counts"]["rotated"] == 10, final
    assert keys_added(api) == Counter({n: 1 for n in names})
    for n in names:
        assert versions(svc, n) == {1: Stage.PREVIOUS, 2: Stage.CURRENT}
    listed = json.loads(cli(["rollout", "list", "--json"], env).stdout)
    assert [r["id"] for r in listed] == [rollout_id]


def test_abort_skips_the_pending_items_and_nothing_starts_after(
    svc: BlockingService, api: ApiServer, settings: Settings
) -> None:
    names = add_fleet(svc, api, 5)
    env = cli_env(settings)
    created = cli(["rotate", "--tag", "env=prod", "--stagger", "1h", "--detach", "--json"], env)
    assert created.returncode == 0, created.stderr
    rollout_id = json.loads(created.stdout)["id"]
    assert keys_added(api) == Counter(), "--detach only creates the rollout"
    now = svc.clock() + timedelta(seconds=1)
    Clock(svc, start=now)
    assert step(svc, now) == 1  # the first item's time has come

    aborted = cli(["rollout", "abort", rollout_id, "--json"], env)
    assert aborted.returncode == 0, aborted.stderr
    data = json.loads(aborted.stdout)
    assert data["status"] == "aborted"
    assert data["counts"] == {"pending": 0, "running": 0, "rotated": 1, "failed": 0, "skipped": 4}
    assert step(svc, now + timedelta(days=1)) == 0
    assert keys_added(api) == Counter({names[0]: 1})
    again = cli(["rollout", "abort", rollout_id], env)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1, again.stderr
    assert "aborted already" in again.stderr
    resumed = cli(["rollout", "resume", rollout_id], env)
    assert resumed.returncode == 2
    assert "nothing to resume" in resumed.stderr
    status = cli(["rollout", "status", rollout_id], env)
    assert status.returncode == 0
    assert "skipped" in status.stdout
    assert audit_actions(svc) == ["rollout.created", "rollout.aborted"]


def counts_of(raw_db: sa.Engine) -> tuple[int, int, int]:
    with raw_db.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in (rollouts, rollout_items, audit_log)
        )


BAD = [
    (["rotate", "--stagger", "2h"], "name credentials to rotate"),
    (["rotate", "--tag", "env=prod", "--stagger", "2h", "--max-rate", "0/m"], "--max-rate must"),
    (
        ["rotate", "--tag", "env=prod", "--stagger", "2h", "--max-rate", "50"],
        "malformed --max-rate",
    ),
    (["rotate", "--tag", "env=prod", "--stagger", "soon"], "malformed --stagger"),
    (["rotate", "--tag", "env=prod", "--stagger", "0s"], "--stagger must be above 0"),
    (["rotate", "--tag", "env=prod", "--stagger", "2h", "--halt-at", "120%"], "--halt-at"),
    (["rotate", "--tag", "env=prod", "--max-rate", "50/m"], "--max-rate needs --stagger"),
    (
        ["rotate", "--tag", "env=prod", "--stagger", "2h", "--max-rate", "2000000/m"],
        "--max-rate '2000000/m' is too high",
    ),
    (["rotate", "--tag", "env=prod", "--stagger", "2h", "--emergency"], "excludes --emergency"),
    (["rotate", "--tag", "env=none", "--stagger", "2h"], "matches no credential"),
    (["rollout", "status", "no-such-rollout"], "no rollout"),
    (["rollout", "resume", "no-such-rollout"], "no rollout"),
]


def test_bad_rollout_input_exits_2_with_one_line_and_stores_nothing(
    svc: BlockingService, api: ApiServer, settings: Settings, raw_db: sa.Engine
) -> None:
    add_fleet(svc, api, 2)
    env = cli_env(settings)
    before = counts_of(raw_db)
    for args, message in BAD:
        r = cli(args, env)
        shown = f"$ rotator {' '.join(args)}\nexit {r.returncode}\n{r.stdout}{r.stderr}"
        assert r.returncode == 2, shown
        assert r.stdout == "", shown
        assert r.stderr.startswith("rotator: error: "), shown
        assert r.stderr.count("\n") == 1, shown
        assert message in r.stderr, shown
        assert "Traceback" not in r.stderr
    assert counts_of(raw_db) == before
    assert keys_added(api) == Counter()


def test_rotate_stagger_takes_every_max_rate_form_the_worker_takes(
    svc: BlockingService, api: ApiServer, settings: Settings
) -> None:
    add_fleet(svc, api, 2)
    env = cli_env(settings)
    r = cli(
        ["rotate", "--tag", "env=prod", "--stagger", "2h", "--max-rate", "50/30s", "--detach",
         "--json"],
        env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert svc.rollout_status(json.loads(r.stdout)["id"]).max_per_minute == 100.0


def test_ctrl_c_during_a_foreground_rollout_keeps_it_and_resume_finishes_it(
    svc: BlockingService, api: ApiServer, settings: Settings
) -> None:
    names = add_fleet(svc, api, 6)
    env = cli_env(settings, ROTATOR_LEASE_SECONDS="1")
    api.delay_s = 0.15
    # Run as from an interactive shell: SIGINT at its default. A test run started in the
    # background of a non-interactive shell inherits SIGINT ignored, and so would the CLI
    # (POSIX: a background job ignores the terminal's interrupt), so Ctrl-C could not land.
    proc = subprocess.Popen(
        [*FOREGROUND, str(CLI), "rotate", "--tag", "env=prod", "--stagger", "3s"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(api.seen("POST", "/keys")) >= 2, "2 keys added")
        assert proc.poll() is None, "the rollout ended before the interrupt could be sent"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    rollout_id = out.split()[1].rstrip(":")
    assert proc.returncode == 130, err
    assert f"rotator rollout resume {rollout_id}" in err
    assert "Traceback" not in err
    interrupted = svc.rollout_status(rollout_id)
    assert interrupted.status == "running"
    assert interrupted.counts["rotated"] < 6, interrupted.counts
    api.delay_s = 0

    resumed = cli(["rollout", "resume", rollout_id], env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final = svc.rollout_status(rollout_id)
    assert final.status == "done"
    assert final.counts["pending"] == final.counts["running"] == 0
    assert keys_added(api) == Counter({n: 1 for n in names}), "no value created twice"
    for n in names:  # each rotated at most once: at most one new version
        assert max(versions(svc, n)) <= 2


def test_a_running_worker_advances_a_detached_rollout_to_the_end(
    svc: BlockingService, api: ApiServer, settings: Settings
) -> None:
    names = add_fleet(svc, api, 6)
    env = cli_env(settings)
    created = cli(
        ["rotate", "--tag", "env=prod", "--stagger", "3s", "--max-rate", "600/m", "--detach",
         "--json"],
        env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    rollout_id = json.loads(created.stdout)["id"]
    assert keys_added(api) == Counter(), "--detach rotates nothing itself"
    worker = subprocess.Popen(
        [str(CLI), "worker", "--poll", "0.5"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: svc.rollout_status(rollout_id).status == "done", "rollout done")
    finally:
        worker.send_signal(signal.SIGINT)
        _, err = worker.communicate(timeout=30)
    assert "Traceback" not in err
    final = svc.rollout_status(rollout_id)
    assert final.counts["rotated"] == 6, final
    assert keys_added(api) == Counter({n: 1 for n in names})
    for n in names:
        assert versions(svc, n) == {1: Stage.PREVIOUS, 2: Stage.CURRENT}


def test_a_process_that_stalls_past_its_items_lease_does_not_rotate_them_again(
    svc: BlockingService, api: ApiServer, settings: Settings
) -> None:
    """Process A claims an item, then stalls before the rotation's intent; its lease runs out,
    B settles the item (never started) and rotates it. A's rotation, when it wakes, is refused
    by the item guard: not started, not recorded, one key on the target."""
    import asyncio

    from rotator.engine import Outcome

    names = add_fleet(svc, api, 1)
    other = BlockingService.open(settings)
    try:
        clock = Clock(svc, other)
        view = svc.create_rollout(PROD, stagger=timedelta(seconds=1), max_per_minute=60)
        engine = svc.service.engine
        real = engine.rotate
        gates: list[asyncio.Event] = []
        outcomes: list[Outcome] = []

        async def stalled(reqs, *args, **kw):  # type: ignore[no-untyped-def]
            gates.append(asyncio.Event())
            await gates[-1].wait()
            result = await real(reqs, *args, **kw)
            outcomes.extend(r.outcome for r in result.results)
            return result

        engine.rotate = stalled  # type: ignore[method-assign]
        a_task: list[asyncio.Task[int]] = []

        async def a_starts() -> None:
            a_task.append(asyncio.create_task(advance(engine, clock.now)))
            while not gates:  # A has claimed and reached the engine
                await asyncio.sleep(0)

        svc.run(a_starts())
        clock.tick(timedelta(hours=1))  # A's lease is long over; B takes the item
        assert step(other, clock.now) == 1
        assert keys_added(api) == Counter({names[0]: 1})

        async def a_resumes() -> int:
            gates[0].set()
            return await a_task[0]

        svc.run(a_resumes())
        assert outcomes == [Outcome.SKIPPED]
        assert keys_added(api) == Counter({names[0]: 1}), "rotated twice"
        final = svc.rollout_status(view.id)
        assert final.status == "done"
        assert final.counts["rotated"] == 1, final
        assert final.counts["failed"] == 0, final
    finally:
        other.close()
