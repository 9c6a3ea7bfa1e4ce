"""Nexus under the seed report's load: uvicorn with 4 worker processes, and
a driver that fires the report's seven waves of concurrent calls (wave 3 is
five concurrent skills_list calls), `--rounds` times over.

    python examples/nexus/run.py --backend nexusd   # or: --backend sqlite

Prints a JSON summary: calls, successes (HTTP 200), errors by message, and
p50/p99 of the calls' latency.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import Backend, call, server_errors, stop, summary, uvicorn  # noqa: E402

HOME = "/tenant:default/user:admin"


def waves() -> list:
    """The report's seven waves: (method, arguments) per call, all the
    calls of a wave fired at once."""
    lst = lambda p: ("list", {"path": p})  # noqa: E731
    skills = ("skills_list", {})
    return [
        [("list_mounts", {}), lst("/"), lst("/tenant:default/"), lst(f"{HOME}/")],
        [("list_agents", {}), ("rebac_list_tuples", {}), ("list_workspaces", {})],
        [skills] * 5,
        [lst(f"{HOME}/{d}/") for d in ("skill", "agent", "workspace", "connector", "memory")],
        [skills] * 3,
        [("sandbox_get_or_create", {"name": "admin,ImpersonatedUser"}),
         ("sandbox_get_or_create", {"name": "admin,UntrustedAgent"})],
        [skills] * 10 + [("read", {"path": f"{HOME}/skill/{s}/SKILL.md"})
                         for s in ("docx", "pdf", "xlsx", "internal-comms")],
    ]


def one(port: int, method: str, args: dict) -> tuple:
    try:
        status, body, seconds = call(port, "POST", f"/api/nfs/{method}", args)
    except OSError as e:
        return False, f"{type(e).__name__}: {e}", 0.0
    if status == 200:
        return True, None, seconds
    detail = body.get("detail") if isinstance(body, dict) else str(body)[:200]
    return False, f"HTTP {status}: {detail}", seconds


def run(kind: str, rounds: int = 3, workdir: pathlib.Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="nexus-") as tmp:
        directory = pathlib.Path(workdir or tmp)
        backend = Backend(kind, directory)
        env = {"NEXUS_DB_URL": backend.url()}
        try:
            subprocess.run([sys.executable, str(HERE / "app.py"), "--init"],
                           env={**os.environ, **env}, check=True)
            server, port = uvicorn("app:app", HERE, env, 4, directory / "uvicorn.log")
            outcomes = []
            try:
                with ThreadPoolExecutor(max_workers=16) as pool:
                    for _ in range(rounds):
                        for wave in waves():
                            outcomes += list(pool.map(lambda c: one(port, *c), wave))
            finally:
                stop(server)
            causes = server_errors(directory / "uvicorn.log")
        finally:
            backend.stop()
    result = summary("nexus", kind, outcomes)
    result["server_errors"] = causes
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["nexusd", "sqlite"], default="nexusd")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.backend, args.rounds), indent=2))


if __name__ == "__main__":
    main()
