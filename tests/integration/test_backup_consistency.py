"""Backup and restore against a master-key rotation racing the backup, and failures midway:
what the file holds is always one store under the one key that seals it, and a backup or
restore that fails leaves nothing behind (both store backends)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from tests.integration.test_restore_drill import Rot, ok, rot

from rotator.config import Settings
from rotator.crypto import read_key_file
from rotator.errors import InvalidInput
from rotator.kernel import keyring, utcnow
from rotator.service import BlockingService, ValueInput
from rotator.service import backup as dr
from rotator.store import Database, normalize_url
from rotator.store import snapshot as snap_store

__all__ = ["rot"]  # the fixture, shared with the restore drill


class Interrupted(Exception):
    """Stands for a SIGKILL of `keys rotate-master` right before its final swap."""


def rotate_master(settings: Settings, *, interrupt: bool) -> None:
    def stop(*_: object) -> None:
        raise Interrupted

    db = Database(settings.db_url)
    try:
        keyring.rotate_master(db, settings, None, finalize=stop if interrupt else None)
    except Interrupted:
        pass
    finally:
        db.dispose()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_backup_raced_by_a_master_key_rotation_is_refused_and_restore_refuses_such_files(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path / "home", db_url=db_url)
    svc, _ = BlockingService.init(settings)
    out = tmp_path / "out"
    out.mkdir()
    real_dump = snap_store.dump
    old_key = (settings.home / "master.key").read_bytes()
    snaps: list[snap_store.Snapshot] = []
    try:
        svc.add_credential("app/a", "local", value=ValueInput(generate=True))

        # A rotation begins after backup's first look, before its dump (and is cut short).
        def dump_during_rotation(db: Database) -> snap_store.Snapshot:
            rotate_master(settings, interrupt=True)
            snaps.append(real_dump(db))
            return snaps[-1]

        monkeypatch.setattr(snap_store, "dump", dump_during_rotation)
        with pytest.raises(InvalidInput, match="taken during a master-key rotation"):
            svc.backup_store(out / "a.bak")
        assert leftovers(out) == []

        rotate_master(settings, interrupt=False)  # rerun: it finishes

        # A rotation that runs from start to end between the first look and the dump.
        def dump_after_rotation(db: Database) -> snap_store.Snapshot:
            rotate_master(settings, interrupt=False)
            snaps.append(real_dump(db))
            return snaps[-1]

        monkeypatch.setattr(snap_store, "dump", dump_after_rotation)
        with pytest.raises(InvalidInput, match="master key changed while the backup"):
            svc.backup_store(out / "b.bak")
        assert leftovers(out) == []
    finally:
        monkeypatch.setattr(snap_store, "dump", real_dump)
        svc.close()

    # Restore refuses such files however they were made: sealed under the old key, one holds
    # `master_next`, the other data keys wrapped under the new key.
    new_home = tmp_path / "new"
    new_home.mkdir(mode=0o700)
    (new_home / "master.key").write_bytes(old_key)
    (new_home / "master.key").chmod(0o600)
    old = read_key_file(new_home / "master.key")
    target = Settings(home=new_home, db_url=f"sqlite:///{tmp_path}/restored.db")
    for snap, message in zip(
        snaps, ("taken during a master-key rotation", "not the key"), strict=True
    ):
        _, data = dr.seal_snapshot(old, snap, now=utcnow(), backend="sqlite", kdf=None)
        (out / "raced.bak").write_bytes(data)
        with pytest.raises(InvalidInput, match=message):
            dr.restore(target, out / "raced.bak")
        assert not (tmp_path / "restored.db").exists()


def test_a_backup_whose_audit_entry_fails_leaves_no_file_and_keeps_the_one_it_would_replace(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, _ = BlockingService.init(Settings(home=tmp_path / "home", db_url=db_url))
    out = tmp_path / "out"
    out.mkdir()
    try:
        svc.backup_store(out / "kept.bak")
        before = (out / "kept.bak").read_bytes()
        real_audit = svc.service.kernel.audit

        def failing_audit(conn, principal, action, **kw):  # type: ignore[no-untyped-def]
            if action == "store.backup":
                raise OSError("the disk is full")
            return real_audit(conn, principal, action, **kw)

        monkeypatch.setattr(svc.service.kernel, "audit", failing_audit)
        with pytest.raises(OSError, match="disk is full"):
            svc.backup_store(out / "new.bak")
        with pytest.raises(OSError, match="disk is full"):
            svc.backup_store(out / "kept.bak", force=True)
        assert leftovers(out) == ["kept.bak"]
        assert (out / "kept.bak").read_bytes() == before
    finally:
        svc.close()


def test_a_restore_failing_at_its_last_step_leaves_no_tables_and_no_sqlite_file(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = Settings(home=tmp_path / "src", db_url=f"sqlite:///{tmp_path}/src.db")
    svc, _ = BlockingService.init(src)
    try:
        svc.add_credential("app/a", "local", value=ValueInput(generate=True))
        svc.backup_store(tmp_path / "s.bak")
    finally:
        svc.close()
    dst = Settings(home=tmp_path / "dst", db_url=db_url)
    dst.home.mkdir(mode=0o700)
    shutil.copy2(src.key_file, dst.key_file)

    def failing_append(*_: object, **__: object) -> None:
        raise RuntimeError("the store.restore entry cannot be written")

    monkeypatch.setattr(dr.audit, "append", failing_append)
    with pytest.raises(RuntimeError):
        dr.restore(dst, tmp_path / "s.bak")
    if db_url.startswith("sqlite"):
        assert not (tmp_path / "rotator.db").exists()
        assert [p.name for p in tmp_path.glob("rotator.db*")] == []
    else:
        engine = create_engine(normalize_url(db_url))
        try:
            with engine.connect() as c:
                assert inspect(c).get_table_names() == []
        finally:
            engine.dispose()
    monkeypatch.undo()
    assert dr.restore(dst, tmp_path / "s.bak").rows > 0


def test_keys_export_failing_on_a_share_file_leaves_no_share_file_behind(
    tmp_path: Path, db_url: str, rot: Rot, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, shares = tmp_path / "home", tmp_path / "shares"
    ok(rot(home, db_url, "init"))
    real_fsync = os.fsync
    synced: list[str] = []

    def fsync_failing_on_the_third_share(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if "share-" in name:
            synced.append(name)
            if len(synced) == 3:
                raise OSError(28, "No space left on device")
        real_fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", fsync_failing_on_the_third_share)
        result = rot(home, db_url, "keys", "export", "--split", "3-of-5", "--out", str(shares))
    assert result.code == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"rotator: error: cannot write the shares to {shares}: No space left on device; "
        "no share file left"
    ]
    assert len(synced) == 3
    assert leftovers(shares) == []  # not two shares of a 3-of-5 set, nor temporary files
    ok(rot(home, db_url, "keys", "export", "--split", "3-of-5", "--out", str(shares)))
    assert leftovers(shares) == [f"share-{i}-of-5.txt" for i in range(1, 6)]
