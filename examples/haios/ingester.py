"""The ingester: stores items one at a time, each committed on its own, the
way an MCP `ingester_ingest` tool call does, until `--done` appears.

    python ingester.py TARGET --done FILE [--pause-ms 5]

Prints JSON: per item, whether it was acknowledged, its error and latency.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from database import connect  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--done", type=pathlib.Path, required=True)
    parser.add_argument("--pause-ms", type=float, default=5)
    parser.add_argument("--min-items", type=int, default=50)
    args = parser.parse_args()
    conn = connect(args.target)
    items = []
    n = 0
    while not args.done.exists() or n < args.min_items:
        n += 1
        started = time.perf_counter()
        try:
            cur = conn.execute("INSERT INTO artifacts(session, content, created_at) "
                               "VALUES (?, ?, ?)", ("mcp", f"artifact {n}", time.time()))
            conn.commit()
            items.append({"id": cur.lastrowid, "ok": True, "error": None,
                          "seconds": time.perf_counter() - started})
        except Exception as e:  # noqa: BLE001 - the tool call reports it
            try:
                conn.rollback()
            except Exception:  # noqa: BLE001
                pass
            items.append({"id": None, "ok": False, "error": f"{type(e).__name__}: {e}",
                          "seconds": time.perf_counter() - started})
        time.sleep(args.pause_ms / 1000)
    print(json.dumps(items))
    conn.close()


if __name__ == "__main__":
    main()
