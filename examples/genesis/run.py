"""Genesis under the seed report's load: 50 concurrent POSTs to /api/chat
on a fresh database, then a look at how many default conversations exist.

    python examples/genesis/run.py --backend nexusd   # or: --backend sqlite

Prints a JSON summary: successes (HTTP 200), errors by message, p50/p99,
and the number of default conversations (exactly one is right).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import Backend, call, server_errors, stop, summary, uvicorn  # noqa: E402


def one(port: int, i: int) -> tuple:
    try:
        status, body, seconds = call(port, "POST", "/api/chat", {"message": f"test {i}"})
    except OSError as e:
        return False, f"{type(e).__name__}: {e}", 0.0
    if status == 200:
        return True, None, seconds
    return False, f"HTTP {status}: {str(body)[:200]}", seconds


def run(kind: str, requests: int = 50) -> dict:
    with tempfile.TemporaryDirectory(prefix="genesis-") as tmp:
        directory = pathlib.Path(tmp)
        backend = Backend(kind, directory)
        try:
            server, port = uvicorn("app:app", HERE, {"GENESIS_DB_URL": backend.url(asyncio=True)},
                                   1, directory / "uvicorn.log")
            try:
                with ThreadPoolExecutor(max_workers=requests) as pool:
                    outcomes = list(pool.map(lambda i: one(port, i), range(requests)))
                status, body, _ = call(port, "GET", "/api/conversations")
                causes = server_errors(directory / "uvicorn.log")
            finally:
                stop(server)
        finally:
            backend.stop()
    result = summary("genesis", kind, outcomes)
    convs = body.get("conversations", []) if status == 200 else []
    result["default_conversations"] = sum(1 for c in convs if c["is_default"])
    result["messages"] = sum(c["messages"] for c in convs)
    result["server_errors"] = causes
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["nexusd", "sqlite"], default="nexusd")
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(run(args.backend, args.requests), indent=2))


if __name__ == "__main__":
    main()
