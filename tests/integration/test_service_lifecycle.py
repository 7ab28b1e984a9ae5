"""The service's life: closing it while work is queued, calls after close, and the blocking
facade refusing a call from its own loop thread instead of deadlocking."""

from __future__ import annotations

import asyncio

import pytest

from rotator.config import Settings
from rotator.domain.secret import Secret
from rotator.errors import StoreUnavailable
from rotator.service import BlockingService, RotatorService, ValueInput
from rotator.service.rotation import Selection


def test_reads_queued_while_the_service_closes_finish_or_fail_and_later_calls_fail(
    svc: BlockingService, settings: Settings
) -> None:
    svc.add_credential("a", "local", value=ValueInput(value=Secret("v1")))

    async def go() -> tuple[list[object], BaseException | None]:
        service = await RotatorService.open(settings)
        reads = [asyncio.create_task(service.get_value("a")) for _ in range(20)]
        await asyncio.sleep(0)  # queued before the close begins
        closing = asyncio.create_task(service.aclose())
        late = asyncio.create_task(service.get_value("a"))
        out = await asyncio.wait_for(
            asyncio.gather(*reads, late, return_exceptions=True), timeout=60
        )
        await closing
        after: BaseException | None = None
        try:
            await service.get_value("a")
        except Exception as exc:
            after = exc
        return list(out), after

    out, after = asyncio.run(go())
    assert all(isinstance(r, Secret | StoreUnavailable) for r in out), out
    assert sum(isinstance(r, Secret) for r in out) >= 20
    assert isinstance(after, StoreUnavailable)
    # every read returned is recorded
    assert svc.show("a").use_count == sum(isinstance(r, Secret) for r in out)


def test_a_callback_calling_the_facade_raises_instead_of_deadlocking(
    svc: BlockingService,
) -> None:
    svc.add_credential("a", "local", value=ValueInput(value=Secret("v1")))
    with pytest.raises(RuntimeError, match="its own loop thread"):
        svc.rotate(Selection(names=["a"]), progress=lambda r: svc.show(r.name))
    assert svc.show("a").name == "a"  # the facade still works


def test_an_engine_first_used_just_before_close_leaves_no_lease_heartbeat_running(
    svc: BlockingService, settings: Settings
) -> None:
    # The engine is built at its first use; built on the service's loop it starts its lease
    # heartbeat at once, so the close that follows without a yield stops it (a start queued
    # for later ran after the close, and the heartbeat outlived the service).
    async def go() -> bool:
        service = await RotatorService.open(settings)
        engine = service.engine  # first use, as rotation.plan's last line makes it
        await service.aclose()
        for _ in range(3):
            await asyncio.sleep(0)  # anything queued on the loop runs now
        heartbeat = engine.leases._heartbeat
        # Asked here: asyncio.run cancels whatever is left when go returns.
        return heartbeat is not None and not heartbeat.done()

    assert not asyncio.run(go()), "the heartbeat outlived the service"
