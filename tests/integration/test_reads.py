"""Value reads: every read a caller got back is counted and audited, also when the reading
process is killed with SIGKILL right after; concurrent reads share write transactions."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

from rotator.config import Settings
from rotator.service import BlockingService, RotatorService, ValueInput

READER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from rotator.config import Settings
    from rotator.service import BlockingService

    svc = BlockingService.open(Settings(home=Path(sys.argv[1]), db_url=sys.argv[2]))
    n = 0
    while True:
        svc.get_value("app/db" if n % 2 else "app/api")
        n += 1
        print(n, flush=True)  # only after get_value returned
    """
)


def test_every_read_returned_before_a_kill_9_is_counted_and_audited(
    svc: BlockingService, settings: Settings
) -> None:
    for name in ("app/db", "app/api"):
        svc.add_credential(name, "local", value=ValueInput(generate=True))
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, str(settings.home), settings.db_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    returned = 0
    try:
        for line in proc.stdout:
            returned = int(line)
            if returned >= 200:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert returned >= 200, proc.stderr.read() if proc.stderr else ""
    with BlockingService.open(settings) as fresh:
        uses = sum(c.use_count for c in fresh.list_credentials())
        reads = [e for e in fresh.audit_entries() if e.action == "value.read"]
        assert fresh.audit_verify().ok
    # Every read the child got back is recorded; it may have read (and recorded) a few more
    # between its last line and the kill.
    assert uses >= returned
    assert len(reads) == uses


def test_concurrent_reads_share_write_transactions_and_each_is_recorded(
    svc: BlockingService, settings: Settings
) -> None:
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    expected = svc.get_value("app/db")

    async def go() -> tuple[int, int]:
        async with await RotatorService.open(settings) as service:
            writer = service.engine.writer
            before = writer.batches
            values = await asyncio.gather(*(service.get_value("app/db") for _ in range(200)))
            assert all(v == expected for v in values)
            return writer.operations, writer.batches - before

    operations, batches = asyncio.run(go())
    assert operations >= 200
    assert batches < 200  # group commit: many reads per transaction
    cred = svc.show("app/db")
    assert cred.use_count == 201
    reads = [e for e in svc.audit_entries(credential="app/db") if e.action == "value.read"]
    assert len(reads) == 201
    assert svc.audit_verify().ok
