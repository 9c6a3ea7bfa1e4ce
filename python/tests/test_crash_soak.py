"""The crash soak (scripts/crash_soak.py), a few rounds: kill -9 of the
daemon under writes and transactions from several processes, then every
acknowledged write present, no transaction partial, integrity ok. The
100-round run is in docs/operations.md."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import nexusd

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "crash_soak.py"


def load():
    spec = importlib.util.spec_from_file_location("crash_soak", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_rounds_of_kill_9_lose_nothing():
    from conftest import nexusd_bin

    out = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "3", "--json"],
                         env={**os.environ, "NEXUSD_BIN": nexusd_bin()},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rounds"] == 3 and result["lost"] == 0, result
    assert result["acknowledged_writes"] > 0 and result["acknowledged_transactions"] > 0, result


def test_the_check_finds_a_lost_write_and_a_partial_transaction(daemon, tmp_path):
    soak = load()
    conn = nexusd.connect(daemon.socket, autocommit=True)
    conn.executescript("CREATE TABLE single(writer INTEGER, seq INTEGER, PRIMARY KEY (writer, seq));"
                       "CREATE TABLE txn_rows(txn TEXT, i INTEGER, PRIMARY KEY (txn, i));")
    conn.execute("INSERT INTO single VALUES (1, 1)")
    conn.executemany("INSERT INTO txn_rows VALUES ('1-2', ?)", [(i,) for i in range(2)])
    log = tmp_path / "acked.log"
    log.write_text("S 1 1\nS 1 3\nT 1-2\n")
    result = soak.verify(daemon.socket, [str(log)])
    assert result["lost_writes"] == [(1, 3)], result
    assert result["lost_transactions"] == ["1-2"], result
    assert result["partial_transactions"] == {"1-2": 2}, result
    assert result["integrity"] == "ok"


def test_a_writer_started_after_the_kill_leaves_an_empty_log(tmp_path):
    # A short round can kill the daemon before a writer connects: that
    # writer acknowledged nothing, and its log must say so, not be missing.
    soak = load()
    log = tmp_path / "acked.log"
    soak.writer(str(tmp_path / "gone.sock"), 1, str(log), 7)
    assert log.exists() and log.read_text() == ""
