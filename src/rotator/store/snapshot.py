"""Logical snapshots of the whole store, for backup and restore.

A snapshot is every row of every table of :mod:`rotator.store.schema`, read through SQLAlchemy
Core and encoded as JSON-ready lists (bytes as base64, times as ISO-8601 UTC), so a SQLite
snapshot restores into PostgreSQL and back. It is consistent: on SQLite it is read from a copy
made with the sqlite3 backup API (one read transaction, writers go on meanwhile in WAL mode); on
PostgreSQL from one REPEATABLE READ, READ ONLY transaction.

Loading creates the schema at the snapshot's Alembic revision, inserts the rows, moves the
PostgreSQL id sequences past them and upgrades to the newest revision, all in one transaction.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Integer,
    LargeBinary,
    Table,
    create_engine,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.type_api import TypeEngine

from rotator.errors import InvalidInput, NotInitialized, StoreError
from rotator.store.db import MIGRATIONS, Database
from rotator.store.schema import UTCDateTime, metadata

# Column kinds in a snapshot: how a value is written as JSON.
BYTES, TIME, JSON_VALUE, PLAIN = "bytes", "time", "json", "plain"
# Lease columns: at restore every lease is treated as run out (its holder was on the old host).
LEASE_COLUMNS = ("lease_expires_at", "lease_until")


@dataclass
class TableDump:
    columns: list[str]
    kinds: list[str]
    rows: list[list[Any]]

    def digest(self) -> str:
        """SHA-256 of the table's canonical JSON (columns, kinds, rows)."""
        import json

        doc = {"columns": self.columns, "kinds": self.kinds, "rows": self.rows}
        body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class Snapshot:
    revision: str
    tables: dict[str, TableDump]

    def rows(self, table: str) -> list[dict[str, Any]]:
        """The rows of ``table`` as dicts of decoded values (empty when it has none)."""
        t = self.tables.get(table)
        if t is None:
            return []
        return [
            {c: decode(k, v) for c, k, v in zip(t.columns, t.kinds, r, strict=True)} for r in t.rows
        ]


def kind_of(type_: TypeEngine[Any]) -> str:
    if isinstance(type_, UTCDateTime):
        return TIME
    if isinstance(type_, LargeBinary):
        return BYTES
    if isinstance(type_, JSON):
        return JSON_VALUE
    return PLAIN


def encode(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == BYTES:
        return base64.b64encode(bytes(value)).decode()
    if kind == TIME:
        assert isinstance(value, datetime)
        return value.isoformat()
    return value


def decode(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == BYTES:
        return base64.b64decode(value, validate=True)
    if kind == TIME:
        return datetime.fromisoformat(value)
    return value


def _dump_tables(conn: Connection) -> dict[str, TableDump]:
    out: dict[str, TableDump] = {}
    for table in metadata.sorted_tables:
        cols = list(table.columns)
        kinds = [kind_of(c.type) for c in cols]
        pk = list(table.primary_key.columns) or cols
        rows = conn.execute(select(*cols).order_by(*pk)).all()
        out[table.name] = TableDump(
            [c.name for c in cols],
            kinds,
            [[encode(k, v) for k, v in zip(kinds, r, strict=True)] for r in rows],
        )
    return out


def _revision(conn: Connection) -> str:
    if not inspect(conn).has_table("alembic_version"):
        raise NotInitialized("no rotator store to back up: run `rotator init` first")
    return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar())


def dump(db: Database) -> Snapshot:
    """A consistent snapshot of ``db`` taken while other processes write it (see the module
    docstring). Raises NotInitialized for a database without a rotator schema, StoreError
    (or StoreUnavailable) when it cannot be read."""
    if db.dialect == "sqlite":
        return _dump_sqlite(db)
    with db._translate(), db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            return Snapshot(_revision(conn), _dump_tables(conn))


def _dump_sqlite(db: Database) -> Snapshot:
    if db.sqlite_path is None or not db.sqlite_path.exists():
        raise NotInitialized(f"no rotator store at {db.safe_url}: run `rotator init` first")
    # The copy holds wrapped keys and sealed values: a private folder (mode 0700), removed after.
    with tempfile.TemporaryDirectory(prefix="rotator-backup-") as tmp:
        copy = Path(tmp) / "copy.db"
        try:
            # A URI: the path percent-encoded, or a "#", "?" or "%" in it would cut it short
            # (and open, even create, another file).
            uri = f"file:{urllib.parse.quote(str(db.sqlite_path))}?mode=ro"
            src = sqlite3.connect(uri, uri=True, timeout=30)
            try:
                dst = sqlite3.connect(copy)
                try:
                    src.backup(dst)  # one pass, under one read transaction: a consistent copy
                finally:
                    dst.close()
            finally:
                src.close()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot copy the SQLite store {db.safe_url}: {exc}") from exc
        engine = create_engine(f"sqlite:///{urllib.parse.quote(str(copy))}")
        try:
            with engine.connect() as conn, conn.begin():
                return Snapshot(_revision(conn), _dump_tables(conn))
        except SQLAlchemyError as exc:
            raise db.translate_error(exc) from exc
        finally:
            engine.dispose()


def is_empty(db: Database) -> bool:
    """True when ``db`` holds no rotator schema (a SQLite file that does not exist, is empty,
    or a PostgreSQL database without rotator's tables)."""
    if db.sqlite_path is not None and not db.sqlite_path.exists():
        return True
    with db.read() as conn:
        names = set(inspect(conn).get_table_names())
    return not names & ({"alembic_version"} | set(metadata.tables))


def _upgrade(conn: Connection, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


def known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of this version's migrations."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_revision(revision) is not None


def _table_for(name: str, td: TableDump) -> Table:
    # The insert names only the snapshot's columns: a snapshot from an older revision lacks
    # columns added later (their defaults apply). A column this schema no longer has keeps
    # its kind's type.
    known = metadata.tables.get(name)
    cols = []
    for c, k in zip(td.columns, td.kinds, strict=True):
        if known is not None and c in known.c:
            col = known.c[c]
            # A nullable JSON column reads None for SQL NULL and JSON null alike (and rotator
            # reads both as "none"): restore it as SQL NULL, which IS NULL queries also match.
            nullable_json = isinstance(col.type, JSON) and col.nullable
            cols.append(Column(c, JSON(none_as_null=True) if nullable_json else col.type))
        else:
            types: dict[str, TypeEngine[Any]] = {
                BYTES: LargeBinary(),
                TIME: UTCDateTime(),
                JSON_VALUE: JSON(),
            }
            fallback = types.get(k, Integer())
            cols.append(Column(c, fallback))
    from sqlalchemy import MetaData

    return Table(name, MetaData(), *cols)


@contextlib.contextmanager
def _new_sqlite_file(db: Database) -> Iterator[None]:
    """Create the SQLite file (0600) for a restore; remove it again if the restore fails."""
    path = db.sqlite_path
    if path is None or path.exists():
        yield
        return
    import os

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield
    except BaseException:
        db.dispose()
        for p in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
            p.unlink(missing_ok=True)
        raise


def load(
    db: Database,
    snap: Snapshot,
    *,
    fix: Callable[[str, list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
    finish: Callable[[Connection], None] | None = None,
) -> int:
    """Restore ``snap`` into the empty ``db`` in one transaction (see the module docstring):
    ``fix(table, rows)`` may change the decoded rows before they are inserted, ``finish(conn)``
    runs at the end, at the newest revision, inside the same transaction. Returns the rows
    inserted. InvalidInput when ``db`` is not empty or the revision is unknown; nothing is
    written then, nor when anything fails (a SQLite file created for it is removed)."""
    if not is_empty(db):
        raise InvalidInput(
            f"restore needs an empty store, and {db.safe_url} holds a rotator store: "
            "point ROTATOR_DB at a new database (or remove this one)"
        )
    if not known_revision(snap.revision):
        raise InvalidInput(
            f"the backup's schema revision {snap.revision!r} is newer than this rotator knows"
        )
    n = 0
    with _new_sqlite_file(db), db.write() as conn:
        _upgrade(conn, snap.revision)
        # Rows in dependency order (a table after those it references).
        order = [t.name for t in metadata.sorted_tables if t.name in snap.tables]
        order += sorted(set(snap.tables) - set(order))
        for name in order:
            rows = snap.rows(name)
            if fix is not None:
                rows = fix(name, rows)
            if rows:
                conn.execute(insert(_table_for(name, snap.tables[name])), rows)
                n += len(rows)
        if conn.dialect.name == "postgresql":
            _move_sequences(conn, set(snap.tables))
        _upgrade(conn, "head")
        if finish is not None:
            finish(conn)
    return n


def _move_sequences(conn: Connection, names: set[str]) -> None:
    """Rows were inserted with their ids: start each id sequence of the tables ``names``
    (those of the snapshot's revision) after the largest id."""
    for table in metadata.sorted_tables:
        if table.name not in names:
            continue
        for col in table.primary_key.columns:
            if col.autoincrement is True or (
                col.autoincrement == "auto"
                and isinstance(col.type, Integer)
                and len(table.primary_key.columns) == 1
            ):
                seq = conn.execute(
                    text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": col.name}
                ).scalar()
                if seq:
                    conn.execute(
                        text(
                            f'SELECT setval(:s, COALESCE((SELECT MAX("{col.name}") '
                            f'FROM "{table.name}"), 0) + 1, false)'
                        ),
                        {"s": seq},
                    )


__all__ = ["LEASE_COLUMNS", "Snapshot", "TableDump", "dump", "is_empty", "load"]
