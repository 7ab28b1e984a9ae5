"""A test-double connector whose target is a JSON file (shared across processes) or memory.

It behaves like a dual-password target: ``set`` adds the pending value, ``revoke`` and
``rollback`` remove one, ``test`` checks the pending value is accepted. Knobs make it slow
(latency), flaky (transient failures), dead (down), wrong (test fails) or stoppable at a
barrier (to kill the process between two steps).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import secrets
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from rotator.connectors import base as cb
from rotator.connectors.registry import register
from rotator.domain.secret import Secret


class DoubleConfig(cb.ConnectorConfig):
    state: str = ""  # JSON file holding the target's valid values; "" = in memory
    target: str = "double"
    latency_ms: float = 0.0
    fail_rate: float = 0.0  # share of calls failing transiently
    max_consecutive_failures: int = 3  # per credential and step
    seed: int = 0
    down: bool = False
    fail_test: bool = False
    fail_revoke: bool = False  # revoke is refused (the old value stays valid on the target)
    barrier: str = ""  # directory; see _barrier
    barrier_after: str = ""  # step name after which to stop


class MemoryTarget:
    valid: ClassVar[dict[str, dict[str, set[str]]]] = defaultdict(lambda: defaultdict(set))


CALLS: dict[str, int] = defaultdict(int)
_RNG: dict[int, random.Random] = {}
_RUN: dict[tuple[str, str], int] = defaultdict(int)


@contextmanager
def _state(path: str) -> Iterator[dict[str, list[str]]]:
    # Locked through a file beside it, and replaced whole (written aside, then renamed): a
    # process SIGKILLed mid-write (tests/faults) leaves the old state or the new one, never a
    # truncated file that would make the target forget every value.
    p = Path(path)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = p.read_text() if p.exists() else ""
        data: dict[str, list[str]] = json.loads(text) if text.strip() else {}
        yield data
        tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, p)


def target_values(cfg: DoubleConfig, credential: str) -> set[str]:
    """The values the target accepts for a credential now."""
    if cfg.state:
        with _state(cfg.state) as data:
            return set(data.get(credential, []))
    return set(MemoryTarget.valid[cfg.target][credential])


def target_add(cfg: DoubleConfig, credential: str, value: str) -> None:
    if cfg.state:
        with _state(cfg.state) as data:
            vals = data.setdefault(credential, [])
            if value not in vals:
                vals.append(value)
    else:
        MemoryTarget.valid[cfg.target][credential].add(value)


def target_remove(cfg: DoubleConfig, credential: str, value: str) -> None:
    if cfg.state:
        with _state(cfg.state) as data:
            vals = data.setdefault(credential, [])
            if value in vals:
                vals.remove(value)
    else:
        MemoryTarget.valid[cfg.target][credential].discard(value)


class DoubleConnector:
    kind: ClassVar[str] = "double"
    strategy: ClassVar[cb.Strategy] = cb.Strategy.DUAL
    config_model: ClassVar[type[cb.ConnectorConfig]] = DoubleConfig

    def target_key(self, config: cb.ConnectorConfig) -> str:
        assert isinstance(config, DoubleConfig)
        return config.target

    async def _io(self, cfg: DoubleConfig, step: str, credential: str) -> None:
        CALLS[cfg.target] += 1
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000)
        if cfg.down:
            raise cb.TransientError(f"{step}: connection refused by {cfg.target}")
        if cfg.fail_rate:
            rng = _RNG.setdefault(cfg.seed, random.Random(cfg.seed))
            # Transient means it passes: at most a few failures in a row for one call.
            run = (credential, step)
            if rng.random() < cfg.fail_rate and _RUN[run] < cfg.max_consecutive_failures:
                _RUN[run] += 1
                raise cb.TransientError(f"{step}: connection reset by {cfg.target}")
            _RUN[run] = 0

    async def _barrier(self, cfg: DoubleConfig, step: str, credential: str) -> None:
        """After ``barrier_after`` step: touch ``<step>.<credential>.reached``, then wait until
        a ``release`` file exists (the test kills the process meanwhile)."""
        if not cfg.barrier or cfg.barrier_after != step:
            return
        d = Path(cfg.barrier)
        if (d / "release").exists():
            return
        (d / f"{step}.{credential.replace('/', '_')}.reached").touch()
        while not (d / "release").exists():
            await asyncio.sleep(0.05)

    async def create(self, req: cb.CreateRequest) -> Secret:
        return Secret("dbl-" + secrets.token_urlsafe(18))

    async def verify(self, req: cb.VerifyRequest) -> None:
        assert isinstance(req.config, DoubleConfig)
        await self._io(req.config, "verify", req.credential)

    async def set(self, req: cb.SetRequest) -> None:
        assert isinstance(req.config, DoubleConfig)
        await self._io(req.config, "set", req.credential)
        target_add(req.config, req.credential, req.pending.reveal_text())
        await self._barrier(req.config, "set", req.credential)

    async def test(self, req: cb.TestRequest) -> None:
        assert isinstance(req.config, DoubleConfig)
        await self._io(req.config, "test", req.credential)
        if req.config.fail_test:
            raise cb.PermanentError("test: the target refused the new value")
        if req.pending.reveal_text() not in target_values(req.config, req.credential):
            raise cb.PermanentError("test: the target does not accept the new value")
        await self._barrier(req.config, "test", req.credential)

    async def finish(self, req: cb.FinishRequest) -> None:
        assert isinstance(req.config, DoubleConfig)
        await self._io(req.config, "finish", req.credential)

    async def revoke(self, req: cb.RevokeRequest) -> None:
        assert isinstance(req.config, DoubleConfig)
        await self._io(req.config, "revoke", req.credential)
        if req.config.fail_revoke:
            raise cb.PermanentError("revoke: permission denied by the target")
        target_remove(req.config, req.credential, req.value.reveal_text())

    async def rollback(self, req: cb.RollbackRequest) -> None:
        assert isinstance(req.config, DoubleConfig)
        await self._io(req.config, "rollback", req.credential)
        target_remove(req.config, req.credential, req.pending.reveal_text())


def install() -> None:
    """Make the ``double`` connector available in this process."""
    register(DoubleConnector)
