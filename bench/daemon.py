"""A nexusd daemon of a bench's own, on a temp dir, for the Python benches
in this folder (`large_read.py`, `python_ab.py`, `python_layer.py`).

    with daemon.running("target/release/nexusd") as d:
        conn = nexusd.connect(d.socket)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator


@dataclass
class Running:
    """The daemon's socket, its database file, and its process."""

    socket: str
    db: str
    process: subprocess.Popen


@contextlib.contextmanager
def running(nexusd: str, *flags: str) -> Iterator[Running]:
    """Starts `nexusd serve` with `flags` on a fresh temp dir, waits up to
    20 s for its socket (exiting with the reason if it does not come), and
    stops it and removes the dir on the way out."""
    with tempfile.TemporaryDirectory() as tmp:
        sock, db = os.path.join(tmp, "s.sock"), os.path.join(tmp, "t.db")
        process = subprocess.Popen(
            [nexusd, "serve", "--db", db, "--socket", sock, *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 20
            while not os.path.exists(sock):
                if process.poll() is not None or time.time() > deadline:
                    sys.exit(f"the daemon did not start: {nexusd}")
                time.sleep(0.05)
            yield Running(sock, db, process)
        finally:
            process.terminate()
            process.wait()
