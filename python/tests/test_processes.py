"""Threads, the GIL, fork and interpreter exit, from several processes."""

import multiprocessing
import subprocess
import sys
import threading
import time

import pytest

import nexusd


def _insert_worker(args):
    """One process: 8 threads, each with its own Connection (all sharing one
    socket), inserting one row per transaction."""
    socket, worker, per_thread = args
    errors, acked = [], []
    lock = threading.Lock()

    def thread(t):
        conn = nexusd.connect(socket)
        for i in range(per_thread):
            key = f"{worker}-{t}-{i}"
            try:
                with conn:
                    conn.execute("INSERT INTO w(k) VALUES (?)", (key,))
                with lock:
                    acked.append(key)
            except Exception as e:  # noqa: BLE001 - counted, then asserted
                with lock:
                    errors.append(repr(e))

    threads = [threading.Thread(target=thread, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return acked, errors


def test_8_processes_by_8_threads_insert_without_errors(daemon):
    c = nexusd.connect(daemon.socket, autocommit=True)
    c.execute("CREATE TABLE w(k TEXT PRIMARY KEY)")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        results = pool.map(_insert_worker, [(daemon.socket, w, 25) for w in range(8)])
    acked = [k for a, _ in results for k in a]
    errors = [e for _, es in results for e in es]
    assert errors == []
    assert len(acked) == 8 * 8 * 25
    present = {r[0] for r in c.execute("SELECT k FROM w")}
    assert present == set(acked)


def _parent_child_worker(args):
    """One process, autocommit: a parent row, then a child that names it
    by SQL's last_insert_rowid(), as sqlite3 programs link rows."""
    socket, worker, count = args
    conn = nexusd.connect(socket, autocommit=True)
    for i in range(count):
        name = f"{worker}-{i}"
        conn.execute("INSERT INTO parent(name) VALUES (?)", (name,))
        conn.execute("INSERT INTO child(parent_id, name) VALUES (last_insert_rowid(), ?)",
                     (name,))
        if i % 10 == 0:
            got = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            want = conn.execute("SELECT id FROM child WHERE name = ?", (name,)).fetchone()[0]
            assert got == want, (name, got, want)
    return count


def test_last_insert_rowid_in_sql_is_each_clients_own_under_concurrent_writes(daemon):
    # Every client's writes share the daemon's one writer connection, and
    # reads run on readers that insert nothing, so SQLite's own
    # last_insert_rowid() would answer another process's row, or 0.
    c = nexusd.connect(daemon.socket, autocommit=True)
    c.execute("CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT)")
    c.execute("CREATE TABLE child(id INTEGER PRIMARY KEY, parent_id INTEGER, name TEXT)")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        done = pool.map(_parent_child_worker, [(daemon.socket, w, 150) for w in range(4)])
    assert done == [150] * 4
    rows = c.execute(
        "SELECT child.name, parent.name FROM child LEFT JOIN parent "
        "ON parent.id = child.parent_id").fetchall()
    assert len(rows) == 600
    wrong = [r for r in rows if r[0] != r[1]]
    assert wrong == []


def test_a_thread_blocked_on_a_slow_query_does_not_stall_others(daemon):
    slow_done = threading.Event()

    def slow():
        conn = nexusd.connect(daemon.socket)
        conn.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
            "LIMIT 3000000) SELECT count(*) FROM c"
        ).fetchone()
        slow_done.set()

    t = threading.Thread(target=slow)
    t.start()
    conn = nexusd.connect(daemon.socket)
    fast = 0
    while not slow_done.is_set() and fast < 200:
        conn.execute("SELECT 1").fetchone()
        fast += 1
    t.join()
    assert fast >= 50, f"only {fast} quick queries ran while the slow one did"


def test_threads_share_one_connection(daemon):
    conn = nexusd.connect(daemon.socket, autocommit=True)
    conn.execute("CREATE TABLE s(x)")

    def work(i):
        for j in range(20):
            conn.execute("INSERT INTO s VALUES (?)", (i * 100 + j,))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert conn.execute("SELECT count(*) FROM s").fetchone() == (160,)


_INHERITED = {}


def _child_fork(task):
    """Uses the Connection object the parent made before it forked."""
    conn = _INHERITED["conn"]  # autocommit=False: a transaction is always open
    conn.execute("INSERT INTO f VALUES (?)", (task,))
    conn.commit()
    n = conn.execute("SELECT count(*) FROM f WHERE x = ?", (task,)).fetchone()[0]
    conn.commit()
    return n


def _child_forkserver(args):
    socket, task = args
    conn = nexusd.connect(socket)
    conn.execute("INSERT INTO f VALUES (?)", (task,))
    conn.commit()
    return conn.execute("SELECT count(*) FROM f WHERE x = ?", (task,)).fetchone()[0]


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_fork_then_use(daemon, method):
    setup = nexusd.connect(daemon.socket, autocommit=True)
    setup.execute("CREATE TABLE IF NOT EXISTS f(x INTEGER)")
    # The parent has a live socket and an open transaction (a read, which
    # holds no writer) when it forks.
    parent = nexusd.connect(daemon.socket, autocommit=False)
    assert parent.execute("SELECT count(*) FROM f").fetchone() == (0,)
    assert parent.in_transaction
    _INHERITED["conn"] = parent
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(4) as pool:
        if method == "fork":
            got = pool.map(_child_fork, range(8), chunksize=1)
        else:
            got = pool.map(_child_forkserver, [(daemon.socket, t) for t in range(8)],
                           chunksize=1)
    assert got == [1] * 8
    # The parent is unaffected: its transaction is still its own, and its
    # snapshot still sees the table as it was.
    assert parent.in_transaction
    assert parent.execute("SELECT count(*) FROM f").fetchone() == (0,)
    parent.commit()
    assert parent.execute("SELECT count(*) FROM f").fetchone() == (8,)


def test_interpreter_exit_with_connections_open_neither_hangs_nor_loses(daemon):
    script = f"""
import nexusd
a = nexusd.connect({daemon.socket!r}, autocommit=True)
a.execute("CREATE TABLE IF NOT EXISTS e(x)")
a.execute("INSERT INTO e VALUES ('acked')")
b = nexusd.connect({daemon.socket!r})
b.execute("INSERT INTO e VALUES ('never committed')")
print("done", flush=True)
"""
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert "done" in out.stdout
    assert time.monotonic() - started < 20
    c = nexusd.connect(daemon.socket)
    assert c.execute("SELECT x FROM e").fetchall() == [("acked",)]


def test_a_process_killed_in_the_middle_of_an_executemany_applies_none_of_it(daemon):
    """kill -9 of a process whose executemany has sent parts and is still
    reading its generator: the daemon rolls the batch's transaction back as
    the socket closes, so none of it lands, and the writer is free at once."""
    script = f"""
import os, sys, time, nexusd
conn = nexusd.connect({daemon.socket!r}, isolation_level=None)
conn.execute("CREATE TABLE IF NOT EXISTS k(n INTEGER, b BLOB)")
blob = b"\\xaa" * 1000
def rows():
    for i in range(100_000):
        if i == 40_000:  # past four parts of about 8 MiB each
            print("sent", flush=True)
            time.sleep(600)
        yield (i, blob)
conn.executemany("INSERT INTO k VALUES (?, ?)", rows())
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "sent", child.stderr.read()
        # The batch's own transaction holds the writer: its parts went.
        waiting = nexusd.connect(daemon.socket, isolation_level=None, timeout=0.5)
        with pytest.raises(nexusd.Timeout):
            waiting.execute("INSERT INTO k VALUES (-2, NULL)")
        waiting.close()
        child.kill()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    other = nexusd.connect(daemon.socket, isolation_level=None, timeout=5)
    started = time.monotonic()
    other.execute("INSERT INTO k VALUES (-1, NULL)")
    assert time.monotonic() - started < 3, "the writer was freed when the socket closed"
    assert other.execute("SELECT count(*), min(n) FROM k").fetchone() == (1, -1)
