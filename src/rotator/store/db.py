"""Opening the database: SQLite (WAL) or PostgreSQL (psycopg 3) from one URL.

Driver errors are translated here into StoreError subclasses; callers never see SQLAlchemy or
driver exceptions. URLs are shown with the password hidden.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
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
    StoreFull,
    StoreUnavailable,
)
from rotator.store.prepared import driver_sql

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration. Kept here so ordinary commands need not import alembic (a quarter
# second per CLI call); tests/integration/test_store.py checks it matches the scripts.
HEAD_REVISION = "0016"
# FULL: a commit is on disk (the WAL fsynced) before it returns. A rotation's intent must
# survive a power loss before the target is touched; with NORMAL the last commits may vanish.
# Only the benchmarks change this (bench/engine_bench.py --sqlite-synchronous).
SQLITE_SYNCHRONOUS = "FULL"
# The PostgreSQL advisory lock key that serializes schema migrations ("rotator" in ASCII).
_MIGRATION_LOCK = 0x726F7461746F72


_USERINFO_PASSWORD = re.compile(r"(?<=://)([^/@:]*):[^/]*@")


def redact_url(url: str) -> str:
    """``url`` with any password in its user part replaced by ``***``, without parsing it (for
    messages about a URL that does not parse)."""
    return _USERINFO_PASSWORD.sub(r"\1:***@", url)


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
        except (ArgumentError, ValueError):
            # ValueError: a malformed port. Neither the URL (it may hold a password) nor the
            # parser's exception (which quotes parts of it) is shown or chained.
            raise InvalidInput(f"ROTATOR_DB is not a database URL: {redact_url(url)!r}") from None
        if "@" in (parsed.host or "") or not 0 <= (parsed.port or 0) <= 65535:
            # An unencoded "@" in a password makes the rest of it look like the host name:
            # refuse before that "host" is shown anywhere.
            raise InvalidInput(
                f"ROTATOR_DB is not a database URL: {redact_url(url)!r} (percent-encode "
                "@, : and / in a user name or password; a port is 0-65535)"
            )
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
    def write(self, *, relaxed: bool = False) -> Iterator[Connection]:
        """A read-write transaction; commits on success, rolls back on any exception.

        ``relaxed`` (SQLite only; ignored on PostgreSQL): the commit returns once the
        transaction is in the WAL, safe from a crash of this process, before it is flushed to
        disk (``synchronous=NORMAL``); an OS crash or power loss may lose it, and the next full
        commit flushes it too. Only for records where that trade is documented (value reads:
        their use count and audit entry). On PostgreSQL, ``synchronous_commit=off`` would also
        lose acknowledged commits when the server itself crashes, so every commit is full."""
        with self._translate(), self.engine.connect() as conn:
            conn = conn.execution_options(
                rotator_immediate=True, rotator_relaxed=relaxed and self.dialect == "sqlite"
            )
            with conn.begin():
                yield conn

    def connect(self) -> Connection:
        """A connection out of the pool, for a caller that runs many transactions on it (the
        group-commit writer: a pool checkout and return per transaction cost about as much
        CPU as a value read's statements). Close it when done."""
        with self._translate():
            return self.engine.connect()

    @contextlib.contextmanager
    def write_on(self, conn: Connection, *, relaxed: bool = False) -> Iterator[Connection]:
        """:meth:`write` on ``conn`` (from :meth:`connect`), which stays open afterwards."""
        with self._translate():
            relaxed = relaxed and self.dialect == "sqlite"
            opts = conn.get_execution_options()
            # Setting options costs more than a value read's statements: only on a change.
            if not opts.get("rotator_immediate") or opts.get("rotator_relaxed") != relaxed:
                conn.execution_options(rotator_immediate=True, rotator_relaxed=relaxed)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only (by convention) transaction."""
        with self._translate(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def exclusive_lock(self, name: str, busy: str) -> Iterator[None]:
        """Hold the lock ``name`` on this database for the block: one process at a time.

        Never waits: raises ConcurrentModification(``busy``) at once when another process holds
        it. The lock is released when the block ends or the process dies (also by SIGKILL).
        SQLite: ``flock`` on ``<database file>.<name>.lock`` (a SQLite store is always local);
        PostgreSQL: a session-level advisory lock on a connection of its own, kept out of the
        pool. An in-memory SQLite database has one process by definition: no lock.
        """
        if self.dialect == "sqlite":
            with self._file_lock(name, busy):
                yield
            return
        key = int.from_bytes(
            hashlib.sha256(f"rotator:{name}".encode()).digest()[:8], "big", signed=True
        )
        with self._translate():
            conn = self.engine.connect()
        try:
            with self._translate():
                got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
                conn.commit()
            if not got:
                raise ConcurrentModification(busy)
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
                except SQLAlchemyError:
                    # The session is gone, and its lock with it; never pool this connection.
                    conn.invalidate()
        finally:
            conn.close()

    @contextlib.contextmanager
    def _file_lock(self, name: str, busy: str) -> Iterator[None]:
        if self.sqlite_path is None:
            yield
            return
        path = self.sqlite_path.with_name(f"{self.sqlite_path.name}.{name}.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open lock file {path}: {exc.strerror}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConcurrentModification(busy) from None
            yield  # the file stays: removing it would let two processes lock two inodes
        finally:
            os.close(fd)

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
            if _disk_full(exc.orig):
                # Reached, but out of space: an operation failure (exit 1), not bad input.
                return StoreFull(f"database {self.safe_url} is full: {_first_line(exc.orig)}")
            return StoreUnavailable(
                f"cannot reach database {self.safe_url}: {_first_line(exc.orig)}"
            )
        if isinstance(exc, DBAPIError):
            return StoreError(f"database error on {self.safe_url}: {_first_line(exc.orig)}")
        if isinstance(exc, SQLAlchemyError):
            return StoreError(f"database error on {self.safe_url}: {type(exc).__name__}")
        return exc

    # -- schema ---------------------------------------------------------------------------

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
            if self.dialect == "postgresql":
                # Two processes upgrading at once would both run the same DDL; SQLite's
                # BEGIN IMMEDIATE serializes them already. Released at commit.
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
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


def _disk_full(orig: BaseException | None) -> bool:
    """SQLITE_FULL ("database or disk is full") or PostgreSQL's disk_full (SQLSTATE 53100)."""
    if getattr(orig, "sqlite_errorname", None) == "SQLITE_FULL":
        return True
    return getattr(orig, "sqlstate", None) == "53100" or "disk is full" in str(orig)


_SYNC_KEY = "rotator.synchronous"


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event emit BEGIN itself (pysqlite's own handling is broken).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
        _record.info[_SYNC_KEY] = SQLITE_SYNCHRONOUS
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        opts = conn.get_execution_options()
        immediate = opts.get("rotator_immediate", False)
        if immediate:
            # The safety level can only change outside a transaction: set it per write
            # transaction, and only when it differs from the connection's last one.
            level = "NORMAL" if opts.get("rotator_relaxed", False) else SQLITE_SYNCHRONOUS
            if conn.info.get(_SYNC_KEY) != level:
                driver_sql(conn, f"PRAGMA synchronous={level}")
                conn.info[_SYNC_KEY] = level
        driver_sql(conn, "BEGIN IMMEDIATE" if immediate else "BEGIN")


__all__ = ["AlreadyExists", "Database", "normalize_url"]
