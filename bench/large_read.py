#!/usr/bin/env python3
"""One read far over the daemon's result limit, through the Python driver,
beside sqlite3 reading the same file, in one run.

    python3 bench/large_read.py [--rows 400000] [--rounds 3]
                                [--nexusd target/release/nexusd]

It starts a daemon with its defaults (a 15 MiB result limit) on a temp
dir, fills `t` with ROWS rows of an integer, 100 characters of text and a
100-byte blob (about 230 bytes of values a row), then, in turn, reads
`SELECT x, s, b FROM t` whole with `fetchall()` through a nexusd Cursor,
through a nexusd StreamingCursor (whose parts the daemon sends only as the
cursor takes them, one message back per part), through a nexusd.aio cursor
(on a loop of its own, the timing around `asyncio.run`'s body) and through
sqlite3. It
prints each round's seconds, the ratios of the best rounds, and the
daemon's peak resident memory while it ran, sampled every 5 ms: the
daemon sends such a read in parts, holding two at most, so its memory
stays far below the result's size. Needs the built package (`pip install
./python`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sqlite3
import sys
import threading
import time

# Run from a checkout, the folder above holds python/ without the built
# native module: use the installed package.
_root = str(pathlib.Path(__file__).resolve().parent.parent)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _root]

import daemon  # noqa: E402  (bench/daemon.py)
import nexusd  # noqa: E402
import nexusd.aio  # noqa: E402

SQL = "SELECT x, s, b FROM t"


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nexusd", default=str(pathlib.Path(_root) / "target/release/nexusd"))
    args = ap.parse_args()

    with daemon.running(args.nexusd) as d:
        sock, db, pid = d.socket, d.db, d.process.pid
        conn = nexusd.connect(str(sock), isolation_level=None)
        conn.executescript(
            "CREATE TABLE t(x INTEGER PRIMARY KEY, s TEXT, b BLOB);"
            "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 "
            f"FROM c LIMIT {args.rows}) SELECT x, printf('%0100d', x), randomblob(100) "
            "FROM c;")
        before = rss_kb(pid)
        peak, done = [before], threading.Event()

        def watch() -> None:
            while not done.wait(0.005):
                peak[0] = max(peak[0], rss_kb(pid))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        took: dict = {"nexusd": [], "streaming": [], "aio": [], "sqlite3": []}
        plain = sqlite3.connect(str(db))

        async def through_aio() -> tuple:
            async with nexusd.aio.connect(str(sock)) as adb:
                began = time.perf_counter()
                rows = await (await adb.execute(SQL)).fetchall()
                return rows, time.perf_counter() - began

        def read(name: str) -> tuple:
            if name == "aio":
                return asyncio.run(through_aio())
            cursor = {"nexusd": conn.cursor, "sqlite3": plain.cursor,
                      "streaming": lambda: conn.cursor(nexusd.StreamingCursor)}[name]()
            began = time.perf_counter()
            rows = cursor.execute(SQL).fetchall()
            return rows, time.perf_counter() - began

        for _ in range(args.rounds):
            for name in ("nexusd", "sqlite3", "streaming", "aio"):
                rows, seconds = read(name)
                took[name].append(seconds)
                if len(rows) != args.rows:
                    sys.exit(f"{name} read {len(rows)} rows of {args.rows}")
                del rows
        done.set()
        watcher.join()
    size = args.rows * 230 / 1e6
    print(f"{args.rows} rows, about {size:.0f} MB of values, read whole with fetchall()")
    for name, times in took.items():
        print(f"  {name:9} " + "  ".join(f"{t:.3f} s" for t in times))
    best = min(took["sqlite3"])
    print(f"  nexusd at {best / min(took['nexusd']):.2f}x sqlite3's speed, "
          f"a StreamingCursor at {best / min(took['streaming']):.2f}x, "
          f"nexusd.aio at {best / min(took['aio']):.2f}x (best rounds)")
    print(f"  daemon resident memory: {before} kB before the reads, {peak[0]} kB at most "
          "during them")


if __name__ == "__main__":
    main()
