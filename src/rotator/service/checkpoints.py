"""Audit use cases of issue 10: signed checkpoints, their public keys, export, and the
verification of a copy outside rotator (see rotator.audit.checkpoints for the formats).

:func:`verify_copy` opens no store and needs no master key: it reads the three files it is
given and nothing else, so anyone who does not trust rotator's database can run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

from sqlalchemy import Connection

from rotator.audit import checkpoints as audit_cp
from rotator.audit import formats
from rotator.audit import reads as audit_reads
from rotator.crypto.signing import load_public_pems, public_pem
from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.errors import InvalidInput, RotatorError
from rotator.kernel import checkpoints as kernel_cp
from rotator.service.credentials import RotatorService

log = logging.getLogger("rotator.audit")
Checkpoint = audit_cp.Checkpoint
CopyResult = audit_cp.CopyResult
EXPORT_FORMATS = ("jsonl", "cef")
WORKER = Principal(name="worker", owner=True)  # the actor of periodic checkpoints


async def make_checkpoint(
    svc: RotatorService, principal: Principal = LOCAL_PRINCIPAL
) -> Checkpoint:
    """Sign a checkpoint of the chain now (Action.AUDIT_WRITE). A head checkpointed already
    returns that checkpoint. Raises AuditChainBroken, signing nothing, when the chain since the
    last checkpoint does not verify."""
    await svc.authorize(principal, Action.AUDIT_WRITE)
    cp = await svc._thread(partial(kernel_cp.make, svc.kernel, principal))
    assert cp is not None
    return cp


async def list_checkpoints(
    svc: RotatorService, principal: Principal = LOCAL_PRINCIPAL
) -> list[Checkpoint]:
    """Every signed checkpoint, oldest first (Action.AUDIT_READ)."""
    await svc.authorize(principal, Action.AUDIT_READ)
    return await svc._read(audit_cp.checkpoints)


@dataclass(frozen=True, slots=True)
class PublicKey:
    id: str
    pem: str


async def public_keys(
    svc: RotatorService, principal: Principal = LOCAL_PRINCIPAL
) -> list[PublicKey]:
    """The PEM of every key that signed a checkpoint, and of the current signing key
    (Action.AUDIT_READ)."""
    await svc.authorize(principal, Action.AUDIT_READ)
    kernel = svc.kernel

    def read(conn: Connection) -> dict[str, bytes]:
        keys = audit_cp.public_keys(conn)
        current = kernel_cp.signing_key(kernel, conn)
        keys.setdefault(current.id, current.public_raw)
        return keys

    keys = await svc._read(read)
    return [PublicKey(k, public_pem(raw)) for k, raw in keys.items()]


async def export(
    svc: RotatorService,
    fmt: str = "jsonl",
    since: int = 0,
    principal: Principal = LOCAL_PRINCIPAL,
) -> list[str]:
    """The entries after seq ``since`` as lines (no newline): ``jsonl`` is one
    ``AuditEntry.to_json()`` per line; ``cef`` one CEF:0 line (rotator.audit.formats).
    Action.AUDIT_READ on the tenant. A principal that is not the owner sees its own tenant's
    entries; in jsonl every other entry is the redacted ``{"seq", "leaf"}`` line, so the copy
    still verifies against a checkpoint; in cef other tenants' entries are left out."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"--format must be jsonl or cef, not {fmt!r}")
    if since < 0:
        raise InvalidInput("--since must not be negative")
    await svc.authorize(principal, Action.AUDIT_READ)

    entries = await svc._read(partial(audit_reads.entries_after, since=since))
    lines = []
    for e in entries:
        mine = principal.owner or e.tenant == principal.tenant
        if fmt == "cef":
            if mine:
                lines.append(formats.to_cef(e))
        elif mine:
            lines.append(json.dumps(e.to_json(), sort_keys=True))
        else:
            lines.append(json.dumps(audit_cp.redacted(e), sort_keys=True))
    return lines


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None


def verify_copy(copy: Path, checkpoint: Path, public_key: Path) -> CopyResult:
    """Check a copy of the log (``rotator audit export``) against a checkpoint record
    (``rotator audit checkpoint --json``) with a public key (``rotator audit public-key``).
    Opens no store. InvalidInput / CryptoError (bad input) for a file that cannot be read or is
    not a checkpoint / a PEM key; otherwise the result says ok or names the problem."""
    cp_bytes = _read_file(checkpoint, "the checkpoint")
    pem = _read_file(public_key, "the public key")
    try:
        record = json.loads(cp_bytes)
        if not isinstance(record, dict):
            raise ValueError("it is not a JSON object")
        cp = Checkpoint.from_json(record)
    except ValueError as exc:
        raise InvalidInput(f"the checkpoint file is not a checkpoint record: {exc}") from None
    keys = load_public_pems(pem)
    try:
        with copy.open(encoding="utf-8", errors="strict") as f:
            return audit_cp.verify_copy(f, cp, keys)
    except OSError as exc:
        raise InvalidInput(f"cannot read the copy {str(copy)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        return CopyResult(False, "the copy is not UTF-8 text")


class PeriodicCheckpoints:
    """A checkpoint every ``every_s`` seconds of the service's clock, when entries were added
    since the last one (its own ``audit.checkpoint`` entry does not count). Run by the worker
    loop (rotation.serve) beside the scheduler. The clock is the service's (tests pass one)."""

    def __init__(self, svc: RotatorService, every_s: float) -> None:
        self.svc = svc
        self.every = timedelta(seconds=every_s)
        self.next_at = svc.clock() + self.every

    async def tick(self) -> Checkpoint | None:
        """Make a checkpoint if one is due and entries were added; the checkpoint or None.
        A chain that does not verify is logged (the worker keeps running) and signed never."""
        now = self.svc.clock()
        if now < self.next_at:
            return None
        self.next_at = now + self.every
        try:
            return await self.svc._thread(
                partial(kernel_cp.make, self.svc.kernel, WORKER, only_if_new=True)
            )
        except RotatorError as exc:
            log.warning("periodic audit checkpoint failed (%s): %s", type(exc).__name__, exc)
            return None

    def wait_s(self) -> float:
        return max(0.0, (self.next_at - self.svc.clock()).total_seconds())

    async def run(self, stop: asyncio.Event, poll_s: float) -> None:
        """Until ``stop``: tick, then sleep until the next one is due (at most ``poll_s``, so
        a clock moved forward is noticed)."""
        while not stop.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.01, min(poll_s, self.wait_s())))


__all__ = [
    "Checkpoint",
    "CopyResult",
    "PeriodicCheckpoints",
    "PublicKey",
    "export",
    "list_checkpoints",
    "make_checkpoint",
    "public_keys",
    "verify_copy",
]
