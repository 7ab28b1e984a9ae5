"""Persistence: SQLAlchemy 2 Core over SQLite (default, WAL) or PostgreSQL (psycopg 3).

``Database`` opens the engine and hands out transactions; the modules ``keys``, ``credentials``
and ``rotator.audit.log`` hold the queries, each taking the caller's transaction so that one
use case commits or rolls back as a whole.
"""

from rotator.store.db import Database, normalize_url

__all__ = ["Database", "normalize_url"]
