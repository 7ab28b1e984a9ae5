"""Scenario helpers for the process faults (tests/faults/test_disk_full.py, test_serve_killed.py,
test_clock_jump.py): a store seeded with a batch of slow test-double credentials plus a few Redis
ones on a real server, ``rotator`` processes started with the test-double connector installed,
and polling with deadlines.

The double's target is a JSON file shared by every process (tests/support/doubles.py); its
``latency_ms`` makes each step slow enough for a fault to land mid-batch. :meth:`Batch.probe`
checks a CURRENT value for real: a fresh AUTH on Redis, the double's accepted values otherwise.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import redis
from sqlalchemy import create_engine, func, select

from rotator.config import Settings
from rotator.domain.model import Credential
from rotator.domain.secret import Secret
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.store.schema import rotations
from tests.conftest import RedisServer
from tests.faults.invariants import default_probe
from tests.support import doubles
from tests.support.doubles import DoubleConfig

RUN_CLI = Path(__file__).resolve().parents[1] / "support" / "run_cli.py"
TAG = {"batch": "faults"}
WAIT_S = 60.0

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float = WAIT_S) -> T:
    """Poll ``check`` until it returns something other than None/False; fail after
    ``timeout_s`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def rotator_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a rotator process on ``settings``' store (no inherited
    ``ROTATOR_*``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env.update(ROTATOR_HOME=str(settings.home), ROTATOR_DB=settings.db_url, **extra)
    return env


def cli(
    settings: Settings, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (with the double connector) to its end."""
    return subprocess.run(
        [sys.executable, str(RUN_CLI), *args],
        env=dict(env) if env is not None else rotator_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def popen_cli(
    settings: Settings, *args: str, env: Mapping[str, str] | None = None, stderr: Path
) -> subprocess.Popen[str]:
    """Start the real CLI (with the double connector); stderr goes to the file ``stderr``."""
    with stderr.open("w") as err:
        return subprocess.Popen(
            [sys.executable, str(RUN_CLI), *args],
            env=dict(env) if env is not None else rotator_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


@dataclass
class Batch:
    """What :func:`seed_batch` put in the store."""

    settings: Settings
    doubles: list[str]
    redis: list[str] = field(default_factory=list)
    target: dict[str, str] = field(default_factory=dict)  # the double's settings

    @property
    def names(self) -> list[str]:
        return sorted(self.doubles + self.redis)

    def probe(self, cred: Credential, value: str) -> bool | None:
        """A CURRENT value works: a fresh AUTH on Redis; accepted by the double's target."""
        if cred.connector == "double":
            return value in doubles.target_values(DoubleConfig(**cred.config), cred.name)
        return default_probe(cred, value)


def seed_batch(
    svc: BlockingService,
    settings: Settings,
    tmp: Path,
    *,
    n_doubles: int,
    latency_ms: int | Sequence[int],
    redis_server: RedisServer | None = None,
    redis_users: list[str] | None = None,
    n_redis: int = 0,
    policy: PolicyInput | None = None,
) -> Batch:
    """``n_doubles`` credentials ``fleet/dNN`` on a slow double target (``latency_ms`` per
    connector call, or a list of latencies given to the credentials in turn) and ``n_redis``
    ``fleet/rNN`` on ``redis_server`` (ACL users named into ``redis_users`` for cleanup), all
    tagged :data:`TAG`, each with a first value that works on its target."""
    doubles.install()
    target = {"state": str(tmp / "target.json")}
    pol = policy or PolicyInput(grace="1h")
    batch = Batch(settings, [f"fleet/d{i:02d}" for i in range(n_doubles)], target=target)
    # Several latencies (taken in turn): some rotations end early, others are still under way.
    cycle = itertools.cycle([latency_ms] if isinstance(latency_ms, int) else latency_ms)
    for name in batch.doubles:
        cfg = {**target, "latency_ms": str(next(cycle))}
        svc.add_credential(
            name, "double", settings=cfg, tags=TAG, policy=pol, value=ValueInput(generate=True)
        )
        doubles.target_add(DoubleConfig(**cfg), name, svc.get_value(name).reveal_text())
    if n_redis:
        assert redis_server is not None
        assert redis_users is not None
        admin_user, admin_pw = f"fadm_{uuid.uuid4().hex[:10]}", f"adm-{uuid.uuid4().hex}"
        redis_users.append(admin_user)
        client = redis.Redis(host=redis_server.host, port=redis_server.port)
        try:
            client.execute_command(
                "ACL", "SETUSER", admin_user, "on", ">" + admin_pw, "~*", "&*", "+@all"
            )
        finally:
            client.close()
        svc.add_credential("fleet-admin/redis", "local", value=ValueInput(value=Secret(admin_pw)))
        for i in range(n_redis):
            user = f"fapp_{uuid.uuid4().hex[:10]}"
            redis_users.append(user)
            name = f"fleet/r{i:02d}"
            svc.add_credential(
                name,
                "redis",
                settings={
                    "host": redis_server.host,
                    "port": str(redis_server.port),
                    "username": user,
                    "admin": "fleet-admin/redis",
                    "admin_user": admin_user,
                },
                tags=TAG,
                policy=pol,
                value=ValueInput(generate=True),
            )
            batch.redis.append(name)
    return batch


@contextmanager
def redis_acl_cleanup(redis_server: RedisServer) -> Iterator[list[str]]:
    """A list to put ACL user names in; they are deleted from the shared server afterwards."""
    made: list[str] = []
    try:
        yield made
    finally:
        if made:
            client = redis.Redis(host=redis_server.host, port=redis_server.port)
            try:
                client.execute_command("ACL", "DELUSER", *made)
            finally:
                client.close()


def rotation_steps(db_url: str) -> dict[str, int]:
    """How many rotation rows are in each step, read straight from the table."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(rotations.c.step, func.count()).group_by(rotations.c.step)
            ).all()
    finally:
        engine.dispose()
    return {step: n for step, n in rows}
