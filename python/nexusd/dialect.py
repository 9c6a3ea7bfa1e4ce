"""SQLAlchemy dialects for nexusd: ``sqlite+nexusd://`` and, for
``create_async_engine``, ``sqlite+nexusd_async://``.

They build on SQLAlchemy's SQLite dialect, so DDL, reflection, types and the
ORM behave as on SQLite; what changes is underneath:

- ``?socket=/path`` picks the daemon (default: as ``nexusd.connect()``);
  ``?timeout=SECONDS`` and ``?client_name=NAME`` pass through.
- SQLAlchemy's transactions are the daemon's interactive ones: the dialect
  sends BEGIN itself, with a transaction's first statement. By default it
  is ``BEGIN IMMEDIATE``: the transaction holds the writer from its first
  statement, so a read-then-write (check-then-insert) is serialized and
  never fails with a conflict. ``?begin=deferred`` reads from a snapshot
  until the first write instead, as SQLite's default does, and a write
  after another client's commit then fails with ``nexusd.Conflict``.
  ``?begin=dml`` begins where pysqlite's own default does, at the first
  statement that is not a read: the reads before it run outside the
  transaction, on the daemon's readers, each seeing what is committed, and
  the transaction then begins IMMEDIATE, so it never conflicts either.
  ``begin_nested()`` runs on real savepoints, and
  ``isolation_level="AUTOCOMMIT"`` works at the engine and the connection
  level.
- The pool never runs dry: its overflow is unbounded, since a pooled
  connection costs no socket (every connection of a process shares one).
- ``stream_results`` and ``yield_per`` stream: a query's rows come from the
  daemon a part at a time as SQLAlchemy fetches them (a server-side cursor,
  ``nexusd.StreamingCursor``), so a result of any size costs the program a
  part or two of it.
- ``regexp_match()`` works: pysqlite registers a Python REGEXP on each
  connection, the daemon brings its own (Python ``re``'s syntax without
  look-around and backreferences).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import pool
from sqlalchemy.connectors.asyncio import (
    AsyncAdapt_dbapi_connection,
    AsyncAdapt_dbapi_cursor,
    AsyncAdapt_dbapi_module,
    AsyncAdapt_dbapi_ss_cursor,
)
from sqlalchemy.dialects.sqlite.base import SQLiteExecutionContext
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.util.concurrency import await_

import nexusd

#: The oldest SQLite a nexusd daemon runs on (it refuses older ones).
SQLITE_VERSION_INFO = (3, 51, 3)


class NexusdPool(pool.QueuePool):
    """A QueuePool that never makes a caller wait for a connection."""

    def __init__(self, creator: Any, pool_size: int = 8, max_overflow: int = -1,
                 **kw: Any) -> None:
        super().__init__(creator, pool_size=pool_size, max_overflow=max_overflow, **kw)


class NexusdAsyncPool(pool.AsyncAdaptedQueuePool):
    def __init__(self, creator: Any, pool_size: int = 8, max_overflow: int = -1,
                 **kw: Any) -> None:
        super().__init__(creator, pool_size=pool_size, max_overflow=max_overflow, **kw)


def _raw(connection: Any) -> Any:
    """The DB-API connection under a pool's proxy."""
    return getattr(connection, "dbapi_connection", None) or connection


def _reads_only(statement: str) -> bool:
    """Whether ``statement`` surely only reads: a SELECT, VALUES or
    EXPLAIN, or a PRAGMA that sets nothing. Anything else (a WITH, which
    may write, included) counts as a write."""
    words = nexusd._words(statement, 1)
    first = words[0].upper() if words else ""
    if first in ("SELECT", "VALUES", "EXPLAIN"):
        return True
    return first == "PRAGMA" and "=" not in statement


def _connect_args(url) -> dict:
    query = dict(url.query)
    query.pop("begin", None)  # the dialect's own
    args: dict = {}
    if "socket" in query:
        args["socket"] = query.pop("socket")
    if "timeout" in query:
        args["timeout"] = float(query.pop("timeout"))
    if "client_name" in query:
        args["client_name"] = query.pop("client_name")
    if query:
        raise ValueError(
            f"unknown nexusd URL parameters {sorted(query)}; "
            "use socket=, timeout=, client_name= or begin=immediate|deferred|dml")
    if url.database or url.host or url.username:
        raise ValueError(
            f"{url} names a database file or host; nexusd serves the daemon's own database: "
            "use sqlite+nexusd:// with ?socket=/path to pick the daemon")
    return args


class NexusdExecutionContext(SQLiteExecutionContext):
    def create_server_side_cursor(self) -> Any:
        # The async adapter picks its server-side cursor by this flag.
        if self.dialect.is_async:
            return self._dbapi_connection.cursor(server_side=True)
        return self._dbapi_connection.cursor(nexusd.StreamingCursor)


class NexusdDialect(SQLiteDialect_pysqlite):
    """``sqlite+nexusd://``: SQLAlchemy's SQLite dialect over nexusd."""

    driver = "nexusd"
    supports_statement_cache = True
    supports_server_side_cursors = True
    execution_ctx_cls = NexusdExecutionContext
    _isolation_lookup = {"SERIALIZABLE", "AUTOCOMMIT"}

    @classmethod
    def import_dbapi(cls) -> Any:
        return nexusd

    @classmethod
    def get_pool_class(cls, url: Any) -> type:
        return NexusdPool

    def create_connect_args(self, url: Any) -> Any:
        begin = url.query.get("begin", "immediate").upper()
        if begin not in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE", "DML"):
            raise ValueError(
                f"begin={begin.lower()} is not deferred, immediate, exclusive or dml")
        self._begin_at_write = begin == "DML"
        self._begin = "BEGIN IMMEDIATE" if self._begin_at_write else f"BEGIN {begin}"
        return ([], _connect_args(url))

    def _get_server_version_info(self, connection: Any) -> Any:
        return SQLITE_VERSION_INFO

    def on_connect(self) -> Any:
        def setup(dbapi_connection: Any) -> None:
            # SQLAlchemy says when a transaction begins (do_begin).
            dbapi_connection.isolation_level = None
            dbapi_connection._sa_autocommit = False
        return setup

    # SQLAlchemy begins a transaction when a connection is first used; the
    # dialect sends BEGIN with the transaction's first statement instead, as
    # pysqlite does, so that a transaction that has run nothing yet holds
    # nothing: with BEGIN IMMEDIATE, a Session opened early must not keep
    # the writer from another connection of the same thread.

    def do_begin(self, dbapi_connection: Any) -> None:
        raw = _raw(dbapi_connection)
        if not getattr(raw, "_sa_autocommit", False):
            raw._sa_begin_pending = True

    def _begin_pending(self, cursor: Any, statement: str) -> None:
        raw = getattr(cursor, "_adapt_connection", None) or cursor.connection
        if getattr(raw, "_sa_begin_pending", False):
            if getattr(self, "_begin_at_write", False) and _reads_only(statement):
                return
            raw._sa_begin_pending = False
            begin = getattr(self, "_begin", "BEGIN IMMEDIATE")
            # With the statement, in one round trip, where the driver can.
            lazily = getattr(raw, "_begin_lazily", None)
            if lazily is None or not lazily(begin):
                cursor.execute(begin)

    def do_execute(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        self._begin_pending(cursor, statement)
        cursor.execute(statement, parameters)

    def do_execute_no_params(self, cursor: Any, statement: Any, context: Any = None) -> None:
        self._begin_pending(cursor, statement)
        cursor.execute(statement)

    def do_executemany(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        self._begin_pending(cursor, statement)
        cursor.executemany(statement, parameters)

    def do_commit(self, dbapi_connection: Any) -> None:
        _raw(dbapi_connection)._sa_begin_pending = False
        super().do_commit(dbapi_connection)

    def do_rollback(self, dbapi_connection: Any) -> None:
        _raw(dbapi_connection)._sa_begin_pending = False
        super().do_rollback(dbapi_connection)

    # Litestream keeps two bookkeeping tables in the database it replicates
    # (_litestream_seq, _litestream_lock). Reflection leaves them out, as it
    # leaves out sqlite_*, so that metadata.reflect() does not adopt them
    # and Alembic's autogenerate does not propose dropping them.

    def get_table_names(self, connection: Any, schema: Any = None,
                        sqlite_include_internal: bool = False, **kw: Any) -> list:
        names = super().get_table_names(connection, schema=schema,
                                        sqlite_include_internal=sqlite_include_internal, **kw)
        if sqlite_include_internal:
            return names
        return [n for n in names if not n.lower().startswith("_litestream_")]

    def get_isolation_level(self, dbapi_connection: Any) -> str:
        return "AUTOCOMMIT" if getattr(dbapi_connection, "_sa_autocommit", False) \
            else "SERIALIZABLE"

    def get_default_isolation_level(self, dbapi_conn: Any) -> str:
        return "SERIALIZABLE"

    def set_isolation_level(self, dbapi_connection: Any, level: str) -> None:
        autocommit = level == "AUTOCOMMIT"
        if autocommit and dbapi_connection.in_transaction:
            dbapi_connection.commit()
        dbapi_connection._sa_autocommit = autocommit
        dbapi_connection._sa_begin_pending = False

    def detect_autocommit_setting(self, dbapi_conn: Any) -> bool:
        return getattr(dbapi_conn, "_sa_autocommit", False)

    def is_disconnect(self, e: Any, connection: Any, cursor: Any) -> bool:
        return isinstance(e, nexusd.OutcomeUnknown) or (
            isinstance(e, nexusd.OperationalError)
            and "disconnected from nexusd" in str(e))


# --- asyncio -----------------------------------------------------------------


class AsyncAdapt_nexusd_cursor(AsyncAdapt_dbapi_cursor):
    __slots__ = ()
    # nexusd.aio's Cursor.close is a coroutine.
    _awaitable_cursor_close = True


class AsyncAdapt_nexusd_ss_cursor(AsyncAdapt_dbapi_ss_cursor):
    __slots__ = ()

    def _make_new_cursor(self, connection: Any) -> Any:
        import nexusd.aio

        return connection.cursor(nexusd.aio.StreamingCursor)


class AsyncAdapt_nexusd_connection(AsyncAdapt_dbapi_connection):
    # No __slots__: the dialect keeps its autocommit flag on the connection.
    _cursor_cls = AsyncAdapt_nexusd_cursor
    _ss_cursor_cls = AsyncAdapt_nexusd_ss_cursor

    @property
    def isolation_level(self) -> Any:
        return self._connection.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: Any) -> None:
        self._connection.isolation_level = value

    @property
    def in_transaction(self) -> bool:
        return self._connection.in_transaction


class AsyncAdapt_nexusd_dbapi(AsyncAdapt_dbapi_module):
    def __init__(self) -> None:
        import nexusd.aio

        super().__init__(nexusd.aio, dbapi_module=nexusd)
        self.paramstyle = "qmark"
        for name in ("Warning", "Error", "InterfaceError", "DatabaseError", "DataError",
                     "OperationalError", "IntegrityError", "InternalError",
                     "ProgrammingError", "NotSupportedError", "OutcomeUnknown", "Binary",
                     "sqlite_version", "sqlite_version_info"):
            setattr(self, name, getattr(nexusd, name))

    def connect(self, *args: Any, **kw: Any) -> AsyncAdapt_nexusd_connection:
        import nexusd.aio

        connection = nexusd.aio.connect(*args, **kw)
        return AsyncAdapt_nexusd_connection(self, await_(connection._connect()))


class NexusdAsyncDialect(NexusdDialect):
    """``sqlite+nexusd_async://``, for ``create_async_engine``: truly async,
    on ``nexusd.aio``."""

    driver = "nexusd_async"
    is_async = True
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> Any:
        return AsyncAdapt_nexusd_dbapi()

    @classmethod
    def get_pool_class(cls, url: Any) -> type:
        return NexusdAsyncPool

    def get_driver_connection(self, connection: Any) -> Any:
        return connection._connection
