"""The Python driver under load, beside sqlite3 directly, in one run.

    python3 python/bench.py [--duration 5] [--processes 8] [--threads 8]
                            [--tasks 64] [--nexusd target/release/nexusd] [--json]

For each workload (single-row durable inserts of a 100-byte blob; the
same insert as sqlite3's default mode writes it, `execute()` then
`commit()`, so a transaction each; and point reads by primary key) it
runs, one after the other:

- nexusd:  PROCESSES x THREADS, each thread a Connection of its own (they
           share one socket per process), autocommit;
- sqlite3: the same processes and threads, each thread its own sqlite3
           connection: WAL, synchronous=FULL, busy_timeout 5000 ms;
- aio:     one process, TASKS asyncio tasks on one nexusd.aio connection
           (a connection each for execute-then-commit, since a
           connection's transaction is shared by whoever uses it).

Each row also gives the CPU per operation of the client processes (their
own, all threads, from getrusage) and of the daemon (from /proc), and the
ceiling the clients alone allow: every core busy with the clients' CPU
per operation and a daemon that cost nothing, as a multiple of sqlite3's
rate. A target above that ceiling cannot be met on this machine by any
daemon.

Then the binding's cost per call: one thread doing point reads one at a
time through nexusd (Python), against the blocking Rust client
(client/examples/round_trip.rs, built with cargo) doing the same from one
thread, interleaved on the same daemon; the async Rust client beside them.

It starts its own daemon on a temp dir (synchronous=full) and prints a
table, or JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import pathlib
import resource
import socket as socketlib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

# Run from a checkout, this file's folder holds the package's sources
# without the built native module: use the installed package instead.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

ROWS = 10_000
PAYLOAD = b"\xab" * 100
# Seconds from launching the worker processes to the start of the measured
# window: time to spawn them, import the drivers and connect.
STARTUP_S = 3.0


def _quantiles(lat: list) -> tuple:
    if not lat:
        return (None, None, None)
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000.0  # noqa: E731
    return (q(0.50), q(0.99), lat[-1] * 1000.0)


def _worker(args) -> tuple:
    """One process: THREADS threads doing the workload from START to DEADLINE.

    The threads connect first, then wait for START, so that spawning the
    processes and connecting are neither timed nor counted, and every
    process measures the same window.
    """
    kind, target, workload, threads, start, deadline, seed = args
    import random

    import nexusd

    lat, errors, lock = [], [0], threading.Lock()
    ready = threading.Barrier(threads + 1)
    failed = []

    def thread(t):
        rng = random.Random(seed * 1000 + t)
        # insert-commit keeps sqlite3's default: BEGIN before the INSERT.
        level = "" if workload == "insert-commit" else None
        try:
            if kind == "nexusd":
                conn = nexusd.connect(target, isolation_level=level)
            else:
                conn = sqlite3.connect(target, timeout=5.0, isolation_level=level,
                                       check_same_thread=False)
                conn.execute("PRAGMA synchronous=FULL")
        except Exception as e:  # noqa: BLE001 - the worker raises it below
            failed.append(e)
            return
        finally:
            ready.wait()
        time.sleep(max(0.0, start - time.time()))
        mine, bad = [], 0
        while time.time() < deadline:
            t0 = time.perf_counter()
            try:
                if workload == "insert":
                    conn.execute("INSERT INTO bench(payload) VALUES (?)", (PAYLOAD,))
                elif workload == "insert-commit":
                    conn.execute("INSERT INTO bench(payload) VALUES (?)", (PAYLOAD,))
                    conn.commit()
                else:
                    conn.execute("SELECT payload FROM bench WHERE id = ?",
                                 (rng.randrange(1, ROWS + 1),)).fetchone()
                mine.append(time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - "database is locked" is the point
                bad += 1
                if workload == "insert-commit":
                    conn.rollback()
        with lock:
            lat.extend(mine)
            errors[0] += bad

    ts = [threading.Thread(target=thread, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    ready.wait()
    late = max(0.0, time.time() - start)
    time.sleep(max(0.0, start - time.time()))
    cpu0 = _cpu_seconds()
    for t in ts:
        t.join()
    if failed:
        raise RuntimeError(f"a {kind} thread could not connect to {target}: {failed[0]}")
    return lat, errors[0], _cpu_seconds() - cpu0, late


def _cpu_seconds() -> float:
    """This process's CPU time, all its threads, user and system."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _daemon_cpu_seconds(pid) -> Optional[float]:
    """The daemon's CPU time so far, from /proc (None where there is none)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _cpu_per_op(row: dict, client_s: float, daemon_s: Optional[float]) -> dict:
    """`row` with the clients' and the daemon's CPU per operation, in us."""
    ops = max(row["ops"], 1)
    row["client_cpu_us"] = client_s / ops * 1e6
    row["daemon_cpu_us"] = None if daemon_s is None else daemon_s / ops * 1e6
    return row


def run_processes(kind, target, workload, processes, threads, duration, daemon_pid) -> dict:
    ctx = multiprocessing.get_context("spawn")
    # Every process starts at START, after spawning and connecting; the
    # window is DURATION long for each, whatever its start-up took.
    start = time.time() + STARTUP_S
    deadline = start + duration
    with ctx.Pool(processes) as pool:
        pending = pool.map_async(_worker, [(kind, target, workload, threads, start, deadline, p)
                                           for p in range(processes)])
        time.sleep(max(0.0, start - time.time()))
        d0 = _daemon_cpu_seconds(daemon_pid) if kind == "nexusd" else None
        results = pending.get()
    d1 = _daemon_cpu_seconds(daemon_pid) if kind == "nexusd" else None
    late = max(r[3] for r in results)
    if late > 0:
        sys.exit(f"bench: a {kind} worker was ready {late:.2f} s after the start it was "
                 f"given ({STARTUP_S} s after launch), so the processes did not measure one "
                 f"window; run on a quieter machine, or raise STARTUP_S in {__file__}")
    lat = [x for r in results for x in r[0]]
    errors = sum(r[1] for r in results)
    p50, p99, mx = _quantiles(lat)
    row = {"setup": kind, "ops": len(lat), "ops_per_sec": len(lat) / duration, "errors": errors,
           "p50_ms": p50, "p99_ms": p99, "max_ms": mx}
    return _cpu_per_op(row, sum(r[2] for r in results),
                       None if d0 is None or d1 is None else d1 - d0)


def run_aio(socket, workload, tasks, duration, daemon_pid) -> dict:
    import random

    import nexusd.aio

    async def main():
        db = await nexusd.aio.connect(socket, autocommit=True)
        own = ([await nexusd.aio.connect(socket) for _ in range(tasks)]
               if workload == "insert-commit" else [None] * tasks)
        # The window opens once every connection is made.
        cpu0, daemon0 = _cpu_seconds(), _daemon_cpu_seconds(daemon_pid)
        deadline = time.time() + duration
        lat, errors = [], 0

        async def task(n):
            nonlocal errors
            rng = random.Random(n)
            mine = own[n]
            while time.time() < deadline:
                t0 = time.perf_counter()
                try:
                    if workload == "insert":
                        await db.execute("INSERT INTO bench(payload) VALUES (?)", (PAYLOAD,))
                    elif mine is not None:
                        await mine.execute("INSERT INTO bench(payload) VALUES (?)", (PAYLOAD,))
                        await mine.commit()
                    else:
                        cur = await db.execute("SELECT payload FROM bench WHERE id = ?",
                                               (rng.randrange(1, ROWS + 1),))
                        await cur.fetchone()
                    lat.append(time.perf_counter() - t0)
                except Exception:  # noqa: BLE001
                    errors += 1
                    if mine is not None:
                        await mine.rollback()

        await asyncio.gather(*(task(n) for n in range(tasks)))
        cpu1, daemon1 = _cpu_seconds(), _daemon_cpu_seconds(daemon_pid)
        for conn in own:
            if conn is not None:
                await conn.close()
        await db.close()
        daemon_s = None if daemon0 is None or daemon1 is None else daemon1 - daemon0
        return lat, errors, cpu1 - cpu0, daemon_s

    lat, errors, client_s, daemon_s = asyncio.run(main())
    p50, p99, mx = _quantiles(lat)
    row = {"setup": "aio", "ops": len(lat), "ops_per_sec": len(lat) / duration,
           "errors": errors, "p50_ms": p50, "p99_ms": p99, "max_ms": mx}
    return _cpu_per_op(row, client_s, daemon_s)


def _round_trip_example() -> str:
    """Builds the blocking Rust client's round-trip example (client/examples)."""
    root = pathlib.Path(_here).parent
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "nexusd-client",
                    "--example", "round_trip"], cwd=root, check=True)
    return str(root / "target" / "release" / "examples" / "round_trip")


def per_call(socket, nexusd_bin, calls=10000, rounds=5) -> dict:
    """One thread, one point read at a time: Python's mean round trip
    against the blocking Rust client's (the same threading: the calling
    thread waits and reads its own reply), interleaved over ROUNDS rounds
    on the same daemon; the medians are compared. The async Rust client
    (`nexusd bench`, one client) is reported beside them."""
    import nexusd

    example = _round_trip_example()
    conn = nexusd.connect(socket, isolation_level=None)
    sql = "SELECT payload FROM bench WHERE id = ?"
    for i in range(200):
        conn.execute(sql, (i + 1,)).fetchone()
    py, rust = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(calls):
            conn.execute(sql, (i % ROWS + 1,)).fetchone()
        py.append((time.perf_counter() - t0) / calls * 1e6)
        out = subprocess.run([example, socket, str(calls), str(ROWS)],
                             capture_output=True, text=True, check=True)
        rust.append(json.loads(out.stdout)["us_per_call"])
    out = subprocess.run(
        [nexusd_bin, "bench", "--socket", socket, "--workload", "point-read", "--clients", "1",
         "--processes", "1", "--requests", str(calls), "--json"],
        capture_output=True, text=True, check=True)
    run = json.loads(out.stdout.strip().splitlines()[-1])["runs"][0]
    py_us, rust_us = sorted(py)[len(py) // 2], sorted(rust)[len(rust) // 2]
    return {"python_us": py_us, "rust_us": rust_us, "overhead_us": py_us - rust_us,
            "rust_async_us": run["seconds"] / max(run["ops"], 1) * 1e6,
            "python_rounds_us": py, "rust_rounds_us": rust}


def start_daemon(nexusd_bin, workdir: pathlib.Path):
    sock = str(workdir / "bench.sock")
    proc = subprocess.Popen([nexusd_bin, "serve", "--db", str(workdir / "nexusd.db"),
                             "--socket", sock, "--log-level", "warn"],
                            stdin=subprocess.DEVNULL)
    for _ in range(2000):
        try:
            s = socketlib.socket(socketlib.AF_UNIX)
            s.connect(sock)
            s.close()
            return proc, sock
        except OSError:
            time.sleep(0.01)
    proc.kill()
    raise SystemExit("bench.py: the daemon did not start")


def prepare(kind, target):
    if kind == "nexusd":
        import nexusd

        conn = nexusd.connect(target, isolation_level=None)
    else:
        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("DROP TABLE IF EXISTS bench")
    conn.execute("CREATE TABLE bench(id INTEGER PRIMARY KEY, payload BLOB)")
    conn.execute(
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) "
        "INSERT INTO bench(id, payload) SELECT i, randomblob(100) FROM n")
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--tasks", type=int, default=64)
    root = pathlib.Path(__file__).resolve().parents[1]
    ap.add_argument("--nexusd", default=os.environ.get("NEXUSD_BIN")
                    or str(root / "target" / "release" / "nexusd"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    results = {"machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
               "processes": args.processes, "threads": args.threads, "tasks": args.tasks,
               "duration_s": args.duration, "workloads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        proc, sock = start_daemon(args.nexusd, tmp)
        direct_db = str(tmp / "direct.db")
        try:
            for workload in ("insert", "insert-commit", "point-read"):
                runs = []
                prepare("nexusd", sock)
                runs.append(run_processes("nexusd", sock, workload, args.processes,
                                          args.threads, args.duration, proc.pid))
                prepare("sqlite3", direct_db)
                runs.append(run_processes("sqlite3", direct_db, workload, args.processes,
                                          args.threads, args.duration, proc.pid))
                prepare("nexusd", sock)
                runs.append(run_aio(sock, workload, args.tasks, args.duration, proc.pid))
                results["workloads"][workload] = runs
            prepare("nexusd", sock)
            results["per_call"] = per_call(sock, args.nexusd)
        finally:
            proc.kill()
            proc.wait()

    if args.json:
        print(json.dumps(results))
        return
    fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"{args.processes} processes x {args.threads} threads, {args.tasks} asyncio tasks, "
          f"{args.duration:g} s each, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    for workload, runs in results["workloads"].items():
        direct = next(r for r in runs if r["setup"] == "sqlite3")["ops_per_sec"]
        print(f"\n{workload}\n| setup | ops/s | p50 ms | p99 ms | max ms | errors | vs sqlite3 "
              "| client CPU us/op | daemon CPU us/op | ceiling vs sqlite3 |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in runs:
            # What the clients alone allow: every core busy with their CPU
            # per operation, the daemon costing nothing.
            ceiling = os.cpu_count() * 1e6 / max(r["client_cpu_us"], 1e-9)
            print(f"| {r['setup']} | {r['ops_per_sec']:,.0f} | {fmt(r['p50_ms'])} | "
                  f"{fmt(r['p99_ms'])} | {fmt(r['max_ms'])} | {r['errors']} | "
                  f"{r['ops_per_sec'] / max(direct, 1e-9):.2f}x | {r['client_cpu_us']:.1f} | "
                  f"{fmt(r['daemon_cpu_us'])} | "
                  f"{'' if r['setup'] == 'sqlite3' else f'{ceiling / max(direct, 1e-9):.2f}x'} |")
    pc = results["per_call"]
    print(f"\nper call, one point read at a time (median of {len(pc['python_rounds_us'])} "
          f"interleaved rounds): Python {pc['python_us']:.1f} us, blocking Rust client "
          f"{pc['rust_us']:.1f} us: the binding adds {pc['overhead_us']:.1f} us "
          f"(async Rust client, in its runtime: {pc['rust_async_us']:.1f} us)")


if __name__ == "__main__":
    main()
