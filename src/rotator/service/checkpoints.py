"""Audit use cases of issue 10: signed checkpoints, their public keys, export, and the
verification of a copy outside rotator (see rotator.audit.checkpoints for the formats).

:func:`verify_copy` opens no store and needs no master key: it reads the three files it is
given and nothing else, so anyone who does not trust rotator's database can run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Sequence
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
ROTATOR_ACTORS = frozenset({WORKER.name, LOCAL_PRINCIPAL.name})  # rotator's own, not a tenant's


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
    """Every signed checkpoint, oldest first (Action.AUDIT_READ). For a principal that is not
    the owner, ``created_by`` (not signed) is shown only when it is rotator's own (``worker``,
    ``local``) or a principal of its own tenant (the tenant of the checkpoint's audit entry),
    else ``"-"``: another tenant's principal names are not shown."""
    await svc.authorize(principal, Action.AUDIT_READ)
    if principal.owner:
        return await svc._read(audit_cp.checkpoints)

    def read(conn: Connection) -> list[Checkpoint]:
        cps = audit_cp.checkpoints(conn)
        tenants = audit_reads.checkpoint_tenants(conn, [cp.seq for cp in cps])
        return [
            cp
            if cp.created_by in ROTATOR_ACTORS or tenants.get(cp.seq) == principal.tenant
            else dataclasses.replace(cp, created_by="-")
            for cp in cps
        ]

    return await svc._read(read)


@dataclass(frozen=True, slots=True)
class PublicKey:
    id: str
    pem: str


async def public_keys(
    svc: RotatorService, principal: Principal = LOCAL_PRINCIPAL
) -> list[PublicKey]:
    """The PEM of every signing key rotator trusts (Action.AUDIT_READ): one derived from each
    audit key it holds, the current one and every older one, so checkpoints signed before a
    master-key rotation stay verifiable. Never a key read from the store."""
    await svc.authorize(principal, Action.AUDIT_READ)
    keys = kernel_cp.public_keys(svc.kernel)
    return [PublicKey(k, public_pem(raw)) for k, raw in sorted(keys.items())]


async def export(
    svc: RotatorService,
    fmt: str = "jsonl",
    since: int = 0,
    principal: Principal = LOCAL_PRINCIPAL,
) -> list[str]:
    """The entries after seq ``since`` as lines (no newline): ``jsonl`` is one
    ``AuditEntry.to_json()`` plus its leaf ``salt`` (hex) per line; ``cef`` one CEF:0 line
    (rotator.audit.formats).
    Action.AUDIT_READ on the tenant. A principal that is not the owner sees its own tenant's
    entries; in jsonl every other entry is the redacted ``{"seq", "leaf"}`` line, so the copy
    still verifies against a checkpoint; in cef other tenants' entries are left out."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"--format must be jsonl or cef, not {fmt!r}")
    if since < 0:
        raise InvalidInput("--since must not be negative")
    await svc.authorize(principal, Action.AUDIT_READ)

    entries = await svc._read(partial(audit_reads.entries_after, since=since))
    keys = svc.kernel.audit_keys
    lines = []
    for e in entries:
        mine = principal.owner or e.tenant == principal.tenant
        if fmt == "cef":
            if mine:
                lines.append(formats.to_cef(e))
        elif mine:
            lines.append(json.dumps(audit_cp.export_line(e, keys), sort_keys=True))
        else:
            lines.append(json.dumps(audit_cp.redacted(e, keys), sort_keys=True))
    return lines


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None


def _checkpoint(path: Path) -> Checkpoint:
    cp_bytes = _read_file(path, "the checkpoint")
    try:
        record = audit_cp.parse_line(cp_bytes.decode("utf-8"))
        if not isinstance(record, dict):
            raise ValueError("it is not a JSON object")
        return Checkpoint.from_json(record)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidInput(
            f"the checkpoint file {str(path)!r} is not a checkpoint record: {exc}"
        ) from None


def verify_copy(
    copy: Path, checkpoint: Path | Sequence[Path], public_key: Path, *, full: bool = False
) -> CopyResult:
    """Check a copy of the log (``rotator audit export``) against one or more checkpoint
    records (``rotator audit checkpoint --json``), which must chain, with a public key
    (``rotator audit public-key``). ``full``: refuse a redacted line. Opens no store.
    InvalidInput / CryptoError (bad input) for a file that cannot be read or is not a
    checkpoint / a PEM key, or a line of the copy that is not a JSON object; otherwise the
    result says ok (with how many lines were redacted) or names the problem."""
    paths = [checkpoint] if isinstance(checkpoint, Path) else list(checkpoint)
    cps = [_checkpoint(p) for p in paths]
    pem = _read_file(public_key, "the public key")
    keys = load_public_pems(pem)
    try:
        with copy.open(encoding="utf-8", errors="strict") as f:
            return audit_cp.verify_copy(f, cps, keys, full=full)
    except audit_cp.BadLine as exc:
        raise InvalidInput(str(exc)) from None
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
