"""Credentials in the store through the service layer, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, select

from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.errors import AlreadyExists, InvalidInput, NotFound, PolicyError, UnknownConnector
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.store.schema import audit_log, credentials, metadata, versions


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_migrations_create_exactly_the_schema(svc: BlockingService, raw_db: Engine) -> None:
    with raw_db.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_head_revision_constant_matches_the_migration_scripts() -> None:
    from alembic.script import ScriptDirectory

    from rotator.store.db import HEAD_REVISION, MIGRATIONS

    assert ScriptDirectory(str(MIGRATIONS)).get_current_head() == HEAD_REVISION


def test_add_show_list_with_tags_and_due(svc: BlockingService) -> None:
    clock = Clock()
    svc.kernel.clock = clock
    svc.add_credential(
        "prod/a",
        "local",
        tags={"env": "prod", "team": "pay"},
        policy=PolicyInput(every="1d"),
        value=ValueInput(generate=True),
    )
    svc.add_credential("prod/b", "local", tags={"env": "prod"}, policy=PolicyInput(every="7d"))
    svc.add_credential(
        "dev/c",
        "local",
        tags={"env": "dev"},
        policy=PolicyInput(cron="0 3 * * *", window="1h", grace="0s"),
    )
    a = svc.show("prod/a")
    assert a.version_in(Stage.CURRENT) is not None
    assert a.next_rotation_at == clock.now + timedelta(days=1)
    assert svc.show("prod/b").versions == ()
    assert [c.name for c in svc.list_credentials()] == ["dev/c", "prod/a", "prod/b"]
    assert [c.name for c in svc.list_credentials(tags={"env": "prod"})] == ["prod/a", "prod/b"]
    assert [c.name for c in svc.list_credentials(tags={"env": "prod", "team": "pay"})] == ["prod/a"]
    assert svc.list_credentials(tags={"env": "nope"}) == []
    assert svc.list_credentials(due=True) == []
    clock.now += timedelta(days=1, hours=4)
    assert [c.name for c in svc.list_credentials(due=True)] == ["dev/c", "prod/a"]


def test_bad_input_changes_nothing(svc: BlockingService, raw_db: Engine) -> None:
    svc.add_credential("a", "local", value=ValueInput(generate=True))

    def counts() -> tuple[int, int, int]:
        with raw_db.connect() as c:
            return tuple(
                c.execute(select(func.count()).select_from(t)).scalar_one()  # type: ignore[return-value]
                for t in (credentials, versions, audit_log)
            )

    before = counts()
    cases = [
        (AlreadyExists, lambda: svc.add_credential("a", "local")),
        (InvalidInput, lambda: svc.add_credential("Bad", "local")),
        (UnknownConnector, lambda: svc.add_credential("b", "nope")),
        (InvalidInput, lambda: svc.add_credential("b", "local", settings={"bogus": "1"})),
        (InvalidInput, lambda: svc.add_credential("b", "local", settings={"length": "3"})),
        (PolicyError, lambda: svc.add_credential("b", "local", policy=PolicyInput(every="x"))),
        (PolicyError, lambda: svc.update_credential("a", policy=PolicyInput(window="1h"))),
        (NotFound, lambda: svc.update_credential("zz", value=ValueInput(generate=True))),
        (NotFound, lambda: svc.get_value("a", Stage.PREVIOUS)),
        (NotFound, lambda: svc.remove_credential("zz")),
    ]
    for exc, call in cases:
        with pytest.raises(exc):
            call()
    assert counts() == before


def test_update_value_moves_stages_in_one_step(svc: BlockingService) -> None:
    clock = Clock()
    svc.kernel.clock = clock
    svc.add_credential(
        "a", "local", policy=PolicyInput(grace="10m"), value=ValueInput(value=Secret("one"))
    )
    clock.now += timedelta(hours=1)
    cred = svc.update_credential("a", value=ValueInput(value=Secret("two")))
    stages = {v.number: v.stage for v in cred.versions}
    assert stages == {1: Stage.PREVIOUS, 2: Stage.CURRENT}
    prev = cred.version_in(Stage.PREVIOUS)
    assert prev is not None
    assert prev.expires_at == clock.now + timedelta(minutes=10)
    assert svc.get_value("a").reveal_text() == "two"
    assert svc.get_value("a", Stage.PREVIOUS).reveal_text() == "one"
    assert svc.show("a").use_count == 2


def test_update_settings_tags_and_policy(svc: BlockingService) -> None:
    svc.add_credential(
        "a",
        "local",
        settings={"length": "40"},
        tags={"x": "1"},
        policy=PolicyInput(every="1d", max_uses=5),
    )
    cred = svc.update_credential(
        "a", settings={"generator": "hex"}, tags={"y": "2"}, policy=PolicyInput(cron="0 0 * * *")
    )
    assert cred.config == {"generator": "hex"}
    assert cred.tags == {"y": "2"}
    assert cred.policy.every is None
    assert cred.policy.cron == "0 0 * * *"
    assert cred.policy.max_uses == 5
    value = svc.update_credential("a", value=ValueInput(generate=True))
    assert value.version_in(Stage.CURRENT) is not None
    assert all(ch in "0123456789abcdef" for ch in svc.get_value("a").reveal_text())


def test_remove_deletes_versions_and_keeps_audit(svc: BlockingService, raw_db: Engine) -> None:
    svc.add_credential("a", "local", value=ValueInput(generate=True))
    svc.remove_credential("a")
    with pytest.raises(NotFound):
        svc.show("a")
    with raw_db.connect() as c:
        assert c.execute(select(func.count()).select_from(versions)).scalar_one() == 0
    assert [e.action for e in svc.audit_entries(credential="a")] == [
        "credential.add",
        "credential.remove",
    ]
    svc.add_credential("a", "local")  # the name is free again


def test_generated_passwords_follow_the_policy(svc: BlockingService) -> None:
    svc.add_credential(
        "p",
        "local",
        settings={"length": "24", "classes": "lower,digits", "exclude": "0o1l"},
        value=ValueInput(generate=True),
    )
    value = svc.get_value("p").reveal_text()
    assert len(value) == 24
    assert set(value) <= set("abcdefghijkmnpqrstuvwxyz23456789")
    assert any(c.isdigit() for c in value)
    assert any(c.isalpha() for c in value)
