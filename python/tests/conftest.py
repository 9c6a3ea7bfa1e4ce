"""Fixtures: the real nexusd binary on a temp dir, stopped after each test."""

import os
import pathlib
import socket as socketlib
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def nexusd_bin() -> str:
    """$NEXUSD_BIN, else the workspace's debug build (scripts/test.sh builds
    it first)."""
    path = os.environ.get("NEXUSD_BIN") or str(ROOT / "target" / "debug" / "nexusd")
    if not os.path.exists(path):
        pytest.exit(f"{path} is missing: run `cargo build -p nexusd` or set NEXUSD_BIN", 2)
    return path


class Daemon:
    def __init__(self, tmp: pathlib.Path, *flags: str) -> None:
        self.dir = tmp
        self.db = tmp / "test.db"
        self.socket = str(tmp / "nexusd.sock")
        self.log = tmp / "nexusd.log"
        self.flags = flags
        self.proc = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [nexusd_bin(), "serve", "--db", str(self.db), "--socket", self.socket,
                 *self.flags],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                s = socketlib.socket(socketlib.AF_UNIX)
                s.connect(self.socket)
                s.close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.01)
        raise RuntimeError(f"nexusd did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.stop()


@pytest.fixture
def make_daemon(tmp_path):
    """Starts daemons with extra `serve` flags, each on a dir of its own."""
    made = []

    def make(*flags):
        d_dir = tmp_path / f"d{len(made)}"
        d_dir.mkdir()
        d = Daemon(d_dir, *flags)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()
