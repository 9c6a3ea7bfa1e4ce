"""nexusd: a DB-API 2.0 driver for a nexusd daemon, in the shape of sqlite3.

A program that used ``sqlite3.connect("app.db")`` changes that line to
``nexusd.connect()`` and keeps the rest: cursors, parameters in qmark and
named styles, ``with conn:``, ``Row``, the exception classes, and the
transaction control of Python 3.12's sqlite3 (``autocommit`` and
``isolation_level``). Transactions are the daemon's interactive ones, so
"database is locked" never happens: a write waits its turn instead.

Every Connection object in a process shares one socket to the daemon, so a
connection per thread or per request costs no file descriptor and needs no
pool. The GIL is released while a call waits on the daemon, and the
waiting thread reads its own reply (no runtime thread wakes in between). After a fork,
the child's first call opens its own connection.

>>> import nexusd
>>> conn = nexusd.connect()                                 # doctest: +SKIP
>>> with conn:                                              # doctest: +SKIP
...     conn.execute("INSERT INTO users(name) VALUES (?)", ("ada",))
"""

from __future__ import annotations

import datetime
import functools
import itertools
import os
import re
import sqlite3 as _sqlite3
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, Iterator, Optional

from . import _nexusd
from . import _parameters

__all__ = [
    "apilevel", "threadsafety", "paramstyle", "connect", "Connection", "Cursor",
    "StreamingCursor", "Row",
    "LEGACY_TRANSACTION_CONTROL", "Warning", "Error", "InterfaceError", "DatabaseError",
    "DataError", "OperationalError", "IntegrityError", "InternalError", "ProgrammingError",
    "NotSupportedError", "Timeout", "Overloaded", "TransactionExpired", "Conflict",
    "OutcomeUnknown", "Date", "Time", "Timestamp", "DateFromTicks", "TimeFromTicks",
    "TimestampFromTicks", "Binary", "STRING", "BINARY", "NUMBER", "DATETIME", "ROWID",
    "default_socket_path", "PARSE_DECLTYPES", "PARSE_COLNAMES", "PrepareProtocol",
    "adapters", "converters", "register_adapter", "register_converter", "adapt",
    "complete_statement", "enable_callback_tracebacks",
]

__version__ = _nexusd.__version__

#: The oldest SQLite a nexusd daemon runs (it refuses older ones); SQL
#: features are at least this version's.
sqlite_version_info = (3, 51, 3)
sqlite_version = "3.51.3"

# sqlite3's constants (result codes such as SQLITE_CONSTRAINT_UNIQUE, the
# authorizer's action codes, SQLITE_LIMIT_*), so a program that compares
# ``e.sqlite_errorcode`` with ``sqlite3.SQLITE_...`` can name them here.
_SQLITE_CONSTANTS = {
    name: value for name, value in vars(_sqlite3).items()
    if name.startswith("SQLITE_") and isinstance(value, int)
}
globals().update(_SQLITE_CONSTANTS)
__all__ += sorted(_SQLITE_CONSTANTS)

apilevel = "2.0"
#: Threads may share the module and connections, but not cursors.
threadsafety = 2
paramstyle = "qmark"

#: ``autocommit``'s default, as in Python 3.12's sqlite3: ``isolation_level``
#: decides the implicit BEGIN before INSERT, UPDATE, DELETE and REPLACE.
LEGACY_TRANSACTION_CONTROL = -1


# --- Exceptions, PEP 249's hierarchy -------------------------------------
#
# Each is also a subclass of sqlite3's class of the same name, so a program
# that moved by its connect line and still catches sqlite3.IntegrityError
# (or OperationalError, or sqlite3.Error) catches nexusd's errors too.

class Warning(_sqlite3.Warning):  # noqa: A001 - PEP 249's name
    pass


class Error(_sqlite3.Error):
    """Base of every nexusd error. ``sqlite_errorcode`` and
    ``sqlite_errorname`` are set when SQLite's code is known."""

    sqlite_errorcode: Optional[int] = None
    sqlite_errorname: Optional[str] = None
    #: Rows the failed statement changed before it failed (none applied),
    #: which the connection's total_changes counts, as sqlite3's does.
    _total_changes: int = 0


class InterfaceError(Error, _sqlite3.InterfaceError):
    pass


class DatabaseError(Error, _sqlite3.DatabaseError):
    pass


class DataError(DatabaseError, _sqlite3.DataError):
    pass


class OperationalError(DatabaseError, _sqlite3.OperationalError):
    pass


class IntegrityError(DatabaseError, _sqlite3.IntegrityError):
    pass


class InternalError(DatabaseError, _sqlite3.InternalError):
    pass


class ProgrammingError(DatabaseError, _sqlite3.ProgrammingError):
    pass


class NotSupportedError(DatabaseError, _sqlite3.NotSupportedError):
    pass


class Timeout(OperationalError):
    """The request ran out of time before it started, or was interrupted and
    rolled back: nothing was applied; retry later."""


class Overloaded(OperationalError):
    """The daemon is at a limit (connections, transactions): nothing was
    applied; retry later."""


class TransactionExpired(OperationalError):
    """The transaction is over (its lease ran out, an operator or SQLite
    rolled it back): nothing in it was applied; run it again."""


class Conflict(OperationalError):
    """A deferred transaction's first write came after another commit:
    nothing in it was applied; retry it, or use isolation_level
    "IMMEDIATE"."""


class OutcomeUnknown(OperationalError):
    """The connection died with the request out: it may or may not have been
    applied. Check before you retry."""


_EXCEPTIONS = (
    Warning, Error, InterfaceError, DatabaseError, DataError, OperationalError,
    IntegrityError, InternalError, ProgrammingError, NotSupportedError,
)

# SQLite's result code names, from the sqlite3 module's own constants.
_ERROR_NAMES = {
    value: name
    for name, value in vars(_sqlite3).items()
    if name.startswith("SQLITE_") and isinstance(value, int)
    and not name.startswith(("SQLITE_CREATE", "SQLITE_DROP", "SQLITE_ALTER", "SQLITE_LIMIT"))
    and name not in {
        "SQLITE_DENY", "SQLITE_IGNORE", "SQLITE_OK", "SQLITE_ANALYZE", "SQLITE_ATTACH",
        "SQLITE_DETACH", "SQLITE_DELETE", "SQLITE_INSERT", "SQLITE_PRAGMA", "SQLITE_READ",
        "SQLITE_SELECT", "SQLITE_TRANSACTION", "SQLITE_UPDATE", "SQLITE_REINDEX",
        "SQLITE_FUNCTION", "SQLITE_SAVEPOINT", "SQLITE_RECURSIVE",
    }
}


def _by_code(code: int) -> type:
    """sqlite3's mapping of a primary result code to an exception class."""
    if code in (19, 20):  # CONSTRAINT, MISMATCH
        return IntegrityError
    if code in (21, 25):  # MISUSE, RANGE
        return ProgrammingError
    if code == 18:  # TOOBIG
        return DataError
    if code in (2, 12):  # INTERNAL, NOTFOUND
        return InternalError
    if code in (11, 26):  # CORRUPT, NOTADB
        return DatabaseError
    return OperationalError


_BY_KIND = {
    "timeout": Timeout,
    "overloaded": Overloaded,
    "transaction_expired": TransactionExpired,
    "conflict": Conflict,
    "outcome_unknown": OutcomeUnknown,
    "too_large": DataError,
    "programming": ProgrammingError,
    "invalid_argument": ProgrammingError,
    "protocol": InterfaceError,
    "internal": InternalError,
}


def _translate(e: _nexusd.NativeError) -> Error:
    kind, code, extended, message, index, total_changes = e.args
    if kind == "sql":
        cls = _by_code(code)
    else:
        cls = _BY_KIND.get(kind, OperationalError)
    err = cls(message)
    if extended or code:
        err.sqlite_errorcode = extended or code
        err.sqlite_errorname = _ERROR_NAMES.get(extended) or _ERROR_NAMES.get(code)
    err.statement_index = index
    err._total_changes = total_changes
    return err


# --- Types, PEP 249's objects and constructors -----------------------------

Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> datetime.date:
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:
    return Timestamp(*time.localtime(ticks)[:6])


class _DBAPITypeObject:
    def __init__(self, *names: str) -> None:
        self.names = frozenset(names)

    def __eq__(self, other: object) -> bool:
        return other in self.names

    def __hash__(self) -> int:
        return hash(self.names)


STRING = _DBAPITypeObject("TEXT")
BINARY = _DBAPITypeObject("BLOB")
NUMBER = _DBAPITypeObject("INTEGER", "REAL", "NUMERIC")
DATETIME = _DBAPITypeObject("TIMESTAMP", "DATETIME", "DATE")
ROWID = _DBAPITypeObject("ROWID", "INTEGER")


# --- Rows -------------------------------------------------------------------

def _make_row(cursor: Any, values: tuple) -> Any:
    """A fetched row through the cursor's row_factory. ``sqlite3.Row``,
    which a program moving from sqlite3 keeps setting (as Flask's tutorial
    does), accepts only sqlite3's own cursors: ``nexusd.Row`` stands in for
    it, with the same behaviour."""
    factory = cursor.row_factory
    if factory is _sqlite3.Row:
        factory = Row
    return factory(cursor, values)


class Row:
    """A row that works like sqlite3.Row: by index, or by column name
    (case-insensitive); ``keys()``, ``len()``, iteration, equality."""

    __slots__ = ("_description", "_values")

    def __init__(self, cursor: "Cursor", values: tuple) -> None:
        self._description = cursor.description
        self._values = values

    def keys(self) -> list:
        return [d[0] for d in self._description or ()]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, slice)):
            return self._values[key]
        if isinstance(key, str):
            wanted = key.lower()
            for i, d in enumerate(self._description or ()):
                if d[0].lower() == wanted:
                    return self._values[i]
            raise IndexError(f"No item with key {key!r}")
        raise IndexError(f"Index must be int or str, not {type(key).__name__}")

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Row):
            return NotImplemented
        return self.keys() == other.keys() and self._values == other._values

    def __hash__(self) -> int:
        return hash((tuple(self.keys()), self._values))

    def __repr__(self) -> str:
        return f"<nexusd.Row {dict(zip(self.keys(), self._values))!r}>"


# --- The daemon connection each process shares ------------------------------

_clients: dict = {}
_clients_lock = threading.Lock()


def _shared_client(socket: Optional[str], client_name: str, timeout: Optional[float],
                   asyncio: bool = False, decltypes: bool = False):
    """This process's client for (socket, name, timeout): one for blocking
    calls, whose waiting thread reads its own reply, and one for asyncio,
    on a runtime of its own; another of each for connections that convert
    by declared types, whose answers carry them. After a fork the parent's
    is never used (nor dropped: its threads are the parent's)."""
    key = (socket, client_name, timeout, asyncio, decltypes)
    pid = os.getpid()
    with _clients_lock:
        client = _clients.get(key)
        if client is None or client.pid != pid:
            try:
                client = _nexusd.Client(socket, client_name, timeout, asyncio, decltypes)
            except _nexusd.NativeError as e:
                raise _translate(e) from None
            _clients[key] = client
        return client


#: This process's pid, kept current across forks, so that the check on
#: every call costs no system call.
_pid = os.getpid()


def _current_pid() -> int:
    return _pid if _at_fork else os.getpid()


def _forget_clients_after_fork() -> None:
    global _clients_lock, _pid
    _pid = os.getpid()
    _clients_lock = threading.Lock()
    _clients.clear()


_at_fork = hasattr(os, "register_at_fork")
if _at_fork:
    os.register_at_fork(after_in_child=_forget_clients_after_fork)


def default_socket_path() -> str:
    """Where the daemon's socket is when none is given: ``$NEXUSD_SOCKET``,
    ``$XDG_RUNTIME_DIR/nexusd.sock``, else ``/tmp/nexusd-<uid>.sock``."""
    return str(_nexusd.default_socket_path())


# --- Statements -------------------------------------------------------------

_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.S)


def _words(sql: str, n: int = 3) -> list:
    """The first ``n`` keywords of ``sql``, upper-cased, after comments."""
    head = sql[_COMMENTS.match(sql).end():]
    return re.findall(r"[A-Za-z]+", head[:64])[:n] if head else []


def _control(sql: str) -> Optional[tuple]:
    """BEGIN [DEFERRED|IMMEDIATE|EXCLUSIVE] [TRANSACTION], COMMIT/END
    [TRANSACTION] or ROLLBACK [TRANSACTION] as ("begin", mode) / ("commit",)
    / ("rollback",); ROLLBACK TO and SAVEPOINT are not."""
    words = [w.upper() for w in _words(sql, 4)]
    if not words:
        return None
    rest = words[1:]
    if words[0] == "BEGIN":
        mode = "DEFERRED"
        if rest and rest[0] in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE"):
            mode, rest = rest[0], rest[1:]
        if rest in ([], ["TRANSACTION"]):
            return ("begin", mode)
        return None
    if words[0] in ("COMMIT", "END") and rest in ([], ["TRANSACTION"]):
        return ("commit",)
    if words[0] == "ROLLBACK" and rest in ([], ["TRANSACTION"]):
        return ("rollback",)
    return None


_DML = frozenset(("INSERT", "UPDATE", "DELETE", "REPLACE"))

_SAVEPOINT_OP = re.compile(
    r"(SAVEPOINT)\s+([^\s;]+)"
    r"|(RELEASE)\s+(?:SAVEPOINT\s+)?([^\s;]+)"
    r"|(ROLLBACK)\s+(?:TRANSACTION\s+)?TO\s+(?:SAVEPOINT\s+)?([^\s;]+)",
    re.I)


def _savepoint_op(sql: str) -> Optional[tuple]:
    """SAVEPOINT n, RELEASE [SAVEPOINT] n and ROLLBACK [TRANSACTION] TO
    [SAVEPOINT] n as ("savepoint" | "release" | "rollback", name), the
    name unquoted and case-folded, as SQLite compares them."""
    m = _SAVEPOINT_OP.match(sql, _COMMENTS.match(sql).end())
    if m is None:
        return None
    op = (m.group(1) or m.group(3) or m.group(5)).lower()
    name = m.group(2) or m.group(4) or m.group(6)
    if len(name) > 1 and name[0] + name[-1] in ('""', "''", "``", "[]"):
        name = name[1:-1]
    return (op, name.lower())


def _savepoint_step(stack: list, op: tuple) -> bool:
    """Follows a transaction that a SAVEPOINT began through a savepoint
    statement that succeeded; True when it was the RELEASE of that first
    savepoint, which in SQLite commits the transaction."""
    kind, name = op
    if kind == "savepoint":
        stack.append(name)
        return False
    if name not in stack:
        return False
    i = len(stack) - 1 - stack[::-1].index(name)
    if kind == "rollback":
        del stack[i + 1:]
        return False
    del stack[i:]
    return i == 0


@functools.lru_cache(maxsize=1024)
def _classify(sql: str) -> tuple:
    """(transaction control, is DML, is INSERT or REPLACE, savepoint
    statement) of a statement; remembered, as an app runs the same few
    texts over and over."""
    words = _words(sql, 1)
    first = words[0].upper() if words else ""
    savepoint = (_savepoint_op(sql) if first in ("SAVEPOINT", "RELEASE", "ROLLBACK")
                 else None)
    return (_control(sql), first in _DML, first in ("INSERT", "REPLACE"), savepoint)


def _begins_a_transaction(sql: Optional[str]) -> bool:
    """Whether ``sql``, outside a transaction, begins one: a SAVEPOINT does
    (deferred), as in SQLite, and RELEASE of that savepoint commits it.
    RELEASE or ROLLBACK TO there names no savepoint, and fails as in
    SQLite."""
    if sql is None:
        return False
    op = _classify(sql)[3]
    if op is None:
        return False
    if op[0] != "savepoint":
        raise OperationalError(f"no such savepoint: {op[1]}")
    return True


def _is_dml(sql: str) -> bool:
    return _classify(sql)[1]


def _split_script(script: str) -> list:
    """A script's statements, cut where sqlite3.complete_statement says one
    ends."""
    statements, current = [], ""
    for piece in re.split(r"(;)", script):
        current += piece
        if piece == ";" and _sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


def _check_autocommit(value: Any) -> None:
    if value not in (True, False, LEGACY_TRANSACTION_CONTROL):
        raise ProgrammingError(
            "autocommit must be True, False, or nexusd.LEGACY_TRANSACTION_CONTROL")


# --- Adapters and converters: sqlite3's own registries ------------------------
#
# A program that registered an adapter or a converter with sqlite3 keeps it:
# these are the same objects, so sqlite3.register_adapter(Decimal, str) and
# nexusd.register_adapter(Decimal, str) do the same thing, and the default
# adapters for date and datetime (deprecated since Python 3.12) apply as in
# sqlite3.

PARSE_DECLTYPES = _sqlite3.PARSE_DECLTYPES
PARSE_COLNAMES = _sqlite3.PARSE_COLNAMES
PrepareProtocol = _sqlite3.PrepareProtocol
adapters = _sqlite3.adapters
converters = _sqlite3.converters
register_adapter = _sqlite3.register_adapter
register_converter = _sqlite3.register_converter


def _adapt(value: Any) -> Any:
    """A parameter that is not exactly int, float, str, bytes or None, as
    sqlite3 binds it: through the adapter registered for its exact type,
    else its ``__conform__(PrepareProtocol)``, else unchanged (an int or str
    subclass is then stored as its base type). Called by the native layer."""
    adapter = adapters.get((type(value), PrepareProtocol))
    if adapter is not None:
        return adapter(value)
    conform = getattr(value, "__conform__", None)
    if conform is not None:
        adapted = conform(PrepareProtocol)
        if adapted is not None:
            return adapted
    return value


_nexusd.set_adapt(_adapt)

_STORED = (int, float, str, bytes, type(None))


def _as_bound(value: Any) -> Any:
    """A parameter as the native layer binds it (exact stored types as they
    are, others through ``_adapt``)."""
    return value if type(value) in _STORED else _adapt(value)


#: Set by ``enable_callback_tracebacks``.
_callback_tracebacks = False


def _trace(conn: Any, sql: str, parameters: Any = None) -> None:
    """Hands a statement about to go out to the connection's trace
    callback, with its parameters written in, as sqlite3 does: what the
    callback raises is ignored (and printed after
    ``enable_callback_tracebacks(True)``)."""
    callback = conn._trace_callback
    if callback is None:
        return
    try:
        callback(_parameters.expand(sql, parameters, _as_bound))
    except Exception as e:  # noqa: BLE001 - as sqlite3, whatever it is
        if _callback_tracebacks:
            import sys

            sys.unraisablehook(_Unraisable(e, callback))


class _Unraisable:
    """What ``sys.unraisablehook`` takes: sqlite3 reports an exception
    raised in a callback this way."""

    def __init__(self, exc: BaseException, obj: Any) -> None:
        self.exc_type = type(exc)
        self.exc_value = exc
        self.exc_traceback = exc.__traceback__
        self.err_msg = None
        self.object = obj


#: What ``next(rows, _END)`` gives for an iterator that has ended.
_END = object()


def _named_rows(sql: str, rows: Any) -> Iterator:
    """executemany's rows as they come, through ``_named`` if the first is
    a mapping (all are of one style, as the first)."""
    rows = iter(rows)
    first = next(rows, _END)
    if first is _END:
        return iter(())
    rows = itertools.chain((first,), rows)
    if isinstance(first, Mapping):
        return (_named(sql, p) for p in rows)
    return rows


def _traced(conn: "Connection", sql: str, rows: Iterator) -> Iterator:
    """``rows``, each passed to the connection's trace callback as it is
    read."""
    for parameters in rows:
        _trace(conn, sql, parameters)
        yield parameters


def _named(sql: str, parameters: Any) -> Any:
    """Parameters as the daemon binds them: a mapping becomes the values of
    the statement's own names, spelled as it spells them (``:a``, ``@a``,
    ``$a``), as sqlite3 looks them up; anything else is left as it is."""
    cls = type(parameters)
    if cls is tuple or cls is list:
        return parameters
    if isinstance(parameters, Mapping):
        return _parameters.by_name(sql, parameters, ProgrammingError)
    return parameters


adapt = _sqlite3.adapt
complete_statement = _sqlite3.complete_statement


def enable_callback_tracebacks(flag: bool, /) -> None:
    """As sqlite3's: print the traceback of an exception a trace callback
    raises (it is ignored either way)."""
    global _callback_tracebacks
    _callback_tracebacks = bool(flag)
    _sqlite3.enable_callback_tracebacks(flag)


def _check_detect_types(detect_types: Any) -> int:
    if not isinstance(detect_types, int) or isinstance(detect_types, bool):
        raise TypeError(
            f"detect_types must be an int (nexusd.PARSE_DECLTYPES, PARSE_COLNAMES or "
            f"both, or 0), not {type(detect_types).__name__}")
    return detect_types


def _bracketed(name: str) -> Optional[str]:
    """The type named in square brackets in a column's name ("x [point]"
    names "point"), for PARSE_COLNAMES: the text from the last "[" before
    the first "]" that follows one."""
    start = None
    for pos, ch in enumerate(name):
        if ch == "[":
            start = pos + 1
        elif ch == "]" and start is not None:
            return name[start:pos]
    return None


def _bare(name: str) -> str:
    """A column's name without its "[type]" (and the one space before it),
    as the description shows it under PARSE_COLNAMES."""
    cut = name.find("[")
    if cut < 0:
        return name
    if cut > 0 and name[cut - 1] == " ":
        cut -= 1
    return name[:cut]


def _converters_for(detect_types: int, columns: list, decltypes: Optional[list]) -> list:
    """Each column's converter, or None, chosen as sqlite3 chooses: the
    "[type]" in its name under PARSE_COLNAMES, else the first word of its
    declared type under PARSE_DECLTYPES; names match case-insensitively."""
    chosen = []
    for i, name in enumerate(columns):
        converter = None
        if detect_types & PARSE_COLNAMES:
            key = _bracketed(name)
            if key is not None:
                converter = converters.get(key.upper())
        if converter is None and detect_types & PARSE_DECLTYPES and decltypes:
            declared = decltypes[i]
            if declared:
                key = re.split(r"[ (]", declared, maxsplit=1)[0]
                converter = converters.get(key.upper())
        chosen.append(converter)
    return chosen


def _as_stored_text(value: Any) -> bytes:
    """A value as the bytes sqlite3 hands a converter: a blob as is, text
    as UTF-8, a number as SQLite writes it as text."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return str(value).encode()
    if value in (float("inf"), float("-inf")):  # SQLite keeps no NaN: it stores NULL
        return b"Inf" if value > 0 else b"-Inf"
    text = "%.15g" % value
    mantissa, e, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return (mantissa + e + exponent).encode()


def _convert(detect_types: int, text_factory: Any, columns: list, rows: list,
             decltypes: Optional[list]) -> list:
    """Rows as sqlite3 builds them: a column with a converter gets it
    (NULL excepted), and any other TEXT value goes through text_factory
    as its UTF-8 bytes when that is not str."""
    chosen = (_converters_for(detect_types, columns, decltypes) if detect_types
              else [None] * len(columns))
    if text_factory is str and all(c is None for c in chosen):
        return rows

    def one(v, converter):
        if v is None:
            return None
        if converter is not None:
            return converter(_as_stored_text(v))
        if text_factory is not str and type(v) is str:
            return text_factory(v.encode())
        return v

    return [tuple(one(v, c) for v, c in zip(row, chosen)) for row in rows]


def _fetched(connection: Any, columns: list, rows: list, decltypes: Optional[list]) -> list:
    """Rows from the daemon as the connection's detect_types and
    text_factory want them."""
    detect_types = connection._detect_types
    text_factory = connection.text_factory
    if detect_types or text_factory is not str:
        return _convert(detect_types, text_factory, columns, rows, decltypes)
    return rows


def _streams_here(sql: str) -> bool:
    """Whether a StreamingCursor takes ``sql``'s rows a part at a time:
    anything but transaction control, savepoints and DML (whose rowcount
    and implicit BEGIN the usual way gives)."""
    control, dml, _, savepoint = _classify(sql)
    return control is None and not dml and savepoint is None


def _part_rows(cursor: Any, part: tuple) -> list:
    """A streaming cursor's later part's rows (sync or asyncio), converted,
    its totals counted."""
    rows, lastrowid, total = part
    conn = cursor.connection
    conn._total_changes += total
    if lastrowid:
        conn._lastrowid = cursor.lastrowid = lastrowid
    return _fetched(conn, cursor._stream_columns, rows, cursor._stream_decltypes)


_STREAM_FORKED = ("this cursor's rows were being read by the process this one was "
                  "forked from; execute the statement again in this process")


@functools.lru_cache(maxsize=256)
def _description(columns: tuple) -> Optional[tuple]:
    """A cursor's description of ``columns``; None for none (text that
    holds no statement), as in sqlite3. Remembered, as an app reads the
    same few shapes over and over."""
    return tuple((c, None, None, None, None, None, None) for c in columns) or None


def _load(cursor: Any, result: tuple, sql: str) -> None:
    """Puts one statement's result on a cursor (sync or asyncio): rows and
    their description, or rowcount and lastrowid as sqlite3 sets them.

    lastrowid is the connection's, as in sqlite3: the rowid of the last row
    its statements inserted (INSERT ... RETURNING's too), 0 before any, and
    unchanged by a statement that inserted none (the daemon answers 0 for
    those)."""
    connection = cursor.connection
    if result[0] == "rows":
        _, columns, rows, decltypes, lastrowid, total = result
        if connection._detect_types or connection.text_factory is not str:
            rows = _convert(connection._detect_types, connection.text_factory, columns, rows,
                            decltypes)
        if connection._detect_types & PARSE_COLNAMES:
            columns = [_bare(c) for c in columns]
        cursor.description = _description(tuple(columns))
        # INSERT, UPDATE, DELETE or REPLACE ... RETURNING answers a row per
        # row it changed, which is the count sqlite3 gives once it is read.
        cursor._rows = rows
        cursor.rowcount = len(rows) if _classify(sql)[1] else -1
        if lastrowid:
            connection._lastrowid = lastrowid
        cursor.lastrowid = connection._lastrowid
    else:
        _, rowcount, lastrowid, total = result
        cursor.description, cursor._rows = None, []
        if lastrowid:
            connection._lastrowid = lastrowid
        cursor.lastrowid = connection._lastrowid
        cursor.rowcount = rowcount if _classify(sql)[1] else -1
    connection._total_changes += total
    cursor._next = 0


# --- Connection --------------------------------------------------------------

_MODES = {"": "deferred", "DEFERRED": "deferred", "IMMEDIATE": "immediate",
          "EXCLUSIVE": "immediate"}


class _Unsent:
    """A transaction begun in the driver but not yet on the daemon: its
    BEGIN goes with its first statement (``Client.begin_run``: one round
    trip where two would go), and one that ends before any statement
    costs none. It has the native transaction's methods."""

    __slots__ = ("_client", "_mode", "_txn")

    def __init__(self, client: Any, mode: str) -> None:
        self._client, self._mode, self._txn = client, mode, None

    def _open(self) -> Any:
        if self._txn is None:
            self._txn = self._client.begin(self._mode)
        return self._txn

    def run(self, sql: str, params: Any = None) -> Any:
        if self._txn is not None:
            return self._txn.run(sql, params)
        txn, result, error = self._client.begin_run(self._mode, sql, params)
        self._txn = txn
        if error is not None:
            raise error
        return result

    def run_many(self, sql: str, rows: Any) -> Any:
        return self._open().run_many(sql, rows)

    def script(self, statements: Any) -> Any:
        return self._open().script(statements)

    def commit(self) -> None:
        if self._txn is not None:
            self._txn.commit()

    def rollback(self) -> None:
        if self._txn is not None:
            self._txn.rollback()


class Connection:
    """A DB-API connection. Many may share one socket; a transaction belongs
    to one Connection."""

    Warning = Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    def __init__(
        self,
        socket: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        autocommit: Any = LEGACY_TRANSACTION_CONTROL,
        isolation_level: Optional[str] = "",
        client_name: Optional[str] = None,
        check_same_thread: bool = False,
        detect_types: int = 0,
    ) -> None:
        _check_autocommit(autocommit)
        self._detect_types = _check_detect_types(detect_types)
        self._socket = os.fspath(socket) if socket is not None else None
        self._timeout = timeout
        self._client_name = client_name or f"python {os.path.basename(_argv0())}"
        self._autocommit = autocommit
        self.isolation_level = isolation_level
        self.row_factory = None
        self.text_factory = str
        self._trace_callback = None
        self._txn = None
        # The rowid of the last row this connection inserted (cursor.lastrowid).
        self._lastrowid = 0
        self._total_changes = 0
        # The savepoints of a transaction that a SAVEPOINT began, else None.
        self._savepoints: Optional[list] = None
        self._pid = os.getpid()
        self._closed = False
        self._lock = threading.RLock()
        self._shared = None
        # StreamingCursors whose rows are still coming. Those in the open
        # transaction are read to their end before its next request, which
        # the daemon serves after them (`_drain`); close() stops them all.
        self._streams: "weakref.WeakSet" = weakref.WeakSet()
        # Connect now, so a missing daemon is an error here, as with sqlite3.
        self._client()

    # -- state ------------------------------------------------------------

    def _client(self):
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed database.")
        shared = self._shared
        pid = _current_pid()
        if shared is not None and self._pid == pid:
            return shared
        if self._pid != pid:
            # Forked: the parent's transaction is not this process's.
            self._pid = pid
            self._txn = None
        self._shared = _shared_client(self._socket, self._client_name, self._timeout,
                                      decltypes=bool(self._detect_types & PARSE_DECLTYPES))
        return self._shared

    @property
    def isolation_level(self) -> Optional[str]:
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, value: Optional[str]) -> None:
        if value is not None and value.upper() not in _MODES:
            raise ValueError(
                f"isolation_level string must be '', 'DEFERRED', 'IMMEDIATE', or "
                f"'EXCLUSIVE', not {value!r}")
        # As sqlite3: setting None commits a pending transaction.
        if value is None and getattr(self, "_txn", None) is not None \
                and self._autocommit == LEGACY_TRANSACTION_CONTROL:
            self.commit()
        self._isolation_level = value

    @property
    def autocommit(self) -> Any:
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: Any) -> None:
        _check_autocommit(value)
        if value is True and self._txn is not None:
            self.commit()
        self._autocommit = value

    @property
    def in_transaction(self) -> bool:
        return self._txn is not None and self._pid == _current_pid()

    @property
    def total_changes(self) -> int:
        """As sqlite3's: the rows this connection's statements inserted,
        updated or deleted since it opened, its triggers' and foreign-key
        actions' included (the daemon counts each statement's, and this
        connection sums them)."""
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed database.")
        return self._total_changes

    # -- transactions -------------------------------------------------------

    def _begin(self, mode: str, traced: Optional[str] = None, *, lazily: bool = False) -> None:
        """Opens a transaction; ``traced``: the statement the trace callback
        sees for it (None when the caller's own BEGIN was traced).
        ``lazily``: its BEGIN goes to the daemon with its first statement
        (`_Unsent`), for a BEGIN nothing can be observed between and that
        statement: a deferred one, or one the driver sends right before it."""
        client = self._client()
        if traced is not None:
            _trace(self, traced)
        self._savepoints = None
        if lazily:
            self._txn = _Unsent(client, mode)
            return
        try:
            self._txn = client.begin(mode)
        except _nexusd.NativeError as e:
            raise _translate(e) from None

    def _begin_lazily(self, statement: str) -> bool:
        """The SQLAlchemy dialect's BEGIN, sent with the statement that
        follows it; False if ``statement`` is not a plain BEGIN or a
        transaction is open (run it as a statement then)."""
        with self._lock:
            control = _control(statement)
            if control is None or control[0] != "begin" or self._txn is not None \
                    or self._autocommit is False:
                return False
            self._begin(_MODES[control[1]], statement, lazily=True)
            return True

    def _target(self, sql: Optional[str]):
        """Where a statement runs: the open transaction, one opened for it
        as the transaction mode says, or the daemon directly."""
        client = self._client()
        # Only a stream in the open transaction is drained (``_drain``).
        if self._txn is not None and self._streams:
            self._drain()
        if self._txn is None:
            # The driver's own BEGIN goes right before the statement: with
            # it, in one round trip.
            if self._autocommit is False:
                self._begin("deferred", "BEGIN", lazily=True)
            elif (self._autocommit == LEGACY_TRANSACTION_CONTROL
                  and self._isolation_level is not None
                  and sql is not None and _is_dml(sql)):
                self._begin(_MODES[self._isolation_level.upper()],
                            "BEGIN " + self._isolation_level, lazily=True)
            elif _begins_a_transaction(sql):
                self._begin("deferred")
                self._savepoints = []
        return self._txn if self._txn is not None else client

    def _after(self, op: Optional[tuple]) -> None:
        """Ends a transaction that a SAVEPOINT began when its RELEASE ran;
        ``op``: the statement's savepoint operation (``_classify``)."""
        if (op is not None and self._savepoints is not None and self._txn is not None
                and _savepoint_step(self._savepoints, op)):
            self._end(True, traced=False)

    def _drain(self) -> None:
        """Reads the rest of every StreamingCursor's rows in the open
        transaction into memory, so that its next request, which the
        daemon serves after them, does not wait on them for ever."""
        for cursor in list(self._streams):
            if cursor._stream_txn is not None and cursor._stream_txn is self._txn:
                cursor._buffer_rest()

    def _stream(self, sql: str, parameters: Any, cursor: "StreamingCursor") -> None:
        """Starts ``sql`` for ``cursor``, its rows to come a part at a
        time, where the transaction mode puts it."""
        with self._lock:
            target = self._target(sql)
            if self._trace_callback is not None:
                _trace(self, sql, parameters)
            try:
                native = target._open() if isinstance(target, _Unsent) else target
                stream = native.stream(sql, _named(sql, parameters))
            except _nexusd.NativeError as e:
                raise self._failed(target, e) from None
            cursor._started(stream, self._txn)

    def _end(self, commit: bool, traced: bool = True) -> None:
        if self._streams:
            self._drain()
        txn, self._txn = self._txn, None
        if txn is None:
            return
        if traced:
            _trace(self, "COMMIT" if commit else "ROLLBACK")
        try:
            txn.commit() if commit else txn.rollback()
        except _nexusd.NativeError as e:
            raise _translate(e) from None

    def commit(self) -> None:
        """Commits the open transaction, if any; returns once it is durable.
        With ``autocommit=True`` there is none to commit."""
        with self._lock:
            self._client()
            if self._autocommit is True:
                return
            self._end(True)

    def rollback(self) -> None:
        with self._lock:
            self._client()
            if self._autocommit is True:
                return
            self._end(False)

    def close(self) -> None:
        """Closes the connection; a transaction still open is rolled back."""
        with self._lock:
            if self._closed:
                return
            for cursor in list(self._streams):
                cursor._stop(ProgrammingError("Cannot operate on a closed database."))
            if self._txn is not None and self._pid == _current_pid():
                try:
                    self._end(False, traced=False)
                except Error:
                    pass
            self._txn = None
            self._closed = True

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()
        return False

    def __del__(self) -> None:
        txn = getattr(self, "_txn", None)
        if txn is not None and getattr(self, "_pid", None) == _current_pid():
            # Dropped unfinished: the native side queues a rollback.
            self._txn = None

    # -- statements -----------------------------------------------------------

    def cursor(self, factory: Any = None) -> "Cursor":
        self._client()
        return (factory or Cursor)(self)

    def execute(self, sql: str, parameters: Any = ()) -> "Cursor":
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any) -> "Cursor":
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, script: str) -> "Cursor":
        return self.cursor().executescript(script)

    def iterdump(self, **kwargs: Any) -> Iterator[str]:
        """The schema and rows as SQL statements, from sqlite3's own dump
        code run over this connection (so the text is sqlite3's, and its
        keyword arguments are the running Python's). As with sqlite3, the
        tables are read one after another; for a copy of one moment, use
        ``nexusd ctl backup``."""
        from sqlite3 import dump

        return dump._iterdump(self, **kwargs)

    # -- what sqlite3 has besides statements -------------------------------------

    def set_trace_callback(self, trace_callback: Any) -> None:
        """As sqlite3's: ``trace_callback(sql)`` is called with each statement
        this connection sends (the implicit BEGIN and COMMIT included), its
        parameters written in; None turns it off. What it raises is
        ignored, as in sqlite3. The text is written here, from what is
        sent, since statements run in the daemon."""
        if trace_callback is not None and not callable(trace_callback):
            raise TypeError(
                f"set_trace_callback() takes a callable or None, not "
                f"{type(trace_callback).__name__}")
        self._trace_callback = trace_callback

    def backup(self, target: Any, *, pages: int = -1, progress: Any = None,
               name: str = "main", sleep: float = 0.250) -> None:
        """Copies the database into ``target``, a ``sqlite3.Connection`` (a
        file, or ``":memory:"``), replacing what it holds, as sqlite3's
        ``backup`` does. The copy is of one moment: it is read in one read
        transaction, so it is bounded by the daemon's ``--max-read-ms``; for
        a large database use ``nexusd ctl backup PATH``, which copies pages
        and has no such bound. The copy is of the schema and rows (with
        ``user_version`` and ``application_id``), read as SQL into memory
        and copied from there into ``target`` by sqlite3's own ``backup``,
        which takes ``pages``, ``progress`` and ``sleep`` as it always
        does."""
        self._client()  # a closed connection is an error here, as in sqlite3
        _backup(self._socket, self._timeout, self._client_name, target, pages, progress,
                name, sleep)

    def __getattr__(self, name: str) -> Any:
        return _not_here(self, name, asynchronous=False)

    def _run(self, sql: str, parameters: Any):
        with self._lock:
            control, _, _, savepoint = _classify(sql)
            if control is not None:
                _trace(self, sql)
                return self._run_control(control)
            target = self._target(sql)
            if self._trace_callback is not None:
                _trace(self, sql, parameters)
            cls = type(parameters)
            if cls is not tuple and cls is not list:
                parameters = _named(sql, parameters)
            try:
                result = target.run(sql, parameters)
            except _nexusd.NativeError as e:
                raise self._failed(target, e) from None
            if savepoint is not None:
                self._after(savepoint)
            return result

    def _failed(self, target: Any, e: Any) -> "Error":
        """The error to raise for a request to ``target`` that failed with
        ``e``: what the failed statement changed counts, as in sqlite3, and
        a transaction that is over, or was never begun (the BEGIN that went
        with the statement failed), is no longer open."""
        err = _translate(e)
        self._total_changes += err._total_changes
        if target is self._txn and (
                isinstance(err, (TransactionExpired, Conflict))
                or (isinstance(target, _Unsent) and target._txn is None)):
            self._txn = None
        return err

    def _run_control(self, control: tuple):
        if control[0] == "begin":
            if self._txn is not None:
                raise OperationalError("cannot start a transaction within a transaction")
            if self._autocommit is False:
                raise OperationalError(
                    "cannot start a transaction within a transaction (autocommit=False "
                    "keeps one open)")
            # A deferred one's snapshot begins at its first statement, in
            # SQLite too: it goes with that statement.
            mode = _MODES[control[1]]
            self._begin(mode, lazily=mode == "deferred")
        else:
            if self._txn is None:
                raise OperationalError(
                    f"cannot {control[0]} - no transaction is active")
            self._end(control[0] == "commit", traced=False)
        return ("executed", 0, 0, 0)

    def _run_many(self, sql: str, seq_of_parameters: Any):
        with self._lock:
            target = self._target(sql)
            rows = seq_of_parameters
            if self._trace_callback is not None:
                rows = _traced(self, sql, rows)
            try:
                # Read as the batch goes: each part is sent as it fills.
                return target.run_many(sql, _named_rows(sql, rows))
            except _nexusd.NativeError as e:
                raise self._failed(target, e) from None

    def _run_script(self, script: str) -> None:
        with self._lock:
            if self._autocommit == LEGACY_TRANSACTION_CONTROL and self._txn is not None:
                self._end(True)
            statements = [s for s in _split_script(script) if _control(s) is None]
            if not statements:
                return
            target = self._target(None)
            for statement in statements:
                _trace(self, statement)
            try:
                lastrowid, total = target.script(statements)
            except _nexusd.NativeError as e:
                raise self._failed(target, e) from None
            self._total_changes += total
            if lastrowid:
                self._lastrowid = lastrowid


#: sqlite3 Connection methods nexusd cannot have, and why; calling one
#: raises NotSupportedError with the reason.
_IN_DAEMON = ("statements run in the nexusd daemon, another process, which cannot "
              "call into this one; ")
_NOT_HERE = {
    "create_function": _IN_DAEMON + "compute the value in Python before or after the "
                       "query, or use one of SQLite's built-in functions. REGEXP is built "
                       "in (Python re's syntax without look-around and backreferences), so a "
                       "create_function('regexp', ...) line can go",
    "create_aggregate": _IN_DAEMON + "aggregate in Python over the rows, or use SQLite's "
                        "built-in aggregates",
    "create_window_function": _IN_DAEMON + "use SQLite's built-in window functions",
    "create_collation": _IN_DAEMON + "sort in Python, or use a built-in collation "
                        "(BINARY, NOCASE, RTRIM)",
    "set_authorizer": "the daemon authorizes statements itself, by the role the "
                      "[access] rules of its config file give the client's user",
    "set_progress_handler": "the daemon bounds each statement by the request's time "
                            "limit; pass connect(timeout=seconds) instead",
    "interrupt": "a request cannot be recalled once sent; the daemon ends a statement "
                 "at the request's time limit, so pass connect(timeout=seconds)",
    "enable_load_extension": "extensions would load into the daemon's process, which "
                             "every client shares",
    "load_extension": "extensions would load into the daemon's process, which every "
                      "client shares",
    "blobopen": "incremental blob I/O needs a handle inside the daemon; read and write "
                "the value with SELECT and UPDATE",
    "serialize": "the database lives in the daemon; use iterdump(), backup() into a "
                 "sqlite3 connection, or `nexusd ctl backup PATH`",
    "deserialize": "the database lives in the daemon and every client shares it; load "
                   "rows with executescript() of a dump, or put a copy in place of the "
                   "file while the daemon is stopped",
    "getlimit": "limits are the daemon's, set for every client alike",
    "setlimit": "limits are the daemon's, set for every client alike",
}


def _not_here(owner: Any, name: str, asynchronous: bool) -> Any:
    """``__getattr__`` of both connection classes: for a member of
    ``_NOT_HERE``, a method that raises NotSupportedError with the reason
    (a coroutine function for ``nexusd.aio``); for any other name, the
    usual AttributeError."""
    why = _NOT_HERE.get(name)
    if why is None:
        raise AttributeError(f"{type(owner).__name__!r} object has no attribute {name!r}")
    message = f"{name}() is not supported by nexusd: {why}"

    def not_supported(*args: Any, **kwargs: Any) -> Any:
        raise NotSupportedError(message)

    async def not_supported_async(*args: Any, **kwargs: Any) -> Any:
        raise NotSupportedError(message)

    method = not_supported_async if asynchronous else not_supported
    method.__name__ = name
    return method


def _backup(socket: Optional[str], timeout: Optional[float], client_name: str,
            target: Any, pages: int, progress: Any, name: str, sleep: float) -> None:
    """``backup()`` of both connection classes: checks what sqlite3 checks,
    then copies the daemon's database at ``socket`` into ``target``.

    The dump is replayed into a private in-memory database, which sqlite3's
    own ``backup`` then copies into ``target`` page by page. So the target
    is replaced whole, as sqlite3 replaces it; ``pages``, ``progress`` and
    ``sleep`` mean what they mean there; and, as sqlite3 allows, the copy
    may run in another thread than the one that made ``target``."""
    if not isinstance(target, _sqlite3.Connection):
        raise TypeError(
            f"backup() argument 'target' must be a sqlite3.Connection (the database to "
            f"copy into: a file, or ':memory:'), not {type(target).__name__}")
    if progress is not None and not callable(progress):
        raise TypeError("backup() argument 'progress' must be a callable or None")
    if name != "main":
        raise OperationalError(
            f"unknown database {name}: a nexusd daemon serves one database, 'main' "
            "(ATTACH is refused)")
    if target.in_transaction:
        raise OperationalError(
            "target is in transaction: commit or roll back the target's transaction "
            "before backing up into it")
    statements = _snapshot_dump(socket, timeout, client_name)
    copy = _sqlite3.connect(":memory:", isolation_level=None)
    try:
        for statement in statements:
            copy.execute(statement)
        copy.backup(target, pages=pages, progress=progress, sleep=sleep)
    finally:
        copy.close()


def _snapshot_dump(socket: Optional[str], timeout: Optional[float], client_name: str) -> list:
    """The database as SQL statements, read in one read transaction: its
    ``page_size`` first, then the dump, with its ``user_version`` and
    ``application_id``."""
    from sqlite3 import dump

    snapshot = Connection(socket, timeout=timeout, client_name=client_name,
                          isolation_level=None)
    try:
        snapshot._begin("read")
        statements = list(dump._iterdump(snapshot))
        for pragma in ("user_version", "application_id"):
            value = snapshot.execute(f"PRAGMA {pragma}").fetchone()[0]
            if value:
                statements.insert(-1, f"PRAGMA {pragma}={int(value)};")
        page_size = snapshot.execute("PRAGMA page_size").fetchone()[0]
        statements.insert(0, f"PRAGMA page_size={int(page_size)};")
        snapshot.rollback()
    finally:
        snapshot.close()
    return statements


def _argv0() -> str:
    import sys

    return (sys.argv[0] if sys.argv and sys.argv[0] else "python") or "python"


# --- Cursor --------------------------------------------------------------------

class Cursor:
    """A DB-API cursor. Its results are fetched from memory: the daemon
    answers each statement whole."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.arraysize = 1
        self.description: Optional[tuple] = None
        self.rowcount = -1
        self.lastrowid: Optional[int] = None
        self.row_factory = connection.row_factory
        self._rows: list = []
        self._next = 0
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        if self.connection._closed:
            # As sqlite3: the rows in hand go with the connection.
            raise ProgrammingError("Cannot operate on a closed database.")

    def execute(self, sql: str, parameters: Any = ()) -> "Cursor":
        if self._closed or self.connection._closed:
            self._check()
        if not isinstance(sql, str):
            raise ProgrammingError(f"execute() argument 1 must be str, not {type(sql).__name__}")
        _load(self, self.connection._run(sql, parameters), sql)
        return self

    def executemany(self, sql: str, seq_of_parameters: Any) -> "Cursor":
        """Runs ``sql`` once per parameter set, as one atomic batch: one
        request, or parts sent as the parameters are read if they would not
        fit in one (so an iterator of any length is never held whole)."""
        self._check()
        if not _is_dml(sql):
            raise ProgrammingError("executemany() can only execute DML statements.")
        rows = iter(seq_of_parameters)
        first = next(rows, _END)
        self.description = None
        self._rows, self._next = [], 0
        if first is _END:
            self.rowcount = 0
            return self
        # The cursor's lastrowid stays as it was, as sqlite3 leaves it after
        # executemany(); the connection's moves on.
        self.rowcount, lastrowid, total = self.connection._run_many(
            sql, itertools.chain((first,), rows))
        self.connection._total_changes += total
        if lastrowid:
            self.connection._lastrowid = lastrowid
        return self

    def executescript(self, sql_script: str) -> "Cursor":
        """Runs the script's statements as one atomic batch (after
        committing a pending transaction, as sqlite3 does)."""
        self._check()
        self.connection._run_script(sql_script)
        self.description, self._rows, self._next, self.rowcount = None, [], 0, -1
        return self

    def _make(self, values: tuple) -> Any:
        return values if self.row_factory is None else _make_row(self, values)

    def _refill(self) -> bool:
        """Loads the next rows of a result still coming (a
        StreamingCursor's); False when there are none."""
        return False

    def fetchone(self) -> Any:
        if self._closed or self.connection._closed:
            self._check()
        if self._next >= len(self._rows) and not self._refill():
            return None
        row = self._rows[self._next]
        self._next += 1
        return row if self.row_factory is None else _make_row(self, row)

    def fetchmany(self, size: Optional[int] = None) -> list:
        self._check()
        n = max(self.arraysize if size is None else size, 0)
        rows = self._rows[self._next:self._next + n]
        self._next += len(rows)
        while len(rows) < n and self._refill():
            more = self._rows[self._next:self._next + n - len(rows)]
            self._next += len(more)
            rows += more
        return [self._make(r) for r in rows]

    def fetchall(self) -> list:
        self._check()
        rows = self._rows[self._next:]
        self._next = len(self._rows)
        while self._refill():
            rows += self._rows[self._next:]
            self._next = len(self._rows)
        return [self._make(r) for r in rows]

    def __iter__(self) -> "Cursor":
        return self

    def __next__(self) -> Any:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def close(self) -> None:
        self._closed = True
        self._rows = []

    def setinputsizes(self, sizes: Any) -> None:
        pass

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        pass


class _Stream:
    """What a StreamingCursor (sync or asyncio) keeps of its read: the
    native stream while rows are still to come, and how to let it go."""

    def __init__(self, connection: Any) -> None:
        super().__init__(connection)  # type: ignore[call-arg]
        self._stream: Any = None
        self._stream_txn: Any = None
        self._stream_pid = 0
        self._stream_columns: list = []
        self._stream_decltypes: Optional[list] = None
        # What ended the read while nothing fetched (`_buffer_rest`), or
        # a cancelled fetch; raised once its rows run out.
        self._stream_error: Optional[BaseException] = None

    def _started(self, stream: Any, txn: Any) -> None:
        """The connection began ``stream`` for this cursor, in ``txn``."""
        self._stream, self._stream_txn, self._stream_pid = stream, txn, _current_pid()
        self._stream_columns, self._stream_decltypes = stream.columns, stream.decltypes
        self.connection._streams.add(self)

    def _let_go(self) -> None:
        self._stream = None
        self.connection._streams.discard(self)

    def _stop(self, why: Optional[BaseException] = None) -> None:
        """Ends the read where it stands; ``why``: what a fetch past the
        rows in hand raises then (an asyncio fetch's cancellation, say)."""
        stream = self._stream
        self._stream_error = why if stream is not None else None
        if stream is not None:
            self._let_go()
            if self._stream_pid == _current_pid():
                stream.close()


class StreamingCursor(_Stream, Cursor):
    """A server-side cursor: a query's rows come from the daemon as they
    are fetched, a part (about 1 MiB) at a time, so a result of any size
    costs this process a part or two of it, where a Cursor holds it whole.
    ``conn.cursor(nexusd.StreamingCursor)``; SQLAlchemy's
    ``stream_results`` and ``yield_per`` use it.

    Until its rows are read to their end (or it is closed, or runs another
    statement) the read holds one of the daemon's readers and its snapshot,
    or, in a transaction, the transaction, up to the request's time limit
    (``connect(timeout=)``, else the daemon's ``max-read-ms``): read it
    steadily, as a read not done by then fails with ``nexusd.Timeout``.
    Another statement in the same transaction first reads the rest of its
    rows into memory, since the daemon serves that statement after them.
    DML and transaction control run as on a Cursor."""

    def execute(self, sql: str, parameters: Any = ()) -> "Cursor":
        self._check()
        if not isinstance(sql, str):
            raise ProgrammingError(f"execute() argument 1 must be str, not {type(sql).__name__}")
        self._stop()
        if not _streams_here(sql):
            return super().execute(sql, parameters)
        self.connection._stream(sql, parameters, self)
        part = self._take()
        rows, lastrowid, total = part if part is not None else ([], 0, 0)
        _load(self, ("rows", self._stream_columns, rows, self._stream_decltypes, lastrowid,
                     total), sql)
        return self

    def executemany(self, sql: str, seq_of_parameters: Any) -> "Cursor":
        self._stop()
        return super().executemany(sql, seq_of_parameters)

    def executescript(self, sql_script: str) -> "Cursor":
        self._stop()
        return super().executescript(sql_script)

    def _take(self) -> Optional[tuple]:
        """The stream's next part, ``(rows, lastrowid, total_changes)``
        as the daemon sent it, or None; lets the stream go after its last."""
        if self._stream_pid != _current_pid():
            self._stream = None
            raise ProgrammingError(_STREAM_FORKED)
        try:
            part = self._stream.next()
        except _nexusd.NativeError as e:
            self._let_go()
            raise self.connection._failed(self._stream_txn, e) from None
        if part is None or not part[3]:
            self._let_go()
        return None if part is None else part[:3]

    def _refill(self) -> bool:
        with self.connection._lock:
            if self._next < len(self._rows):  # `_buffer_rest` ran meanwhile
                return True
            while self._stream is not None:
                part = self._take()
                if part is None:
                    break
                self._rows, self._next = _part_rows(self, part), 0
                if self._rows:
                    return True
            if self._stream_error is not None:
                error, self._stream_error = self._stream_error, None
                raise error
            return False

    def _buffer_rest(self) -> None:
        """Reads the rest of the rows into memory (see `Connection._drain`).
        A failure is kept for the fetch that reaches it."""
        with self.connection._lock:
            rest = self._rows[self._next:]
            try:
                while self._stream is not None:
                    part = self._take()
                    if part is None:
                        break
                    rest += _part_rows(self, part)
            except Error as e:
                self._stream_error = e
            self._rows, self._next = rest, 0

    def close(self) -> None:
        self._stop()
        super().close()


def connect(
    socket: Optional[str] = None,
    *,
    timeout: Optional[float] = None,
    autocommit: Any = LEGACY_TRANSACTION_CONTROL,
    isolation_level: Optional[str] = "",
    client_name: Optional[str] = None,
    detect_types: int = 0,
    factory: Any = None,
    **ignored: Any,
) -> Connection:
    """Connects to the daemon at ``socket`` (default: as the Rust client
    resolves it). ``timeout`` is each request's time limit in seconds
    (default: the daemon's). ``autocommit`` and ``isolation_level`` work as
    in Python 3.12's sqlite3."""
    return (factory or Connection)(
        socket,
        timeout=timeout,
        autocommit=autocommit,
        isolation_level=isolation_level,
        client_name=client_name,
        detect_types=detect_types,
    )
