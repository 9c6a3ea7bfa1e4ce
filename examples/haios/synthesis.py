"""The synthesis batch job: derives ROWS concepts and writes them in
committed chunks, as HAIOS's `synthesis run` did over its memory database.

    python synthesis.py TARGET [--rows 1000000] [--chunk 1000] [--done FILE]

Prints JSON: rows written, seconds, and the error that stopped it, if any.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from database import connect  # noqa: E402


def derive(i: int) -> tuple:
    digest = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=32).digest()
    return (i, f"session-{i // 5000}", f"concept {i}: {digest.hex()[:48]}", digest)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--done", type=pathlib.Path)
    args = parser.parse_args()
    conn = connect(args.target)
    started = time.monotonic()
    written, error = 0, None
    try:
        for first in range(0, args.rows, args.chunk):
            batch = [derive(i) for i in range(first, min(first + args.chunk, args.rows))]
            conn.executemany("INSERT INTO concepts(id, source, content, embedding) "
                             "VALUES (?, ?, ?, ?)", batch)
            conn.commit()
            written += len(batch)
    except Exception as e:  # noqa: BLE001 - reported, as the job would log it
        error = f"{type(e).__name__}: {e}"
    finally:
        if args.done:
            args.done.write_text("done")
    print(json.dumps({"rows": written, "seconds": round(time.monotonic() - started, 2),
                      "error": error}))
    conn.close()


if __name__ == "__main__":
    main()
