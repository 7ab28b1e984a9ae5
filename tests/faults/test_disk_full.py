"""Fault: the filesystem of the SQLite home fills up while a batch rotation runs.

ROTATOR_HOME is a small tmpfs the test mounts (root only: CI runs as root; elsewhere the test
skips and says why). ``rotator rotate`` works through a batch on a slow double target; once
part of it is done, a filler file takes every free byte, so the store's next writes (WAL
growth, audit appends, step updates, new versions) fail with SQLITE_FULL. The rotate must end
cleanly: exit 1, every credential of the batch in its JSON report as rotated or failed (each
failure naming the full disk), no traceback on stderr, and nothing half-written (every PENDING
version has its unfinished intent). While the disk is full, a read that must audit fails in
one stderr line naming the full store (exit 1). Then the space is freed, the operator runs
``rotator rotate`` again, and the invariants hold.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from sqlalchemy import create_engine, select

from rotator.config import Settings
from rotator.service import BlockingService
from rotator.store.schema import credentials, rotations, versions
from tests.faults.invariants import FINAL_STEPS, check_recovered, snapshot
from tests.faults.process_rig import cli, popen_cli, rotation_steps, seed_batch, wait_for

TMPFS_SIZE = "6m"


@pytest.fixture
def small_home(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of TMPFS_SIZE mounted for this test only (unmounted afterwards)."""
    home = tmp_path / "home"
    home.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the disk-full fault needs root (CI runs as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(home)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield home
    finally:
        subprocess.run(["umount", "--lazy", str(home)], check=False)


def _write_until_refused(f: BinaryIO, size: int) -> int | None:
    """Append ``size``-byte chunks until a write fails; the errno it failed with."""
    while True:
        try:
            f.write(b"\0" * size)
        except OSError as exc:
            return exc.errno


def fill(fs: Path) -> Path:
    """Take every free byte of the filesystem at ``fs`` with one file; return it."""
    filler = fs / "filler"
    with filler.open("wb", buffering=0) as f:
        for size in (65536, 512):  # then the last partial chunk
            assert _write_until_refused(f, size) == errno.ENOSPC
    return filler


def half_written(db_url: str) -> list[str]:
    """Versions in stage PENDING with no unfinished rotation (intent) behind them."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            pending = conn.execute(
                select(credentials.c.name, versions.c.number)
                .join(versions, versions.c.credential_id == credentials.c.id)
                .where(versions.c.stage == "PENDING")
            ).all()
            open_intents = {
                (c, v)
                for c, v, s in conn.execute(
                    select(rotations.c.credential, rotations.c.version, rotations.c.step)
                ).all()
                if s not in FINAL_STEPS
            }
    finally:
        engine.dispose()
    return [f"{n} v{v}" for n, v in pending if (n, v) not in open_intents]


def test_disk_full_mid_batch_fails_cleanly_in_one_line_then_recovers_once_space_is_freed(
    small_home: Path, tmp_path: Path
) -> None:
    settings = Settings(home=small_home, db_url=f"sqlite:///{small_home}/rotator.db")
    svc, _ = BlockingService.init(settings)
    try:
        batch = seed_batch(svc, settings, tmp_path, n_doubles=20, latency_ms=60)
    finally:
        svc.close()
    before = snapshot(settings.db_url)

    proc = popen_cli(
        settings, "rotate", "--tag", "batch=faults", "--json", "--concurrency", "4",
        stderr=tmp_path / "rotate.err",
    )  # fmt: skip
    wait_for(
        "part of the batch to finish",
        lambda: rotation_steps(settings.db_url).get("finished", 0) >= 3 or proc.poll() is not None,
    )
    assert proc.poll() is None, "the batch ended before the disk filled up"
    filler = fill(small_home)
    out, _ = proc.communicate(timeout=120)
    err = (tmp_path / "rotate.err").read_text()
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err
    result = json.loads(out)
    failed = {f["name"]: f["error"] for f in result["failed"]}
    # Every credential of the batch is reported, as rotated or as failed; none is lost.
    assert sorted([*result["rotated"], *failed, *result["rolled_back"]]) == batch.names
    assert failed, "the full disk failed no rotation"
    for name, error in failed.items():
        assert "disk is full" in error, (name, error)

    # Nothing half-written: a PENDING version always has its unfinished intent behind it.
    assert not half_written(settings.db_url)

    # While the disk is full, reads that write nothing answer; reading a value is audited,
    # and an audit entry that cannot be written refuses the read: an operation failure
    # (exit 1, one line naming the full store), never bad input (exit 2), never the value.
    show = cli(settings, "credential", "show", batch.doubles[0], "--json")
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["name"] == batch.doubles[0]
    get = cli(settings, "credential", "get", batch.doubles[0])
    assert get.returncode == 1, get.stderr
    assert get.stdout == ""
    [line] = get.stderr.strip().splitlines()
    assert line.startswith("rotator: error: database "), line
    assert "is full" in line, line

    filler.unlink()
    again = cli(settings, "rotate", "--tag", "batch=faults", "--json")
    assert again.returncode == 0, again.stderr
    assert sorted(json.loads(again.stdout)["rotated"]) == batch.names
    check_recovered(settings, before, batch.probe)
