"""A third-party connector for the fencing tests, installed through the ``rotator.connectors``
entry point (tests/integration/test_fencing.py copies this module and a ``*.dist-info`` naming it
on the PYTHONPATH of the rotator processes it starts).

Its target is a JSON file shared by every process: the fingerprints of the values it accepts
(``valid``) and a log of every call started and every write made, each with the process id and
the owner token it came with. Never a value: fingerprints only. ``strategy`` is ``single`` (set
replaces the one value) or ``dual`` (set adds one). A process started with ``FENCED_BARRIER``
(a directory) stops inside ``set``, before writing, until ``release`` exists there. With
``FENCED_LATE=1`` the write is made by a helper process it starts (a request already sent,
which the target carries out late): it waits for ``release`` on its own, whatever becomes of
the process that sent it.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

from rotator.connectors import base as cb
from rotator.domain.secret import Secret


class FencedConfig(cb.ConnectorConfig):
    state: str
    strategy: Literal["single", "dual"] = "dual"


def fingerprint(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:16]


@contextmanager
def locked_state(path: str) -> Iterator[dict[str, Any]]:
    """The target's state, read and written back under an exclusive lock."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        p = Path(path)
        data: dict[str, Any] = json.loads(p.read_text()) if p.exists() else {"valid": [], "log": []}
        yield data
        p.write_text(json.dumps(data))


class FencedConnector:
    kind: ClassVar[str] = "fenced"
    strategy: ClassVar[cb.Strategy] = cb.Strategy.DUAL
    config_model: ClassVar[type[cb.ConnectorConfig]] = FencedConfig
    publish_on_add: ClassVar[bool] = True

    def strategy_for(self, config: cb.ConnectorConfig) -> cb.Strategy:
        assert isinstance(config, FencedConfig)
        return cb.Strategy(config.strategy)

    def target_key(self, config: cb.ConnectorConfig) -> str:
        return "fenced"

    def _call(self, cfg: cb.ConnectorConfig, op: str, fence: str | None, value: Secret) -> None:
        assert isinstance(cfg, FencedConfig)
        with locked_state(cfg.state) as data:
            data["log"].append(
                {
                    "event": "call",
                    "op": op,
                    "pid": os.getpid(),
                    "fence": fence,
                    "fp": fingerprint(value.reveal()),
                }
            )

    def _write(
        self, cfg: cb.ConnectorConfig, op: str, fence: str | None, add: Secret | None, drop: bool
    ) -> None:
        """Record a write; ``drop`` removes ``add`` (dual) instead of adding it."""
        assert isinstance(cfg, FencedConfig)
        assert add is not None
        write(cfg.state, cfg.strategy, op, fence, fingerprint(add.reveal()), drop, os.getpid())

    async def create(self, req: cb.CreateRequest) -> Secret:
        return Secret("fnc-" + secrets.token_urlsafe(18))

    async def set(self, req: cb.SetRequest) -> None:
        self._call(req.config, "set", getattr(req, "fence", None), req.pending)
        barrier = os.environ.get("FENCED_BARRIER")
        if barrier and os.environ.get("FENCED_LATE") == "1":
            assert isinstance(req.config, FencedConfig)
            late = subprocess.Popen(
                [sys.executable, "-m", "fenced_target", req.config.state, req.config.strategy,
                 str(getattr(req, "fence", None)), fingerprint(req.pending.reveal()), barrier,
                 str(os.getpid())],
            )  # fmt: skip
            (Path(barrier) / "reached").touch()
            while late.poll() is None:
                await asyncio.sleep(0.02)
            return
        if barrier:
            (Path(barrier) / "reached").touch()
            while not (Path(barrier) / "release").exists():
                await asyncio.sleep(0.02)
        self._write(req.config, "set", getattr(req, "fence", None), req.pending, drop=False)

    async def test(self, req: cb.TestRequest) -> None:
        assert isinstance(req.config, FencedConfig)
        self._call(req.config, "test", getattr(req, "fence", None), req.pending)
        with locked_state(req.config.state) as data:
            if fingerprint(req.pending.reveal()) not in data["valid"]:
                raise cb.PermanentError("test: the target does not accept the new value")

    async def finish(self, req: cb.FinishRequest) -> None:
        self._call(req.config, "finish", getattr(req, "fence", None), req.current)
        if req.previous is None:  # publishing the first value (credential add)
            self._write(req.config, "finish", getattr(req, "fence", None), req.current, drop=False)

    async def revoke(self, req: cb.RevokeRequest) -> None:
        self._call(req.config, "revoke", getattr(req, "fence", None), req.value)
        self._write(req.config, "revoke", getattr(req, "fence", None), req.value, drop=True)

    async def rollback(self, req: cb.RollbackRequest) -> None:
        assert isinstance(req.config, FencedConfig)
        self._call(req.config, "rollback", getattr(req, "fence", None), req.pending)
        if req.config.strategy == "single" and req.current is not None:
            self._write(
                req.config, "rollback", getattr(req, "fence", None), req.current, drop=False
            )
        else:
            self._write(req.config, "rollback", getattr(req, "fence", None), req.pending, drop=True)


def write(
    state: str, strategy: str, op: str, fence: str | None, fp: str, drop: bool, pid: int
) -> None:
    with locked_state(state) as data:
        valid: list[str] = data["valid"]
        if drop:
            data["valid"] = [v for v in valid if v != fp]
        elif strategy == "single":
            data["valid"] = [fp]
        elif fp not in valid:
            valid.append(fp)
        data["log"].append(
            {"event": "write", "op": op, "pid": pid, "fence": fence, "fp": fp, "drop": drop}
        )


if (
    __name__ == "__main__"
):  # the late write: python -m fenced_target STATE STRATEGY FENCE FP DIR PID
    state, strategy, fence, fp, barrier, pid = sys.argv[1:]
    while not (Path(barrier) / "release").exists():
        time.sleep(0.02)
    write(state, strategy, "set", fence, fp, False, int(pid))
