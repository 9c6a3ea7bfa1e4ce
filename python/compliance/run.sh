#!/usr/bin/env bash
# SQLAlchemy's dialect compliance suite against a real nexusd daemon, once
# per dialect (sqlite+nexusd and sqlite+nexusd_async), each on a fresh
# daemon and database.
#
#   python/compliance/run.sh [--doc docs/sqlalchemy-compliance.md]
#
# Prints one "compliance <dialect>: N passed, N skipped, N failed" line per
# dialect; exits non-zero if a test failed. --doc rewrites the document that
# lists every skipped test and its reason. $NEXUSD_BIN picks the daemon
# binary (default: the workspace's debug build).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${NEXUSD_BIN:-$root/target/debug/nexusd}
doc=""
if [ "${1:-}" = "--doc" ]; then doc=${2:?--doc needs a file}; fi
[ -x "$bin" ] || { echo "run.sh: $bin is missing: run cargo build -p nexusd or set NEXUSD_BIN" >&2; exit 2; }

work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

status=0
for dialect in nexusd nexusd_async; do
    mkdir -p "$work/$dialect"
    sock="$work/$dialect/nexusd.sock"
    "$bin" serve --db "$work/$dialect/suite.db" --socket "$sock" 2>"$work/$dialect/daemon.log" &
    pid=$!
    for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
    if [ ! -S "$sock" ]; then
        echo "run.sh: nexusd did not start:" >&2; cat "$work/$dialect/daemon.log" >&2; exit 1
    fi
    (cd "$here" && python3 -m pytest -q -p no:cacheprovider --tb=short \
        --dburi "sqlite+$dialect://?socket=$sock" --junitxml "$work/$dialect.xml" \
        >"$work/$dialect.log" 2>&1)
    rc=$?
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=""
    counts=$(python3 "$here/skips.py" --counts "$work/$dialect.xml")
    echo "compliance sqlite+$dialect: $counts"
    if [ "$rc" != 0 ]; then
        status=1
        grep -E "^(FAILED|ERROR)" "$work/$dialect.log" >&2 || tail -30 "$work/$dialect.log" >&2
    fi
done
if [ -n "$doc" ]; then
    python3 "$here/skips.py" --doc "$doc" "$work/nexusd.xml" "$work/nexusd_async.xml"
fi
exit $status
