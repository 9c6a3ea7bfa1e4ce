#!/usr/bin/env python3
"""What the Python driver's DB-API layer costs per call, by itself.

    python3 bench/python_layer.py [--calls 300000] [--rounds 3]
                                  [--nexusd target/release/nexusd]

It connects to a daemon of its own, then replaces the connection's native
client with one that answers every statement at once with a one-row
result, so the loop
(`cursor.execute()` of a point read, then `fetchone()`) times only the
Python code between the caller and the native layer: classification,
transaction mode, parameters, the result's description and rows. Needs
the built package (`pip install ./python`). Run it on the same machine
before and after a change to the driver; the figure is per call, in
microseconds.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

# Run from a checkout, the folder above holds python/ without the built
# native module: use the installed package.
_root = str(pathlib.Path(__file__).resolve().parent.parent)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _root]

import daemon  # noqa: E402  (bench/daemon.py)
import nexusd  # noqa: E402


class _AnswersAtOnce:
    """Stands in for the native client: a point read's answer, no I/O."""

    pid = os.getpid()

    def run(self, sql: str, params: object) -> tuple:
        return ("rows", ["v"], [(b"x" * 100,)], None, 0, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nexusd", default=str(pathlib.Path(_root) / "target/release/nexusd"))
    args = ap.parse_args()
    with daemon.running(args.nexusd) as d:
        sock = d.socket
        conn = nexusd.connect(sock, isolation_level=None)
        conn._shared = _AnswersAtOnce()
        cursor = conn.cursor()
        for _ in range(args.rounds):
            began = time.perf_counter()
            for i in range(args.calls):
                cursor.execute("SELECT v FROM t WHERE id = ?", (i,))
                cursor.fetchone()
            per_call = (time.perf_counter() - began) / args.calls * 1e6
            print(f"execute + fetchone, the Python layer alone: {per_call:.2f} us")


if __name__ == "__main__":
    main()
