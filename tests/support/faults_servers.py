"""Servers a fault test may stop, restart, freeze and thaw (tests/faults/test_servers.py).

The session servers of tests/conftest.py are shared by every test of a worker and must never
be stopped; these are started by one test, for that test only, on the classes and settings of
tests/conftest.py, and always stopped (and their files removed) when the test ends.

* :func:`own_pg`: a PostgreSQL 15 (trust auth for the store, or scram-sha-256 with a superuser
  password for a target) whose ``stop``/``start``/``restart``/``freeze`` keep its port and data.
* :func:`own_redis`: a redis-server with an ACL file (``acl_save_and_stop`` keeps its users
  across a stop, as an operator's ``ACL SAVE`` would) that may be started again on its port.

Plus :func:`run_rotator_until_barrier`: the real CLI in a subprocess with a barrier hook
(tests/support/run_cli_hooked.py) at the Nth call of a function, so the fault lands at a known
point of a batch in flight, whatever the machine's speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

from tests.conftest import (
    LOOPBACK,
    PG_SUPERUSER,
    READY_TIMEOUT_S,
    PgServer,
    PgTarget,
    _check_binaries,
    _PgCluster,
    _redis_binary,
    _running,
    _stop_process,
    _tail,
)

RUN_CLI_HOOKED = Path(__file__).resolve().parent / "run_cli_hooked.py"
BARRIER_WAIT_S = 90.0


@dataclass
class OwnPg:
    """A PostgreSQL this test owns: ``server`` (trust) / ``target`` (password) stay valid
    across ``stop``/``start``/``restart`` (same port, same data)."""

    cluster: _PgCluster
    port: int
    password: str | None

    @property
    def server(self) -> PgServer:
        return PgServer(LOOPBACK, self.port)

    @property
    def target(self) -> PgTarget:
        assert self.password is not None
        return PgTarget(LOOPBACK, self.port, PG_SUPERUSER, self.password)

    def _ctl(self, *args: str) -> None:
        proc = self.cluster._run("pg_ctl", *args, "--pgdata", str(self.cluster.data))
        self.cluster._check(proc, f"pg_ctl {args[0]}")

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: sessions are ended, the server is down when it returns."""
        self._ctl("stop", "-m", "fast", "--wait")
        self.cluster.started = False

    def start(self) -> None:
        """Start it again on its port; returns once it accepts logins."""
        self._ctl("start", "--log", str(self.cluster.log), "--wait")
        self.cluster.started = True
        self.wait_ready()

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session ended, then up again on the same port."""
        self._ctl("restart", "-m", "fast", "--log", str(self.cluster.log), "--wait")
        self.cluster.started = True
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        dsn = self.target.dsn() if self.password is not None else self.server.dsn()
        while True:
            try:
                with psycopg.connect(dsn, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    pytest.fail(f"own PostgreSQL not ready:\n{_tail(self.cluster.log)}")
                time.sleep(0.05)


@contextlib.contextmanager
def own_pg(password: str | None = None) -> Iterator[OwnPg]:
    """A PostgreSQL 15 for this test alone: trust auth, or (``password``) scram-sha-256 on TCP
    with that superuser password. Stopped and removed at the end, whatever its state."""
    _check_binaries()
    base = Path(tempfile.mkdtemp(prefix="rotator-fault-pg-"))
    auth = "trust" if password is None else "scram-sha-256"
    cluster = _PgCluster(base, auth, password)
    with _running(cluster) as port:
        pg = OwnPg(cluster, port, password)
        pg.wait_ready()
        yield pg


@dataclass
class OwnRedis:
    """A redis-server this test owns, with its ACL users in ``workdir/users.acl``."""

    binary: str
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "redis.log"

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=5)

    def start(self) -> None:
        """Start on its port with its ACL file; returns once it answers PING."""
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--aclfile", str(self.workdir / "users.acl"),
            "--daemonize", "no",
        ]  # fmt: skip
        with self.log.open("ab") as log_file:
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
            )
        client = redis.Redis(host=LOOPBACK, port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    if client.ping():
                        return
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    time.sleep(0.05)
        finally:
            client.close()
        pytest.fail(f"own redis-server did not answer PING:\n{_tail(self.log)}")

    def acl_save_and_stop(self) -> None:
        """``ACL SAVE`` then stop: the users (and every password they hold now) come back
        at the next ``start``, as they would for an operator who persists the ACL."""
        client = self.client()
        try:
            client.execute_command("ACL", "SAVE")
        finally:
            client.close()
        self.stop()

    def stop(self) -> None:
        if self.proc is not None:
            self.thaw()
            _stop_process(self.proc)
            self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections, the server never answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)


@contextlib.contextmanager
def own_redis() -> Iterator[OwnRedis]:
    """A redis-server for this test alone (no persistence but its ACL file); stopped and its
    directory removed at the end, whatever its state (a frozen one is thawed first)."""
    from tests.conftest import free_port

    workdir = Path(tempfile.mkdtemp(prefix="rotator-fault-redis-"))
    (workdir / "users.acl").write_text("")
    server = OwnRedis(_redis_binary(), workdir, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class HookedRun:
    """A ``rotator`` subprocess held at a barrier until :meth:`release`."""

    proc: subprocess.Popen[str]
    barrier: Path

    def release(self) -> None:
        (self.barrier / "release").touch()

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """Wait for the process to end (killed and failed past ``timeout``)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"rotator did not end within {timeout:g}s (a hang):\n{err[-4000:]}")
        return self.proc.returncode, out, err


def run_rotator_until_barrier(
    env: dict[str, str], args: list[str], target: str, call: int, workdir: Path
) -> HookedRun:
    """Start ``rotator ARGS`` and return once it is held before the ``call``-th call of
    ``target`` (``module:Class.method``): its whole event loop stands still there, the other
    rotations of the batch frozen mid-step, until ``release()``."""
    barrier = workdir / f"barrier-{uuid.uuid4().hex[:8]}"
    barrier.mkdir()
    hook = {"target": target, "call": call, "when": "before", "action": "barrier",
            "dir": str(barrier)}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, str(RUN_CLI_HOOKED), *args],
        env={**env, "ROTATOR_TEST_HOOK": json.dumps(hook)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + BARRIER_WAIT_S
    while not (barrier / "first").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(
                f"rotator never reached call {call} of {target} (exit {proc.returncode}):\n"
                f"{out[-2000:]}\n{err[-4000:]}"
            )
        time.sleep(0.02)
    return HookedRun(proc, barrier)
