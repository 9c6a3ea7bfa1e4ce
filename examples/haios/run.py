"""HAIOS under the seed report's load: the synthesis job writes ROWS
concepts in committed chunks while the ingester, another process, stores
items one at a time.

    python examples/haios/run.py --backend nexusd   # or: --backend sqlite

Prints a JSON summary of the ingester's calls (successes, errors by
message, p50/p99), the synthesis job's outcome, and whether every
acknowledged row is there.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import Backend, summary  # noqa: E402
from database import connect, init  # noqa: E402


def run(kind: str, rows: int = 1_000_000, chunk: int = 1000) -> dict:
    with tempfile.TemporaryDirectory(prefix="haios-") as tmp:
        directory = pathlib.Path(tmp)
        backend = Backend(kind, directory)
        target = (f"nexusd:{backend.daemon.socket}" if backend.daemon
                  else f"sqlite:{backend.file}")
        try:
            init(target)
            done = directory / "synthesis.done"
            synthesis = subprocess.Popen(
                [sys.executable, str(HERE / "synthesis.py"), target, "--rows", str(rows),
                 "--chunk", str(chunk), "--done", str(done)],
                stdout=subprocess.PIPE, text=True)
            ingester = subprocess.Popen(
                [sys.executable, str(HERE / "ingester.py"), target, "--done", str(done)],
                stdout=subprocess.PIPE, text=True)
            synthesis_out, _ = synthesis.communicate()
            ingester_out, _ = ingester.communicate()
            job = json.loads(synthesis_out)
            items = json.loads(ingester_out)
            conn = connect(target)
            acked = [i["id"] for i in items if i["ok"]]
            present = {r[0] for r in conn.execute("SELECT id FROM artifacts").fetchall()}
            concepts = conn.execute("SELECT count(*) FROM concepts").fetchone()[0]
            conn.close()
        finally:
            backend.stop()
    result = summary("haios", kind, [(i["ok"], i["error"], i["seconds"]) for i in items])
    result["synthesis"] = {**job, "rows_present": concepts}
    result["acknowledged_missing"] = len([i for i in acked if i not in present])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["nexusd", "sqlite"], default="nexusd")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps(run(args.backend, args.rows, args.chunk), indent=2))


if __name__ == "__main__":
    main()
