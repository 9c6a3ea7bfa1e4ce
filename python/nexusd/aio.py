"""nexusd.aio: the asyncio API, in aiosqlite's shape.

>>> async with nexusd.aio.connect() as db:                  # doctest: +SKIP
...     await db.execute("INSERT INTO t VALUES (?)", (1,))
...     await db.commit()
...     async with db.execute("SELECT x FROM t") as cursor:
...         async for row in cursor:
...             print(row)

The requests run on the native layer's runtime, not on a thread per call:
each ``await`` is an asyncio future. The runtime queues finished calls and
rings an eventfd the loop watches; the loop's thread settles every finished
one in one go, so the runtime's threads never wait for the GIL. Many tasks may share one connection. A cancelled ``await`` leaves
the connection usable; a transaction whose statement was cancelled is
rolled back, since nobody can know where it stood.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import weakref
from typing import Any, AsyncIterator, Optional

from . import (
    LEGACY_TRANSACTION_CONTROL,
    _MODES,
    Conflict,
    Error,
    OperationalError,
    ProgrammingError,
    TransactionExpired,
    PARSE_DECLTYPES,
    _STREAM_FORKED,
    _Stream,
    _current_pid,
    _check_autocommit,
    _begins_a_transaction,
    _check_detect_types,
    _classify,
    _control,
    _backup,
    _load,
    _make_row,
    _is_dml,
    _not_here,
    _named,
    _named_rows,
    _END,
    _trace,
    _traced,
    _nexusd,
    _part_rows,
    _shared_client,
    _streams_here,
    _savepoint_step,
    _split_script,
    _translate,
)

__all__ = ["connect", "Connection", "Cursor", "StreamingCursor"]


class _Unsent:
    """A transaction begun in the driver but not yet on the daemon, as the
    sync driver's `_Unsent`: its BEGIN goes with its first statement
    (``Client.begin_run_async``), and one that ends before any statement
    costs nothing. It has the native transaction's asyncio methods."""

    __slots__ = ("_client", "_mode", "_txn")

    def __init__(self, client: Any, mode: str) -> None:
        self._client, self._mode, self._txn = client, mode, None

    async def _open(self, queue: Any) -> Any:
        if self._txn is None:
            self._txn = await self._client.begin_async(queue, self._mode)
        return self._txn

    async def _first(self, queue: Any, sql: str, params: Any) -> Any:
        txn, result, error = await self._client.begin_run_async(queue, self._mode, sql, params)
        self._txn = txn
        if error is not None:
            raise error
        return result

    def run_async(self, queue: Any, sql: str, params: Any = None) -> Any:
        if self._txn is not None:
            return self._txn.run_async(queue, sql, params)
        return asyncio.ensure_future(self._first(queue, sql, params))

    def batch_writer_async(self, queue: Any) -> Any:
        async def run():
            return await (await self._open(queue)).batch_writer_async(queue)
        return asyncio.ensure_future(run())

    def stream_async(self, queue: Any, sql: str, params: Any = None) -> Any:
        async def run():
            return await (await self._open(queue)).stream_async(queue, sql, params)
        return asyncio.ensure_future(run())

    def script(self, statements: Any) -> Any:
        # Runs on a worker thread (see `executescript`): a blocking begin.
        if self._txn is None:
            self._txn = self._client.begin(self._mode)
        return self._txn.script(statements)

    def commit_async(self, queue: Any) -> Any:
        return self._end(queue, True)

    def rollback_async(self, queue: Any) -> Any:
        return self._end(queue, False)

    def _end(self, queue: Any, commit: bool) -> Any:
        if self._txn is None:
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return self._txn.commit_async(queue) if commit else self._txn.rollback_async(queue)

    def abandon(self) -> None:
        if self._txn is not None:
            self._txn.abandon()

#: Lines of ``iterdump`` fetched per trip to the worker thread.
_DUMP_CHUNK = 1000


# One completion queue per event loop: the native runtime queues finished
# calls there and rings its eventfd; the loop settles them all in one go.
_completions: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _queue() -> "_nexusd.Completions":
    loop = asyncio.get_running_loop()
    completions = _completions.get(loop)
    if completions is None:
        completions = _nexusd.Completions()
        loop.add_reader(completions.fd, completions.drain)
        _completions[loop] = completions
    return completions


async def _whole(future: Any) -> tuple:
    """What ``run_async`` settles to, as ``_load`` takes it. A result that
    comes in parts settles to ``("stream", Stream)`` at its first part: its
    parts are read here, each made rows as it comes while the daemon reads
    the next. Cancelled half way, the dropped stream ends the read."""
    result = await future
    if result[0] != "stream":
        return result
    stream = result[1]
    rows, lastrowid, total = [], 0, 0
    while (part := await stream.next_async(_queue())) is not None:
        got, lastrowid, total, _ = part
        rows += got
    return ("rows", stream.columns, rows, stream.decltypes, lastrowid, total)


async def _wait(future: asyncio.Future) -> Any:
    try:
        return await future
    except _nexusd.NativeError as e:
        raise _translate(e) from None


class Connection:
    """An asyncio connection; ``await connect(...)`` or ``async with
    connect(...) as db``."""

    def __init__(
        self,
        socket: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        autocommit: Any = LEGACY_TRANSACTION_CONTROL,
        isolation_level: Optional[str] = "",
        client_name: Optional[str] = None,
        detect_types: int = 0,
    ) -> None:
        _check_autocommit(autocommit)
        self._detect_types = _check_detect_types(detect_types)
        if isolation_level is not None and isolation_level.upper() not in _MODES:
            raise ValueError(f"isolation_level {isolation_level!r} is not valid")
        self._socket = os.fspath(socket) if socket is not None else None
        self._timeout = timeout
        self._client_name = client_name or "python asyncio"
        self.autocommit = autocommit
        self.isolation_level = isolation_level
        self.row_factory = None
        self.text_factory = str
        self._trace_callback = None
        self._client = None
        self._txn = None
        # The rowid of the last row this connection inserted (cursor.lastrowid).
        self._lastrowid = 0
        self._total_changes = 0
        # The savepoints of a transaction that a SAVEPOINT began, else None.
        self._savepoints: Optional[list] = None
        self._closed = False
        self._lock: Optional[asyncio.Lock] = None
        # StreamingCursors whose rows are still coming; those in the open
        # transaction are read to their end before its next request (as
        # the sync driver's `_drain`).
        self._streams: "weakref.WeakSet" = weakref.WeakSet()

    async def _connect(self) -> "Connection":
        if self._client is None:
            # Made once per process and socket; the first time it opens the
            # socket, off the loop's thread.
            self._client = await asyncio.get_running_loop().run_in_executor(
                None, _shared_client, self._socket, self._client_name, self._timeout, True,
                bool(self._detect_types & PARSE_DECLTYPES))
            self._lock = asyncio.Lock()
        return self

    def __await__(self):
        return self._connect().__await__()

    async def __aenter__(self) -> "Connection":
        return await self._connect()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.close()

    @property
    def in_transaction(self) -> bool:
        return self._txn is not None

    @property
    def total_changes(self) -> int:
        """As aiosqlite's (sqlite3's): the rows this connection's
        statements inserted, updated or deleted since it opened, its
        triggers' and foreign-key actions' included."""
        return self._total_changes

    def _check(self):
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed database.")
        if self._client is None:
            raise ProgrammingError("await the connection (or use async with) before using it")
        if self._client.pid != os.getpid():
            raise ProgrammingError(
                "this asyncio connection was made in another process; connect again here")
        return self._client

    async def _begin(self, mode: str, traced: Optional[str] = None, *,
                     lazily: bool = False) -> None:
        """Opens a transaction; ``lazily``: its BEGIN goes to the daemon
        with its first statement (`_Unsent`), as the sync driver's does."""
        client = self._check()
        if traced is not None:
            _trace(self, traced)
        self._savepoints = None
        if lazily:
            self._txn = _Unsent(client, mode)
            return
        self._txn = await _wait(client.begin_async(_queue(), mode))

    async def _target(self, sql: Optional[str]):
        client = self._check()
        # Only a stream in the open transaction is drained (``_drain``).
        if self._txn is not None and self._streams:
            await self._drain()
        if self._txn is None:
            # The driver's own BEGIN goes with the statement after it.
            if self.autocommit is False:
                await self._begin("deferred", "BEGIN", lazily=True)
            elif (self.autocommit == LEGACY_TRANSACTION_CONTROL
                  and self.isolation_level is not None
                  and sql is not None and _is_dml(sql)):
                await self._begin(_MODES[self.isolation_level.upper()],
                                  "BEGIN " + self.isolation_level, lazily=True)
            elif _begins_a_transaction(sql):
                await self._begin("deferred")
                self._savepoints = []
        return self._txn if self._txn is not None else client

    async def _after(self, op: Optional[tuple]) -> None:
        """Ends a transaction that a SAVEPOINT began when its RELEASE ran;
        ``op``: the statement's savepoint operation (``_classify``)."""
        if (op is not None and self._savepoints is not None and self._txn is not None
                and _savepoint_step(self._savepoints, op)):
            await self._end(True, traced=False)

    async def _drain(self) -> None:
        """Reads the rest of every StreamingCursor's rows in the open
        transaction into memory (the caller holds the lock)."""
        for cursor in list(self._streams):
            if cursor._stream_txn is not None and cursor._stream_txn is self._txn:
                await cursor._buffer_rest()

    async def _end(self, commit: bool, traced: bool = True) -> None:
        if self._streams:
            await self._drain()
        txn, self._txn = self._txn, None
        if txn is not None:
            if traced:
                _trace(self, "COMMIT" if commit else "ROLLBACK")
            method = txn.commit_async if commit else txn.rollback_async
            await _wait(method(_queue()))

    async def _call(self, make, sql: Optional[str]) -> Any:
        """Runs one request where the transaction mode puts it. A cancelled
        request inside a transaction rolls the transaction back."""
        self._check()
        async with self._lock:
            target = await self._target(sql)
        try:
            return await _wait(make(target))
        except Error as e:
            # What a failed statement changed counts, as in sqlite3.
            self._total_changes += e._total_changes
            if target is self._txn and (
                    isinstance(e, (TransactionExpired, Conflict))
                    or (isinstance(target, _Unsent) and target._txn is None)):
                # Over, or never begun (its BEGIN failed with the statement).
                self._txn = None
            raise
        except asyncio.CancelledError:
            if target is self._txn and self._txn is not None:
                self._txn = None
                target.abandon()
            raise

    def execute(self, sql: str, parameters: Any = ()) -> "_CursorResult":
        """``await db.execute(...)`` gives the cursor; so does ``async with
        db.execute(...) as cursor``, which closes it after."""
        return _CursorResult(Cursor(self).execute(sql, parameters))

    def executemany(self, sql: str, seq_of_parameters: Any) -> "_CursorResult":
        return _CursorResult(Cursor(self).executemany(sql, seq_of_parameters))

    def executescript(self, script: str) -> "_CursorResult":
        return _CursorResult(Cursor(self).executescript(script))

    async def execute_fetchall(self, sql: str, parameters: Any = ()) -> list:
        """aiosqlite's shortcut: the statement's rows, all of them."""
        cursor = await Cursor(self).execute(sql, parameters)
        return await cursor.fetchall()

    async def execute_insert(self, sql: str, parameters: Any = ()) -> Any:
        """aiosqlite's shortcut: runs an INSERT and answers the row of
        ``SELECT last_insert_rowid()``, as aiosqlite does (through
        ``row_factory``). The id is the statement's own, from the daemon's
        answer, so another client's insert in between cannot change it."""
        cursor = await Cursor(self).execute(sql, parameters)
        cursor.description = (("last_insert_rowid()", None, None, None, None, None, None),)
        cursor._rows, cursor._next = [(cursor.lastrowid,)], 0
        return await cursor.fetchone()

    async def iterdump(self, **kwargs: Any) -> AsyncIterator[str]:
        """aiosqlite's ``async for line in db.iterdump()``: the schema and
        rows as SQL, from sqlite3's own dump code as
        ``nexusd.Connection.iterdump`` writes them. As with aiosqlite, it
        reads through this connection, so an open transaction's writes are
        in it. The dump code runs in a worker thread and sends each of its
        queries back to this loop. It holds one table's rows at a time,
        and its lines come back in chunks of ``_DUMP_CHUNK``."""
        from sqlite3 import dump

        self._check()
        loop = asyncio.get_running_loop()
        lines = dump._iterdump(_FromThread(self, loop), **kwargs)
        while True:
            chunk = await loop.run_in_executor(
                None, lambda: list(itertools.islice(lines, _DUMP_CHUNK)))
            for line in chunk:
                yield line
            if len(chunk) < _DUMP_CHUNK:
                break

    async def set_trace_callback(self, handler: Any) -> None:
        """aiosqlite's ``await db.set_trace_callback(fn)``: ``fn(sql)`` is
        called with each statement sent, as ``nexusd.Connection``'s."""
        if handler is not None and not callable(handler):
            raise TypeError(
                f"set_trace_callback() takes a callable or None, not {type(handler).__name__}")
        self._trace_callback = handler

    async def backup(self, target: Any, *, pages: int = -1, progress: Any = None,
                     name: str = "main", sleep: float = 0.250) -> None:
        """aiosqlite's ``await db.backup(target)``: copies the database into
        a ``sqlite3.Connection`` as ``nexusd.Connection.backup`` does, in a
        worker thread (as aiosqlite copies in its own), so ``progress`` is
        called there."""
        self._check()
        await asyncio.get_running_loop().run_in_executor(
            None, _backup, self._socket, self._timeout, self._client_name, target, pages,
            progress, name, sleep)

    def __getattr__(self, name: str) -> Any:
        return _not_here(self, name, asynchronous=True)

    def cursor(self, factory: Any = None) -> "_CursorResult":
        """``await db.cursor()``, or ``async with db.cursor() as cursor``;
        ``db.cursor(nexusd.aio.StreamingCursor)`` for one that takes a
        query's rows a part at a time."""
        return _CursorResult(self._new_cursor(factory or Cursor))

    async def _new_cursor(self, factory: Any) -> "Cursor":
        self._check()
        return factory(self)

    async def commit(self) -> None:
        self._check()
        if self.autocommit is True:
            return
        async with self._lock:
            await self._end(True)

    async def rollback(self) -> None:
        self._check()
        if self.autocommit is True:
            return
        async with self._lock:
            await self._end(False)

    async def close(self) -> None:
        """Closes; a transaction still open is rolled back."""
        if self._closed:
            return
        for cursor in list(self._streams):
            cursor._stop(ProgrammingError("Cannot operate on a closed database."))
        if self._txn is not None and self._client is not None:
            try:
                await self._end(False, traced=False)
            except Error:
                pass
        self._closed = True

    async def _run_control(self, control: tuple):
        async with self._lock:
            if control[0] == "begin":
                if self._txn is not None or self.autocommit is False:
                    raise OperationalError("cannot start a transaction within a transaction")
                mode = _MODES[control[1]]
                await self._begin(mode, lazily=mode == "deferred")
            else:
                if self._txn is None:
                    raise OperationalError(f"cannot {control[0]} - no transaction is active")
                await self._end(control[0] == "commit", traced=False)
        return ("executed", 0, 0, 0)


class _CursorResult:
    """What ``execute`` returns: awaitable, and an async context manager."""

    def __init__(self, coro) -> None:
        self._coro = coro
        self._cursor: Optional["Cursor"] = None

    def __await__(self):
        return self._coro.__await__()

    async def __aenter__(self) -> "Cursor":
        self._cursor = await self._coro
        return self._cursor

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class Cursor:
    """An asyncio cursor: ``await`` its methods; ``async for`` its rows."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.arraysize = 1
        self.description = None
        self.rowcount = -1
        self.lastrowid = None
        self.row_factory = connection.row_factory
        self._rows: list = []
        self._next = 0
        self._closed = False

    def _check(self) -> None:
        """As the sync cursor's: a closed cursor, or one whose connection
        closed, says so rather than answer from what it still holds."""
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        if self.connection._closed:
            raise ProgrammingError("Cannot operate on a closed database.")

    async def __aenter__(self) -> "Cursor":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Any = ()) -> "Cursor":
        if self._closed or self.connection._closed:
            self._check()
        conn = self.connection
        control, _, _, savepoint = _classify(sql)
        if control is not None:
            _trace(conn, sql)
            result = await conn._run_control(control)
        else:
            def send(target):
                if conn._trace_callback is not None:
                    _trace(conn, sql, parameters)
                return _whole(target.run_async(_queue(), sql, _named(sql, parameters)))

            result = await conn._call(send, sql)
            await conn._after(savepoint)
        _load(self, result, sql)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Any) -> "Cursor":
        """As the sync driver's: one atomic batch, whose parameter sets are
        read as they are sent, a part at a time, on the loop's thread (so an
        iterator of any length is never held whole)."""
        self._check()
        if not _is_dml(sql):
            raise ProgrammingError("executemany() can only execute DML statements.")
        rows = iter(seq_of_parameters)
        first = next(rows, _END)
        self.description, self._rows, self._next = None, [], 0
        if first is _END:
            self.rowcount = 0
            return self
        conn = self.connection
        rows = _named_rows(sql, itertools.chain((first,), rows))
        if conn._trace_callback is not None:
            rows = _traced(conn, sql, rows)

        async def send(target):
            writer = await target.batch_writer_async(_queue())
            try:
                while writer.fill(sql, rows):
                    await writer.send_async(_queue())
                return await writer.finish_async(_queue())
            except asyncio.CancelledError:
                # None of the batch is applied; the give-up runs on its own.
                writer.abandon()
                raise
            except BaseException:
                # The parameters failed or a part failed: none of the batch
                # is applied, and its give-up is done before this returns,
                # so that a COMMIT sent next cannot overtake it.
                await _wait(writer.abandon_async(_queue()))
                raise

        # The cursor's lastrowid stays as it was, as sqlite3 leaves it after
        # executemany(); the connection's moves on.
        self.rowcount, lastrowid, total = await conn._call(send, sql)
        conn._total_changes += total
        if lastrowid:
            conn._lastrowid = lastrowid
        return self

    async def executescript(self, script: str) -> "Cursor":
        self._check()
        conn = self.connection
        if conn.autocommit == LEGACY_TRANSACTION_CONTROL and conn._txn is not None:
            await conn.commit()
        statements = [s for s in _split_script(script) if _control(s) is None]
        if statements:
            loop = asyncio.get_running_loop()
            target = await conn._target(None)
            for statement in statements:
                _trace(conn, statement)
            # A script is one batch; the native call is quick to queue, so it
            # runs in the default executor rather than holding the loop.
            try:
                lastrowid, total = await loop.run_in_executor(None, target.script, statements)
            except _nexusd.NativeError as e:
                err = _translate(e)
                conn._total_changes += err._total_changes
                raise err from None
            conn._total_changes += total
            if lastrowid:
                conn._lastrowid = lastrowid
        self.description, self._rows, self._next, self.rowcount = None, [], 0, -1
        return self

    def _make(self, values: tuple) -> Any:
        return values if self.row_factory is None else _make_row(self, values)

    async def _refill(self) -> bool:
        """Loads the next rows of a result still coming (a
        StreamingCursor's); False when there are none."""
        return False

    async def fetchone(self) -> Any:
        if self._closed or self.connection._closed:
            self._check()
        if self._next >= len(self._rows) and not await self._refill():
            return None
        row = self._rows[self._next]
        self._next += 1
        return row if self.row_factory is None else _make_row(self, row)

    async def fetchmany(self, size: Optional[int] = None) -> list:
        self._check()
        n = max(self.arraysize if size is None else size, 0)
        rows = self._rows[self._next:self._next + n]
        self._next += len(rows)
        while len(rows) < n and await self._refill():
            more = self._rows[self._next:self._next + n - len(rows)]
            self._next += len(more)
            rows += more
        return [self._make(r) for r in rows]

    async def fetchall(self) -> list:
        self._check()
        rows = self._rows[self._next:]
        self._next = len(self._rows)
        while await self._refill():
            rows += self._rows[self._next:]
            self._next = len(self._rows)
        return [self._make(r) for r in rows]

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self):
        while True:
            row = await self.fetchone()
            if row is None:
                return
            yield row

    async def close(self) -> None:
        self._closed = True
        self._rows = []

    async def setinputsizes(self, *sizes: Any) -> None:
        pass

    async def setoutputsize(self, size: Any, column: Any = None) -> None:
        pass


class StreamingCursor(_Stream, Cursor):
    """A server-side cursor, as the sync driver's ``nexusd.StreamingCursor``:
    a query's rows come a part (about 1 MiB) at a time as they are fetched.
    ``await db.cursor(nexusd.aio.StreamingCursor)``; SQLAlchemy's
    ``stream_results`` and ``yield_per`` use it. A cancelled fetch ends the
    read (the rows it was taking are lost): the next fetch says so."""

    async def execute(self, sql: str, parameters: Any = ()) -> "Cursor":
        self._check()
        self._stop()
        if not _streams_here(sql):
            return await super().execute(sql, parameters)
        conn = self.connection

        def send(target):
            if conn._trace_callback is not None:
                _trace(conn, sql, parameters)
            return target.stream_async(_queue(), sql, _named(sql, parameters))

        self._started(await conn._call(send, sql), conn._txn)
        part = await self._take()
        rows, lastrowid, total = part if part is not None else ([], 0, 0)
        _load(self, ("rows", self._stream_columns, rows, self._stream_decltypes, lastrowid,
                     total), sql)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Any) -> "Cursor":
        self._stop()
        return await super().executemany(sql, seq_of_parameters)

    async def executescript(self, script: str) -> "Cursor":
        self._stop()
        return await super().executescript(script)

    async def _take(self) -> Optional[tuple]:
        """The stream's next part, ``(rows, lastrowid, total_changes)``,
        or None; lets the stream go after its last."""
        if self._stream_pid != _current_pid():
            self._stream = None
            raise ProgrammingError(_STREAM_FORKED)
        try:
            part = await _wait(self._stream.next_async(_queue()))
        except asyncio.CancelledError:
            self._stop(OperationalError(
                "a cancelled fetch ended this cursor's read, and the rows it was taking are "
                "lost; execute the statement again"))
            raise
        except Error as e:
            conn = self.connection
            self._let_go()
            conn._total_changes += e._total_changes
            if self._stream_txn is conn._txn and isinstance(e, (TransactionExpired, Conflict)):
                conn._txn = None
            raise
        if part is None or not part[3]:
            self._let_go()
        return None if part is None else part[:3]

    async def _refill(self) -> bool:
        async with self.connection._lock:
            if self._next < len(self._rows):  # `_buffer_rest` ran meanwhile
                return True
            while self._stream is not None:
                part = await self._take()
                if part is None:
                    break
                self._rows, self._next = _part_rows(self, part), 0
                if self._rows:
                    return True
            if self._stream_error is not None:
                error, self._stream_error = self._stream_error, None
                raise error
            return False

    async def _buffer_rest(self) -> None:
        """Reads the rest of the rows into memory (the connection's lock is
        held); a failure is kept for the fetch that reaches it."""
        rest = self._rows[self._next:]
        try:
            while self._stream is not None:
                part = await self._take()
                if part is None:
                    break
                rest += _part_rows(self, part)
        except Error as e:
            self._stream_error = e
        self._rows, self._next = rest, 0

    async def close(self) -> None:
        self._stop()
        await super().close()


class _FromThread:
    """What sqlite3's dump code needs of a connection and its cursor, for a
    worker thread: each ``execute`` runs on ``db`` in ``loop`` and waits for
    its rows, as plain tuples whatever ``row_factory`` says."""

    row_factory = None

    def __init__(self, db: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._db = db
        self._loop = loop

    def cursor(self) -> "_FromThread":
        return self

    def execute(self, sql: str, parameters: Any = ()) -> "_Fetched":
        async def rows() -> list:
            cursor = Cursor(self._db)
            cursor.row_factory = None
            await cursor.execute(sql, parameters)
            return await cursor.fetchall()

        return _Fetched(asyncio.run_coroutine_threadsafe(rows(), self._loop).result())


class _Fetched(list):
    """A statement's rows, as the dump code reads them."""

    def fetchall(self) -> list:
        return list(self)


def connect(
    socket: Optional[str] = None,
    *,
    timeout: Optional[float] = None,
    autocommit: Any = LEGACY_TRANSACTION_CONTROL,
    isolation_level: Optional[str] = "",
    client_name: Optional[str] = None,
    detect_types: int = 0,
) -> Connection:
    """``db = await nexusd.aio.connect(...)``, or ``async with
    nexusd.aio.connect(...) as db``; arguments as ``nexusd.connect``."""
    return Connection(socket, timeout=timeout, autocommit=autocommit,
                      isolation_level=isolation_level, client_name=client_name,
                      detect_types=detect_types)
