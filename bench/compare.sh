#!/usr/bin/env bash
# Puts nexusd beside the other ways to share one durable database on one
# host, on the same workload: single-row inserts of a 100-byte blob, one at
# a time per client, from $CLIENTS clients, every commit durable.
#
#   nexusd          nexusd bench (clients spread over $PROCESSES processes)
#   direct          the same processes, each client its own SQLite
#                   connection (WAL, busy_timeout 5000 ms, synchronous=FULL)
#   in-process      one SQLite connection, 1,000 rows per transaction
#   PostgreSQL      pgbench -c $CLIENTS -j $PROCESSES, default settings
#                   (fsync=on, synchronous_commit=on), over a Unix socket
#   dqlite          dqlite-benchmark kvwrite, one node, $CLIENTS workers
#
# With --workload tpcb, the workload is pgbench's default TPC-B-like script
# at scale 1 instead: nexusd runs it as interactive transactions (nexusd
# bench --workload tpcb, with direct and in-process baselines) beside
# pgbench's builtin tpcb-like on the same clients; dqlite is left out (it
# has no such benchmark).
#
# With --workload point-read, the workload is reads of one row by primary
# key from a table of 10,000 (nexusd bench --workload point-read, with its
# baselines) beside pgbench running the same SELECT as a prepared statement
# (-M prepared) over its Unix socket; dqlite is left out. Run it with
# --clients 1 --processes 1 for one client's round trip.
#
# Usage: bench/compare.sh [--workload insert|tpcb|point-read] [--duration SECONDS]
#                         [--clients N] [--processes P] [--out DIR]
# Installs postgresql and go-dqlite through apt when they are missing
# (as root, or through sudo). Prints one table; --out also keeps the raw
# results, compare.json (the input of bench/chart.py) and compare.md.
set -euo pipefail

DURATION=10
CLIENTS=64
PROCESSES=8
OUT=""
WORKLOAD=insert
while [ $# -gt 0 ]; do
    case "$1" in
        --workload) WORKLOAD="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --processes) PROCESSES="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument '$1'; see --help" >&2; exit 2 ;;
    esac
done
case "$WORKLOAD" in
    insert|tpcb|point-read) ;;
    *) echo "compare.sh: --workload '$WORKLOAD' is not one of insert, tpcb, point-read" >&2; exit 2 ;;
esac
for v in DURATION CLIENTS PROCESSES; do
    if ! [[ "${!v}" =~ ^[1-9][0-9]*$ ]]; then
        echo "compare.sh: --${v,,} '${!v}' must be a positive whole number" >&2
        exit 2
    fi
done

root="$(cd "$(dirname "$0")/.." && pwd)"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v pgbench >/dev/null || missing+=(postgresql)
[ "$WORKLOAD" != insert ] || command -v dqlite-benchmark >/dev/null || missing+=(go-dqlite)
if [ ${#missing[@]} -gt 0 ]; then
    echo "compare.sh: installing ${missing[*]} through apt" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
pgbin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"

echo "compare.sh: building nexusd (release)" >&2
(cd "$root" && cargo build --release -q -p nexusd)
nexusd="$root/target/release/nexusd"

work="$(mktemp -d /tmp/nexusd-compare.XXXXXX)"
chmod 755 "$work"
pg_started=""
cleanup() {
    if [ -n "$pg_started" ]; then
        run_pg "$pgbin/pg_ctl" -D "$work/pg/data" -m fast stop >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL refuses to run as root; run it as the postgres user then.
run_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

echo "compare.sh: nexusd, direct and in-process ($DURATION s each)" >&2
"$nexusd" bench --workload "$WORKLOAD" --clients "$CLIENTS" --processes "$PROCESSES" \
    --duration "$DURATION" --baseline --json --dir "$work/nexusd" >"$work/nexusd.json"

echo "compare.sh: PostgreSQL pgbench ($DURATION s)" >&2
mkdir -p "$work/pg/sock" "$work/pg/log"
[ "$(id -u)" = 0 ] && chown -R postgres "$work/pg"
run_pg "$pgbin/initdb" -D "$work/pg/data" -U bench --auth=trust >/dev/null
run_pg "$pgbin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w \
    -o "-k $work/pg/sock -c listen_addresses='' -c max_connections=$((CLIENTS + 20))" start >/dev/null
pg_started=1
psql_() { run_pg psql -q -h "$work/pg/sock" -U bench -v ON_ERROR_STOP=1 "$@"; }
psql_ -d postgres -c "CREATE DATABASE bench" >/dev/null
psql_ -d bench -c "CREATE TABLE bench(id bigserial PRIMARY KEY, payload bytea)" >/dev/null
psql_ -d bench -Atc "SHOW fsync; SHOW synchronous_commit; SHOW server_version" >"$work/pg/settings"
echo "INSERT INTO bench(payload) VALUES (decode(repeat('ab', 100), 'hex'));" >"$work/pg/insert.sql"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg/insert.sql"
if [ "$WORKLOAD" = tpcb ]; then
    run_pg pgbench -i -s 1 -q -h "$work/pg/sock" -U bench bench >/dev/null 2>&1
    script=(-b tpcb-like)
elif [ "$WORKLOAD" = point-read ]; then
    psql_ -d bench -c "INSERT INTO bench(payload) SELECT decode(repeat('ab', 100), 'hex') FROM generate_series(1, 10000)" >/dev/null
    printf '%s\n' '\set id random(1, 10000)' 'SELECT payload FROM bench WHERE id = :id;' >"$work/pg/select.sql"
    [ "$(id -u)" = 0 ] && chown postgres "$work/pg/select.sql"
    script=(-n -M prepared -f "$work/pg/select.sql")
else
    script=(-n -f "$work/pg/insert.sql")
fi
(cd "$work/pg/log" && run_pg pgbench "${script[@]}" -h "$work/pg/sock" -U bench -c "$CLIENTS" -j "$PROCESSES" \
    -T "$DURATION" -l --log-prefix="$work/pg/log/pgbench_log" bench) >"$work/pg/pgbench.out" 2>&1
run_pg "$pgbin/pg_ctl" -D "$work/pg/data" -m fast stop >/dev/null
pg_started=""

if [ "$WORKLOAD" = insert ]; then
    echo "compare.sh: dqlite-benchmark ($DURATION s)" >&2
    port=$((20000 + RANDOM % 20000))
    dqlite-benchmark --db "127.0.0.1:$port" --driver --cluster "127.0.0.1:$port" \
        --dir "$work/dqlite" --duration "$DURATION" --workers "$CLIENTS" \
        --key-size 16 --value-size 100 >"$work/dqlite.out" 2>&1
fi

python3 - "$work" "$DURATION" "$CLIENTS" "$PROCESSES" "${OUT:-}" "$WORKLOAD" <<'PY'
import glob, json, os, re, shutil, sys

work, duration, clients, processes, out, workload = sys.argv[1:7]
duration = float(duration)

def quantiles(lat_ms):
    lat_ms.sort()
    if not lat_ms:
        return None, None, None
    q = lambda f: lat_ms[min(len(lat_ms) - 1, int(f * len(lat_ms)))]
    return q(0.50), q(0.99), lat_ms[-1]

bench = json.load(open(os.path.join(work, "nexusd.json")))
runs = []
for r in bench["runs"]:
    name = r["setup"].split(":")[0]
    runs.append({"setup": name, "detail": r["setup"] if ":" in r["setup"] else "nexusd: nexusd bench, the clients of a process share one connection", "ops_per_sec": r["ops_per_sec"],
                 "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"],
                 "errors": r["errors"], "probe_p99_ms": r.get("probe_p99_ms")})
# The in-process row has no per-request latency; it commits 1,000 at a time.
runs[-1].update(p50_ms=None, p99_ms=None, max_ms=None)

pg = open(os.path.join(work, "pg", "pgbench.out")).read()
tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", pg)
failed = re.search(r"number of failed transactions: (\d+)", pg)
if not tps:
    sys.exit("compare.sh: could not read pgbench's output:\n" + pg)
lat = []
for f in glob.glob(os.path.join(work, "pg", "log", "pgbench_log*")):
    for line in open(f):
        parts = line.split()
        if len(parts) >= 3:
            lat.append(int(parts[2]) / 1000.0)
p50, p99, mx = quantiles(lat)
settings = open(os.path.join(work, "pg", "settings")).read().split()
what = {"tpcb": "pgbench -b tpcb-like, scale 1",
        "point-read": "pgbench -M prepared, SELECT payload FROM bench WHERE id = :id"}.get(workload, "pgbench")
runs.append({"setup": "PostgreSQL", "detail": f"PostgreSQL: {settings[2]}, {what}, fsync={settings[0]}, synchronous_commit={settings[1]}",
             "ops_per_sec": float(tps.group(1)), "p50_ms": p50, "p99_ms": p99, "max_ms": mx,
             "errors": int(failed.group(1)) if failed else 0})

n = n_err = 0
lat = []
dqlite_files = glob.glob(os.path.join(work, "dqlite", "*", "results", "*")) if workload == "insert" else []
for f in dqlite_files:
    in_measurements = False
    for line in open(f):
        parts = line.split()
        if line.startswith("n_err "):
            n_err += int(parts[1])
        elif line.startswith("n "):
            n += int(parts[1])
        elif line.startswith("measurements"):
            in_measurements = True
        elif line.startswith("errors"):
            in_measurements = False
        elif in_measurements and len(parts) == 2:
            lat.append(float(parts[1]))
if workload == "insert":
    if n == 0 and n_err == 0:
        sys.exit("compare.sh: dqlite-benchmark left no results:\n" + open(os.path.join(work, "dqlite.out")).read())
    p50, p99, mx = quantiles(lat)
    runs.append({"setup": "dqlite", "detail": "dqlite: dqlite-benchmark kvwrite (INSERT OR REPLACE of a 100-byte value), one node; its workers do not retry 'database is locked'",
                 "ops_per_sec": n / duration, "p50_ms": p50, "p99_ms": p99, "max_ms": mx, "errors": n_err})

base = runs[0]["ops_per_sec"]
fmt = lambda v: "" if v is None else f"{v:.2f}"
title = {"tpcb": "TPC-B-like transactions (pgbench's script, scale 1)",
         "point-read": "point reads by primary key (10,000 rows)"}.get(workload, "single-row durable inserts")
unit = {"tpcb": "transactions/s", "point-read": "reads/s"}.get(workload, "inserts/s")
lines = [f"{title}, {clients} clients, {duration:g} s each, {os.cpu_count()} cores", "",
         f"| setup | {unit} | p50 ms | p99 ms | max ms | errors | nexusd is |",
         "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
for r in runs:
    ratio = "" if r is runs[0] else f"{base / max(r['ops_per_sec'], 1e-9):.2f}x"
    lines.append(f"| {r['setup']} | {r['ops_per_sec']:,.0f} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | "
                 f"{fmt(r['max_ms'])} | {r['errors']} | {ratio} |")
lines.append("")
for r in runs:
    lines.append(f"- {r['detail']}")
if runs[0].get("probe_p99_ms") is not None:
    lines.append(f"- single writes from another process while nexusd ran the transactions: p99 {runs[0]['probe_p99_ms']:.2f} ms")
table = "\n".join(lines)
print(table)
if out:
    os.makedirs(out, exist_ok=True)
    summary = {"workload": f"{workload} (compare.sh)", "clients": int(clients), "processes": int(processes),
               "duration_s": duration, "cores": os.cpu_count(),
               "runs": [{"setup": r["setup"], "ops_per_sec": r["ops_per_sec"], "p50_ms": r["p50_ms"],
                         "p99_ms": r["p99_ms"], "max_ms": r["max_ms"], "errors": r["errors"]} for r in runs]}
    stem = "compare" if workload == "insert" else f"compare-{workload}"
    json.dump(summary, open(os.path.join(out, f"{stem}.json"), "w"), indent=1)
    open(os.path.join(out, f"{stem}.md"), "w").write(table + "\n")
    prefix = "" if workload == "insert" else f"{stem}-"
    shutil.copy(os.path.join(work, "nexusd.json"), os.path.join(out, f"{prefix}nexusd-bench.json"))
    shutil.copy(os.path.join(work, "pg", "pgbench.out"), os.path.join(out, f"{prefix}pgbench.out"))
PY
