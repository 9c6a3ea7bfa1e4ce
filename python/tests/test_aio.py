"""nexusd.aio: aiosqlite's shape, many tasks on one connection, and
cancellation."""

import asyncio

import pytest

import nexusd
import nexusd.aio


def run(coro):
    return asyncio.run(coro)


async def cancelled(coro, after):
    """Runs ``coro`` as a task, cancels it ``after`` seconds in, and checks
    that the cancellation came out."""
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(after)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_connect_execute_iterate_commit(daemon):
    async def main():
        async with nexusd.aio.connect(daemon.socket) as db:
            await db.execute("CREATE TABLE t(x INTEGER, s TEXT)")
            await db.commit()
            cur = await db.execute("INSERT INTO t VALUES (?, ?)", (1, "one"))
            assert cur.rowcount == 1 and cur.lastrowid == 1
            assert db.in_transaction
            await db.commit()
            await db.executemany("INSERT INTO t VALUES (?, ?)", [(2, "two"), (3, "three")])
            await db.rollback()
            rows = []
            async with db.execute("SELECT x, s FROM t ORDER BY x") as cursor:
                async for row in cursor:
                    rows.append(row)
            assert rows == [(1, "one")]
            db.row_factory = nexusd.Row
            row = await (await db.execute("SELECT s FROM t")).fetchone()
            assert row["s"] == "one"
            with pytest.raises(nexusd.OperationalError, match="no such table"):
                await db.execute("SELECT * FROM nope")
            assert (await (await db.execute("SELECT count(*) FROM t")).fetchone())[0] == 1

    run(main())


def test_aiosqlites_shortcuts_and_its_row(daemon):
    """execute_fetchall, execute_insert, iterdump and aiosqlite.Row (which
    is sqlite3.Row), as aiosqlite programs use them."""
    import sqlite3

    async def main():
        async with nexusd.aio.connect(daemon.socket) as db:
            await db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, s TEXT)")
            assert await db.execute_insert("INSERT INTO t(s) VALUES (?)", ("a",)) == (1,)
            db.row_factory = sqlite3.Row
            row = await db.execute_insert("INSERT INTO t(s) VALUES (?)", ("b",))
            assert row["last_insert_rowid()"] == 2 and row.keys() == ["last_insert_rowid()"]
            await db.commit()
            rows = await db.execute_fetchall("SELECT id, s FROM t ORDER BY id")
            assert [(r["id"], r["s"]) for r in rows] == [(1, "a"), (2, "b")]
            lines = [line async for line in db.iterdump()]
            assert "INSERT INTO \"t\" VALUES(2,'b');" in lines, lines
            assert lines[0] == "BEGIN TRANSACTION;" and lines[-1] == "COMMIT;"

    run(main())


def test_64_tasks_share_one_connection(daemon):
    async def main():
        db = await nexusd.aio.connect(daemon.socket, autocommit=True)
        await db.execute("CREATE TABLE t(task INTEGER, i INTEGER)")

        async def task(n):
            for i in range(10):
                await db.execute("INSERT INTO t VALUES (?, ?)", (n, i))
            cur = await db.execute("SELECT count(*) FROM t WHERE task = ?", (n,))
            return (await cur.fetchone())[0]

        counts = await asyncio.gather(*(task(n) for n in range(64)))
        assert counts == [10] * 64
        cur = await db.execute("SELECT count(*) FROM t")
        assert await cur.fetchone() == (640,)
        await db.close()

    run(main())


def test_cancellation_leaves_the_connection_usable_and_rolls_back(daemon):
    async def main():
        db = await nexusd.aio.connect(daemon.socket)
        await db.execute("CREATE TABLE t(x)")
        await db.commit()
        slow = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                "LIMIT 2000000) SELECT count(*) FROM c")
        # Outside a transaction: cancel a slow read, then go on.
        await cancelled(db.execute(slow), 0.01)
        assert await (await db.execute("SELECT 1")).fetchone() == (1,)
        # Inside one: its write, then a cancelled statement: rolled back.
        await db.execute("INSERT INTO t VALUES (1)")
        assert db.in_transaction
        await cancelled(db.execute(slow), 0.01)
        assert not db.in_transaction
        for _ in range(100):
            cur = await db.execute("SELECT count(*) FROM t")
            if await cur.fetchone() == (0,):
                break
            await asyncio.sleep(0.02)
        assert await (await db.execute("SELECT count(*) FROM t")).fetchone() == (0,)
        await db.execute("INSERT INTO t VALUES (2)")
        await db.commit()
        assert await (await db.execute("SELECT x FROM t")).fetchall() == [(2,)]
        await db.close()

    run(main())


def test_deferred_conflict_is_its_own_error(daemon):
    async def main():
        a = await nexusd.aio.connect(daemon.socket, autocommit=False)
        b = await nexusd.aio.connect(daemon.socket, autocommit=True)
        await b.execute("CREATE TABLE t(x)")
        await (await a.execute("SELECT count(*) FROM t")).fetchone()
        await b.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(nexusd.Conflict):
            await a.execute("INSERT INTO t VALUES (2)")
        assert not a.in_transaction
        await a.close()
        await b.close()

    run(main())


def test_the_drivers_own_begin_goes_with_the_first_statement(daemon):
    """As in the sync driver: the implicit BEGIN goes with the INSERT in one
    request; a transaction with no statement sends nothing; a failing first
    statement leaves the transaction open; and cancelling the first
    statement, with its BEGIN, rolls back whatever the daemon began."""
    from test_transactions import _transaction_requests

    async def main():
        db = await nexusd.aio.connect(daemon.socket)
        await db.execute("CREATE TABLE t(x INTEGER)")
        await db.commit()
        before = _transaction_requests(daemon)
        await db.execute("INSERT INTO t VALUES (1)")
        assert db.in_transaction
        await db.commit()
        assert _transaction_requests(daemon) - before == 2, "begin+insert, commit"

        pep249 = await nexusd.aio.connect(daemon.socket, autocommit=False)
        before = _transaction_requests(daemon)
        await pep249.commit()
        await pep249.rollback()
        assert _transaction_requests(daemon) == before, "nothing to send"
        await pep249.close()

        with pytest.raises(nexusd.OperationalError):
            await db.execute("INSERT INTO nope VALUES (1)")
        assert db.in_transaction, "open, as after BEGIN"
        await db.execute("INSERT INTO t VALUES (2)")
        await db.commit()

        slow = ("INSERT INTO t SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 "
                "UNION ALL SELECT x + 1 FROM c LIMIT 3000000) SELECT x FROM c)")
        await cancelled(db.execute(slow), 0.02)
        assert not db.in_transaction
        # The daemon's transaction is rolled back: the writer is free.
        other = await nexusd.aio.connect(daemon.socket, autocommit=True, timeout=10)
        await other.execute("INSERT INTO t VALUES (3)")
        rows = await (await other.execute("SELECT x FROM t ORDER BY x")).fetchall()
        assert rows == [(1,), (2,), (3,)]
        await other.close()
        await db.close()

    run(main())


def test_a_failed_executemany_is_undone_before_the_next_statement(make_daemon):
    """A generator that raises after parts of its batch went: their
    rollback is done before executemany raises, so the commit() sent right
    after cannot overtake it and commit them. Sixty times over, on small
    frames so that several parts go first (when the rollback ran on a task
    of its own, five runs of twenty in seven committed parts)."""
    d = make_daemon("--max-frame-bytes", "100000", "--max-result-bytes", "30000")

    def feed(prefix):
        for i in range(10_000):
            if i == 8_000:
                raise ValueError(f"feed failed at row {i}")
            yield (f"{prefix}{i}", b"\xee" * 40)

    async def main():
        async with nexusd.aio.connect(d.socket) as db:
            await db.execute("CREATE TABLE t(name TEXT PRIMARY KEY, b BLOB)")
            await db.commit()
            for n in range(60):
                await db.execute("INSERT INTO t VALUES (?, x'00')", (f"keep{n}",))
                with pytest.raises(ValueError, match="feed failed at row 8000"):
                    await db.executemany("INSERT INTO t VALUES (?, ?)", feed(f"r{n}-"))
                await db.commit()
            async with db.execute("SELECT count(*), sum(name LIKE 'keep%') FROM t") as c:
                assert await c.fetchone() == (60, 60)

    run(main())


def test_executemany_streams_its_parameters_and_applies_all_or_nothing(daemon):
    """As the sync driver's: a generator's sets go in parts as they are
    read (the parts sent so far are visible in the connection's own
    transaction and to nobody else), a generator that raises or an await
    that is cancelled applies nothing, and the connection goes on."""
    blob = b"\xcd" * 300
    part_rows = 16 * 1024 * 1024 // 2 // (len(blob) + 40)  # about one part
    rows = 3 * part_rows
    seen = {}

    def feed(prefix, raise_at=None, on_the_way=None):
        for i in range(rows):
            if i == 2 * part_rows and on_the_way is not None:
                on_the_way()
            if i == raise_at:
                raise ValueError(f"feed failed at row {i}")
            yield (f"{prefix}{i}", blob)

    async def main():
        other = nexusd.connect(daemon.socket, isolation_level=None)
        count = "SELECT count(*) FROM big WHERE name LIKE ?"
        async with nexusd.aio.connect(daemon.socket) as db:
            await db.execute(
                "CREATE TABLE big(id INTEGER PRIMARY KEY, name TEXT UNIQUE, b BLOB)")
            await db.commit()

            # In the implicit transaction: parts go in a savepoint.
            def look():
                seen["other"] = other.execute(count, ("g%",)).fetchone()[0]
                seen["open"] = db.in_transaction
            cur = await db.executemany("INSERT INTO big(name, b) VALUES (?, ?)",
                                       feed("g", on_the_way=look))
            assert cur.rowcount == rows
            assert seen == {"other": 0, "open": True}, seen
            async with db.execute(count, ("g%",)) as c:
                assert await c.fetchone() == (rows,), "visible in its own transaction"
            with pytest.raises(ValueError, match=f"feed failed at row {2 * part_rows + 3}"):
                await db.executemany("INSERT INTO big(name, b) VALUES (?, ?)",
                                     feed("h", raise_at=2 * part_rows + 3))
            assert db.in_transaction, "the transaction goes on, without the batch"
            await db.commit()
            assert other.execute(count, ("g%",)).fetchone() == (rows,)
            assert other.execute(count, ("h%",)).fetchone() == (0,)

            # In autocommit: a transaction of the batch's own; a cancelled
            # executemany applies none of it.
            db.isolation_level = None
            await db.executemany("INSERT INTO big(name, b) VALUES (?, ?)", feed("k"))
            assert other.execute(count, ("k%",)).fetchone() == (rows,)

            def slow_feed():
                for i in range(10 * rows):
                    yield (f"m{i}", blob)
            await cancelled(db.executemany("INSERT INTO big(name, b) VALUES (?, ?)",
                                           slow_feed()), 0.3)
            await db.execute("INSERT INTO big(name, b) VALUES ('after', x'00')")
        for _ in range(100):
            # The give-up runs on its own; the daemon takes a moment.
            if other.execute(count, ("m%",)).fetchone() == (0,):
                break
            await asyncio.sleep(0.05)
        assert other.execute(count, ("m%",)).fetchone() == (0,)
        assert other.execute(count, ("after",)).fetchone() == (1,)

    run(main())
