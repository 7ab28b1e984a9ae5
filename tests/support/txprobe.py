"""A connector that refuses to run while a store write transaction is open; also a CLI runner.

``txprobe`` generates a random token. Its ``create`` first reads the credential named by its
``ref`` setting through the secret resolver (as a leaf certificate reads its CA), then checks
the store named by ``ROTATOR_DB``: on SQLite it tries ``BEGIN IMMEDIATE`` without waiting
(fails while any writer holds the lock); on PostgreSQL it looks for another session of the
store's database left ``idle in transaction``. Either finding raises PermanentError.

Run as a script it is the real CLI with ``txprobe`` registered:
``python tests/support/txprobe.py credential update NAME --generate``.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import sys
from pathlib import Path
from typing import ClassVar

import psycopg

from rotator.connectors import base as cb
from rotator.domain.secret import Secret


class ProbeConfig(cb.ConnectorConfig):
    ref: str = ""  # a credential whose value create reads first


def open_write_transaction() -> str | None:
    """What shows a write transaction open on the store right now, or None."""
    url = os.environ["ROTATOR_DB"]
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        con = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            return f"sqlite: {exc}"
        finally:
            con.close()
        return None
    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        n = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()"
        ).fetchone()
    return f"postgresql: {n[0]} session(s) idle in transaction" if n and n[0] else None


class ProbeConnector:
    kind: ClassVar[str] = "txprobe"
    strategy: ClassVar[cb.Strategy] = cb.Strategy.DUAL
    config_model: ClassVar[type[cb.ConnectorConfig]] = ProbeConfig
    references: ClassVar[tuple[str, ...]] = ("ref",)

    def target_key(self, config: cb.ConnectorConfig) -> str:
        return "txprobe"

    async def create(self, req: cb.CreateRequest) -> Secret:
        assert isinstance(req.config, ProbeConfig)
        if req.config.ref:
            await req.secrets.get(req.config.ref)
        found = open_write_transaction()
        if found is not None:
            raise cb.PermanentError(f"a store write transaction is open during create ({found})")
        return Secret(secrets.token_urlsafe(24))

    async def set(self, req: cb.SetRequest) -> None:
        return None

    async def test(self, req: cb.TestRequest) -> None:
        return None

    async def finish(self, req: cb.FinishRequest) -> None:
        return None

    async def revoke(self, req: cb.RevokeRequest) -> None:
        return None

    async def rollback(self, req: cb.RollbackRequest) -> None:
        return None


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from rotator.cli.main import main
    from rotator.connectors.registry import register

    register(ProbeConnector)
    sys.exit(main(sys.argv[1:]))
