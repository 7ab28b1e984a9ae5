"""ConnectorSet hands the engine's per-target limit to connectors that size their pools."""

from __future__ import annotations

from typing import ClassVar

from rotator.connectors import base as cb
from rotator.connectors.registry import ConnectorSet, register


class _Sized:
    kind: ClassVar[str] = "sized-test"
    strategy: ClassVar[cb.Strategy] = cb.Strategy.DUAL
    config_model: ClassVar[type[cb.ConnectorConfig]] = cb.ConnectorConfig

    def __init__(self) -> None:
        self.size: int | None = None

    def set_pool_size(self, size: int) -> None:
        self.size = size


def test_a_connector_that_pools_gets_the_per_target_limit_as_its_pool_size() -> None:
    register(_Sized)  # type: ignore[arg-type]
    got = ConnectorSet(per_target=48).get("sized-test")
    assert isinstance(got, _Sized)
    assert got.size == 48
    assert isinstance(ConnectorSet().get("sized-test"), _Sized)


def test_the_postgres_connector_sizes_its_admin_pools_to_the_per_target_limit() -> None:
    from rotator.connectors.postgres import PostgresConnector

    pg = ConnectorSet(per_target=40).get("postgres")
    assert isinstance(pg, PostgresConnector)
    assert pg._pool_size == 40
    assert PostgresConnector()._pool_size == 16  # alone: its default
