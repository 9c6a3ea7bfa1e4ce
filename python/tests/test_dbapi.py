"""PEP 249 and sqlite3's shape: module globals, cursors, parameters,
values, rows, errors, executemany and executescript."""

import datetime
import os
import subprocess
import sys
import textwrap

import pytest

import nexusd


@pytest.fixture
def conn(daemon):
    c = nexusd.connect(daemon.socket)
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT UNIQUE, n, b BLOB)")
    c.commit()
    yield c
    c.close()


def test_module_globals_and_types():
    assert nexusd.apilevel == "2.0"
    assert nexusd.threadsafety in (1, 2, 3)
    assert nexusd.paramstyle == "qmark"
    for name in ("Warning", "Error", "InterfaceError", "DatabaseError", "DataError",
                 "OperationalError", "IntegrityError", "InternalError", "ProgrammingError",
                 "NotSupportedError"):
        assert issubclass(getattr(nexusd, name), Exception)
    assert issubclass(nexusd.IntegrityError, nexusd.DatabaseError)
    assert issubclass(nexusd.DatabaseError, nexusd.Error)
    for sub in (nexusd.Timeout, nexusd.Overloaded, nexusd.TransactionExpired,
                nexusd.Conflict, nexusd.OutcomeUnknown):
        assert issubclass(sub, nexusd.OperationalError)
    assert nexusd.Date(2024, 1, 2) == datetime.date(2024, 1, 2)
    assert isinstance(nexusd.TimestampFromTicks(0), datetime.datetime)
    assert nexusd.Binary(b"x") == b"x"
    assert nexusd.STRING == "TEXT" and nexusd.NUMBER == "INTEGER"


def test_execute_fetch_description_rowcount_lastrowid(conn):
    cur = conn.cursor()
    cur.execute("INSERT INTO t(name, n) VALUES (?, ?)", ("ada", 1))
    assert cur.rowcount == 1
    assert cur.lastrowid == 1
    cur.execute("INSERT INTO t(name, n) VALUES (:name, :n)", {"name": "bob", "n": 2})
    assert cur.lastrowid == 2
    cur.execute("INSERT INTO t(name, n) VALUES (:name, :n)", {":name": "cy", ":n": 3})
    cur.execute("UPDATE t SET n = n + 10 WHERE n > 1")
    assert cur.rowcount == 2
    cur.execute("SELECT id, name, n FROM t ORDER BY id")
    assert [d[0] for d in cur.description] == ["id", "name", "n"]
    assert cur.rowcount == -1
    assert cur.fetchone() == (1, "ada", 1)
    cur.arraysize = 2
    assert cur.fetchmany() == [(2, "bob", 12), (3, "cy", 13)]
    assert cur.fetchone() is None
    assert list(conn.execute("SELECT name FROM t WHERE id > ?", [1])) == [("bob",), ("cy",)]
    cur.setinputsizes([10])
    cur.setoutputsize(10)
    cur.close()
    with pytest.raises(nexusd.ProgrammingError):
        cur.fetchall()


def test_values_round_trip(conn):
    values = [0, -1, 2**63 - 1, 1.5, "", "text ✓", b"\x00\xff", None]
    for v in values:
        row = conn.execute("SELECT ?", (v,)).fetchone()
        assert row == (v,), v
    assert conn.execute("SELECT ?", (bytearray(b"ab"),)).fetchone() == (b"ab",)
    assert conn.execute("SELECT ?", (memoryview(b"cd"),)).fetchone() == (b"cd",)
    assert conn.execute("SELECT ?, ?", (True, False)).fetchone() == (1, 0)
    with pytest.raises(OverflowError, match="too large"):
        conn.execute("SELECT ?", (2**64,))
    with pytest.raises(nexusd.ProgrammingError, match="not supported"):
        conn.execute("SELECT ?", (object(),))


def test_row_factory(conn):
    conn.execute("INSERT INTO t(name, n) VALUES ('ada', 7)")
    conn.row_factory = nexusd.Row
    row = conn.execute("SELECT name, n FROM t").fetchone()
    assert row["name"] == "ada" and row["N"] == 7 and row[1] == 7
    assert row.keys() == ["name", "n"]
    assert len(row) == 2 and tuple(row) == ("ada", 7)
    assert row == conn.execute("SELECT name, n FROM t").fetchone()
    with pytest.raises(IndexError):
        row["nope"]


def test_errors_map_as_sqlite3_maps_them(conn):
    conn.execute("INSERT INTO t(name) VALUES ('ada')")
    with pytest.raises(nexusd.IntegrityError) as e:
        conn.execute("INSERT INTO t(name) VALUES ('ada')")
    assert e.value.sqlite_errorcode == 2067 == nexusd.SQLITE_CONSTRAINT_UNIQUE
    assert e.value.sqlite_errorname == "SQLITE_CONSTRAINT_UNIQUE"
    # sqlite3's constants are all on the module, as `import nexusd as sqlite3`
    # needs.
    import sqlite3
    names = [n for n in dir(sqlite3) if n.startswith("SQLITE_")]
    assert names and all(getattr(nexusd, n) == getattr(sqlite3, n) for n in names)
    assert set(names) <= set(nexusd.__all__)
    with pytest.raises(nexusd.OperationalError, match="syntax error"):
        conn.execute("SELEKT 1")
    with pytest.raises(nexusd.OperationalError, match="no such table"):
        conn.execute("SELECT * FROM nope")
    with pytest.raises(nexusd.ProgrammingError):
        conn.execute("SELECT ?, ?", (1,))
    assert conn.IntegrityError is nexusd.IntegrityError
    assert conn.Error is nexusd.Error


def test_executemany_is_one_atomic_request(conn):
    cur = conn.executemany("INSERT INTO t(name, n) VALUES (?, ?)",
                           [(f"u{i}", i) for i in range(100)])
    assert cur.rowcount == 100
    conn.commit()
    with pytest.raises(nexusd.IntegrityError):
        conn.executemany("INSERT INTO t(name) VALUES (?)", [("new",), ("u5",)])
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (100,)
    with pytest.raises(nexusd.ProgrammingError):
        conn.executemany("SELECT ?", [(1,)])


def test_executemany_and_executescript_of_any_size_stay_atomic(daemon):
    """sqlite3 takes an executemany of any size; one request is bounded by
    the daemon's frame limit (16 MiB), so a larger batch goes in parts,
    inside a transaction (autocommit) or a savepoint (in a transaction) of
    its own: all of it applies, or none, and a failure names its statement
    over the whole batch."""
    rows = 60_000  # about 20 MB of parameters: over one frame
    blob = b"\xab" * 300

    def many(prefix, last=None):
        """``rows`` rows named prefix0, prefix1...; the last named ``last``
        if given (a name already taken, to fail there)."""
        yield from ((f"{prefix}{i}", blob) for i in range(rows - 1))
        yield (last or f"{prefix}{rows - 1}", blob)

    auto = nexusd.connect(daemon.socket, isolation_level=None)
    auto.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, name TEXT UNIQUE, b BLOB)")
    cur = auto.executemany("INSERT INTO big(name, b) VALUES (?, ?)", many("r"))
    assert cur.rowcount == rows
    assert auto.total_changes == rows
    with pytest.raises(nexusd.IntegrityError) as failed:
        auto.executemany("INSERT INTO big(name, b) VALUES (?, ?)", many("s", "r0"))
    assert failed.value.statement_index == rows - 1, str(failed.value)
    assert "parts" in str(failed.value)
    assert auto.execute("SELECT count(*) FROM big").fetchone() == (rows,)

    legacy = nexusd.connect(daemon.socket)
    legacy.execute("DELETE FROM big WHERE id > 10")
    with pytest.raises(nexusd.IntegrityError):
        legacy.executemany("INSERT INTO big(name, b) VALUES (?, ?)", many("t", "r0"))
    assert legacy.in_transaction, "the transaction goes on, without the batch"
    legacy.executemany("INSERT INTO big(name, b) VALUES (?, ?)", many("u"))
    legacy.commit()
    assert auto.execute("SELECT count(*) FROM big").fetchone() == (10 + rows,)

    script = ";\n".join(f"INSERT INTO big(name, b) VALUES ('v{i}', x'{blob.hex()}')"
                         for i in range(rows))
    assert len(script) > 16 * 1024 * 1024, "over one frame"
    auto.executescript(script)
    assert auto.execute("SELECT count(*) FROM big WHERE name LIKE 'v%'").fetchone() == (rows,)


def test_executemany_streams_its_parameters_as_they_are_read(daemon):
    """A generator's parameter sets go in parts as they are read, not after
    the generator ends: the parts sent so far are visible inside the
    connection's own transaction (a generator may query the connection it
    feeds) and to nobody else; a generator that raises applies nothing and
    its own exception comes out; and the process never holds the batch
    whole (peak RSS, measured in a child process)."""
    blob = b"\xcd" * 300
    part_rows = 16 * 1024 * 1024 // 2 // (len(blob) + 40)  # about one part
    rows = 4 * part_rows
    legacy = nexusd.connect(daemon.socket)
    legacy.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, name TEXT UNIQUE, b BLOB)")
    legacy.commit()
    other = nexusd.connect(daemon.socket, isolation_level=None)
    seen = {}

    def feed(prefix, raise_at=None):
        for i in range(rows):
            if i == 3 * part_rows:
                count = f"SELECT count(*) FROM big WHERE name LIKE '{prefix}%'"
                seen["own"] = legacy.execute(count).fetchone()[0]
                seen["other"] = other.execute(count).fetchone()[0]
            if i == raise_at:
                raise ValueError(f"feed failed at row {i}")
            yield (f"{prefix}{i}", blob)

    # In the implicit transaction: parts go in a savepoint as they fill.
    legacy.execute("INSERT INTO big(name, b) VALUES ('before', x'00')")
    cur = legacy.executemany("INSERT INTO big(name, b) VALUES (?, ?)", feed("g"))
    assert cur.rowcount == rows
    assert part_rows < seen["own"] < 3 * part_rows + 1, seen
    assert seen["other"] == 0, "nothing visible outside before the commit"
    with pytest.raises(ValueError, match=f"feed failed at row {3 * part_rows + 5}"):
        legacy.executemany("INSERT INTO big(name, b) VALUES (?, ?)",
                           feed("h", raise_at=3 * part_rows + 5))
    assert seen["own"] > 0, "parts had gone before the feed failed"
    assert legacy.in_transaction, "the transaction goes on, without the batch"
    legacy.commit()
    count = "SELECT count(*) FROM big WHERE name LIKE ?"
    assert other.execute(count, ("g%",)).fetchone() == (rows,)
    assert other.execute(count, ("h%",)).fetchone() == (0,)
    assert other.execute(count, ("before",)).fetchone() == (1,)

    # In autocommit: the parts go in a transaction of the batch's own.
    seen.clear()
    legacy.isolation_level = None
    legacy.executemany("INSERT INTO big(name, b) VALUES (?, ?)", feed("k"))
    assert seen["own"] == 0 and seen["other"] == 0, seen
    assert other.execute(count, ("k%",)).fetchone() == (rows,)
    with pytest.raises(ValueError, match="feed failed"):
        legacy.executemany("INSERT INTO big(name, b) VALUES (?, ?)",
                           feed("m", raise_at=2 * part_rows))
    assert other.execute(count, ("m%",)).fetchone() == (0,)
    assert not legacy.in_transaction
    legacy.execute("INSERT INTO big(name, b) VALUES ('after', x'00')")

    # 300,000 rows of 1,000 bytes: 300 MB of parameters, from a generator.
    child = textwrap.dedent(f"""
        import nexusd
        conn = nexusd.connect({daemon.socket!r}, isolation_level=None)
        conn.execute("CREATE TABLE huge(n INTEGER, b BLOB)")
        blob = b"\\xee" * 1000
        cur = conn.executemany("INSERT INTO huge VALUES (?, ?)",
                               ((i, blob) for i in range(300_000)))
        assert cur.rowcount == 300_000, cur.rowcount
        assert conn.execute("SELECT count(*) FROM huge").fetchone() == (300_000,)
        # VmHWM, not ru_maxrss: Linux carries the latter over from the
        # forked parent (pytest) across exec.
        hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
        print(int(hwm[0].split()[1]) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stderr
    peak_mib = int(out.stdout.split()[-1])
    assert peak_mib < 150, f"peak RSS {peak_mib} MiB for a 300 MB batch"


def test_executescript_is_one_atomic_batch(conn):
    conn.executescript("""
        BEGIN;
        CREATE TABLE s(x);
        INSERT INTO s VALUES (1); -- a comment; with a semicolon
        INSERT INTO s VALUES ('a;b');
        COMMIT;
    """)
    assert conn.execute("SELECT x FROM s ORDER BY rowid").fetchall() == [(1,), ("a;b",)]
    with pytest.raises(nexusd.OperationalError):
        conn.executescript("INSERT INTO s VALUES (2); INSERT INTO nope VALUES (3);")
    assert conn.execute("SELECT count(*) FROM s").fetchone() == (2,)


def test_closed_connection_refuses(daemon):
    c = nexusd.connect(daemon.socket)
    c.close()
    with pytest.raises(nexusd.ProgrammingError, match="closed"):
        c.execute("SELECT 1")
    c.close()


def test_connect_to_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(nexusd.OperationalError, match="is the daemon running"):
        nexusd.connect(str(tmp_path / "absent.sock"))


def test_temp_objects_are_refused_and_say_why(conn):
    # Every client shares the daemon's connections: a TEMP table would be
    # every client's. The refusal names the object and what to do instead.
    for sql in ("CREATE TEMP TABLE scratch(a)", "CREATE TEMP VIEW v AS SELECT 1",
                "CREATE TABLE temp.scratch(a)"):
        with pytest.raises(nexusd.OperationalError) as e:
            conn.execute(sql)
        assert "is refused" in str(e.value) and "ordinary" in str(e.value), str(e.value)
    with conn:
        conn.execute("INSERT INTO t(name) VALUES ('still-usable')")
    assert conn.execute("SELECT count(*) FROM sqlite_temp_master").fetchone() == (0,)


def test_vacuum_from_a_client_is_refused_with_the_ctl_commands_to_use(conn, tmp_path):
    target = tmp_path / "copy.db"
    for sql in ("VACUUM", f"VACUUM INTO '{target}'"):
        with pytest.raises(nexusd.OperationalError) as e:
            conn.execute(sql)
        assert "nexusd ctl vacuum" in str(e.value) and "nexusd ctl backup" in str(e.value)
    assert not target.exists()
    conn.execute("INSERT INTO t(name) VALUES ('still-usable')")


def test_start_up_pragmas_of_sqlite3_programs_are_kept(conn, make_daemon):
    """The lines the seed apps run after sqlite3.connect() ask for what the
    daemon already does: they run, change nothing, and answer as SQLite."""
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    for sql in ("PRAGMA busy_timeout=30000", "PRAGMA synchronous=NORMAL",
                "PRAGMA foreign_keys = ON", "PRAGMA synchronous=FULL"):
        assert conn.execute(sql).fetchall() == [], sql
    # Foreign keys stay enforced.
    conn.execute("CREATE TABLE child(t_id REFERENCES t(id))")
    with pytest.raises(nexusd.IntegrityError, match="FOREIGN KEY"):
        conn.execute("INSERT INTO child VALUES (99)")
    conn.rollback()
    # The usual tuning block runs too, as one script, and changes nothing.
    conn.executescript("""
        PRAGMA journal_mode=WAL;
        PRAGMA synchronous=NORMAL;
        PRAGMA cache_size=-64000;
        PRAGMA temp_store=MEMORY;
        PRAGMA mmap_size=268435456;
        PRAGMA wal_autocheckpoint=1000;
        PRAGMA busy_timeout=5000;
    """)
    assert conn.execute("PRAGMA cache_size").fetchone() == (-2000,)
    assert conn.execute("PRAGMA temp_store").fetchone() == (0,)
    # What the daemon does not do stays refused, with the reason.
    with pytest.raises(nexusd.OperationalError, match="refused"):
        conn.execute("PRAGMA foreign_keys = OFF")
    with pytest.raises(nexusd.OperationalError, match="nexusd ctl checkpoint"):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    normal = make_daemon("--synchronous", "normal")
    c = nexusd.connect(normal.socket)
    c.execute("PRAGMA synchronous=NORMAL")
    with pytest.raises(nexusd.OperationalError, match="--synchronous full"):
        c.execute("PRAGMA synchronous=FULL")


def test_sqlite3_row_as_the_row_factory(conn):
    """`conn.row_factory = sqlite3.Row` stays as it was in the program."""
    import sqlite3

    conn.row_factory = sqlite3.Row
    conn.execute("INSERT INTO t(name, n) VALUES ('ada', 7)")
    row = conn.execute("SELECT name, n FROM t").fetchone()
    assert (row["name"], row["N"], row[1], row.keys()) == ("ada", 7, 7, ["name", "n"])
    assert dict(row) == dict(zip(row.keys(), row)) == {"name": "ada", "n": 7}


def test_a_database_path_reaches_the_daemon_serving_it(daemon, tmp_path):
    """sqlite3.connect("app.db") changed to nexusd.connect("app.db"): the
    daemon serving app.db notes its socket beside it."""
    by_socket = nexusd.connect(daemon.socket, isolation_level=None)
    by_socket.execute("CREATE TABLE seen(x)")
    by_socket.execute("INSERT INTO seen VALUES (1)")
    by_path = nexusd.connect(str(daemon.db))
    assert by_path.execute("SELECT x FROM seen").fetchall() == [(1,)]
    # A database no daemon serves, or a path that reads like one, says so.
    (tmp_path / "other.db").write_bytes(b"")
    # (A path that is not there is waited for, as a daemon may be starting.)
    for path in (str(tmp_path / "other.db"), "app.db"):
        with pytest.raises(nexusd.OperationalError, match="is not a nexusd socket") as e:
            nexusd.connect(path)
        assert "nexusd serve --db" in str(e.value)
    # Stopped cleanly (SIGTERM), the daemon takes its note back.
    daemon.proc.terminate()
    daemon.proc.wait(timeout=20)
    with pytest.raises(nexusd.OperationalError, match="no running daemon serves it"):
        nexusd.connect(str(daemon.db), client_name="after the stop")



def test_sqlite3s_exception_classes_catch_nexusd_errors(conn):
    """A program that kept `except sqlite3.IntegrityError:` after changing
    its connect line still catches the same errors."""
    import sqlite3

    conn.execute("INSERT INTO t(name) VALUES ('ada')")
    with pytest.raises(sqlite3.IntegrityError) as e:
        conn.execute("INSERT INTO t(name) VALUES ('ada')")
    assert isinstance(e.value, nexusd.IntegrityError)
    assert e.value.sqlite_errorname == "SQLITE_CONSTRAINT_UNIQUE"
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("SELECT * FROM nope")
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT ?", (object(),))
    for ours in (nexusd.Timeout, nexusd.Conflict, nexusd.OutcomeUnknown):
        assert issubclass(ours, sqlite3.OperationalError)
    assert issubclass(nexusd.Error, sqlite3.Error) and issubclass(nexusd.Warning, sqlite3.Warning)
