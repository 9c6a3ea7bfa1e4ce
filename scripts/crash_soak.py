"""Crash soak: ROUNDS times, kill -9 the daemon under a multi-process write
load (single-row autocommit writes and interactive transactions), restart
it on the same files, and check what survived:

- every write acknowledged before the kill is present;
- no transaction is partly applied (each has all its rows or none), and
  every acknowledged one is whole;
- PRAGMA integrity_check says ok.

    python3 scripts/crash_soak.py [--rounds 100] [--writers 4] [--json]

The daemon is $NEXUSD_BIN, else target/release/nexusd, else
target/debug/nexusd. Exits non-zero at the first round that loses
anything, with what was lost.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TXN_ROWS = 5


def nexusd_bin() -> str:
    if os.environ.get("NEXUSD_BIN"):
        return os.environ["NEXUSD_BIN"]
    for profile in ("release", "debug"):
        path = ROOT / "target" / profile / "nexusd"
        if path.exists():
            return str(path)
    sys.exit("crash_soak: no nexusd binary; run cargo build or set NEXUSD_BIN")


def start(directory: pathlib.Path) -> tuple:
    sock = directory / "nexusd.sock"
    log = open(directory / "nexusd.log", "ab")
    proc = subprocess.Popen([nexusd_bin(), "serve", "--db", str(directory / "soak.db"),
                             "--socket", str(sock)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nexusd exited with {proc.returncode}; see {directory}/nexusd.log")
        try:
            import nexusd

            nexusd.connect(str(sock), autocommit=True, client_name="soak-probe").execute(
                "SELECT 1")
            return proc, str(sock)
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.02)
    raise RuntimeError("nexusd did not come up within 30 s")


def writer(sock: str, wid: int, log_path: str, seed: int) -> None:
    """One writer process: writes until the daemon goes away, logging each
    acknowledged write (flushed before the next request)."""
    import nexusd

    rng = random.Random(seed)
    with open(log_path, "a", buffering=1) as log:
        try:
            conn = nexusd.connect(sock, autocommit=True, client_name=f"soak-{wid}", timeout=5)
        except Exception:  # noqa: BLE001 - killed before this writer connected: nothing acked
            return
        seq = 0
        while True:
            seq += 1
            try:
                if rng.random() < 0.3:
                    txn = f"{wid}-{seq}"
                    tx = nexusd.connect(sock, autocommit=False, client_name=f"soak-{wid}",
                                        timeout=5)
                    for i in range(TXN_ROWS):
                        tx.execute("INSERT INTO txn_rows(txn, i) VALUES (?, ?)", (txn, i))
                    tx.commit()
                    log.write(f"T {txn}\n")
                else:
                    conn.execute("INSERT INTO single(writer, seq) VALUES (?, ?)", (wid, seq))
                    log.write(f"S {wid} {seq}\n")
                log.flush()
            except Exception:  # noqa: BLE001 - the daemon was killed
                return


def verify(sock: str, logs: list) -> dict:
    import nexusd

    conn = nexusd.connect(sock, autocommit=True, client_name="soak-check")
    singles = {(w, s) for w, s in conn.execute("SELECT writer, seq FROM single").fetchall()}
    counts = dict(conn.execute("SELECT txn, count(*) FROM txn_rows GROUP BY txn").fetchall())
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    acked_singles, acked_txns = set(), set()
    for path in logs:
        for line in pathlib.Path(path).read_text().splitlines():
            parts = line.split()
            if parts[0] == "S":
                acked_singles.add((int(parts[1]), int(parts[2])))
            elif parts[0] == "T":
                acked_txns.add(parts[1])
    lost_singles = sorted(acked_singles - singles)
    partial = {t: n for t, n in counts.items() if n != TXN_ROWS}
    lost_txns = sorted(t for t in acked_txns if counts.get(t) != TXN_ROWS)
    return {
        "acknowledged_writes": len(acked_singles),
        "acknowledged_transactions": len(acked_txns),
        "rows": len(singles) + sum(counts.values()),
        "lost_writes": lost_singles[:10],
        "lost_transactions": lost_txns[:10],
        "partial_transactions": dict(list(partial.items())[:10]),
        "integrity": integrity,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--min-ms", type=int, default=200, help="shortest load before a kill")
    parser.add_argument("--max-ms", type=int, default=1500, help="longest load before a kill")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = random.Random(int(os.environ.get("SOAK_SEED", "7")))
    totals = {"rounds": 0, "acknowledged_writes": 0, "acknowledged_transactions": 0}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nexusd-soak-") as tmp:
        directory = pathlib.Path(tmp)
        proc, sock = start(directory)
        import nexusd

        setup = nexusd.connect(sock, autocommit=True, client_name="soak-setup")
        setup.executescript(
            "CREATE TABLE IF NOT EXISTS single(writer INTEGER, seq INTEGER, "
            "PRIMARY KEY (writer, seq));"
            "CREATE TABLE IF NOT EXISTS txn_rows(txn TEXT, i INTEGER, PRIMARY KEY (txn, i));")
        logs = []
        for r in range(args.rounds):
            round_logs = [str(directory / f"acked-{r}-{w}.log") for w in range(args.writers)]
            logs += round_logs
            writers = [subprocess.Popen(
                [sys.executable, __file__, "--writer", sock, str(r * 1000 + w), path,
                 str(rng.random())])
                for w, path in enumerate(round_logs)]
            time.sleep(rng.uniform(args.min_ms, args.max_ms) / 1000)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            for w in writers:
                try:
                    w.wait(30)
                except subprocess.TimeoutExpired:
                    w.kill()
                    raise RuntimeError("a writer did not notice the daemon's death in 30 s")
            proc, sock = start(directory)
            result = verify(sock, logs)
            totals["rounds"] += 1
            totals["acknowledged_writes"] = result["acknowledged_writes"]
            totals["acknowledged_transactions"] = result["acknowledged_transactions"]
            bad = (result["lost_writes"] or result["lost_transactions"]
                   or result["partial_transactions"] or result["integrity"] != "ok")
            if not args.json:
                print(f"round {r + 1}: {result['acknowledged_writes']} writes and "
                      f"{result['acknowledged_transactions']} transactions acknowledged so far, "
                      f"integrity {result['integrity']}"
                      + (f"; LOST {result}" if bad else ""), flush=True)
            if bad:
                proc.kill()
                print(json.dumps({"failed_round": r + 1, **result}))
                sys.exit(1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    totals["seconds"] = round(time.monotonic() - started, 1)
    totals["lost"] = 0
    print(json.dumps(totals) if args.json else
          f"{totals['rounds']} rounds of kill -9: {totals['acknowledged_writes']} writes and "
          f"{totals['acknowledged_transactions']} transactions acknowledged, none lost, none "
          f"partial, integrity ok every round ({totals['seconds']} s)")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--writer":
        writer(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    else:
        main()
