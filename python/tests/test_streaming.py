"""Server-side cursors: ``nexusd.StreamingCursor``, its asyncio twin, and
SQLAlchemy's ``stream_results`` and ``yield_per`` on them. The daemon sends
a result's parts (about 1 MiB each) only as the cursor takes them, so a
result of any size costs the program a part or two of it."""

import asyncio
import datetime
import gc
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import nexusd
import nexusd.aio
from conftest import nexusd_bin

#: Rows of BLOB_BYTES each in the table `big`: about 20 parts.
ROWS = 10_000
BLOB_BYTES = 2_000


def _fill(socket: str, rows: int = ROWS, blob: int = BLOB_BYTES) -> None:
    conn = nexusd.connect(socket)
    conn.execute("CREATE TABLE big(i INTEGER PRIMARY KEY, b BLOB)")
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO big SELECT i, randomblob(?) FROM n", (rows, blob))
    conn.commit()
    conn.close()


def _parts_sent(socket: str) -> int:
    """Parts of results the daemon has sent, by its metrics."""
    text = subprocess.run([nexusd_bin(), "ctl", "--socket", socket, "metrics"],
                          capture_output=True, text=True, check=True).stdout
    for line in text.splitlines():
        if line.startswith("nexusd_result_parts_total"):
            return int(float(line.split()[-1]))
    raise AssertionError(f"no nexusd_result_parts_total in the metrics:\n{text}")


@pytest.fixture
def big(daemon):
    _fill(daemon.socket)
    return daemon


def _check_rows(rows, first: int = 1, last: int = ROWS) -> None:
    ids = [r[0] for r in rows]
    assert ids == list(range(first, last + 1)), (ids[:3], ids[-3:], len(ids))
    assert all(len(r[1]) == BLOB_BYTES for r in rows)


def test_a_streaming_cursor_is_sent_parts_only_as_it_takes_them(big):
    """While the caller holds the first row, the daemon has sent no more
    than the head and the two parts it may send ahead; every row then
    comes, in order, through fetchone, fetchmany and fetchall, each
    crossing parts."""
    conn = nexusd.connect(big.socket, timeout=10)
    cursor = conn.cursor(nexusd.StreamingCursor)
    before = _parts_sent(big.socket)
    cursor.execute("SELECT i, b FROM big ORDER BY i")
    assert [d[0] for d in cursor.description] == ["i", "b"]
    assert cursor.rowcount == -1
    rows = [cursor.fetchone()]
    time.sleep(0.5)
    assert _parts_sent(big.socket) - before <= 3
    rows += cursor.fetchmany(1_500)  # more than a part's rows
    assert len(rows) == 1_501
    rows += list(itertools.islice(cursor, 1_000))
    rows += cursor.fetchall()
    _check_rows(rows)
    assert _parts_sent(big.socket) - before >= 15
    assert cursor.fetchone() is None and cursor.fetchall() == []


_MEASURE = textwrap.dedent("""
    import json, sys, nexusd

    def hwm_kib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])

    socket, kind = sys.argv[1], sys.argv[2]
    conn = nexusd.connect(socket, timeout=30)
    conn.execute("SELECT count(*) FROM big").fetchall()
    before = hwm_kib()
    cursor = conn.cursor(nexusd.StreamingCursor if kind == "stream" else None)
    cursor.execute("SELECT i, b FROM big ORDER BY i")
    count, total, last = 0, 0, 0
    for i, b in cursor:
        assert i == last + 1, (i, last)
        last, count, total = i, count + 1, total + len(b)
    print(json.dumps({"rows": count, "bytes": total, "grew_kib": hwm_kib() - before}))
""")


def test_a_result_of_100_mb_costs_a_streaming_cursor_a_few_mb(daemon):
    """The same 100 MB read, in a process of its own each time: a Cursor's
    peak RSS grows by the whole result, a StreamingCursor's by a few parts."""
    rows = 50_000
    _fill(daemon.socket, rows=rows, blob=2_000)
    grew = {}
    for kind in ("stream", "whole"):
        out = subprocess.run([sys.executable, "-c", _MEASURE, daemon.socket, kind],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got["rows"] == rows and got["bytes"] == rows * 2_000, got
        grew[kind] = got["grew_kib"] / 1024
    assert grew["whole"] > 100, grew
    assert grew["stream"] < 24, grew


def test_another_statement_in_the_transaction_reads_the_open_stream_first(big):
    """In a transaction the daemon serves the transaction's next request
    after the open read, so the driver reads the rest of the stream into
    the cursor first: nothing waits for ever, the cursor keeps every row,
    and the statement sees the transaction's own writes."""
    # autocommit=False: reads run in the transaction (a snapshot). The
    # timeout is short so that a wait on the stream fails fast.
    conn = nexusd.connect(big.socket, timeout=5, autocommit=False)
    cursor = conn.cursor(nexusd.StreamingCursor)
    cursor.execute("SELECT i, b FROM big ORDER BY i")
    rows = [cursor.fetchone()]
    started = time.monotonic()
    conn.execute("UPDATE big SET b = x'00' WHERE i = 1")
    assert time.monotonic() - started < 4
    assert conn.execute("SELECT b FROM big WHERE i = 1").fetchone() == (b"\x00",)
    rows += cursor.fetchall()
    _check_rows(rows)
    # A commit, too, reads an open stream first.
    cursor.execute("SELECT i, b FROM big ORDER BY i")
    first = cursor.fetchmany(10)
    conn.commit()
    rest = cursor.fetchall()
    assert [r[0] for r in first + rest] == list(range(1, ROWS + 1))
    assert rest[-1][0] == ROWS
    conn.close()

    # In a transaction that holds the writer, the read runs on the writer.
    conn = nexusd.connect(big.socket, timeout=5, isolation_level="IMMEDIATE")
    conn.execute("UPDATE big SET b = randomblob(?) WHERE i = 1", (BLOB_BYTES,))
    assert conn.in_transaction
    cursor = conn.cursor(nexusd.StreamingCursor)
    cursor.execute("SELECT i, b FROM big ORDER BY i")
    rows = cursor.fetchmany(3)
    conn.execute("DELETE FROM big WHERE i = ?", (ROWS,))
    conn.commit()
    rows += cursor.fetchall()
    _check_rows(rows)
    assert nexusd.connect(big.socket).execute("SELECT max(i) FROM big").fetchone() == (ROWS - 1,)


def test_a_stream_outside_a_transaction_leaves_the_connection_free(big):
    """Outside a transaction the read holds one of the daemon's readers,
    and the connection's other statements go on beside it: the stream
    stays paced while they run."""
    conn = nexusd.connect(big.socket, timeout=5)
    cursor = conn.cursor(nexusd.StreamingCursor)
    cursor.execute("SELECT i, b FROM big ORDER BY i")
    rows = [cursor.fetchone()]
    before = _parts_sent(big.socket)
    for i in range(20):
        conn.execute("INSERT INTO big VALUES (?, x'01')", (ROWS + 1 + i,))
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (ROWS + 1 + i,)
    assert _parts_sent(big.socket) - before <= 2
    # The stream reads its own snapshot: none of the new rows.
    rows += cursor.fetchall()
    _check_rows(rows)


def test_closing_a_streaming_cursor_frees_the_daemons_reader(make_daemon):
    """With one reader, an open stream holds it: closing the cursor,
    running another statement on it, or dropping it ends the read at once,
    so the next large read is served well within its time limit."""
    d = make_daemon("--readers", "1")
    _fill(d.socket)
    conn = nexusd.connect(d.socket, timeout=3)

    def large_read_works():
        started = time.monotonic()
        assert len(conn.execute("SELECT i, b FROM big").fetchall()) == ROWS
        return time.monotonic() - started < 2.5

    cursor = conn.cursor(nexusd.StreamingCursor)
    cursor.execute("SELECT i, b FROM big")
    cursor.fetchone()
    cursor.close()
    assert large_read_works()
    with pytest.raises(nexusd.ProgrammingError):
        cursor.fetchone()

    cursor = conn.cursor(nexusd.StreamingCursor)
    cursor.execute("SELECT i, b FROM big")
    cursor.fetchone()
    cursor.execute("SELECT 42")
    assert cursor.fetchall() == [(42,)]
    assert large_read_works()

    cursor = conn.cursor(nexusd.StreamingCursor)
    cursor.execute("SELECT i, b FROM big")
    cursor.fetchone()
    del cursor
    gc.collect()
    assert large_read_works()

    # Closing the connection ends its streams; a fetch past the rows in
    # hand says the connection is closed.
    other = nexusd.connect(d.socket, timeout=3)
    cursor = other.cursor(nexusd.StreamingCursor)
    cursor.execute("SELECT i, b FROM big")
    cursor.fetchone()
    other.close()
    assert large_read_works()
    with pytest.raises(nexusd.ProgrammingError, match="closed database"):
        cursor.fetchall()

    # Held past the time limit, the read fails, and says why.
    cursor = conn.cursor(nexusd.StreamingCursor)
    cursor.execute("SELECT i, b FROM big")
    time.sleep(3.5)
    with pytest.raises(nexusd.OperationalError):
        cursor.fetchall()
    assert large_read_works()


def test_a_streaming_cursor_behaves_as_a_cursor(big):
    """Small results, DML and DDL, row factories, and the connection's
    detect_types and text_factory on every part alike."""
    nexusd.register_converter("DAY", lambda b: datetime.date.fromisoformat(b.decode()))
    conn = nexusd.connect(big.socket, detect_types=nexusd.PARSE_DECLTYPES)
    cursor = conn.cursor(nexusd.StreamingCursor)
    cursor.execute("CREATE TABLE days(i INTEGER PRIMARY KEY, d DAY, note TEXT)")
    assert cursor.description is None
    cursor.execute("INSERT INTO days VALUES (1, '2026-11-25', 'x')")
    assert (cursor.rowcount, cursor.lastrowid) == (1, 1)
    cursor.execute(
        "INSERT INTO days WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n "
        "WHERE i < 30000) SELECT i, '2026-11-25', printf('%.100c', 'y') FROM n")
    assert cursor.rowcount == 29_999
    conn.commit()
    # 3 MB of rows: several parts, each converted.
    cursor.execute("SELECT i, d, note FROM days ORDER BY i")
    days = cursor.fetchall()
    assert len(days) == 30_000
    assert all(d == datetime.date(2026, 11, 25) for _, d, _ in days)
    conn.text_factory = bytes
    conn.row_factory = nexusd.Row
    cursor = conn.cursor(nexusd.StreamingCursor)
    cursor.execute("SELECT i, note FROM days WHERE i > ? ORDER BY i", (1,))
    rows = list(cursor)
    assert len(rows) == 29_999 and rows[-1]["i"] == 30_000
    assert rows[-1]["note"] == b"y" * 100
    cursor.execute("SELECT 1 WHERE 0")
    assert cursor.fetchone() is None
    with pytest.raises(nexusd.OperationalError, match="no such table"):
        cursor.execute("SELECT * FROM nowhere")
    with pytest.raises(nexusd.IntegrityError):
        cursor.execute("INSERT INTO days VALUES (1, NULL, NULL)")


def test_a_forked_child_cannot_read_its_parents_stream(big):
    """The parent's read belongs to the parent's connection: the child's
    fetch says so, and the parent reads on unaffected."""
    conn = nexusd.connect(big.socket, timeout=10)
    cursor = conn.cursor(nexusd.StreamingCursor)
    cursor.execute("SELECT i, b FROM big ORDER BY i")
    rows = [cursor.fetchone()]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            cursor.fetchall()
        except nexusd.ProgrammingError as e:
            code = 0 if "forked" in str(e) else 2
        # The child's own connection works.
        if nexusd.connect(big.socket).execute("SELECT count(*) FROM big").fetchone() != (ROWS,):
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    rows += cursor.fetchall()
    _check_rows(rows)


def test_aio_streaming_cursor(big):
    """nexusd.aio's StreamingCursor: paced the same way; a cancelled fetch
    ends the read and the next fetch says so, the connection going on; in
    a transaction another statement reads the stream first."""

    async def main():
        async with nexusd.aio.connect(big.socket, timeout=5) as db:
            cursor = await db.cursor(nexusd.aio.StreamingCursor)
            before = _parts_sent(big.socket)
            await cursor.execute("SELECT i, b FROM big ORDER BY i")
            rows = [await cursor.fetchone()]
            await asyncio.sleep(0.5)
            assert _parts_sent(big.socket) - before <= 3
            rows += await cursor.fetchmany(1_500)
            rows += [row async for row in cursor]
            _check_rows(rows)

            await cursor.execute("SELECT i, b FROM big ORDER BY i")
            fetch = asyncio.ensure_future(cursor.fetchmany(5_000))
            await asyncio.sleep(0)
            fetch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fetch
            with pytest.raises(nexusd.OperationalError, match="cancelled fetch"):
                await cursor.fetchall()
            await cursor.execute("SELECT i, b FROM big ORDER BY i")
            _check_rows(await cursor.fetchall())
            await cursor.close()

        async with nexusd.aio.connect(big.socket, timeout=5, autocommit=False) as db:
            cursor = await db.cursor(nexusd.aio.StreamingCursor)
            await cursor.execute("SELECT i, b FROM big ORDER BY i")
            rows = [await cursor.fetchone()]
            await db.execute("UPDATE big SET b = b WHERE i = 2")
            await db.commit()
            rows += await cursor.fetchall()
            _check_rows(rows)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_cursor_reads_a_result_in_parts_as_they_come(make_daemon):
    """A plain Cursor reads a result in parts to its end before execute
    returns (each part made rows as it comes): with one reader, the next
    large read finds it free, sync and asyncio alike. An asyncio execute
    cancelled half way through the parts ends the read, rolls its
    transaction back, and leaves the connection usable."""
    d = make_daemon("--readers", "1")
    _fill(d.socket)
    sql = "SELECT i, b FROM big ORDER BY i"
    conn = nexusd.connect(d.socket, timeout=3)
    for _ in range(2):
        cursor = conn.execute(sql)
        assert cursor.description[0][0] == "i" and cursor.rowcount == -1
        _check_rows(cursor.fetchall())

    async def main():
        async with nexusd.aio.connect(d.socket, timeout=3, autocommit=False) as db:
            for _ in range(2):
                _check_rows(await (await db.execute(sql)).fetchall())
            await db.execute("INSERT INTO big(i, b) VALUES (-1, x'00')")

            # Keep the loop busy between its steps, so the parts come
            # slowly enough to cancel the read half way.
            stop = False

            async def hog():
                while not stop:
                    time.sleep(0.02)
                    await asyncio.sleep(0)

            hogging = asyncio.ensure_future(hog())
            before = _parts_sent(d.socket)
            reading = asyncio.ensure_future(db.execute(sql))
            while _parts_sent(d.socket) - before < 2 and not reading.done():
                await asyncio.sleep(0.01)
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
            stop = True
            await hogging
            sent = _parts_sent(d.socket) - before
            assert 2 <= sent < 15, sent

            # The transaction went with the cancelled read; the connection
            # goes on, and the one reader is free again.
            assert not db.in_transaction
            assert await (await db.execute(
                "SELECT count(*) FROM big WHERE i < 0")).fetchall() == [(0,)]
            _check_rows(await (await db.execute(sql)).fetchall())
            await db.rollback()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_threads_and_tasks_sharing_a_socket_mix_large_reads_with_small_ones(big):
    """Eight threads, each with a connection of its own on the process's
    one socket, and sixteen asyncio tasks on one connection, each mixing
    large reads (about 20 parts, taken as they come), point reads, inserts
    and transactions: every answer is its own and whole, nothing hangs."""
    import threading

    errors = []

    def worker(t):
        try:
            conn = nexusd.connect(big.socket, timeout=20, isolation_level=None)
            for n in range(6):
                _check_rows(conn.execute("SELECT i, b FROM big ORDER BY i").fetchall())
                i = 1 + (t * 7 + n) % ROWS
                assert conn.execute("SELECT i FROM big WHERE i = ?", (i,)).fetchone() == (i,)
                conn.execute("INSERT INTO marks(who, n) VALUES (?, ?)", (f"t{t}", n))
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    _check_rows(conn.execute("SELECT i, b FROM big ORDER BY i").fetchall())
                    conn.execute("INSERT INTO marks(who, n) VALUES (?, ?)", (f"t{t}", -n))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((t, repr(e)))

    async def tasks():
        async with nexusd.aio.connect(big.socket, timeout=20) as db:
            async def one(k):
                for n in range(3):
                    async with db.execute("SELECT i, b FROM big ORDER BY i") as c:
                        _check_rows(await c.fetchall())
                    async with db.execute("SELECT i FROM big WHERE i = ?", (k + 1,)) as c:
                        assert await c.fetchone() == (k + 1,)
            await asyncio.gather(*(one(k) for k in range(16)))

    setup = nexusd.connect(big.socket, isolation_level=None)
    setup.execute("CREATE TABLE marks(who TEXT, n INTEGER)")
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    asyncio.run(asyncio.wait_for(tasks(), 120))
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a thread hung"
    assert errors == []
    assert setup.execute("SELECT count(*) FROM marks").fetchone() == (8 * 6 * 2,)


def test_a_daemon_killed_under_a_read_in_parts_or_a_batch_sent_ahead(daemon):
    """kill -9 of the daemon while a plain Cursor takes a result's parts,
    or while executemany has a part out ahead of the one it fills: each
    call fails at once: the batch saying that nothing in it was applied
    (its transaction had not committed, whether the kill came while a part
    was being written or answered), which holds, and a read whose parts had
    come saying the same of it; the same connection works once the daemon
    is back."""
    import threading

    _fill(daemon.socket, rows=50_000, blob=2_000)
    conn = nexusd.connect(daemon.socket, timeout=10, isolation_level=None)

    def huge_batch():
        for i in range(2_000_000):
            yield (ROWS * 10 + i, b"x" * 2_000)

    def kill_after_a_part():
        before = _parts_sent(daemon.socket)
        while _parts_sent(daemon.socket) == before:
            time.sleep(0.005)
        daemon.stop()

    def read():
        # Killed once a part is sent: lost before the first part arrives,
        # the read cannot tell a read from a write yet (OutcomeUnknown);
        # after, it says nothing of it was applied.
        with pytest.raises(nexusd.OperationalError,
                           match="outcome is unknown|nothing of it was applied"):
            conn.execute("SELECT i, b FROM big").fetchall()

    def write():
        with pytest.raises(nexusd.OperationalError, match="nothing in it was applied") as e:
            conn.executemany("INSERT INTO big(i, b) VALUES (?, ?)", huge_batch())
        assert not isinstance(e.value, nexusd.OutcomeUnknown), e.value

    def stream():
        # Parts in hand, then the kill: a result in parts is a read's, or
        # a transaction's, which dies with the connection.
        cursor = conn.cursor(nexusd.StreamingCursor)
        cursor.execute("SELECT i, b FROM big")
        assert len(cursor.fetchmany(1_000)) == 1_000
        daemon.stop()
        with pytest.raises(nexusd.OperationalError, match="nothing of it was applied") as e:
            cursor.fetchall()
        assert not isinstance(e.value, nexusd.OutcomeUnknown), e.value

    calls = [(read, kill_after_a_part), (write, lambda: (time.sleep(0.3), daemon.stop())),
             (stream, lambda: None)]
    for call, kill in calls:
        killer = threading.Thread(target=kill)
        killer.start()
        started = time.monotonic()
        call()
        assert time.monotonic() - started < 5
        killer.join()
        daemon.start()
        assert conn.execute("SELECT count(*), max(i) FROM big").fetchone() == (50_000, 50_000)


def test_sqlalchemy_stream_results_and_yield_per(big):
    """Core's stream_results and the ORM's yield_per take the rows a part
    at a time, in both dialects; a query the session runs between
    partitions, in the same transaction, works."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from sqlalchemy import Column, Integer, LargeBinary, create_engine, select, text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.orm import DeclarativeBase, Session

    class Base(DeclarativeBase):
        pass

    class Big(Base):
        __tablename__ = "big"
        i = Column(Integer, primary_key=True)
        b = Column(LargeBinary)

    url = f"sqlite+nexusd://?socket={big.socket}&timeout=5"
    engine = create_engine(url)
    with engine.connect() as conn:
        before = _parts_sent(big.socket)
        result = conn.execution_options(stream_results=True).execute(
            text("SELECT i, b FROM big ORDER BY i"))
        assert isinstance(result.cursor, nexusd.StreamingCursor)
        rows = [result.fetchone()]
        time.sleep(0.5)
        assert _parts_sent(big.socket) - before <= 3
        rows += list(result)
        _check_rows(rows)

    with Session(engine) as session:
        seen = []
        for partition in session.execute(
                select(Big).order_by(Big.i).execution_options(yield_per=700)).scalars() \
                .partitions():
            seen += [(o.i, o.b) for o in partition]
            # Another statement in the session's transaction, mid-stream.
            assert session.execute(select(Big.i).where(Big.i == 1)).scalar_one() == 1
        _check_rows(seen)
    engine.dispose()

    async def with_asyncio():
        engine = create_async_engine(f"sqlite+nexusd_async://?socket={big.socket}&timeout=5")
        async with engine.connect() as conn:
            before = _parts_sent(big.socket)
            result = await conn.stream(text("SELECT i, b FROM big ORDER BY i"))
            rows = [await result.fetchone()]
            await asyncio.sleep(0.5)
            assert _parts_sent(big.socket) - before <= 3
            rows += [row async for row in result]
            _check_rows(rows)
        await engine.dispose()

    asyncio.run(asyncio.wait_for(with_asyncio(), 60))
