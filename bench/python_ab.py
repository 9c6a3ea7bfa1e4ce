#!/usr/bin/env python3
"""Two builds of the Python package side by side, on one daemon, in turns.

    python3 bench/python_ab.py --a DIR_A --b DIR_B [--workload read|insert]
                               [--rounds 4] [--duration 3]
                               [--processes 8] [--threads 8]
                               [--nexusd target/release/nexusd]

DIR_A and DIR_B each hold an installed package (`pip install --no-deps
--target DIR ./python`). For each round it runs PROCESSES x THREADS
connections doing single-row point reads (or single-row autocommit
inserts) through build A for DURATION seconds, then the same through
build B, so both meet the same machine, the same daemon and the same
database; then prints each build's rates, sorted. This machine's spread
between rounds is wider than most changes to the driver: compare the
ranges, not two numbers.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time

import daemon  # bench/daemon.py

ROWS = 10_000

# One process: THREADS connections, each running the workload from START
# for DURATION seconds; prints the operations done.
WORKER = r"""
import sys, threading, time
import nexusd
sock, workload, duration, start, threads, rows = (
    sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]),
    int(sys.argv[6]))
done = []

def run(t):
    conn = nexusd.connect(sock, isolation_level=None)
    cur = conn.cursor()
    n, i = 0, t * 1000
    while time.time() < start:
        time.sleep(0.001)
    end = start + duration
    while time.time() < end:
        if workload == "read":
            cur.execute("SELECT v FROM t WHERE id = ?", (i % rows,))
            cur.fetchone()
            i += 7
        else:
            cur.execute("INSERT INTO w(v) VALUES (?)", (b"x" * 100,))
        n += 1
    done.append(n)

workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(sum(done))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="folder with build A installed")
    ap.add_argument("--b", required=True, help="folder with build B installed")
    ap.add_argument("--workload", choices=("read", "insert"), default="read")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--threads", type=int, default=8)
    root = pathlib.Path(__file__).resolve().parent.parent
    ap.add_argument("--nexusd", default=str(root / "target/release/nexusd"))
    args = ap.parse_args()
    for build in (args.a, args.b):
        if not (pathlib.Path(build) / "nexusd").is_dir():
            sys.exit(f"no installed package in {build}: pip install --no-deps --target "
                     f"{build} ./python")

    with daemon.running(args.nexusd) as d:
        sock = d.socket
        setup = ("import nexusd, sys\n"
                 "c = nexusd.connect(sys.argv[1], isolation_level=None)\n"
                 "c.execute('CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)')\n"
                 "c.execute('CREATE TABLE w(id INTEGER PRIMARY KEY, v BLOB)')\n"
                 f"c.executemany('INSERT INTO t VALUES (?, ?)', "
                 f"[(i, b'x' * 100) for i in range({ROWS})])\n")
        subprocess.run([sys.executable, "-c", setup, sock], check=True,
                       env=dict(os.environ, PYTHONPATH=args.a))
        rates: dict = {"a": [], "b": []}
        for _ in range(args.rounds):
            for name, build in (("a", args.a), ("b", args.b)):
                start = time.time() + 2.0  # to spawn and connect
                procs = [subprocess.Popen(
                    [sys.executable, "-c", WORKER, sock, args.workload,
                     str(args.duration), str(start), str(args.threads), str(ROWS)],
                    env=dict(os.environ, PYTHONPATH=build),
                    stdout=subprocess.PIPE, text=True)
                    for _ in range(args.processes)]
                total = 0
                for proc in procs:
                    out, _ = proc.communicate()
                    if proc.returncode != 0:
                        sys.exit(f"a worker of build {name} failed")
                    total += int(out)
                rates[name].append(round(total / args.duration))
                print(f"{name} {args.workload} {rates[name][-1]:,}/s", flush=True)
    print(f"{args.processes} processes x {args.threads} threads, {args.workload}, "
          f"{args.duration:g} s a round, {os.cpu_count()} cores")
    for name, build in (("a", args.a), ("b", args.b)):
        print(f"  {name} ({build}): " + ", ".join(f"{r:,}" for r in sorted(rates[name])))


if __name__ == "__main__":
    main()
