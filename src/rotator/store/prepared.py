"""Hot statements run at driver level: a Core statement compiled once per dialect.

SQLAlchemy costs several times the driver's own time per statement (Core: compiling from its
cache key, building parameters; even ``exec_driver_sql``: the execution context and result
metadata, about 30 us of a 7 us SQLite select). The statements the engine runs for every
rotation and every value read are therefore wrapped in :class:`Prepared`: the Core statement
stays the one definition of the SQL (schema.py the source of truth), is compiled once per
dialect, and is then sent on a cursor of the connection's driver connection, inside the
Connection's transaction, with its parameters converted exactly as Core converts them: the
same bind processors (UTCDateTime, JSON, the dialect's own DateTime/Boolean handling) are
applied to the values, and the same result processors to the rows read. So rows written here
read back identically through Core, and the values MAC'd (stage maps, audit entries) are
byte-identical either way.

What Core would still do is kept: ``before_cursor_execute`` listeners are called (statement
counts; the context argument is None), driver errors are raised as SQLAlchemy's (so
``Database.translate_error`` applies) and a lost connection is invalidated.

Not supported (a TypeError when the statement is first compiled): expanding ``IN`` parameters
(their SQL depends on the values); such statements stay on the Core path.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

_Processor = Callable[[Any], Any] | None
_REQUIRED = object()  # a parameter the caller must give (no value in the statement)
_NOTHING = object()


@dataclass
class _Plan:
    """One statement compiled for one dialect, and how to convert its values."""

    sql: str
    positional: bool
    # (rendered name, bind processor, _REQUIRED or the constant's processed value), in the
    # order the positional paramstyle needs them (named: each name once).
    slots: tuple[tuple[str, _Processor, Any], ...]
    results: tuple[_Processor, ...]
    convert_results: bool
    row_type: Any = None  # the named tuple of a row, made from the first result's keys

    @classmethod
    def build(cls, stmt: ClauseElement, dialect: Dialect, keys: Sequence[str] | None) -> _Plan:
        # for_executemany: an INSERT gets no implicit RETURNING of its primary key (nothing
        # here reads it); explicit RETURNING clauses are kept.
        compiled = stmt.compile(
            dialect=dialect,
            column_keys=list(keys) if keys else None,
            for_executemany=bool(getattr(stmt, "is_insert", False)),
        )
        assert isinstance(compiled, SQLCompiler)
        by_name = {name: bp for bp, name in compiled.bind_names.items()}
        if compiled.escaped_bind_names:
            raise TypeError(f"bind names that need escaping are not supported: {compiled}")
        if compiled.positional:
            assert compiled.positiontup is not None
            names: Sequence[str] = compiled.positiontup
        else:
            names = list(dict.fromkeys(compiled.bind_names.values()))
        slots = []
        for name in names:
            bp = by_name[name]
            if bp.expanding:
                raise TypeError(f"expanding parameter {name!r} cannot be prepared: {compiled}")
            proc = bp.type.dialect_impl(dialect).bind_processor(dialect)
            if bp.required or (bp.value is None and bp.callable is None):
                slots.append((name, proc, _REQUIRED))
            else:  # a literal of the statement (e.g. a stage name): converted once
                value = bp.effective_value
                slots.append((name, None, proc(value) if proc is not None else value))
        columns = getattr(stmt, "exported_columns", ())
        results = tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        )
        return cls(
            sql=compiled.string,
            positional=bool(compiled.positional),
            slots=tuple(slots),
            results=results,
            convert_results=any(p is not None for p in results),
        )

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        # On the hot path (about 20 calls per rotation): one comprehension, no method calls
        # for parameters without a bind processor. A KeyError names a parameter the caller
        # did not give.
        out = [
            (values[name] if proc is None else proc(values[name])) if const is _REQUIRED else const
            for name, proc, const in self.slots
        ]
        if self.positional:
            return tuple(out)
        return {s[0]: v for s, v in zip(self.slots, out, strict=True)}


class Prepared:
    """A Core statement run at driver level; see the module docstring.

    ``keys``: for an INSERT or UPDATE whose values come with the parameters, the columns
    (and other parameter names) every call gives; with ``dynamic=True`` they are taken from
    each call's parameters instead (one compiled form per distinct set of keys).
    """

    __slots__ = ("_dynamic", "_keys", "_plans", "stmt")

    def __init__(
        self, stmt: Executable, *, keys: Sequence[str] | None = None, dynamic: bool = False
    ) -> None:
        self.stmt = stmt
        self._keys = tuple(keys) if keys is not None else None
        self._dynamic = dynamic
        self._plans: dict[Any, _Plan] = {}

    def _plan(self, conn: Connection, params: Mapping[str, Any] | None) -> _Plan:
        dialect = conn.dialect
        keys = tuple(sorted(params)) if self._dynamic and params is not None else self._keys
        cache_key = (dialect.name, dialect.driver, keys)
        plan = self._plans.get(cache_key)
        if plan is None:
            assert isinstance(self.stmt, ClauseElement)
            plan = self._plans[cache_key] = _Plan.build(self.stmt, dialect, keys)
        return plan

    def execute(self, conn: Connection, params: Mapping[str, Any] | None = None) -> int:
        """Run the statement once; the number of rows it changed."""
        plan = self._plan(conn, params)
        cursor = _send(conn, plan.sql, plan.params(params or {}), False)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        """Run the statement for each of ``rows`` (one executemany); the rows changed in all
        (reliable only where ``conn.dialect.supports_sane_multi_rowcount``)."""
        plan = self._plan(conn, rows[0])
        cursor = _send(conn, plan.sql, [plan.params(r) for r in rows], True)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def rows(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Run the statement; its rows, converted as Core converts them, as named tuples
        (attribute access by column name or label, as on a Core row). Read-only: equal
        values in consecutive rows of a column may be one shared object."""
        plan = self._plan(conn, params)
        cursor = _send(conn, plan.sql, plan.params(params or {}), False)
        try:
            raw = cursor.fetchall()
            if plan.row_type is None:
                keys = [d[0] for d in cursor.description]
                if plan.results and len(keys) != len(plan.results):
                    raise TypeError(f"{len(keys)} columns read, {len(plan.results)} expected")
                plan.row_type = namedtuple("Row", keys, rename=True)  # type: ignore[misc]
        finally:
            cursor.close()
        make = plan.row_type._make
        if not plan.convert_results:
            return [make(r) for r in raw]
        # A join repeats the parent's columns on every row (a stage map: the credential's JSON
        # settings once per version): a value equal to the one above it is not converted
        # again, so such rows share one converted object (callers never mutate rows).
        procs = plan.results
        if len(raw) == 1:  # most hot statements read one row: nothing to share
            return [make([v if p is None else p(v) for p, v in zip(procs, raw[0], strict=True)])]
        last_raw: list[Any] = [_NOTHING] * len(procs)
        last: list[Any] = [None] * len(procs)
        out = []
        for r in raw:
            values = []
            for i, p in enumerate(procs):
                v = r[i]
                if p is not None:
                    if v is last_raw[i] or (v is not None and v == last_raw[i]):
                        v = last[i]
                    else:
                        last_raw[i] = v
                        v = last[i] = p(v)
                values.append(v)
            out.append(make(values))
        return out

    def first(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """The first row (see :meth:`rows`), or None."""
        found = self.rows(conn, params)
        return found[0] if found else None

    def scalars(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[Any]:
        """The first column of every row (converted)."""
        return [r[0] for r in self.rows(conn, params)]


def _send(conn: Connection, sql: str, params: Any, many: bool) -> Any:
    """Execute on a cursor of ``conn``'s driver connection, in ``conn``'s transaction (begun
    here if none is, as Core's autobegin would); the cursor, for the caller to read and close.

    Listeners of ``before_cursor_execute`` are called as for any statement (with no execution
    context), and a driver error is raised as the SQLAlchemy error Core would raise (so
    ``Database.translate_error`` applies; a lost connection is invalidated)."""
    if not conn.in_transaction():
        conn.begin()
    return _execute(conn, sql, params, many)


def driver_sql(conn: Connection, sql: str) -> None:
    """Run ``sql`` (no parameters, no rows: ``BEGIN IMMEDIATE``, a ``PRAGMA``) on ``conn``'s
    driver connection as it stands, inside or outside a transaction; listeners and errors as
    for :class:`Prepared`. For the ``begin`` event, where ``exec_driver_sql`` would build a
    whole execution context for a statement sent once per write transaction."""
    _execute(conn, sql, (), False).close()


def _execute(conn: Connection, sql: str, params: Any, many: bool) -> Any:
    fairy = conn.connection
    cursor = fairy.driver_connection.cursor()  # type: ignore[union-attr]
    dispatch = conn.dispatch.before_cursor_execute
    if dispatch:
        dispatch(conn, cursor, sql, params, None, many)
    dialect = conn.dialect
    try:
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
    except dialect.loaded_dbapi.Error as exc:
        cursor.close()
        lost = dialect.is_disconnect(exc, fairy.dbapi_connection, cursor)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql,
            params,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=lost,
            dialect=dialect,
            ismulti=many,
        ) from exc
    return cursor
