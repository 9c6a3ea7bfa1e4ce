"""What a sqlite3 connection has besides statements: the trace callback,
backup into a sqlite3 database, and, for what cannot work against a daemon
in another process, an error that says why and what to do instead."""

import asyncio
import sqlite3
import subprocess
import sys
import threading

import pytest

import nexusd
import nexusd.aio


def program(conn):
    """The same statements for sqlite3 and nexusd: implicit and explicit
    transactions, both parameter styles, every value type."""
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x, y)")
    conn.execute("INSERT INTO t(x, y) VALUES (?, ?)", (1, "it's"))
    conn.executemany("INSERT INTO t(x, y) VALUES (:a, :b)",
                     [{"a": 2.5, "b": b"\x01\xff"}, {"a": None, "b": "z"}])
    conn.commit()
    conn.execute("SELECT * FROM t WHERE x = ?2 AND y = ?1", ("a", -7)).fetchall()
    conn.execute("UPDATE t SET y = 'q?' WHERE x = ? -- not :this\n", (1,))
    conn.rollback()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM t WHERE id = $id", {"id": 3})
    conn.execute("COMMIT")


def test_the_trace_callback_sees_what_sqlite3s_sees(daemon, tmp_path):
    theirs, ours = [], []
    plain = sqlite3.connect(str(tmp_path / "plain.db"))
    plain.set_trace_callback(theirs.append)
    program(plain)
    conn = nexusd.connect(daemon.socket)
    conn.set_trace_callback(ours.append)
    program(conn)
    assert ours == theirs
    assert "INSERT INTO t(x, y) VALUES (2.5, x'01ff')" in ours
    assert "BEGIN " in ours and "COMMIT" in ours and "ROLLBACK" in ours


def test_the_trace_callback_is_turned_off_ignored_when_it_raises_and_checked(daemon,
                                                                              monkeypatch):
    conn = nexusd.connect(daemon.socket, isolation_level=None)
    seen = []
    conn.set_trace_callback(seen.append)
    conn.execute("CREATE TABLE t(x)")
    conn.set_trace_callback(None)
    conn.execute("INSERT INTO t VALUES (1)")
    assert seen == ["CREATE TABLE t(x)"]

    def broken(sql):
        raise ValueError("the callback's own bug")

    reported = []
    monkeypatch.setattr("sys.unraisablehook", reported.append)
    conn.set_trace_callback(broken)
    conn.execute("INSERT INTO t VALUES (2)")  # runs regardless, as in sqlite3
    assert reported == []
    nexusd.enable_callback_tracebacks(True)
    try:
        conn.execute("INSERT INTO t VALUES (3)")
    finally:
        nexusd.enable_callback_tracebacks(False)
    assert [str(r.exc_value) for r in reported] == ["the callback's own bug"]
    assert reported[0].object is broken
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)
    with pytest.raises(TypeError, match="callable or None, not int"):
        conn.set_trace_callback(5)


def test_executescript_traces_each_statement_it_sends(daemon):
    conn = nexusd.connect(daemon.socket)
    seen = []
    conn.set_trace_callback(seen.append)
    conn.executescript("CREATE TABLE a(x); INSERT INTO a VALUES ('a;b');")
    assert [s.strip().rstrip(";") for s in seen] == [
        "CREATE TABLE a(x)", "INSERT INTO a VALUES ('a;b')"]


def fill_source(conn):
    conn.executescript("""
        CREATE TABLE item(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, data BLOB);
        CREATE INDEX item_data ON item(data);
        CREATE VIEW names AS SELECT name FROM item;
        CREATE TABLE log(item INTEGER REFERENCES item(id) ON DELETE CASCADE, what TEXT);
        CREATE TRIGGER logged AFTER INSERT ON item BEGIN
            INSERT INTO log VALUES (new.id, 'added');
        END;
    """)
    conn.executemany("INSERT INTO item(name, data) VALUES (?, ?)",
                     [("a", b"\x00\x01"), ("b", None), ("it's", 3.25)])
    conn.execute("DELETE FROM item WHERE name = 'b'")
    conn.execute("PRAGMA user_version = 12")
    conn.commit()


def contents(conn):
    return {
        "schema": sorted(conn.execute(
            "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'")
            .fetchall()),
        "item": conn.execute("SELECT * FROM item ORDER BY id").fetchall(),
        "log": conn.execute("SELECT * FROM log ORDER BY rowid").fetchall(),
        "seq": conn.execute("SELECT * FROM sqlite_sequence").fetchall(),
        "user_version": conn.execute("PRAGMA user_version").fetchone(),
    }


def test_backup_copies_into_a_sqlite3_database_replacing_what_it_held(daemon, tmp_path):
    conn = nexusd.connect(daemon.socket)
    fill_source(conn)
    target = sqlite3.connect(str(tmp_path / "copy.db"))
    target.execute("CREATE TABLE stale(x)")
    target.execute("INSERT INTO stale VALUES (1)")
    target.commit()
    calls = []
    conn.backup(target, pages=1, progress=lambda *args: calls.append(args), sleep=0)
    assert contents(target) == contents(conn)
    assert target.execute("SELECT name FROM sqlite_schema WHERE name = 'stale'").fetchall() == []
    # As sqlite3 calls it: (status, pages left, pages in all), a page a step.
    total = target.execute("PRAGMA page_count").fetchone()[0]
    assert len(calls) == total > 1
    assert [left for _, left, _ in calls] == list(range(total - 1, -1, -1))
    assert {all_pages for _, _, all_pages in calls} == {total}
    # The copy is a working database: the next id and the trigger carry on.
    target.execute("INSERT INTO item(name) VALUES ('c')")
    assert target.execute("SELECT id FROM item WHERE name = 'c'").fetchone() == (4,)
    assert target.execute("SELECT count(*) FROM log").fetchone() == (3,)
    assert target.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_backup_is_of_one_moment_while_writes_go_on(daemon):
    """Each write adds a row to both tables in one transaction; a copy read
    table by table, without one snapshot, would see more in the second."""
    conn = nexusd.connect(daemon.socket)
    conn.executescript("CREATE TABLE a(x); CREATE TABLE b(x);")
    stop = threading.Event()

    def write():
        w = nexusd.connect(daemon.socket)
        i = 0
        while not stop.is_set():
            with w:
                w.execute("INSERT INTO a VALUES (?)", (i,))
                w.execute("INSERT INTO b VALUES (?)", (i,))
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(5):
            target = sqlite3.connect(":memory:")
            conn.backup(target)
            (a,), (b,) = (target.execute(f"SELECT count(*) FROM {t}").fetchone()
                          for t in ("a", "b"))
            assert a == b
    finally:
        stop.set()
        writer.join()
    assert a > 0


def test_backup_refuses_what_sqlite3_refuses(daemon):
    conn = nexusd.connect(daemon.socket)
    with pytest.raises(TypeError, match="must be a sqlite3.Connection"):
        conn.backup(nexusd.connect(daemon.socket))
    target = sqlite3.connect(":memory:")
    with pytest.raises(nexusd.OperationalError, match="unknown database temp"):
        conn.backup(target, name="temp")
    target.execute("CREATE TABLE x(a)")
    target.execute("INSERT INTO x VALUES (1)")
    assert target.in_transaction
    with pytest.raises(sqlite3.OperationalError, match="target is in transaction"):
        conn.backup(target)
    target.rollback()


@pytest.mark.parametrize("name", sorted(nexusd._NOT_HERE))
def test_what_cannot_run_in_the_daemon_says_why(daemon, name):
    conn = nexusd.connect(daemon.socket)
    with pytest.raises(sqlite3.NotSupportedError) as raised:
        getattr(conn, name)("f", 1, len)
    assert isinstance(raised.value, nexusd.NotSupportedError)
    message = str(raised.value)
    assert message.startswith(f"{name}() is not supported by nexusd: ")
    assert len(message) > len(name) + 60, "the reason and what to do instead"


def test_total_changes_is_each_connections_own(daemon):
    """Connections of one process share the daemon's client (and so SQL's
    total_changes()), but each counts its own statements' changes."""
    a = nexusd.connect(daemon.socket, isolation_level=None)
    b = nexusd.connect(daemon.socket)
    assert (a.total_changes, b.total_changes) == (0, 0)
    a.execute("CREATE TABLE t(x)")
    a.execute("INSERT INTO t VALUES (1), (2), (3)")
    b.executemany("INSERT INTO t VALUES (?)", [(4,), (5,)])
    b.rollback()  # counted all the same, as sqlite3 counts them
    b.executescript("UPDATE t SET x = x + 1; DELETE FROM t WHERE x > 3")
    assert (a.total_changes, b.total_changes) == (3, 6)
    assert a.execute("SELECT total_changes()").fetchone() == (9,)
    b.close()
    with pytest.raises(nexusd.ProgrammingError, match="closed database"):
        b.total_changes
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        a.nonsense


def test_a_closed_cursor_or_connection_gives_no_rows_as_sqlite3(daemon):
    """sqlite3 answers a fetch on a closed cursor, or on a cursor whose
    connection closed, with a ProgrammingError rather than the rows it still
    held; so do nexusd's cursors, sync and asyncio (whose closed cursor
    would otherwise look empty)."""
    sql = "SELECT 1 UNION ALL SELECT 2"
    fetches = [lambda c: c.fetchone(), lambda c: c.fetchmany(1), lambda c: c.fetchall(),
               lambda c: list(c), lambda c: c.execute("SELECT 3")]

    def outcomes(connect):
        got = []
        for fetch in fetches:
            for close_the_connection in (False, True):
                conn = connect()
                cursor = conn.execute(sql)
                (conn if close_the_connection else cursor).close()
                try:
                    fetch(cursor)
                    got.append("rows")
                except sqlite3.ProgrammingError as e:
                    got.append(str(e))
        return got

    theirs = outcomes(lambda: sqlite3.connect(":memory:"))
    assert theirs.count("Cannot operate on a closed database.") == len(fetches)
    assert outcomes(lambda: nexusd.connect(daemon.socket)) == theirs

    async def through_aio():
        got = []
        for fetch in ("fetchone", "fetchmany", "fetchall", "execute"):
            for close_the_connection in (False, True):
                db = await nexusd.aio.connect(daemon.socket)
                cursor = await db.execute(sql)
                await (db if close_the_connection else cursor).close()
                try:
                    await (cursor.execute("SELECT 3") if fetch == "execute"
                           else getattr(cursor, fetch)())
                    got.append("rows")
                except nexusd.ProgrammingError as e:
                    got.append(str(e))
        return got

    assert asyncio.run(through_aio()) == theirs[:6] + theirs[-2:]


def test_module_helpers_are_sqlite3s():
    assert nexusd.complete_statement("SELECT 1;")
    assert not nexusd.complete_statement("SELECT 'a;")
    assert nexusd.adapt is sqlite3.adapt


def test_asyncio_connections_trace_back_up_and_refuse_alike(daemon):
    async def main():
        seen = []
        async with nexusd.aio.connect(daemon.socket) as db:
            await db.set_trace_callback(seen.append)
            await db.execute("CREATE TABLE t(x)")
            await db.execute("INSERT INTO t VALUES (?)", ("o'k",))
            await db.executemany("INSERT INTO t VALUES (?)", [(1,), (None,)])
            await db.commit()
            # Made in this thread and written from a worker, as aiosqlite allows.
            target = sqlite3.connect(":memory:")
            await db.backup(target)
            with pytest.raises(nexusd.NotSupportedError, match="create_function"):
                await db.create_function("f", 1, len)
            assert db.total_changes == 3
        return seen, target

    seen, target = asyncio.run(main())
    assert seen == ["CREATE TABLE t(x)", "BEGIN ", "INSERT INTO t VALUES ('o''k')",
                    "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (NULL)", "COMMIT"]
    assert target.execute("SELECT x FROM t ORDER BY rowid").fetchall() == [
        ("o'k",), (1,), (None,)]


def test_named_parameters_are_looked_up_as_sqlite3_looks_them_up(daemon, tmp_path):
    """Every prefix, a name used twice, keys the statement does not use
    (ignored), and a missing one (refused, with sqlite3's message)."""
    sql = "SELECT :a, @b, $c, :a"
    values = {"a": 1, "b": "two", "c": None, "unused": 4}
    plain = sqlite3.connect(str(tmp_path / "plain.db"))
    conn = nexusd.connect(daemon.socket)
    assert conn.execute(sql, values).fetchall() == plain.execute(sql, values).fetchall()
    assert conn.execute("SELECT :a", {":a": 5}).fetchone() == (5,)
    for c in (plain, conn):
        with pytest.raises(sqlite3.ProgrammingError,
                           match="did not supply a value for binding parameter :zz"):
            c.execute("SELECT :a, :zz", {"a": 1})
    conn.execute("CREATE TABLE t(x, y)")
    conn.executemany("INSERT INTO t VALUES ($x, @y)", [{"x": 1, "y": 2, "z": 3},
                                                       {"x": 4, "y": 5}])
    assert conn.execute("SELECT * FROM t").fetchall() == [(1, 2), (4, 5)]

    async def main():
        async with nexusd.aio.connect(daemon.socket) as db:
            cursor = await db.execute("SELECT $c, @b", values)
            return await cursor.fetchall()

    assert asyncio.run(main()) == [(None, "two")]


def test_names_are_read_where_sqlites_tokenizer_reads_them(daemon, tmp_path):
    """A $ inside an identifier starts no parameter; #name and TCL's
    $a::b(c) are names. sqlite3 and nexusd answer alike, traces included."""
    cases = [
        ("SELECT a$b, b$ FROM t WHERE a$b = :v", {"v": 1}),
        ("SELECT $a::b(c), #x, @y::z, :y", {"a::b(c)": 1, "x": 2, "y::z": 3, "y": 4}),
        ("SELECT $t(1,2) + 0 AS one", {"t(1,2)": 1}),
        ("SELECT 'a$b', \"é$\" FROM t WHERE é$ = :é", {"é": 2}),
    ]
    plain = sqlite3.connect(str(tmp_path / "plain.db"))
    conn = nexusd.connect(daemon.socket)
    for c in (plain, conn):
        c.execute('CREATE TABLE t(a$b, b$, "é$")')
        c.execute("INSERT INTO t VALUES (1, 'x', 2)")
        c.commit()
    plain_trace, ours_trace = [], []
    plain.set_trace_callback(plain_trace.append)
    conn.set_trace_callback(ours_trace.append)
    for sql, values in cases:
        assert conn.execute(sql, values).fetchall() == plain.execute(sql, values).fetchall(), sql
    assert ours_trace == plain_trace
    for c in (plain, conn):
        with pytest.raises(sqlite3.Error, match=r"unrecognized token: \"\$a::b\(c\""):
            c.execute("SELECT $a::b(c d)", {"a::b(c": 1})


def test_asyncio_iterdump_comes_in_chunks_and_matches_the_blocking_dump(daemon, monkeypatch):
    monkeypatch.setattr(nexusd.aio, "_DUMP_CHUNK", 7)
    conn = nexusd.connect(daemon.socket)
    conn.execute("CREATE TABLE t(x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(30)])
    conn.commit()

    async def main():
        async with nexusd.aio.connect(daemon.socket) as db:
            return [line async for line in db.iterdump()]

    lines = asyncio.run(main())
    assert lines == list(conn.iterdump())
    assert len(lines) > 3 * 7


def test_asyncio_iterdump_reads_through_its_own_connection_as_aiosqlite_does(daemon):
    """aiosqlite dumps on the connection itself: an open transaction's
    writes are in the dump, and the connection's row_factory is not."""
    conn = nexusd.connect(daemon.socket)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES ('committed')")
    conn.commit()

    async def main():
        async with nexusd.aio.connect(daemon.socket) as db:
            db.row_factory = sqlite3.Row
            await db.execute("INSERT INTO t VALUES ('pending')")
            assert db.in_transaction
            lines = [line async for line in db.iterdump()]
            assert db.in_transaction, "the dump ends nothing"
            await db.rollback()
            after = [line async for line in db.iterdump()]
            return lines, after

    lines, after = asyncio.run(main())
    assert "INSERT INTO \"t\" VALUES('committed');" in lines, lines
    assert "INSERT INTO \"t\" VALUES('pending');" in lines, lines
    assert "INSERT INTO \"t\" VALUES('pending');" not in after, after
    assert after == list(conn.iterdump())


def cursor_answers(conn):
    """What a program reads off cursors, for sqlite3 and nexusd alike:
    counts, ids, descriptions, and text that holds no statement."""
    got = []
    conn.execute("CREATE TABLE c(id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INT)")
    conn.commit()
    for sql in ("", "   ", ";", "-- only a comment", "/* only a comment */"):
        cur = conn.execute(sql)
        got.append((sql, cur.description, cur.fetchall(), cur.rowcount))
    cur = conn.cursor()
    cur.execute("INSERT INTO c(name, n) VALUES ('a', 1)")
    got.append(("insert", cur.rowcount, cur.lastrowid))
    cur.executemany("INSERT INTO c(name, n) VALUES (?, ?)", [("b", 2), ("c", 3)])
    got.append(("executemany keeps lastrowid", cur.rowcount, cur.lastrowid))
    got.append(("fresh cursor", conn.executemany(
        "INSERT INTO c(name) VALUES (?)", [("d",)]).lastrowid))
    cur = conn.execute("UPDATE c SET n = n + 1 WHERE n IS NOT NULL RETURNING id")
    got.append(("update returning", sorted(cur.fetchall()), cur.rowcount))
    cur = conn.execute("DELETE FROM c WHERE name = 'zz' RETURNING id")
    got.append(("delete nothing returning", cur.fetchall(), cur.rowcount))
    cur = conn.execute("SELECT count(*) FROM c")
    got.append(("select", cur.fetchall(), cur.rowcount))
    conn.commit()
    return got


def test_cursors_answer_as_sqlite3s_do(daemon, tmp_path):
    """Blank text runs as nothing (not SQLite's "bad parameter or other API
    misuse"), executemany() leaves lastrowid alone, and a DML statement
    with RETURNING counts its rows in rowcount once they are read."""
    plain = sqlite3.connect(str(tmp_path / "plain.db"))
    assert cursor_answers(nexusd.connect(daemon.socket)) == cursor_answers(plain)
    with pytest.raises(nexusd.ProgrammingError, match="holds no statement"):
        nexusd.connect(daemon.socket).execute("-- nothing", (1,))

    async def through_asyncio():
        async with nexusd.aio.connect(daemon.socket) as db:
            cur = await db.execute("-- nothing")
            assert (cur.description, await cur.fetchall()) == (None, [])
            cur = await db.execute("INSERT INTO c(name) VALUES ('aio')")
            first = cur.lastrowid
            await cur.executemany("INSERT INTO c(name) VALUES (?)", [("aio2",), ("aio3",)])
            assert (cur.rowcount, cur.lastrowid) == (2, first)
            cur = await db.execute("DELETE FROM c WHERE name LIKE 'aio%' RETURNING id")
            assert (len(await cur.fetchall()), cur.rowcount) == (3, 3)
            await db.commit()

    asyncio.run(through_asyncio())


def savepoints_as_transactions(conn):
    """SAVEPOINT outside a transaction begins one, and RELEASE of that
    savepoint commits it, as in SQLite; inner savepoints nest inside."""
    got = []
    conn.execute("CREATE TABLE s(x)")
    conn.commit()
    conn.execute("SAVEPOINT outer_sp")
    got.append(conn.in_transaction)
    conn.execute("INSERT INTO s VALUES (1)")
    conn.execute("SAVEPOINT [inner]")
    conn.execute("INSERT INTO s VALUES (2)")
    conn.execute("ROLLBACK TO SAVEPOINT inner")
    conn.execute("RELEASE inner")
    got.append(conn.in_transaction)
    conn.execute("RELEASE SAVEPOINT OUTER_SP")
    got.append(conn.in_transaction)
    conn.execute("SAVEPOINT a")
    conn.execute("INSERT INTO s VALUES (3)")
    conn.execute("ROLLBACK TO a")
    got.append(conn.in_transaction)
    conn.execute("INSERT INTO s VALUES (4)")
    conn.rollback()
    got.append(conn.in_transaction)
    with pytest.raises(sqlite3.OperationalError, match="no such savepoint"):
        conn.execute("RELEASE nope")
    got.append(conn.execute("SELECT x FROM s ORDER BY x").fetchall())
    return got


@pytest.mark.parametrize("mode", [{}, {"isolation_level": None}])
def test_a_savepoint_begins_a_transaction_as_in_sqlite3(daemon, tmp_path, mode):
    plain = sqlite3.connect(str(tmp_path / "plain.db"), **mode)
    ours = nexusd.connect(daemon.socket, **mode)
    theirs = savepoints_as_transactions(plain)
    assert theirs == [True, True, False, True, False, [(1,)]]
    assert savepoints_as_transactions(ours) == theirs
    other = nexusd.connect(daemon.socket)
    assert other.execute("SELECT x FROM s").fetchall() == [(1,)], "RELEASE committed"


def test_asyncio_savepoint_begins_and_release_commits(daemon):
    async def main():
        async with nexusd.aio.connect(daemon.socket, isolation_level=None) as db:
            await db.execute("CREATE TABLE a(x)")
            await db.execute("SAVEPOINT sp")
            await db.execute("INSERT INTO a VALUES (1)")
            assert db.in_transaction
            await db.execute("RELEASE sp")
            assert not db.in_transaction
        other = nexusd.connect(daemon.socket)
        assert other.execute("SELECT x FROM a").fetchall() == [(1,)]

    asyncio.run(main())


def regexp_answers(conn):
    """What a program that used REGEXP through sqlite3 reads: matches
    anywhere, anchors, classes, inline flags, Unicode, NULLs, numbers."""
    conn.execute("CREATE TABLE r(id INTEGER PRIMARY KEY, s)")
    conn.executemany("INSERT INTO r(s) VALUES (?)", [
        ("apple",), ("Banana",), ("cherry pie",), ("dátil",), ("2024-01-31",), (None,), (42,)])
    conn.commit()
    patterns = ["an", "^b", "(?i)^b", r"\bpie$", r"^\d{4}-\d{2}-\d{2}$", "á", "^(a|c)",
                "e.r", "^4", "[a-c]{2}", r"\w+\s\w+"]
    got = {p: conn.execute("SELECT id FROM r WHERE s REGEXP ? ORDER BY id", (p,)).fetchall()
           for p in patterns}
    got["not"] = conn.execute("SELECT id FROM r WHERE s NOT REGEXP 'a' ORDER BY id").fetchall()
    got["null"] = conn.execute("SELECT NULL REGEXP 'a', 'a' REGEXP 'a'").fetchall()
    return got


def test_regexp_answers_as_the_function_sqlite3_programs_register(daemon, tmp_path):
    """sqlite3 programs (and SQLAlchemy's pysqlite dialect) register REGEXP
    as re.search; the daemon's answers the same, so the line can go."""
    import re

    plain = sqlite3.connect(str(tmp_path / "plain.db"))
    plain.create_function(
        "regexp", 2, lambda p, s: None if p is None or s is None else
        re.search(p, s if isinstance(s, str) else str(s)) is not None)
    theirs = regexp_answers(plain)
    assert theirs["^b"] == [] and theirs["(?i)^b"] == [(2,)]
    assert regexp_answers(nexusd.connect(daemon.socket)) == theirs

    conn = nexusd.connect(daemon.socket)
    with pytest.raises(nexusd.OperationalError) as raised:
        conn.execute("SELECT 'aa' REGEXP '(a)\\1'")
    assert "REGEXP pattern '(a)\\1' cannot be used: backreferences" in str(raised.value)
    assert raised.value.sqlite_errorname == "SQLITE_ERROR"
    with pytest.raises(nexusd.NotSupportedError, match="REGEXP is built in"):
        conn.create_function("regexp", 2, re.search)


def _rowids(conn):
    """lastrowid and SQL's last_insert_rowid() after the statements whose
    answers differ between a connection's value and a statement's."""
    conn.execute("CREATE TABLE p(id INTEGER PRIMARY KEY, name UNIQUE)")
    conn.execute("CREATE TABLE log(id INTEGER PRIMARY KEY, row, seen)")
    conn.execute("CREATE TRIGGER tr AFTER INSERT ON p BEGIN "
                 "INSERT INTO log(row, seen) VALUES (new.id, last_insert_rowid()); END")
    out = []
    cur = conn.cursor()
    out.append(("fresh cursor", cur.lastrowid))
    cur.execute("SELECT 1")
    out.append(("select before any insert", cur.lastrowid))
    for sql in ("INSERT INTO p(id, name) VALUES (10, 'a')",
                "INSERT OR IGNORE INTO p(id, name) VALUES (11, 'a')",
                "UPDATE p SET name = 'b' WHERE id = 10",
                "INSERT INTO p(name) VALUES ('b') ON CONFLICT(name) DO UPDATE SET name = 'b'",
                "WITH v(n) AS (VALUES ('c')) INSERT INTO p(name) SELECT n FROM v",
                "INSERT OR REPLACE INTO p(id, name) VALUES (10, 'd')",
                "DELETE FROM p WHERE id = 11",
                "INSERT INTO p(name) VALUES ('r1'), ('r2') RETURNING id, name",
                "UPDATE p SET name = name || '+' WHERE name = 'r1' RETURNING id",
                "INSERT OR IGNORE INTO p(name) VALUES ('r2') RETURNING id",
                "SELECT count(*) FROM p"):
        cur.execute(sql)
        cur.fetchall()
        out.append((sql, cur.lastrowid,
                    conn.execute("SELECT last_insert_rowid()").fetchone()[0]))
    cur.executemany("INSERT INTO p(name) VALUES (?)", [("e",), ("f",)])
    out.append(("executemany leaves lastrowid", cur.lastrowid))
    cur.executescript("INSERT INTO p(id, name) VALUES (40, 'g'); UPDATE p SET name = 'h' "
                      "WHERE id = 40;")
    out.append(("executescript", cur.lastrowid,
                conn.execute("SELECT last_insert_rowid()").fetchone()[0]))
    out.append(("trigger", conn.execute("SELECT * FROM log ORDER BY id").fetchall()))
    other = conn.cursor()
    other.execute("SELECT 1")
    out.append(("another cursor of the connection", other.lastrowid))
    return out


@pytest.mark.parametrize("isolation_level", [None, ""])
def test_lastrowid_and_last_insert_rowid_are_the_connections_as_in_sqlite3(
        daemon, tmp_path, isolation_level):
    want = _rowids(sqlite3.connect(tmp_path / "direct.db", isolation_level=isolation_level))
    got = _rowids(nexusd.connect(daemon.socket, isolation_level=isolation_level))
    assert got == want


def _in_another_process(daemon, body):
    """Runs ``body`` in a second Python process, with ``c`` its autocommit
    connection (its own socket, so its own client in the daemon); returns
    what it printed, split into words."""
    script = ("import nexusd, sys\n"
              "c = nexusd.connect(sys.argv[1], autocommit=True)\n" + body)
    return subprocess.run([sys.executable, "-c", script, daemon.socket], check=True,
                          capture_output=True, text=True).stdout.split()


def test_another_clients_insert_leaves_this_ones_rowid_alone(daemon):
    a = nexusd.connect(daemon.socket, autocommit=True)
    a.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x)")
    a.execute("INSERT INTO t(id, x) VALUES (5, 'a')")
    out = _in_another_process(
        daemon,
        "c.execute(\"INSERT INTO t(id, x) VALUES (77, 'b')\")\n"
        "cur = c.execute(\"UPDATE t SET x = 'c' WHERE id = 5\")\n"
        "print(cur.lastrowid, c.execute('SELECT last_insert_rowid()').fetchone()[0])\n")
    assert out == ["77", "77"]
    cur = a.execute("UPDATE t SET x = 'd' WHERE id = 77")
    assert cur.lastrowid == 5
    assert a.execute("SELECT last_insert_rowid()").fetchone()[0] == 5


def test_a_result_over_the_daemons_limit_reads_as_from_sqlite3(make_daemon, tmp_path):
    """sqlite3 reads a result of any size; so does nexusd, whose daemon
    sends a read over its result limit (100 kB here) in parts: fetchall,
    iteration and fetchmany, in autocommit, in a transaction before and
    after it writes (INSERT ... RETURNING too), and through nexusd.aio, give
    what sqlite3 gives from the same rows."""
    d = make_daemon("--max-result-bytes", "100000", "--max-frame-bytes", "200000")
    fill = ("CREATE TABLE t(x INTEGER PRIMARY KEY, s TEXT, b BLOB);"
            "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
            "LIMIT 8000) SELECT x, printf('%0100d', x), randomblob(40) FROM c;")
    conn = nexusd.connect(d.socket, isolation_level=None)
    conn.executescript(fill)
    expected = conn.execute("SELECT x, s, b FROM t WHERE x <= 2").fetchall()
    sql = "SELECT x, s, b FROM t ORDER BY x"

    # The same rows through sqlite3, from a copy of the database.
    plain = sqlite3.connect(":memory:")
    conn.backup(plain)
    theirs = plain.execute(sql).fetchall()
    assert len(theirs) == 8000 and theirs[:2] == expected

    assert conn.execute(sql).fetchall() == theirs
    assert list(conn.execute(sql)) == theirs
    cur = conn.execute(sql)
    assert cur.fetchmany(10) == theirs[:10] and cur.fetchall() == theirs[10:]

    in_txn = nexusd.connect(d.socket, autocommit=False)
    assert in_txn.execute(sql).fetchall() == theirs
    in_txn.execute("INSERT INTO t(x, s) VALUES (-1, 'in txn')")
    # The transaction holds the writer now; its reads still come whole.
    assert in_txn.execute(sql).fetchall()[1:] == theirs
    in_txn.rollback()

    # The legacy default: the INSERT opens the transaction, and the same
    # statements answer as in sqlite3, whose copy gets them too.
    legacy = nexusd.connect(d.socket, isolation_level="IMMEDIATE")
    copy = "INSERT INTO t(x, s, b) SELECT x + 10000, s, b FROM t RETURNING x, s, b"
    for c in (legacy, plain):
        c.execute("INSERT INTO t(x, s) VALUES (-2, 'legacy')")
    cursors = [c.execute(copy) for c in (legacy, plain)]
    ours, theirs_copied = (c.fetchall() for c in cursors)
    assert len(ours) == 8001 and ours == theirs_copied
    # The counts of a result in parts are the whole statement's.
    assert cursors[0].lastrowid == cursors[1].lastrowid == 18000
    assert cursors[0].rowcount == cursors[1].rowcount == 8001
    assert legacy.total_changes == plain.total_changes == 8002
    assert legacy.execute(sql).fetchall() == plain.execute(sql).fetchall()
    legacy.rollback()
    plain.rollback()

    async def through_aio():
        async with nexusd.aio.connect(d.socket) as db:
            async with db.execute(sql) as cursor:
                return [tuple(r) async for r in cursor]

    assert asyncio.run(through_aio()) == theirs

    # A write outside a transaction commits in a group with other clients'
    # writes, which never wait on one client's reading: its result over the
    # limit fails and is not applied.
    with pytest.raises(nexusd.DataError) as caught:
        conn.execute("UPDATE t SET s = 'changed' WHERE x > 0 RETURNING x, s, b").fetchall()
    assert "limit of 100000 bytes" in str(caught.value)
    assert conn.execute("SELECT count(*) FROM t WHERE x < 0 OR x > 10000 OR s = 'changed'"
                        ).fetchone() == (0,)


def _changes(conn):
    """SQL's changes() and total_changes() after statements that set them,
    leave them, or change rows besides their own (a trigger, a cascade)."""
    conn.execute("PRAGMA foreign_keys = ON")
    out = []

    def after(sql):
        try:
            conn.execute(sql).fetchall()
            what = sql
        except sqlite3.Error as e:
            what = f"{sql}: {type(e).__name__}"
        out.append((what, conn.execute("SELECT changes(), total_changes()").fetchone(),
                    conn.total_changes))

    after("CREATE TABLE p(id INTEGER PRIMARY KEY, name UNIQUE)")
    after("CREATE TABLE c(id INTEGER PRIMARY KEY, "
          "p INTEGER REFERENCES p(id) ON DELETE CASCADE)")
    after("CREATE TABLE log(n, seen)")
    after("CREATE TRIGGER tr AFTER INSERT ON p BEGIN "
          "INSERT INTO log VALUES (new.id, changes()); END")
    after("INSERT INTO p(name) VALUES ('a'), ('b'), ('c')")
    after("INSERT INTO c(p) SELECT id FROM p")
    after("UPDATE p SET name = name || '!' WHERE id > 1")
    after("SELECT count(*) FROM p")
    after("UPDATE p SET name = 'x' WHERE id > 100")
    after("CREATE INDEX i ON log(n)")
    after("INSERT INTO log VALUES (changes(), total_changes())")
    after("INSERT OR IGNORE INTO p(name) VALUES ('a')")
    after("INSERT INTO p(name) VALUES ('q'), ('a')")
    after("WITH v(n) AS (VALUES ('z')) INSERT INTO p(name) SELECT n FROM v")
    after("DELETE FROM p WHERE id <= 2")
    after("INSERT INTO p(name) VALUES ('a') ON CONFLICT(name) DO UPDATE SET name = 'aa'")
    after("REPLACE INTO p(id, name) VALUES (3, 'r')")
    after("DROP TABLE log")
    conn.executemany("INSERT INTO c(p) VALUES (?)", [(3,), (None,)])
    out.append(("executemany", conn.total_changes))
    conn.executescript("UPDATE c SET p = NULL; DELETE FROM p WHERE id = 3")
    out.append(("executescript", conn.total_changes))
    # Last, since sqlite3 keeps the rows before the failing one, and nexusd's
    # executemany is atomic; both count them.
    try:
        conn.executemany("INSERT INTO c(p) VALUES (?)", [(None,), (999,)])
    except sqlite3.IntegrityError:
        pass
    out.append(("executemany that fails", conn.total_changes))
    if conn.in_transaction:
        conn.commit()
    out.append(("after commit", conn.execute("SELECT changes(), total_changes()").fetchone(),
                conn.total_changes))
    return out


@pytest.mark.parametrize("isolation_level", [None, ""])
def test_changes_and_total_changes_in_sql_are_the_clients_as_in_sqlite3(
        daemon, tmp_path, isolation_level):
    """With one connection in the process, SQL's changes() and
    total_changes() answer as sqlite3's do for its connection, though
    every client's writes share the daemon's."""
    want = _changes(sqlite3.connect(tmp_path / "direct.db", isolation_level=isolation_level))
    got = _changes(nexusd.connect(daemon.socket, isolation_level=isolation_level))
    assert got == want


def test_another_clients_writes_leave_this_ones_changes_alone(daemon):
    a = nexusd.connect(daemon.socket, autocommit=True)
    a.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x)")
    a.execute("INSERT INTO t(x) VALUES (1), (2)")
    out = _in_another_process(
        daemon,
        "c.execute('INSERT INTO t(x) SELECT x FROM t')\n"
        "c.execute('UPDATE t SET x = x + 1')\n"
        "print(*c.execute('SELECT changes(), total_changes()').fetchone())\n")
    assert out == ["4", "6"]
    assert a.execute("SELECT changes(), total_changes()").fetchone() == (2, 2)
    assert a.total_changes == 2
