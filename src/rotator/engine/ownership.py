"""Fenced ownership of rotations: owner ids, leases, their renewal, and calls bounded by them.

A rotation row carries its owner's token, new on every takeover, and every write of its state
is conditioned on it (LostOwnership when it no longer matches). This process knows until when
each lease it holds is valid (monotonic time of its last renewal + the lease) and starts no
connector call without that much time left (a safety margin); a call under way is cut when the
lease runs short or a renewal finds the rotation taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from rotator.errors import LostOwnership, RotationError, RotatorError
from rotator.store import rotations as store_rot

if TYPE_CHECKING:
    from rotator.engine.context import Ctx
    from rotator.engine.runtime import Runtime


@dataclass(eq=False)
class Lease:
    """What this process knows of its ownership of one rotation. Times are event-loop
    (monotonic) times."""

    fence: str
    valid_until: float  # taken before the claim or renewal was sent, so never late
    lost: bool = False
    call: asyncio.Timeout | None = None  # the timeout of its last connector call
    step_deadline: float = 0.0  # that call's own step timeout

    @classmethod
    def new(cls, lease_s: float) -> Lease:
        """A lease under a new token, valid for ``lease_s`` from now (take it before the
        claim is sent, so it is never late)."""
        return cls(uuid.uuid4().hex, asyncio.get_running_loop().time() + lease_s)


class Leases:
    """The leases this process holds, by rotation id, and their heartbeat."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.held: dict[str, Lease] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._beat(), name="lease-heartbeat"
        )

    def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.rt.opts.lease_s / 3)
            # A failed beat extends nothing: calls are cut when the lease runs short.
            with contextlib.suppress(RotatorError):
                await self.renew(dict(self.held))

    async def renew(self, leases: dict[str, Lease]) -> None:
        """Renew ``leases`` in one write; cut the calls of rotations found taken over and
        extend the others' deadlines. Raises the store's error when the write failed."""
        if not leases:
            return
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        lease_s = self.rt.opts.lease_s
        until = self.rt.now() + timedelta(seconds=lease_s)
        fences = {rid: lease.fence for rid, lease in leases.items()}
        lost = await self.rt.writer.run(partial(store_rot.renew_leases, fences=fences, until=until))
        for rid, lease in leases.items():
            if rid in lost:
                self.lose(lease)
            elif not lease.lost:
                lease.valid_until = max(lease.valid_until, t0 + lease_s)
                _reschedule(lease.call, self._call_deadline(lease))

    def _call_deadline(self, lease: Lease) -> float:
        return min(lease.step_deadline, lease.valid_until - self.rt.opts.margin_s)

    def lose(self, lease: Lease) -> None:
        """Mark ``lease`` lost and cut the call under way (it sees LostOwnership)."""
        lease.lost = True
        _reschedule(lease.call, asyncio.get_running_loop().time())

    def drop(self, rotation_id: str) -> None:
        self.held.pop(rotation_id, None)

    async def check(self, ctx: Ctx) -> None:
        """Before a connector call: return only if this process owns the rotation for at
        least the safety margin. Renews it now when it runs short; LostOwnership when it was
        taken over; the store's error when ownership cannot be confirmed (no call is made)."""
        lease = ctx.lease
        if lease is None:
            return
        margin = self.rt.opts.margin_s
        loop = asyncio.get_running_loop()
        if not lease.lost and loop.time() < lease.valid_until - margin:
            return
        if not lease.lost:
            await self.renew({ctx.rotation_id: lease})
        if lease.lost:
            raise LostOwnership(ctx.rotation_id)
        if loop.time() >= lease.valid_until - margin:
            raise RotationError("the rotation's lease could not be renewed in time; no call made")

    def bounded(self, ctx: Ctx | None) -> asyncio.Timeout:
        """The step timeout for one call (enter it at once), cut short to the lease's deadline
        minus the margin, moved by each renewal and cut by a lost one (see renew)."""
        step_deadline = asyncio.get_running_loop().time() + self.rt.opts.step_timeout_s
        lease = None if ctx is None else ctx.lease
        if lease is None:
            return asyncio.timeout_at(step_deadline)
        lease.step_deadline = step_deadline
        lease.call = asyncio.timeout_at(self._call_deadline(lease))
        return lease.call

    def cut_by_lease(self, ctx: Ctx | None, cm: asyncio.Timeout | None) -> bool:
        """Whether a call that timed out was cut by its lease (lost or running short) rather
        than by its own step timeout."""
        lease = None if ctx is None else ctx.lease
        return (
            lease is not None
            and cm is not None
            and cm.expired()
            and (lease.lost or (cm.when() or 0.0) < lease.step_deadline)
        )


def _reschedule(cm: asyncio.Timeout | None, when: float) -> None:
    """Move a call's timeout if that call is still under way (else there is nothing to cut)."""
    if cm is not None and not cm.expired():
        with contextlib.suppress(RuntimeError):  # the call has ended: its timeout has exited
            cm.reschedule(when)


@functools.cache
def _machine() -> tuple[str, str]:
    """(boot id, PID-namespace id) of this process; "" where /proc cannot tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:  # "pid:[4026531836]": the number names the namespace
        pidns = os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    except OSError:
        pidns = ""
    return boot, pidns


def owner_id() -> str:
    """``host:pid:boot-id:pid-namespace:random``: enough to tell, on this machine, that the
    owner's process is gone (see owner_dead)."""
    boot, pidns = _machine()
    return f"{socket.gethostname()}:{os.getpid()}:{boot}:{pidns}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_dead(owner: str | None) -> bool:
    """True when ``owner`` is a process of this machine, boot and PID namespace that no longer
    runs. Anything else (another machine or container, an older owner format, no /proc)
    is not known dead: its lease decides."""
    if not owner:
        return False
    parts = owner.split(":")
    if len(parts) != 5:
        return False
    host, pid, boot, pidns, _ = parts
    here = _machine()
    if "" in here or (host, boot, pidns) != (socket.gethostname(), *here) or not pid.isdigit():
        return False
    return int(pid) != os.getpid() and not _pid_alive(int(pid))
