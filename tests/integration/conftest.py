"""Fixtures for tests that use a real store (SQLite and PostgreSQL, via ``db_url``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from rotator.config import Settings
from rotator.service import BlockingService
from rotator.store import normalize_url


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(home=tmp_path / "home", db_url=db_url)


@pytest.fixture
def svc(settings: Settings) -> Iterator[BlockingService]:
    service, created = BlockingService.init(settings)
    assert created
    yield service
    service.close()


@pytest.fixture
def raw_db(db_url: str) -> Iterator[Engine]:
    """A plain engine on the same database, for tampering with rows behind rotator's back."""
    engine = create_engine(normalize_url(db_url))
    yield engine
    engine.dispose()
