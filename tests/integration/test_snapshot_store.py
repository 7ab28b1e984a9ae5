"""The store snapshot (rotator.store.snapshot) on both backends: a snapshot of an older schema
restores at its revision and is migrated to the newest in the same transaction."""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path

from rotator.config import Settings
from rotator.service import BlockingService, ValueInput
from rotator.store import Database
from rotator.store import snapshot as snap_store
from rotator.store.db import HEAD_REVISION


def test_a_snapshot_of_an_older_revision_is_restored_then_migrated_to_head(
    tmp_path: Path, db_url: str
) -> None:
    src = Settings(home=tmp_path / "src", db_url=f"sqlite:///{tmp_path}/src.db")
    svc, _ = BlockingService.init(src)
    try:
        svc.add_credential("app/a", "local", value=ValueInput(generate=True))
        value = svc.get_value("app/a").reveal_text()
    finally:
        svc.close()
    db = Database(src.db_url)
    try:
        snap = snap_store.dump(db)
    finally:
        db.dispose()
    assert snap.revision == HEAD_REVISION == "0016"
    # As a rotator of revision 0015 would have written it: without the tables 0016 adds.
    for table in ("webhooks", "webhook_dead_letters", "credential_overdue_marks"):
        del snap.tables[table]
    snap.revision = "0015"

    dst = Settings(home=tmp_path / "dst", db_url=db_url)
    dst.home.mkdir(mode=0o700)
    shutil.copy2(src.key_file, dst.key_file)
    target = Database(db_url)
    try:
        rows = snap_store.load(target, snap)
        assert rows == sum(len(t.rows) for t in snap.tables.values())
        assert target.current_revision() == HEAD_REVISION
        assert not snap_store.is_empty(target)
    finally:
        target.dispose()
    restored = BlockingService.open(dst)
    try:
        assert restored.get_value("app/a").reveal_text() == value
        assert restored.list_webhooks() == []
        assert restored.audit_verify().ok
    finally:
        restored.close()


def test_a_sqlite_store_whose_path_holds_uri_characters_is_snapshotted_from_that_file(
    tmp_path: Path,
) -> None:
    home = tmp_path / "h#1?x%41"
    url = "sqlite:///" + urllib.parse.quote(f"{home}/rotator.db")  # as a URL must spell it
    svc, _ = BlockingService.init(Settings(home=home, db_url=url))
    try:
        svc.add_credential("app/a", "local", value=ValueInput(generate=True))
    finally:
        svc.close()
    db = Database(url)
    try:
        assert db.sqlite_path == home / "rotator.db"
        snap = snap_store.dump(db)
    finally:
        db.dispose()
    assert snap.revision == HEAD_REVISION
    assert [r["name"] for r in snap.rows("credentials")] == ["app/a"]
    # Nothing opened (or created) at a path cut short at "#" or "?".
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h#1?x%41"]
