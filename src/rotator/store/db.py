"""Opening the database: SQLite (WAL) or PostgreSQL (psycopg 3) from one URL.

Driver errors are translated here into StoreError subclasses; callers never see SQLAlchemy or
driver exceptions. URLs are shown with the password hidden.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    SQLAlchemyError,
)

from rotator.errors import (
    AlreadyExists,
    ConcurrentModification,
    InvalidInput,
    NotInitialized,
    StoreError,
    StoreUnavailable,
)

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration. Kept here so ordinary commands need not import alembic (a quarter
# second per CLI call); tests/integration/test_store.py checks it matches the scripts.
HEAD_REVISION = "0005"


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use psycopg 3 for them."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Database:
    """One SQLAlchemy engine plus the transaction helpers every store module uses.

    ``write()`` opens a transaction that takes the write lock at once on SQLite
    (BEGIN IMMEDIATE), so two writers never deadlock on a lock upgrade; ``read()`` opens a
    deferred one. On PostgreSQL both are ordinary READ COMMITTED transactions.
    """

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        try:
            parsed = make_url(normalize_url(url))
        except ArgumentError as exc:
            raise InvalidInput(f"ROTATOR_DB is not a database URL: {url!r}") from exc
        self.safe_url = parsed.render_as_string(hide_password=True)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {}
        self.sqlite_path: Path | None = None
        if self.dialect == "sqlite":
            db = parsed.database
            if db and db != ":memory:":
                self.sqlite_path = Path(db)
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        elif self.dialect == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 5}
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
            kwargs["pool_pre_ping"] = True
        else:
            raise InvalidInput(
                f"unsupported database {self.dialect!r} in ROTATOR_DB: use sqlite or postgresql"
            )
        try:
            self.engine: Engine = create_engine(parsed, **kwargs)
        except (ArgumentError, ImportError) as exc:
            raise InvalidInput(f"ROTATOR_DB {self.safe_url} cannot be used: {exc}") from exc
        if self.dialect == "sqlite":
            _setup_sqlite(self.engine)

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction; commits on success, rolls back on any exception."""
        with self._translate(), self.engine.connect() as conn:
            conn = conn.execution_options(rotator_immediate=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only (by convention) transaction."""
        with self._translate(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as exc:
            raise self.translate_error(exc) from exc

    def translate_error(self, exc: Exception) -> Exception:
        """The StoreError for a SQLAlchemy/driver error; any other exception unchanged."""
        if isinstance(exc, IntegrityError):
            return ConcurrentModification(f"conflicting write: {_first_line(exc.orig)}")
        if isinstance(exc, OperationalError):
            if self.dialect == "sqlite" and "locked" in str(exc.orig):
                return StoreUnavailable(f"database {self.safe_url} is locked by another process")
            return StoreUnavailable(
                f"cannot reach database {self.safe_url}: {_first_line(exc.orig)}"
            )
        if isinstance(exc, DBAPIError):
            return StoreError(f"database error on {self.safe_url}: {_first_line(exc.orig)}")
        if isinstance(exc, SQLAlchemyError):
            return StoreError(f"database error on {self.safe_url}: {type(exc).__name__}")
        return exc

    # -- schema ---------------------------------------------------------------------------

    @staticmethod
    def script_head() -> str:
        """The head revision according to the migration scripts (imports alembic)."""
        from alembic.script import ScriptDirectory

        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
        assert head is not None
        return head

    def current_revision(self) -> str | None:
        """The schema's migration revision, or None when there is no rotator schema."""
        if self.sqlite_path is not None and not self.sqlite_path.exists():
            return None  # do not create an empty file just to look
        with self.read() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            return None if value is None else str(value)

    def migrate(self) -> None:
        """Bring the schema to the newest migration. Idempotent. A new SQLite file is created
        readable by its owner only (it holds wrapped keys and, in passphrase mode, the salt)."""
        from alembic import command
        from alembic.config import Config

        if self.sqlite_path is not None and not self.sqlite_path.exists():
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.sqlite_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with self.write() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def check_initialized(self) -> None:
        """Raise NotInitialized if the schema is missing; upgrade it if it is behind."""
        current = self.current_revision()
        if current is None:
            raise NotInitialized(f"no rotator store at {self.safe_url}: run `rotator init` first")
        if current != HEAD_REVISION:
            self.migrate()

    def dispose(self) -> None:
        self.engine.dispose()


def _first_line(orig: BaseException | None) -> str:
    text = str(orig) if orig is not None else "unknown error"
    return text.strip().splitlines()[0] if text.strip() else type(orig).__name__


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event emit BEGIN itself (pysqlite's own handling is broken).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("rotator_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


__all__ = ["AlreadyExists", "Database", "normalize_url"]
