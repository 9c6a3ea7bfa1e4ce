"""Transactions as Python 3.12's sqlite3 defines them, on the daemon's
interactive transactions."""

import subprocess
import sys
import time

import pytest

import nexusd


def count(conn, table="t"):
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture
def setup(daemon):
    c = nexusd.connect(daemon.socket, autocommit=True)
    c.execute("CREATE TABLE t(x INTEGER)")
    c.close()
    return daemon


def test_legacy_implicit_begin_commit_and_rollback(setup):
    a = nexusd.connect(setup.socket)
    b = nexusd.connect(setup.socket)
    assert a.autocommit == nexusd.LEGACY_TRANSACTION_CONTROL
    a.execute("SELECT 1")
    assert not a.in_transaction, "a SELECT opens no transaction"
    a.execute("INSERT INTO t VALUES (1)")
    assert a.in_transaction
    assert count(a) == 1, "a transaction sees its own write"
    assert count(b) == 0, "others do not see it before commit"
    a.commit()
    assert not a.in_transaction
    assert count(b) == 1
    a.execute("INSERT INTO t VALUES (2)")
    a.rollback()
    assert count(b) == 1


def test_with_connection_commits_or_rolls_back(setup):
    c = nexusd.connect(setup.socket)
    with c:
        c.execute("INSERT INTO t VALUES (1)")
    assert count(c) == 1
    with pytest.raises(ZeroDivisionError):
        with c:
            c.execute("INSERT INTO t VALUES (2)")
            1 / 0
    assert count(c) == 1
    assert not c.in_transaction


def test_isolation_level_none_is_autocommit(setup):
    c = nexusd.connect(setup.socket, isolation_level=None)
    c.execute("INSERT INTO t VALUES (1)")
    assert not c.in_transaction
    # Explicit transaction control still works, as in sqlite3.
    c.execute("BEGIN")
    assert c.in_transaction
    c.execute("INSERT INTO t VALUES (2)")
    c.execute("ROLLBACK")
    assert not c.in_transaction
    assert count(c) == 1
    with pytest.raises(nexusd.OperationalError, match="no transaction is active"):
        c.execute("COMMIT")


def test_autocommit_true_and_false(setup):
    a = nexusd.connect(setup.socket, autocommit=True)
    a.execute("INSERT INTO t VALUES (1)")
    a.commit()  # nothing to do
    a.execute("BEGIN IMMEDIATE")
    a.execute("INSERT INTO t VALUES (2)")
    a.execute("COMMIT")
    assert count(a) == 2

    f = nexusd.connect(setup.socket, autocommit=False)
    f.execute("INSERT INTO t VALUES (3)")
    assert f.in_transaction
    f.rollback()
    assert count(a) == 2
    f.execute("INSERT INTO t VALUES (4)")
    f.commit()
    assert count(a) == 3
    with pytest.raises(nexusd.OperationalError, match="within a transaction"):
        f.execute("BEGIN")
    f.execute("INSERT INTO t VALUES (5)")
    f.close()  # rolls back what is open
    assert count(a) == 3


def test_savepoints_inside_a_transaction(setup):
    c = nexusd.connect(setup.socket)
    c.execute("INSERT INTO t VALUES (1)")
    c.execute("SAVEPOINT s")
    c.execute("INSERT INTO t VALUES (2)")
    c.execute("ROLLBACK TO s")
    c.execute("RELEASE s")
    c.commit()
    assert c.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_deferred_conflict_and_immediate(setup):
    a = nexusd.connect(setup.socket, autocommit=False)
    b = nexusd.connect(setup.socket, autocommit=True)
    assert count(a) == 0  # a's snapshot begins
    b.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(nexusd.Conflict, match="retry"):
        a.execute("INSERT INTO t VALUES (2)")
    assert not a.in_transaction
    a.execute("INSERT INTO t VALUES (3)")  # a new transaction, no conflict
    a.commit()
    i = nexusd.connect(setup.socket, isolation_level="IMMEDIATE")
    i.execute("INSERT INTO t VALUES (4)")
    i.commit()
    assert sorted(r[0] for r in b.execute("SELECT x FROM t")) == [1, 3, 4]


def test_an_expired_transaction_says_so(make_daemon):
    d = make_daemon("--txn-idle-timeout-ms", "200")
    c = nexusd.connect(d.socket)
    c.execute("CREATE TABLE t(x)")
    c.commit()
    c.execute("INSERT INTO t VALUES (1)")
    time.sleep(0.6)
    with pytest.raises(nexusd.TransactionExpired, match="nothing in it was applied"):
        c.execute("INSERT INTO t VALUES (2)")
    assert not c.in_transaction
    c.execute("INSERT INTO t VALUES (3)")
    c.commit()
    assert c.execute("SELECT x FROM t").fetchall() == [(3,)]
    # The same through executemany and executescript's transaction.
    c.execute("INSERT INTO t VALUES (4)")
    time.sleep(0.6)
    with pytest.raises(nexusd.TransactionExpired):
        c.executemany("INSERT INTO t VALUES (?)", [(5,), (6,)])
    assert not c.in_transaction
    auto = nexusd.connect(d.socket, autocommit=False)
    auto.execute("SELECT 1")
    time.sleep(0.6)
    with pytest.raises(nexusd.TransactionExpired):
        auto.executescript("INSERT INTO t VALUES (7)")
    auto.executescript("INSERT INTO t VALUES (8)")
    auto.commit()
    assert c.execute("SELECT x FROM t ORDER BY x").fetchall() == [(3,), (8,)]


def test_a_connection_dropped_mid_transaction_frees_the_writer_at_once(make_daemon):
    # Blocking calls drive their runtime themselves, so nothing runs between
    # calls; the dropped transaction's rollback must go out anyway, not wait
    # for this process's next call or for its lease (20 s here). Another
    # process's write shows it.
    d = make_daemon("--txn-idle-timeout-ms", "20000")
    setup_conn = nexusd.connect(d.socket, autocommit=True)
    setup_conn.execute("CREATE TABLE t(x INTEGER)")
    a = nexusd.connect(d.socket, isolation_level="IMMEDIATE")
    a.execute("INSERT INTO t VALUES (1)")
    assert a.in_transaction
    del a  # never committed, never closed
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c",
         "import nexusd, sys; nexusd.connect(sys.argv[1], autocommit=True)"
         ".execute('INSERT INTO t VALUES (2)')", d.socket],
        check=True, timeout=60)
    assert time.monotonic() - started < 10, "the rollback of the dropped transaction was not sent"
    assert count(setup_conn) == 1


def _transaction_requests(daemon) -> int:
    """Transaction requests the daemon has answered, by its metrics."""
    from conftest import nexusd_bin

    text = subprocess.run([nexusd_bin(), "ctl", "--socket", daemon.socket, "metrics"],
                          capture_output=True, text=True, check=True).stdout
    name = 'nexusd_requests_total{kind="transaction",outcome="ok"}'
    return sum(int(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_the_drivers_own_begin_goes_with_the_first_statement(setup):
    """sqlite3's default mode begins before an INSERT, and autocommit=False
    before any statement: the BEGIN goes to the daemon with that
    statement, one request where two went, and a transaction that ends
    before any statement costs none. A BEGIN that fails leaves no
    transaction open, as in sqlite3."""
    legacy = nexusd.connect(setup.socket)
    before = _transaction_requests(setup)
    legacy.execute("INSERT INTO t VALUES (10)")
    assert legacy.in_transaction
    legacy.execute("INSERT INTO t VALUES (11)")
    legacy.commit()
    assert _transaction_requests(setup) - before == 3, "begin+insert, insert, commit"
    assert count(legacy) == 2

    pep249 = nexusd.connect(setup.socket, autocommit=False)
    before = _transaction_requests(setup)
    pep249.commit()
    pep249.rollback()
    assert _transaction_requests(setup) == before, "nothing to send"
    assert pep249.execute("SELECT count(*) FROM t").fetchone() == (2,)
    pep249.rollback()
    assert _transaction_requests(setup) - before == 2, "begin+select, rollback"

    # A failing first statement: the transaction is open, as after BEGIN.
    with pytest.raises(nexusd.OperationalError):
        legacy.execute("INSERT INTO nope VALUES (1)")
    assert legacy.in_transaction
    legacy.execute("INSERT INTO t VALUES (12)")
    legacy.rollback()
    assert count(legacy) == 2


def test_a_begin_that_fails_with_its_statement_opens_nothing(make_daemon):
    d = make_daemon("--max-transactions", "1")
    setup_conn = nexusd.connect(d.socket, autocommit=True)
    setup_conn.execute("CREATE TABLE t(x INTEGER)")
    holder = nexusd.connect(d.socket)
    holder.execute("INSERT INTO t VALUES (1)")
    other = nexusd.connect(d.socket)
    with pytest.raises(nexusd.Overloaded):
        other.execute("INSERT INTO t VALUES (2)")
    assert not other.in_transaction, "the refused BEGIN opened nothing"
    holder.commit()
    other.execute("INSERT INTO t VALUES (3)")
    assert other.in_transaction
    other.commit()
    assert count(setup_conn) == 2
