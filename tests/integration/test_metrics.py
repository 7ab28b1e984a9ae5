"""``GET /metrics`` of a real ``rotator serve`` (issue 11, item 5): the counters move while its
scheduler rotates a batch, each step is timed, the overdue gauge counts an overdue credential,
value reads are counted, and nothing in a scrape is a value, a token or a credential's name.

The server runs as a subprocess on the test's store (both backends); the store is edited
behind rotator's back (next_rotation_at moved into the past) to make credentials due.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, update

from rotator.api.app import create_app
from rotator.config import Settings
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.errors import InvalidInput
from rotator.service import BlockingService, PolicyInput, RotatorService, ValueInput
from rotator.service.metrics import SnapshotCache
from rotator.store.schema import credentials

ROTATOR = str(Path(sys.executable).parent / "rotator")
READY = "rotator: serving on "
LOCAL = {"connector": "local"}


@contextmanager
def serving(settings: Settings, tmp_path: Path, *args: str, cache_s: str = "10") -> Iterator[str]:
    """``rotator serve --port 0 ARGS`` on the test's store, its /metrics store figures
    cached ``cache_s`` seconds; yields its base URL once it serves; stopped with SIGTERM
    (then killed) at the end."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")},
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
        "ROTATOR_METRICS_CACHE_S": cache_s,
    }
    log = tmp_path / "serve.stderr"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [ROTATOR, "serve", "--port", "0", *args], env=env, stdout=err, stderr=err
        )
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith(READY):
                    url = line.removeprefix(READY).strip()
            if url is None:
                assert proc.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, "rotator serve did not start"
                time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scrape(url: str) -> str:
    r = httpx.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly ``labels`` (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def rotated(text: str) -> float:
    return sample(text, "rotator_rotations_total", result="rotated", trigger="schedule", **LOCAL)


def make_due(raw: Engine, *names: str) -> None:
    with raw.begin() as c:
        c.execute(
            update(credentials)
            .where(credentials.c.name.in_(names))
            .values(next_rotation_at=datetime.now(UTC) - timedelta(hours=1))
        )


def add_local(settings: Settings, n: int, prefix: str = "app/m") -> tuple[list[str], str]:
    """``n`` local credentials on a 30-day schedule, and an admin token; the store closed."""
    svc, created = BlockingService.init(settings)
    assert created
    try:
        names = []
        for i in range(n):
            name = f"{prefix}{i:02d}"
            svc.add_credential(
                name,
                "local",
                policy=PolicyInput(every="30d"),
                value=ValueInput(value=Secret(f"metrics-first-value-{i:02d}-4c1f")),
            )
            names.append(name)
        svc.add_principal("ops", "admin")
        _, token = svc.create_token("ops")
    finally:
        svc.close()
    return names, token


def test_a_scheduled_batch_moves_the_rotation_and_step_counters_and_leaks_nothing(
    settings: Settings, raw_db: Engine, tmp_path: Path
) -> None:
    n = 6
    names, token = add_local(settings, n)
    scrapes: list[str] = []
    with serving(settings, tmp_path, "--poll", "0.2") as url:
        before = scrape(url)
        scrapes.append(before)
        assert rotated(before) == 0
        assert sample(before, "rotator_credentials", tenant="default") == n
        assert sample(before, "rotator_credentials_overdue", tenant="default") == 0

        make_due(raw_db, *names)
        deadline = time.monotonic() + 60
        while rotated(scrapes[-1]) < n:
            assert time.monotonic() < deadline, scrapes[-1]
            time.sleep(0.05)
            scrapes.append(scrape(url))
        counts = [rotated(s) for s in scrapes]
        assert counts == sorted(counts)  # a counter only grows, scrape after scrape

        r = httpx.get(
            f"{url}/v1/credentials/{names[0]}/value",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 200
        after = scrape(url)
        scrapes.append(after)
        new_value = r.json()["value"]

    assert rotated(after) == n
    for result in ("failed", "rolled_back", "skipped"):
        assert (
            sample(after, "rotator_rotations_total", result=result, trigger="schedule", **LOCAL)
            == 0
        )
    for step in ("create", "set", "test", "finish"):
        timed = sample(after, "rotator_step_duration_seconds_count", step=step, **LOCAL)
        assert timed == n, step
        assert sample(after, "rotator_step_duration_seconds_sum", step=step, **LOCAL) > 0
    assert sample(after, "rotator_rotations_in_flight") == 0
    assert sample(after, "rotator_queue_depth") == 0
    assert sample(after, "rotator_breaker_state", target="local") == 0
    assert sample(after, "rotator_value_reads_total", tenant="default") == 1
    assert sample(after, "rotator_credentials_overdue", tenant="default") == 0

    svc = BlockingService.open(settings)
    try:
        values = [svc.get_value(name, Stage.CURRENT).reveal_text() for name in names]
        values += [svc.get_value(name, Stage.PREVIOUS).reveal_text() for name in names]
    finally:
        svc.close()
    assert new_value in values
    for text in scrapes:
        assert token not in text
        assert "rtr_" not in text
        for secret in values:
            assert secret not in text
        for name in names:
            assert name not in text


def test_the_overdue_gauge_counts_a_credential_past_its_rotation_time(
    settings: Settings, raw_db: Engine, tmp_path: Path
) -> None:
    names, _ = add_local(settings, 3, prefix="app/o")
    # No scheduler: nothing rotates the overdue credential away while the test looks. No
    # cache: the second scrape must read the edited store.
    with serving(settings, tmp_path, "--no-scheduler", cache_s="0") as url:
        assert sample(scrape(url), "rotator_credentials_overdue", tenant="default") == 0
        make_due(raw_db, names[1])
        text = scrape(url)
    assert sample(text, "rotator_credentials", tenant="default") == 3
    assert sample(text, "rotator_credentials_overdue", tenant="default") == 1
    assert sample(text, "rotator_credential_age_seconds_max", tenant="default") >= 0
    assert "rotator_credential_age_seconds_max{" in text
    assert rotated(text) == 0


def test_concurrent_scrapes_share_one_store_read_until_the_cache_expires_and_counters_stay_live(
    settings: Settings, raw_db: Engine
) -> None:
    names, _ = add_local(settings, 3, prefix="app/c")
    now = [1000.0]

    async def go() -> None:
        async with await RotatorService.open(settings) as svc:
            app = create_app(svc, metrics_cache=SnapshotCache(10, clock=lambda: now[0]))
            statements: list[str] = []

            def count(*args: object) -> None:
                statements.append(str(args[2]))

            event.listen(svc.db.engine, "before_cursor_execute", count)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:

                async def scrape_all(n: int) -> list[str]:
                    rs = await asyncio.gather(*(c.get("/metrics") for _ in range(n)))
                    assert all(r.status_code == 200 for r in rs)
                    return [r.text for r in rs]

                first = await scrape_all(20)
                one_read = len(statements)  # every statement of the one snapshot read
                assert one_read > 0
                assert {sample(t, "rotator_credentials", tenant="default") for t in first} == {3}

                # Within the TTL: the store is not read, even after it changed behind
                # rotator's back; the engine's counters (a value read) are live.
                reads_before = sample(first[0], "rotator_value_reads_total", tenant="default")
                await svc.get_value(names[0])
                make_due(raw_db, names[1])
                now[0] += 9.9
                statements.clear()
                (cached,) = await scrape_all(1)
                assert statements == []
                assert sample(cached, "rotator_credentials_overdue", tenant="default") == 0
                assert sample(cached, "rotator_value_reads_total", tenant="default") == (
                    reads_before + 1
                )

                # After the TTL: one new read for all concurrent scrapes, and it sees the edit.
                now[0] += 0.2
                fresh = await scrape_all(20)
                assert len(statements) == one_read
                assert {
                    sample(t, "rotator_credentials_overdue", tenant="default") for t in fresh
                } == {1}

    asyncio.run(go())


@pytest.mark.parametrize(("raw", "ttl"), [("", 10.0), ("0", 0.0), ("2.5", 2.5), (" 3600 ", 3600.0)])
def test_the_metrics_cache_ttl_comes_from_rotator_metrics_cache_s(raw: str, ttl: float) -> None:
    assert SnapshotCache.from_env({"ROTATOR_METRICS_CACHE_S": raw}).ttl_s == ttl


@pytest.mark.parametrize("raw", ["-1", "abc", "nan", "inf", "3601", "1" * 30])
def test_a_bad_rotator_metrics_cache_s_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(InvalidInput, match="ROTATOR_METRICS_CACHE_S"):
        SnapshotCache.from_env({"ROTATOR_METRICS_CACHE_S": raw})


def test_rotator_serve_refuses_a_bad_metrics_cache_setting_in_one_line(settings: Settings) -> None:
    add_local(settings, 1)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")},
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
        "ROTATOR_METRICS_CACHE_S": "ten",
    }
    r = subprocess.run(
        [ROTATOR, "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "rotator: error: ROTATOR_METRICS_CACHE_S must be a number of seconds from 0 to 3600"
    ]
