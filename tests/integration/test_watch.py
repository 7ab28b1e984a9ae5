"""GET /v1/watch and the change feed, against a real ``rotator serve`` subprocess, with
rotations made by separate ``rotator rotate`` CLI processes."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from rotator.client import Change, Client
from rotator.config import Settings
from rotator.service import BlockingService, ValueInput

RUN_CLI = Path(__file__).resolve().parents[1] / "support" / "run_cli.py"
READY = re.compile(r"rotator: serving on (http://\S+)")
WAIT_S = 30.0  # a bound on waiting for an event: never a sleep


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    return {**env, "ROTATOR_HOME": str(settings.home), "ROTATOR_DB": settings.db_url, **extra}


def cli(settings: Settings, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(RUN_CLI), *args],
        env=cli_env(settings, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


@dataclass
class Server:
    settings: Settings
    proc: subprocess.Popen[str] | None = None
    url: str = ""

    def start(self, port: int = 0) -> Server:
        self.proc = subprocess.Popen(
            [sys.executable, str(RUN_CLI), "serve", "--port", str(port), "--no-scheduler"],
            env=cli_env(self.settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        seen = []
        for line in self.proc.stderr:
            seen.append(line)
            m = READY.search(line)
            if m:
                self.url = m.group(1)
                break
        else:
            raise AssertionError(f"serve did not start: {''.join(seen)}")
        # Keep reading stderr so the server never blocks on a full pipe.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture
def server(settings: Settings, svc: BlockingService) -> Iterator[Server]:
    s = Server(settings).start()
    yield s
    s.kill()


def token(svc: BlockingService, name: str, role: str, scope: str = "*") -> str:
    svc.add_principal(name, role, scope=scope)
    return svc.create_token(name)[1]


def add_local(svc: BlockingService, name: str) -> None:
    svc.add_credential(name, "local", value=ValueInput(generate=True))


class Collector:
    """Runs ``client.watch(...)`` in a thread; events land in a queue with their arrival
    time."""

    def __init__(self, client: Client, *args: object, **kw: object) -> None:
        self.events: queue.Queue[tuple[Change, datetime]] = queue.Queue()
        self.gen = client.watch(*args, **kw)  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for c in self.gen:
            self.events.put((c, datetime.now(UTC)))

    def take(self, n: int) -> list[tuple[Change, datetime]]:
        return [self.events.get(timeout=WAIT_S) for _ in range(n)]


def wait_for_watch_start(svc: BlockingService, count: int = 1) -> None:
    """Bounded wait until ``count`` feeds have started (their ``watch.start`` entries)."""
    deadline = time.monotonic() + WAIT_S
    while sum(e.action == "watch.start" for e in svc.audit_entries()) < count:
        assert time.monotonic() < deadline, "the watch never started"
        time.sleep(0.02)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_each_rotation_by_another_process_is_delivered_with_its_finish_entry(
    settings: Settings, svc: BlockingService, server: Server
) -> None:
    add_local(svc, "app/db")
    with Client(server.url, token(svc, "ops", "admin"), cache_ttl=0) as client:
        feed = Collector(client, "app/db")
        wait_for_watch_start(svc)
        for _ in range(3):
            cli(settings, "rotate", "app/db")
        got = feed.take(3)
    finished = [
        e for e in svc.audit_entries(credential="app/db") if e.action == "rotation.complete"
    ]
    assert [c.version for c, _ in got] == [2, 3, 4]
    assert [c.cursor for c, _ in got] == [e.seq for e in finished]
    assert [c.rotation_id for c, _ in got] == [e.rotation_id for e in finished]
    assert all(c.rotation_id for c, _ in got)
    # How soon after the finish an event arrives is a measurement (the feed polls every
    # 0.2 s; docs/api.md), not asserted here: a wall-clock bound fails on a loaded machine.
    for (c, arrived), e in zip(got, finished, strict=True):
        assert c.at == e.ts
        assert arrived >= ts(e.ts)


def test_manual_update_with_a_value_and_emergency_rotation_are_changes(
    settings: Settings, svc: BlockingService, server: Server
) -> None:
    add_local(svc, "app/db")
    with Client(server.url, token(svc, "ops", "admin"), cache_ttl=0) as client:
        feed = Collector(client, "app/db")
        wait_for_watch_start(svc)
        cli(settings, "credential", "update", "app/db", "--tag", "team=x")  # no value: no change
        cli(settings, "credential", "update", "app/db", "--generate")
        cli(settings, "rotate", "app/db", "--emergency")
        got = [c for c, _ in feed.take(2)]
    assert [(c.version, c.rotation_id is None) for c in got] == [(2, True), (3, False)]


def test_resume_after_a_dropped_connection_misses_and_repeats_nothing(
    settings: Settings, svc: BlockingService, server: Server
) -> None:
    add_local(svc, "app/db")
    with Client(server.url, token(svc, "ops", "admin"), cache_ttl=0, max_backoff_s=0.2) as client:
        feed = Collector(client, "app/db")
        wait_for_watch_start(svc)
        cli(settings, "rotate", "app/db")
        first = feed.take(1)
        server.kill()  # the stream drops; rotations go on while nobody serves
        cli(settings, "rotate", "app/db")
        cli(settings, "rotate", "app/db")
        server.start(server.port)  # the client reconnects with Last-Event-ID
        cli(settings, "rotate", "app/db")
        rest = feed.take(3)
        versions = [c.version for c, _ in first + rest]
        assert versions == [2, 3, 4, 5]
        # A new feed resuming after a cursor (?after=) replays exactly what follows it.
        replay = client.watch("app/db", after=first[0][0].cursor)
        assert [next(replay).version for _ in range(3)] == [3, 4, 5]
        replay.close()
    assert feed.events.empty()


def test_a_principal_sees_only_credentials_it_may_read(
    settings: Settings, svc: BlockingService, server: Server
) -> None:
    add_local(svc, "app/x")
    add_local(svc, "other/y")
    reader = token(svc, "reader", "reader", scope="app/*")
    with Client(server.url, reader, cache_ttl=0) as client:
        named = Collector(client, ["other/y", "app/x"])
        everything = Collector(client)
        wait_for_watch_start(svc, 2)
        cli(settings, "rotate", "other/y")
        cli(settings, "rotate", "app/x")
        # Events come in cursor order: other/y's rotation would have come first.
        assert [c.name for c, _ in named.take(1)] == ["app/x"]
        assert [c.name for c, _ in everything.take(1)] == ["app/x"]


def test_another_tenants_rotation_is_never_seen(
    settings: Settings, svc: BlockingService, server: Server
) -> None:
    svc.add_tenant("t2")
    add_local(svc, "app/y")
    cli(
        settings,
        "credential",
        "add",
        "app/x",
        "--connector",
        "local",
        "--generate",
        ROTATOR_TENANT="t2",
    )
    add_local(svc, "app/x")
    with Client(server.url, token(svc, "ops", "admin"), cache_ttl=0) as client:
        feed = Collector(client)
        wait_for_watch_start(svc)
        cli(settings, "rotate", "app/x", ROTATOR_TENANT="t2")
        cli(settings, "rotate", "app/y")
        assert [(c.name, c.version) for c, _ in feed.take(1)] == [("app/y", 2)]


def test_stream_format_and_bad_cursor(svc: BlockingService, server: Server) -> None:
    add_local(svc, "app/db")
    ops = token(svc, "ops", "admin")
    head = svc.audit_head()[0]
    svc.update_credential("app/db", value=ValueInput(generate=True))
    auth = {"Authorization": f"Bearer {ops}"}
    with httpx.stream(
        "GET", f"{server.url}/v1/watch", params={"after": str(head)}, headers=auth, timeout=30
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines: list[str] = []
        for line in resp.iter_lines():
            lines.append(line)
            if line.startswith('data: {"name"'):
                break
    text = "\n".join(lines)
    assert f"id: {head}\nevent: ready" in text
    assert re.search(
        r"id: (\d+)\nevent: current\ndata: \{\"name\": \"app/db\", \"version\": 2,", text
    )
    bad = httpx.get(f"{server.url}/v1/watch", headers={**auth, "Last-Event-ID": "x1"}, timeout=30)
    assert bad.status_code == 400
    assert bad.headers["content-type"].startswith("application/problem+json")
    anonymous = httpx.get(f"{server.url}/v1/watch", timeout=30)
    assert anonymous.status_code == 401


def test_serve_stops_at_sigterm_while_a_watch_stream_is_open(
    svc: BlockingService, server: Server
) -> None:
    add_local(svc, "app/db")
    with Client(server.url, token(svc, "ops", "admin"), cache_ttl=0) as client:
        Collector(client, "app/db")
        wait_for_watch_start(svc)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        # uvicorn waits for open responses at shutdown: the stream must end with the server.
        assert server.proc.wait(timeout=WAIT_S) == 0
