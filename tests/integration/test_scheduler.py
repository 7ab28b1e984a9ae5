"""The scheduler with real `rotator worker` processes: claims before any value is created
(exactly once across workers, also when one is killed), one worker per SQLite store, NOTIFY
wake-ups on PostgreSQL, and catch-up after downtime spread over a window.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select, text, update
from tests.support import recording
from tests.support.api_server import ApiServer, running

from rotator.config import Settings
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.store import normalize_url
from rotator.store.schema import credential_claims, credentials, rotations, versions

RUN_CLI = Path(__file__).resolve().parents[1] / "support" / "run_cli_recording.py"
ACCOUNT = "acme"
ADMIN = "admin-token-0123456789abcdef"


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
        **extra,
    }


@contextmanager
def workers(
    settings: Settings, n: int, *args: str, lease_s: str = "4"
) -> Iterator[list[subprocess.Popen[str]]]:
    """``n`` `rotator worker` processes (SIGTERM and reaped at the end, killed if stuck).
    Their stderr goes to files next to ROTATOR_HOME (a pipe nobody reads could fill up and
    stall a worker); ``stderr_of`` reads it."""
    procs = []
    for _ in range(n):
        log = (
            settings.home.parent / f"worker-{len(list(settings.home.parent.glob('worker-*')))}.err"
        )
        with log.open("w") as err:
            p = subprocess.Popen(
                [sys.executable, str(RUN_CLI), "worker", *args],
                env=cli_env(settings, ROTATOR_LEASE_SECONDS=lease_s),
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
            )
        _LOGS[p.pid] = log
        procs.append(p)
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


_LOGS: dict[int, Path] = {}


def stderr_of(p: subprocess.Popen[str]) -> str:
    log = _LOGS.get(p.pid)
    return log.read_text() if log is not None and log.exists() else ""


def poll_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    *procs: subprocess.Popen[str],
    state: Callable[[], object] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for p in procs:
            if p.poll() is not None and p.returncode != -signal.SIGKILL:
                pytest.fail(f"a worker exited with {p.returncode} before {what}: {stderr_of(p)}")
        if time.monotonic() > deadline:
            seen = "" if state is None else f" ({state()})"
            errs = " | ".join(stderr_of(p)[-300:] for p in procs)
            pytest.fail(f"timed out waiting for {what}{seen}; workers' stderr: {errs}")
        time.sleep(0.1)


def raw_engine(url: str) -> Engine:
    return create_engine(normalize_url(url))


# ------------------------------------------------------------- exactly once across workers


def http_settings(api: ApiServer, record: Path) -> dict[str, str]:
    return {
        "record": str(record),  # every value created: one line "<pid> <credential>"
        "base_url": api.url,
        "allow_insecure_http": "true",  # the test API speaks plain HTTP on loopback
        "auth": "api/admin",
        "set_path": "/keys",
        # The target records every set with the credential and the version it is for.
        "set_body": '{"key": "$value", "label": "$credential", "version": "$version"}',
        "test_path": "/whoami",
        "revoke_path": "/keys/$value",
        "timeout_s": "10",
    }


def seed_http(settings: Settings, api: ApiServer, n: int, record: Path) -> dict[str, str]:
    """``n`` http credentials (first values known to the target), all due an hour ago; the
    values their rotations create are recorded in ``record``."""
    recording.install()
    api.add_account(ACCOUNT, ADMIN)
    svc, created = BlockingService.init(settings)
    assert created
    first = {}
    try:
        svc.add_credential("api/admin", "local", value=ValueInput(value=Secret(ADMIN)))
        cfg = http_settings(api, record)
        for i in range(n):
            name = f"svc/k{i:05d}"
            first[name] = f"first-key-{i:05d}-0123456789"
            api.add_key(ACCOUNT, first[name])
            svc.add_credential(
                name,
                "recording-http",
                settings=cfg,
                policy=PolicyInput(every="30d", grace="1h"),
                value=ValueInput(value=Secret(first[name])),
            )
    finally:
        svc.close()
    raw = raw_engine(settings.db_url)
    try:
        with raw.begin() as c:
            c.execute(
                update(credentials)
                .where(credentials.c.connector == "recording-http")
                .values(next_rotation_at=datetime.now(UTC) - timedelta(hours=1))
            )
    finally:
        raw.dispose()
    return first


def finished(raw: Engine) -> int:
    with raw.connect() as c:
        return int(
            c.execute(
                select(func.count()).select_from(rotations).where(rotations.c.step == "finished")
            ).scalar_one()
        )


def in_flight(raw: Engine) -> int:
    with raw.connect() as c:
        return int(
            c.execute(
                select(func.count()).select_from(rotations).where(rotations.c.step != "finished")
            ).scalar_one()
        )


def claims(raw: Engine) -> int:
    with raw.connect() as c:
        return int(c.execute(select(func.count()).select_from(credential_claims)).scalar_one())


def progress(raw: Engine) -> dict[str, object]:
    """Where the rotations stand, for a timeout's message."""
    with raw.connect() as c:
        steps = dict(
            c.execute(select(rotations.c.step, func.count()).group_by(rotations.c.step)).all()
        )
        errors = (
            c.execute(select(rotations.c.error).where(rotations.c.error.is_not(None)).limit(3))
            .scalars()
            .all()
        )
    return {"rotated": rotated_count(raw), "steps": steps, "errors": errors}


def rotated_count(raw: Engine) -> int:
    with raw.connect() as c:
        return int(
            c.execute(
                select(func.count())
                .select_from(versions)
                .where(versions.c.number == 2, versions.c.stage == Stage.CURRENT.value)
            ).scalar_one()
        )


def assert_each_rotated_exactly_once(
    settings: Settings,
    api: ApiServer,
    first: dict[str, str],
    record: Path,
    killed: int | None = None,
) -> None:
    """Every credential rotated once: one new version in the store, one new value on the
    target, one value created. Only the ``killed`` worker may have created a value that
    was never stored (it died between create and the intent): then the one that resumed the
    credential made the only value that counts."""
    raw = raw_engine(settings.db_url)
    try:
        with raw.connect() as c:
            vers = c.execute(
                select(credentials.c.name, versions.c.number, versions.c.stage)
                .join(credentials, credentials.c.id == versions.c.credential_id)
                .where(credentials.c.connector == "recording-http")
            ).all()
            rots = c.execute(select(rotations.c.credential, rotations.c.step)).all()
            claims_left = c.execute(select(func.count()).select_from(credential_claims)).scalar()
    finally:
        raw.dispose()
    by_cred: dict[str, dict[int, str]] = defaultdict(dict)
    for name, number, stage in vers:
        by_cred[name][number] = stage
    assert set(by_cred) == set(first)
    twice = {n: s for n, s in by_cred.items() if s != {1: "PREVIOUS", 2: "CURRENT"}}
    assert not twice, (
        f"{len(twice)} credential(s) not rotated exactly once: {list(twice.items())[:3]}"
    )
    rot_by_cred: dict[str, list[str]] = defaultdict(list)
    for name, step in rots:
        rot_by_cred[name].append(step)
    assert {n: s for n, s in rot_by_cred.items() if s != ["finished"]} == {}
    assert set(rot_by_cred) == set(first)
    assert claims_left == 0

    # The target: one new value per credential, for version 2. The same value may be sent
    # twice (a step retried after a transient error, or resumed after a kill: idempotent,
    # 409 "already added"); a second value would be another key.
    sets: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for r in api.requests:
        if r.method == "POST" and r.path == "/keys" and r.status in (201, 409):
            body = json.loads(r.body)
            sets[body["label"]].append((body["key"], body["version"]))
    assert set(sets) == set(first)
    distinct = {n: set(s) for n, s in sets.items() if len(set(s)) != 1}
    assert distinct == {}, f"values created twice on the target: {list(distinct.items())[:3]}"
    assert {v for s in sets.values() for _, v in s} == {2}

    # Values created: one per credential, by a live worker.
    made: dict[str, list[int]] = defaultdict(list)
    for pid, name in recording.creates(str(record)):
        made[name].append(pid)
    assert set(made) == set(first)
    extra = {
        n: pids
        for n, pids in made.items()
        # Two only when the killed worker made the first and died before storing it.
        if not (len(pids) == 1 or (len(pids) == 2 and pids[0] == killed != pids[1]))
    }
    assert extra == {}, f"values created twice: {list(extra.items())[:3]}"

    # The target agrees with the store: the CURRENT value is the one set, and it works there.
    svc = BlockingService.open(settings)
    try:
        for name in first:
            current = svc.get_value(name).reveal_text()
            assert current == sets[name][0][0], f"{name}: store and target disagree"
            assert current in api.keys[ACCOUNT]
    finally:
        svc.close()


N_EXACTLY_ONCE = 2000
# Long enough that a worker's event loop, lagging on 2 shared cores under 3 workers, the test
# API and PostgreSQL, still renews its rotations' leases in time (a rotation that cannot
# renew fails, correctly, and is tried again only after the backoff); short enough that a
# killed worker's claims lapse well within the test.
LEASE_2000 = "10"
WORKER_ARGS = ("--poll", "1", "--max-rate", "1000000/m", "--batch", "64", "--concurrency", "32")


@pytest.mark.postgres
def test_three_workers_rotate_2000_due_credentials_each_exactly_once(
    tmp_path: Path, pg_database: str
) -> None:
    settings = Settings(home=tmp_path / "home", db_url=pg_database)
    with running() as api:
        first = seed_http(settings, api, N_EXACTLY_ONCE, tmp_path / "creates.log")
        raw = raw_engine(pg_database)
        try:
            with workers(settings, 3, *WORKER_ARGS, lease_s=LEASE_2000) as procs:
                poll_until(
                    "every credential rotated",
                    lambda: rotated_count(raw) == N_EXACTLY_ONCE,
                    150,
                    *procs,
                    state=lambda: progress(raw),
                )
        finally:
            raw.dispose()
        assert_each_rotated_exactly_once(settings, api, first, tmp_path / "creates.log")


@pytest.mark.postgres
def test_a_worker_killed_mid_batch_loses_nothing_and_repeats_nothing(
    tmp_path: Path, pg_database: str
) -> None:
    settings = Settings(home=tmp_path / "home", db_url=pg_database)
    with running(delay_s=0.005) as api:  # rotations stay in flight long enough to be cut
        first = seed_http(settings, api, N_EXACTLY_ONCE, tmp_path / "creates.log")
        raw = raw_engine(pg_database)
        try:
            with workers(settings, 3, *WORKER_ARGS, lease_s=LEASE_2000) as procs:
                victim = procs[0]

                mine = f"%:{victim.pid}:%"

                def victim_orphans() -> list[str]:
                    with raw.connect() as c:
                        return list(
                            c.execute(
                                select(rotations.c.id).where(
                                    rotations.c.owner.like(mine), rotations.c.step != "finished"
                                )
                            ).scalars()
                        )

                def victim_mid_batch() -> bool:
                    with raw.connect() as c:
                        claims = c.execute(
                            select(func.count())
                            .select_from(credential_claims)
                            .where(credential_claims.c.worker.like(mine))
                        ).scalar_one()
                    return (
                        claims > 0
                        and rotated_count(raw) >= N_EXACTLY_ONCE // 10
                        and bool(victim_orphans())
                    )

                poll_until("the first worker to be mid-batch", victim_mid_batch, 120, *procs)
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=30)
                orphans = victim_orphans()  # rotations it had begun and not finished
                assert orphans, "killed between two rotations: nothing in flight to resume"
                assert rotated_count(raw) < N_EXACTLY_ONCE, "killed too late to show anything"
                poll_until(
                    "every credential rotated after the kill",
                    lambda: rotated_count(raw) == N_EXACTLY_ONCE,
                    150,
                    *procs[1:],
                    state=lambda: progress(raw),
                )
                poll_until("no rotation left in flight", lambda: in_flight(raw) == 0, 60)
                poll_until("the dead worker's claims to lapse", lambda: claims(raw) == 0, 60)
                with raw.connect() as c:  # resumed by the others from their rows, not redone
                    resumed = c.execute(
                        select(rotations.c.step, rotations.c.owner).where(
                            rotations.c.id.in_(orphans)
                        )
                    ).all()
                assert {step for step, _ in resumed} == {"finished"}
                assert not any(f":{victim.pid}:" in owner for _, owner in resumed)
        finally:
            raw.dispose()
        assert_each_rotated_exactly_once(
            settings, api, first, tmp_path / "creates.log", killed=victim.pid
        )


# ------------------------------------------------------------------ one worker on SQLite


def lock_held(path: Path) -> bool:
    """Whether another process holds the worker lock file (flock)."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def listeners(raw: Engine) -> int:
    """PostgreSQL sessions listening on rotator_work (one per running worker)."""
    with raw.connect() as c:
        return int(
            c.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN rotator_work%'"
                )
            ).scalar_one()
        )


def test_a_second_worker_is_refused_on_sqlite_and_allowed_after_the_first_is_killed(
    settings: Settings,
) -> None:
    svc, _ = BlockingService.init(settings)
    svc.close()
    if not settings.db_url.startswith("sqlite"):
        # PostgreSQL: workers share the work; a second one runs next to the first.
        raw = raw_engine(settings.db_url)
        try:
            with workers(settings, 2, "--poll", "0.5") as procs:
                poll_until("both workers to run their loops", lambda: listeners(raw) == 2, 60)
                assert all(p.poll() is None for p in procs)
        finally:
            raw.dispose()
        return
    lock = Path(settings.db_url.removeprefix("sqlite:///") + ".worker.lock")
    with workers(settings, 1, "--poll", "0.5") as (first,):
        poll_until("the first worker to hold its lock", lambda: lock_held(lock), 60, first)
        second = subprocess.run(
            [sys.executable, str(RUN_CLI), "worker", "--poll", "0.5"],
            env=cli_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert "another rotator worker is running on this SQLite store" in lines[0]
        assert "Traceback" not in second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        with workers(settings, 1, "--poll", "0.5") as (again,):
            poll_until("a new worker to take the lock", lambda: lock_held(lock), 60, again)
            assert again.poll() is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-rate", "lots"], "malformed --max-rate 'lots'"),
        (["--max-rate", "0/m"], "--max-rate must be above 0"),
        (["--max-rate", "20000/s"], "--max-rate '20000/s' is too high"),
        (["--catch-up-window", "soon"], "--catch-up-window"),
        (["--batch", "0"], "--batch must be between 1 and"),
    ],
)
def test_bad_worker_options_exit_2_with_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    home = tmp_path / "home"
    r = subprocess.run(
        [sys.executable, str(RUN_CLI), "worker", *args],
        env={**os.environ, "ROTATOR_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0], r.stderr
    assert not home.exists() or not any(home.iterdir())  # nothing stored


# ------------------------------------------------------------------------ NOTIFY wake-ups


@pytest.mark.postgres
def test_notify_wakes_an_idle_worker_when_a_due_credential_is_added(
    tmp_path: Path, pg_database: str
) -> None:
    settings = Settings(home=tmp_path / "home", db_url=pg_database)
    svc, _ = BlockingService.init(settings)
    svc.close()
    raw = raw_engine(pg_database)
    try:
        with workers(settings, 1, "--poll", "600") as (worker,):
            poll_until("the worker to listen", lambda: listeners(raw) == 1, 60, worker)
            svc = BlockingService.open(settings)
            try:  # due in 2 s; the worker sleeps up to 600 s unless the insert's NOTIFY wakes it
                svc.add_credential(
                    "app/token",
                    "local",
                    policy=PolicyInput(every="2s"),
                    value=ValueInput(generate=True),
                )
            finally:
                svc.close()
            poll_until("the idle worker to rotate it", lambda: finished(raw) >= 1, 30, worker)
    finally:
        raw.dispose()


def _idle_worker_wakes(tmp_path: Path, pg_database: str, before, make_due) -> None:  # type: ignore[no-untyped-def]
    """A worker polling every 600 s, idle, rotates within 30 s what ``make_due`` (one
    service call, after ``before`` set things up) makes due: only the NOTIFY can wake it."""
    settings = Settings(home=tmp_path / "home", db_url=pg_database)
    svc, _ = BlockingService.init(settings)
    try:
        before(svc)
    finally:
        svc.close()
    raw = raw_engine(pg_database)
    try:
        with workers(settings, 1, "--poll", "600") as (worker,):
            poll_until("the worker to listen", lambda: listeners(raw) == 1, 60, worker)
            svc = BlockingService.open(settings)
            try:
                make_due(svc)
            finally:
                svc.close()
            poll_until("the idle worker to rotate it", lambda: finished(raw) >= 1, 30, worker)
    finally:
        raw.dispose()


@pytest.mark.postgres
def test_notify_wakes_an_idle_worker_when_reported_uses_reach_max_uses(
    tmp_path: Path, pg_database: str
) -> None:
    def add(svc: BlockingService) -> None:
        svc.add_credential(
            "app/token",
            "local",
            policy=PolicyInput(every="30d", max_uses=3),
            value=ValueInput(generate=True),
        )

    _idle_worker_wakes(tmp_path, pg_database, add, lambda svc: svc.report_usage("app/token", 3))


@pytest.mark.postgres
def test_notify_wakes_an_idle_worker_when_a_policy_default_makes_a_credential_due(
    tmp_path: Path, pg_database: str
) -> None:
    def add(svc: BlockingService) -> None:
        svc.add_credential(
            "app/token", "local", tags={"env": "prod"}, value=ValueInput(generate=True)
        )

    def policy(svc: BlockingService) -> None:  # on demand until now; due in 2 s
        svc.set_policy_default(tag=("env", "prod"), policy=PolicyInput(every="2s"))

    _idle_worker_wakes(tmp_path, pg_database, add, policy)


# ---------------------------------------------------------------------------- catch-up


def test_after_downtime_overdue_credentials_are_all_rotated_spread_over_the_window(
    settings: Settings,
) -> None:
    n = 12
    svc, _ = BlockingService.init(settings)
    try:
        for i in range(n):
            svc.add_credential(
                f"app/c{i:02d}",
                "local",
                policy=PolicyInput(every="1h"),
                value=ValueInput(generate=True),
            )
    finally:
        svc.close()
    raw = raw_engine(settings.db_url)
    try:
        with raw.begin() as c:  # the service was down for three intervals
            c.execute(
                update(credentials).values(next_rotation_at=datetime.now(UTC) - timedelta(hours=3))
            )
        # 12 overdue, more than the rate's burst of 10: spread over 6 s, one every 0.5 s.
        launched = datetime.now(UTC)
        with workers(
            settings, 1, "--poll", "1", "--catch-up-window", "6s", "--max-rate", "10/s"
        ) as procs:
            poll_until(
                "every overdue credential rotated", lambda: rotated_count(raw) == n, 60, *procs
            )
        with raw.connect() as c:
            starts = sorted(c.execute(select(rotations.c.created_at)).scalars())
    finally:
        raw.dispose()
    assert len(starts) == n
    spacing = 6.0 / n
    # Only lower bounds, which a slow machine cannot break (it only makes starts later): the
    # pacer's plan begins at the worker's first tick, after it was launched, and the i-th
    # start (a rotation is created after its claim) is never before slot i of that plan.
    # Without the catch-up, the burst of 10 would start together right after the worker came
    # up, the last about 0.2 s later. The exact spacing is checked with a passed-in clock in
    # tests/unit/test_pacing.py.
    for i, t in enumerate(starts):
        t = t.replace(tzinfo=UTC) if t.tzinfo is None else t
        assert (t - launched).total_seconds() >= i * spacing, (i, [str(s) for s in starts])


# --------------------------------------------------------------------- claims in the store


def test_claims_take_due_work_once_and_never_move_a_finished_rotations_time_back(
    svc: BlockingService, raw_db: Engine
) -> None:
    from rotator.store import claims as store_claims
    from rotator.store import credentials as store_creds

    for name in ("app/a", "app/b", "app/c"):
        svc.add_credential(
            name, "local", policy=PolicyInput(every="1h"), value=ValueInput(generate=True)
        )
    now = datetime.now(UTC)
    with raw_db.begin() as c:  # due 3, 2 and 1 minutes ago: a, b, c
        for i, name in enumerate(("app/a", "app/b", "app/c")):
            c.execute(
                update(credentials)
                .where(credentials.c.name == name)
                .values(next_rotation_at=now - timedelta(minutes=3 - i))
            )
    db = svc.db
    lease = now + timedelta(seconds=30)

    def claim(worker: str, at: datetime, until: datetime, limit: int) -> list[str]:
        with db.write() as conn:
            got = store_claims.claim_due(
                conn, worker=worker, now=at, lease_until=until, limit=limit
            )
        return [c.name for c in got]

    def next_time(name: str) -> datetime:
        with db.read() as conn:
            t = conn.execute(
                select(credentials.c.next_rotation_at).where(credentials.c.name == name)
            ).scalar_one()
        assert isinstance(t, datetime)
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t

    assert claim("w1", now, lease, 2) == ["app/a", "app/b"]  # soonest first
    assert claim("w2", now, lease, 10) == ["app/c"]  # claimed ones are not due any more
    assert claim("w3", now, lease, 10) == []
    with db.read() as conn:
        ids = {n: i for n, i in conn.execute(select(credentials.c.name, credentials.c.id))}
    # a's rotation finished: its next time is set; the heartbeat must not move it back.
    finished_at = now + timedelta(days=30)
    with db.write() as conn:
        store_creds.update_credential(
            conn, ids["app/a"], now=now, set_next_rotation=True, next_rotation_at=finished_at
        )
    later = now + timedelta(seconds=60)
    with db.write() as conn:
        kept = store_claims.extend(
            conn,
            worker="w1",
            held={ids["app/a"]: lease, ids["app/b"]: lease},
            claimed={ids["app/a"]: now, ids["app/b"]: now},
            until=later,
        )
    assert kept == {ids["app/b"]}
    assert next_time("app/a") == finished_at
    assert next_time("app/b") == later
    # b's rotation failed: released with a backoff, its time moves on, its claim row goes.
    backoff = now + timedelta(minutes=5)
    with db.write() as conn:
        store_claims.release(
            conn, worker="w1", ids=[ids["app/b"]], held={ids["app/b"]: later}, until=backoff
        )
    assert next_time("app/b") == backoff
    # c's worker died: when its lease has run out, c is due again and another worker takes it.
    assert claim("w3", now + timedelta(seconds=31), lease + timedelta(seconds=60), 10) == ["app/c"]
    with db.read() as conn:
        assert store_claims.claims_of(conn) == {ids["app/c"]: "w3"}


def test_a_worker_that_stalls_past_its_claims_lease_does_not_rotate_again(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    """Worker A claims, then stalls (GC, VM pause) before its rotation starts; its lease runs
    out, worker B claims and rotates. When A wakes its rotation is refused by the claim guard
    inside the intent's transaction: SKIPPED, nothing written, no second value."""
    from rotator.engine import Outcome
    from rotator.scheduler.loop import Scheduler, SchedulerOptions

    svc.add_credential(
        "app/a", "local", policy=PolicyInput(every="1d"), value=ValueInput(generate=True)
    )
    other = BlockingService.open(settings)
    t0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    now = [t0]
    for s in (svc, other):
        s.kernel.clock = lambda: now[0]
    with raw_db.begin() as c:
        c.execute(update(credentials).values(next_rotation_at=t0 - timedelta(minutes=1)))
    try:
        a = Scheduler(svc.service.engine, SchedulerOptions(lease_s=30, listen=False))
        gate_holder: list[object] = []
        outcomes: list[Outcome] = []
        real = a.engine.rotate

        async def stalled(reqs, *args, **kw):  # type: ignore[no-untyped-def]
            import asyncio

            gate = asyncio.Event()
            gate_holder.append(gate)
            await gate.wait()
            result = await real(reqs, *args, **kw)
            outcomes.extend(r.outcome for r in result.results)
            return result

        a.engine.rotate = stalled  # type: ignore[method-assign]
        svc.run(a._claim(1, now[0]))
        assert len(a.held) == 1

        now[0] = t0 + timedelta(seconds=31)  # A's lease is over; B claims and rotates
        b = Scheduler(other.service.engine, SchedulerOptions(lease_s=30, listen=False))

        async def b_runs() -> None:
            import asyncio

            await b._claim(1, now[0])
            await asyncio.gather(*b._tasks)

        other.run(b_runs())
        assert [v.number for v in svc.show("app/a").versions] == [1, 2]

        now[0] = t0 + timedelta(seconds=40)

        async def a_resumes() -> None:
            import asyncio

            gate_holder[0].set()  # type: ignore[attr-defined]
            await asyncio.gather(*a._tasks)

        svc.run(a_resumes())
        assert outcomes == [Outcome.SKIPPED]
        assert [v.number for v in svc.show("app/a").versions] == [1, 2], "rotated twice"
        with raw_db.connect() as c:
            assert c.execute(select(func.count()).select_from(rotations)).scalar_one() == 1
        assert svc.audit_verify().ok
    finally:
        other.close()


def test_a_tick_whose_store_call_fails_is_logged_and_the_worker_goes_on(
    svc: BlockingService, raw_db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from rotator import scheduler
    from rotator.errors import StoreUnavailable

    svc.add_credential(
        "app/a", "local", policy=PolicyInput(every="1d"), value=ValueInput(generate=True)
    )
    with raw_db.begin() as c:
        c.execute(
            update(credentials).values(next_rotation_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    engine = svc.service.engine
    real = engine.recover
    calls = {"n": 0}

    async def flaky_recover():  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise StoreUnavailable("the store is unavailable: connection refused")
        return await real()

    engine.recover = flaky_recover  # type: ignore[method-assign]

    async def main() -> None:
        stop = asyncio.Event()

        async def until_rotated() -> None:
            for _ in range(1000):  # polls the store for the end state, at most ~20 s
                n = await engine.runtime.read(
                    lambda conn: conn.execute(select(func.count()).select_from(versions)).scalar()
                )
                if n == 2:
                    break
                await asyncio.sleep(0.02)
            stop.set()

        await asyncio.gather(scheduler.run(engine, stop, poll_s=0.05), until_rotated())

    with caplog.at_level("WARNING", logger="rotator.scheduler.loop"):
        svc.run(main())
    assert calls["n"] >= 2, "the loop ticked again after the failure"
    assert [v.number for v in svc.show("app/a").versions] == [1, 2]
    assert any("scheduler tick failed (StoreUnavailable)" in r.getMessage() for r in caplog.records)


def test_a_rollout_pass_that_could_start_nothing_is_not_repeated_at_once(
    svc: BlockingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Due rollout items that a rate cap (or the halt rule's bound) keeps from starting must
    not make the worker spin on claim transactions: after a pass that started none, the loop
    waits ROLLOUT_IDLE_S; after one that started some, it looks again at once."""
    import asyncio

    from rotator.scheduler import loop as loop_mod
    from rotator.scheduler.loop import Scheduler, SchedulerOptions

    engine = svc.service.engine
    past = engine.runtime.now() - timedelta(minutes=5)

    async def due_long_ago(_engine: object) -> datetime:
        return past

    monkeypatch.setattr(loop_mod.rollouts, "next_due", due_long_ago)
    sched = Scheduler(engine, SchedulerOptions(listen=False))

    async def wait_after(started: int) -> float:
        async def a_pass() -> int:
            return started

        sched._rollouts = asyncio.create_task(a_pass())
        await sched._rollouts
        return await sched._rollouts_wait()

    assert svc.run(wait_after(0)) == loop_mod.ROLLOUT_IDLE_S
    assert svc.run(wait_after(3)) <= 0


# ------------------------------------------------ claims tied to one claim, not to a worker


def _claimed_time(raw_db: Engine, name: str) -> datetime:
    with raw_db.connect() as c:
        t = c.execute(
            select(credentials.c.next_rotation_at).where(credentials.c.name == name)
        ).scalar_one()
    assert isinstance(t, datetime)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def test_a_credential_claimed_again_by_the_same_worker_while_its_request_waits_rotates_once(
    svc: BlockingService, raw_db: Engine
) -> None:
    """Worker A claims a credential; its request waits in the engine; an operator makes it
    due again and A claims it again. No second request starts, and the waiting one, made
    under the first claim, does not run under the second: one rotation, not two."""
    import asyncio

    from rotator.engine import RotationRequest
    from rotator.scheduler.loop import Scheduler, SchedulerOptions

    svc.add_credential(
        "app/a", "local", policy=PolicyInput(every="1d"), value=ValueInput(generate=True)
    )
    t0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    now = [t0]
    svc.kernel.clock = lambda: now[0]
    with raw_db.begin() as c:
        c.execute(update(credentials).values(next_rotation_at=t0 - timedelta(minutes=1)))
    a = Scheduler(svc.service.engine, SchedulerOptions(lease_s=30, listen=False))
    real = a.engine.rotate
    requests: list[RotationRequest] = []
    gate: list[asyncio.Event] = []

    async def first_waits(reqs, *args, **kw):  # type: ignore[no-untyped-def]
        reqs = list(reqs)
        requests.extend(reqs)
        if len(requests) == len(reqs):  # the first batch waits, as if queued behind others
            gate.append(asyncio.Event())
            await gate[0].wait()
        return await real(reqs, *args, **kw)

    a.engine.rotate = first_waits  # type: ignore[method-assign]

    async def scenario() -> None:
        await a._claim(1, now[0])
        await asyncio.sleep(0)  # the batch task starts and waits at the gate
        # An operator makes it due now (as reads past max uses did before): A claims again.
        with raw_db.begin() as c:
            c.execute(update(credentials).values(next_rotation_at=t0))
        now[0] = t0 + timedelta(seconds=1)
        await a._claim(1, now[0])
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(requests) == 1, "a second request started for a credential already held"
        gate[0].set()
        while a._tasks:
            await asyncio.gather(*list(a._tasks))

    svc.run(scenario())
    assert [v.number for v in svc.show("app/a").versions] == [1, 2], "rotated twice (or never)"
    assert len(requests) == 2  # the refused request ran once more, under the second claim
    with raw_db.connect() as c:
        assert c.execute(select(func.count()).select_from(credential_claims)).scalar_one() == 0
        assert c.execute(select(func.count()).select_from(rotations)).scalar_one() == 1


def test_a_guard_refuses_a_request_made_under_an_earlier_claim_of_the_same_worker(
    svc: BlockingService, raw_db: Engine
) -> None:
    """Claims name themselves by claimed_at, distinct even when the clock has not moved: the
    guard of a request made under claim 1 refuses once the same worker holds claim 2."""
    from rotator.store import claims as store_claims

    svc.add_credential(
        "app/a", "local", policy=PolicyInput(every="1d"), value=ValueInput(generate=True)
    )
    t = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    with raw_db.begin() as c:
        c.execute(update(credentials).values(next_rotation_at=t))
    db = svc.db
    with db.write() as conn:
        (one,) = store_claims.claim_due(
            conn, worker="A", now=t, lease_until=t + timedelta(seconds=30), limit=5
        )
    with raw_db.begin() as c:
        c.execute(update(credentials).values(next_rotation_at=t))
    with db.write() as conn:
        (two,) = store_claims.claim_due(
            conn, worker="A", now=t, lease_until=t + timedelta(seconds=30), limit=5
        )
        cid = one.credential_id
        assert (
            store_claims.check_held(
                conn, t, credential_id=cid, worker="A", claimed_at=one.claimed_at
            )
            == "the scheduler's claim of it was taken over"
        )
        assert (
            store_claims.check_held(
                conn, t, credential_id=cid, worker="A", claimed_at=two.claimed_at
            )
            is None
        )
        assert (
            store_claims.check_held(
                conn, t, credential_id=cid, worker="B", claimed_at=two.claimed_at
            )
            == "the scheduler's claim of it was taken over"
        )


def test_reads_past_max_uses_leave_a_claimed_credential_with_its_claimer(
    svc: BlockingService, raw_db: Engine
) -> None:
    """Max uses reached while a worker holds the claim: further reads must not move its time
    back from the claim's lease, or another worker would find it due and take it over."""
    from rotator.store import claims as store_claims

    svc.add_credential(
        "app/hot",
        "local",
        policy=PolicyInput(every="30d", max_uses=2),
        value=ValueInput(generate=True),
    )
    t0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    now = [t0]
    svc.kernel.clock = lambda: now[0]
    svc.report_usage("app/hot", 2)
    assert _claimed_time(raw_db, "app/hot") == t0  # due by uses
    lease = t0 + timedelta(seconds=30)
    with svc.db.write() as conn:
        (mine,) = store_claims.claim_due(conn, worker="A", now=t0, lease_until=lease, limit=5)
    for i in range(1, 4):
        now[0] = t0 + timedelta(seconds=i)
        svc.get_value("app/hot")
        svc.report_usage("app/hot", 1)
    assert _claimed_time(raw_db, "app/hot") == lease
    with svc.db.write() as conn:
        taken = store_claims.claim_due(
            conn, worker="B", now=now[0], lease_until=now[0] + timedelta(seconds=30), limit=5
        )
        assert taken == []
        assert (
            store_claims.check_held(
                conn,
                now[0],
                credential_id=mine.credential_id,
                worker="A",
                claimed_at=mine.claimed_at,
            )
            is None
        )


def test_a_policy_or_tag_change_leaves_a_claimed_credentials_time_to_its_claim(
    svc: BlockingService, raw_db: Engine
) -> None:
    """Setting a policy default, updating the credential, changing its tags: each recomputes
    the schedule, but a claimed credential keeps the claim's lease (its rotation's finish
    reschedules it) while its policy is updated."""
    from rotator.store import claims as store_claims

    svc.add_credential(
        "app/a",
        "local",
        tags={"env": "prod"},
        policy=PolicyInput(max_uses=100),
        value=ValueInput(generate=True),
    )
    t0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    svc.kernel.clock = lambda: t0
    with raw_db.begin() as c:
        c.execute(update(credentials).values(next_rotation_at=t0 - timedelta(minutes=1)))
    lease = t0 + timedelta(seconds=30)
    with svc.db.write() as conn:
        assert store_claims.claim_due(conn, worker="A", now=t0, lease_until=lease, limit=5)
    svc.set_policy_default(tag=("env", "prod"), policy=PolicyInput(every="1d"))
    assert _claimed_time(raw_db, "app/a") == lease
    assert svc.show("app/a").policy.every == timedelta(days=1)  # the policy itself is set
    svc.update_credential("app/a", tags={"env": "prod", "team": "x"})
    assert _claimed_time(raw_db, "app/a") == lease
    svc.update_credential("app/a", policy=PolicyInput(every="2h"))
    assert _claimed_time(raw_db, "app/a") == lease
    with svc.db.write() as conn:
        taken = store_claims.claim_due(
            conn, worker="B", now=t0, lease_until=t0 + timedelta(seconds=30), limit=5
        )
    assert taken == []


def test_a_heartbeat_drops_a_claim_whose_row_a_later_claim_pass_removed(
    svc: BlockingService, raw_db: Engine
) -> None:
    """A's lease on c lapsed; B's claim pass removed c's claim row but took another
    credential (its limit). A's late heartbeat must not keep c (and must not push its time
    on): A no longer holds it, and c stays due for whoever claims next."""
    from rotator.store import claims as store_claims

    for name in ("app/b", "app/c"):
        svc.add_credential(
            name, "local", policy=PolicyInput(every="1d"), value=ValueInput(generate=True)
        )
    t0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    with raw_db.begin() as c:
        c.execute(
            update(credentials)
            .where(credentials.c.name == "app/c")
            .values(next_rotation_at=t0 - timedelta(minutes=1))
        )
    lease = t0 + timedelta(seconds=30)
    with svc.db.write() as conn:
        (c_claim,) = store_claims.claim_due(conn, worker="A", now=t0, lease_until=lease, limit=5)
    with raw_db.begin() as c:  # b became due before c's lease ran out
        c.execute(
            update(credentials)
            .where(credentials.c.name == "app/b")
            .values(next_rotation_at=t0 + timedelta(seconds=10))
        )
    late = t0 + timedelta(seconds=31)
    with svc.db.write() as conn:
        got = store_claims.claim_due(
            conn, worker="B", now=late, lease_until=late + timedelta(seconds=30), limit=1
        )
        assert [g.name for g in got] == ["app/b"]
        assert c_claim.credential_id not in store_claims.claims_of(conn)
    with svc.db.write() as conn:
        kept = store_claims.extend(
            conn,
            worker="A",
            held={c_claim.credential_id: lease},
            claimed={c_claim.credential_id: c_claim.claimed_at},
            until=late + timedelta(seconds=30),
        )
    assert kept == set()
    assert _claimed_time(raw_db, "app/c") == lease  # still due: the next claim takes it
