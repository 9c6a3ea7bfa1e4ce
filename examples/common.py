"""What the three example apps share: where their database is (a nexusd
daemon, or a plain SQLite file), processes to start and stop, HTTP calls,
and percentiles.

Each app takes its database as a URL or a path, which is all that changes
between the two backends:

- nexusd: `sqlite+nexusd://?socket=S` (SQLAlchemy) or `nexusd.connect(S)`;
- sqlite: `sqlite:///F` (SQLAlchemy) or `sqlite3.connect(F)`.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import shutil
import socket as socketlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def nexusd_bin() -> str:
    """$NEXUSD_BIN, else the workspace's release build, else its debug one."""
    if os.environ.get("NEXUSD_BIN"):
        return os.environ["NEXUSD_BIN"]
    for profile in ("release", "debug"):
        path = ROOT / "target" / profile / "nexusd"
        if path.exists():
            return str(path)
    found = shutil.which("nexusd")
    if found:
        return found
    sys.exit("no nexusd binary: run `cargo build --release -p nexusd` or set NEXUSD_BIN")


class Daemon:
    """A nexusd daemon on a directory of its own, for one run of an app."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.socket = str(directory / "nexusd.sock")
        self.log = directory / "nexusd.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [nexusd_bin(), "serve", "--db", str(directory / "app.db"),
                 "--socket", self.socket],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        wait_for(lambda: _connects(self.socket), 20, f"nexusd on {self.socket}", self.proc,
                 self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Backend:
    """Where an app's data lives: `kind` is "nexusd" or "sqlite"."""

    def __init__(self, kind: str, directory: pathlib.Path) -> None:
        if kind not in ("nexusd", "sqlite"):
            raise ValueError(f"backend {kind!r} is not nexusd or sqlite")
        self.kind = kind
        self.dir = directory
        self.daemon = Daemon(directory) if kind == "nexusd" else None
        self.file = str(directory / "app.db")

    def url(self, asyncio: bool = False) -> str:
        """The SQLAlchemy URL: the one line an app changes."""
        if self.daemon:
            driver = "nexusd_async" if asyncio else "nexusd"
            return f"sqlite+{driver}://?socket={self.daemon.socket}"
        return f"sqlite+aiosqlite:///{self.file}" if asyncio else f"sqlite:///{self.file}"

    def stop(self) -> None:
        if self.daemon:
            self.daemon.stop()


def _connects(path: str) -> bool:
    s = socketlib.socket(socketlib.AF_UNIX)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_for(ready, seconds: float, what: str, proc=None, log=None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.02)
    detail = pathlib.Path(log).read_text()[-2000:] if log else ""
    raise RuntimeError(f"{what} did not come up within {seconds} s\n{detail}")


def free_port() -> int:
    s = socketlib.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def uvicorn(app: str, app_dir: pathlib.Path, env: dict, workers: int,
            log: pathlib.Path) -> tuple:
    """Starts `uvicorn app` on a free loopback port; returns (proc, port)
    once /health answers."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir),
             "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
             "--log-level", "warning"],
            env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def healthy() -> bool:
        try:
            return call(port, "GET", "/health")[0] == 200
        except OSError:
            return False

    wait_for(healthy, 30, f"uvicorn {app}", proc, log)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def call(port: int, method: str, path: str, body=None, timeout: float = 60) -> tuple:
    """One HTTP call: (status, decoded JSON or text, seconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.perf_counter()
    try:
        payload = json.dumps(body) if body is not None else None
        conn.request(method, path, body=payload,
                     headers={"Content-Type": "application/json"} if payload else {})
        resp = conn.getresponse()
        raw = resp.read().decode("utf-8", "replace")
        try:
            data = json.loads(raw)
        except ValueError:
            data = raw
        return resp.status, data, time.perf_counter() - started
    finally:
        conn.close()


def percentile(values: list, q: float):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, backend: str, outcomes: list) -> dict:
    """outcomes: (ok, error message or None, seconds) per call."""
    errors: dict = {}
    for ok, message, _ in outcomes:
        if not ok:
            errors[message] = errors.get(message, 0) + 1
    latencies = [s for _, _, s in outcomes]
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    return {
        "app": name,
        "backend": backend,
        "calls": len(outcomes),
        "ok": sum(1 for ok, _, _ in outcomes if ok),
        "errors": errors,
        "p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
        "p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
    }


def server_errors(log: pathlib.Path) -> dict:
    """An app answers 500 with no detail; its server log's tracebacks say
    why. Counts their last lines (SQLAlchemy's wrapping of the driver's
    error)."""
    causes: dict = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("sqlalchemy.exc."):
            causes[line[:160]] = causes.get(line[:160], 0) + 1
    return causes
