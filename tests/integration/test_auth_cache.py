"""The per-process cache of successful authentications (service/access.py AuthCache), on
SQLite and PostgreSQL (``db_url``): two services on one store stand for two ``rotator
serve`` processes; each has its own clock the test moves (no sleeps).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from rotator.config import Settings
from rotator.domain.principal import Role
from rotator.errors import AuthenticationFailed
from rotator.service import BlockingService
from rotator.store.schema import audit_log

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def two(
    settings: Settings, svc: BlockingService
) -> Iterator[tuple[Clock, BlockingService, BlockingService]]:
    """(shared clock, process A, process B) on the store of ``svc``, with a reader."""
    svc.add_principal("rita", Role.READER, scope="prod/*", kind="service")
    clock = Clock()
    a = BlockingService.open(settings, clock=clock)
    b = BlockingService.open(settings, clock=clock)
    yield clock, a, b
    a.close()
    b.close()


def _audit_count(raw_db: Engine) -> int:
    with raw_db.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(audit_log)) or 0)


def test_a_token_revoked_elsewhere_is_refused_once_the_ttl_has_passed(
    two: tuple[Clock, BlockingService, BlockingService],
) -> None:
    clock, a, b = two
    info, token = b.create_token("rita")
    assert a.authenticate(token).name == "rita"  # A remembers it for 5 s
    b.revoke_token(info.id)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        b.authenticate(token)  # the revoking process: at once
    clock.now = T0 + timedelta(seconds=4)
    assert a.authenticate(token).name == "rita"  # another process: within its TTL...
    clock.now = T0 + timedelta(seconds=5)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        a.authenticate(token)  # ...and no longer


def test_a_cached_token_is_refused_at_its_expiry_and_the_refusal_is_audited(
    two: tuple[Clock, BlockingService, BlockingService], raw_db: Engine
) -> None:
    clock, a, _ = two
    _, token = a.create_token("rita", expires=timedelta(seconds=2))
    a.authenticate(token)
    clock.now = T0 + timedelta(seconds=1)
    a.authenticate(token)
    before = _audit_count(raw_db)
    clock.now = T0 + timedelta(seconds=2)
    with pytest.raises(AuthenticationFailed, match="expired"):
        a.authenticate(token)
    assert _audit_count(raw_db) == before + 1  # the auth.denied entry


def test_removing_a_principal_refuses_its_tokens_at_once_in_the_same_process(
    two: tuple[Clock, BlockingService, BlockingService],
) -> None:
    _, a, _ = two
    _, token = a.create_token("rita")
    a.authenticate(token)
    a.remove_principal("rita")
    with pytest.raises(AuthenticationFailed):
        a.authenticate(token)


def test_a_wrong_token_is_never_cached(
    two: tuple[Clock, BlockingService, BlockingService], raw_db: Engine
) -> None:
    _, a, _ = two
    _, token = a.create_token("rita")
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    for _ in range(2):
        before = _audit_count(raw_db)
        with pytest.raises(AuthenticationFailed):
            a.authenticate(forged)
        assert _audit_count(raw_db) == before + 1  # each refusal reaches the store and is audited
