#!/usr/bin/env bash
# Where the daemon's CPU goes under load, as a flamegraph: starts a daemon
# on a temp dir, loads it with `nexusd bench` (64 clients over 8 processes),
# samples the daemon's threads with `perf record --call-graph dwarf` for a
# few seconds in the middle of the run, and draws the stacks with inferno.
# The bench's own processes are not sampled: the chart is the daemon alone,
# kernel time included.
#
# Usage: bench/flamegraph.sh [--workload insert|point-read|tpcb]
#                            [--seconds 2] [--out docs/flamegraph-insert.svg]
#                            [--folded FILE]   (also keep the folded stacks)
# Needs perf (linux-perf) and inferno (`cargo install inferno`), and root or
# kernel.perf_event_paranoid <= 1 to sample the daemon.
set -euo pipefail

workload=insert
seconds=2
out=""
folded=""
while [ $# -gt 0 ]; do
    case "$1" in
        --workload) workload="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --folded) folded="$2"; shift 2 ;;
        *) echo "flamegraph.sh: unknown argument $1; see the usage at the top of $0" >&2; exit 2 ;;
    esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${out:-$root/docs/flamegraph-$workload.svg}"
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    if ! command -v "$tool" > /dev/null; then
        echo "flamegraph.sh: $tool is missing; install perf (apt-get install linux-perf) and inferno (cargo install inferno)" >&2
        exit 1
    fi
done

echo "flamegraph.sh: building nexusd (release)" >&2
(cd "$root" && cargo build --quiet --release -p nexusd)
bin="$root/target/release/nexusd"
work="$(mktemp -d)"
daemon=""
cleanup() {
    [ -n "$daemon" ] && kill "$daemon" 2> /dev/null && wait "$daemon" 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$bin" serve --db "$work/db.sqlite" --socket "$work/nexusd.sock" > "$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do
    [ -S "$work/nexusd.sock" ] && break
    sleep 0.05
done
[ -S "$work/nexusd.sock" ] || { echo "flamegraph.sh: the daemon did not start; its log:" >&2; cat "$work/daemon.log" >&2; exit 1; }

# The bench runs a second before and a second after the sample.
"$bin" bench --socket "$work/nexusd.sock" --workload "$workload" --clients 64 --processes 8 \
    --duration "$((seconds + 2))" --json > "$work/bench.json" 2> "$work/bench.log" &
bench=$!
sleep 1
echo "flamegraph.sh: sampling the daemon (pid $daemon) for $seconds s under $workload" >&2
perf record --quiet -F 499 --call-graph dwarf,16384 -p "$daemon" -o "$work/perf.data" \
    -- sleep "$seconds" 2> "$work/perf.log" || { cat "$work/perf.log" >&2; exit 1; }
wait "$bench" || { echo "flamegraph.sh: the bench failed:" >&2; cat "$work/bench.log" >&2; exit 1; }

perf script -i "$work/perf.data" 2> /dev/null | inferno-collapse-perf > "$work/folded"
ops="$(python3 - "$work/bench.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
per_op = r["daemon_cpu_s"] / max(r["ops"], 1) * 1e6
print(f"{r['ops_per_sec']:,.0f}/s, {per_op:.1f} us of daemon CPU per op")
PY
)"
inferno-flamegraph --minwidth 0.5 --title "nexusd daemon, $workload, 64 clients over 8 processes ($ops)" \
    --subtitle "perf record -F 499 --call-graph dwarf, $seconds s, $(nproc) cores" \
    "$work/folded" > "$out"
[ -n "$folded" ] && cp "$work/folded" "$folded"
echo "flamegraph.sh: $ops; wrote $out" >&2

# The same samples as a table: each thread's share, and within it the
# share in user space and in each system call (the first __x64_sys_ frame
# of a stack; "other kernel" is time in the kernel outside a named call:
# interrupts, and scheduling on the way back to user space).
python3 - "$work/folded" <<'PY'
import sys
from collections import Counter, defaultdict

total, threads = 0, defaultdict(Counter)
for line in open(sys.argv[1]):
    stack, n = line.rsplit(" ", 1)
    frames, n = stack.split(";"), int(n)
    total += n
    where = next((f[len("__x64_sys_"):] for f in frames if f.startswith("__x64_sys_")), None)
    if where is None:
        kernel = any(f in ("entry_SYSCALL_64_after_hwframe", "do_syscall_64", "asm_exc_page_fault",
                           "asm_sysvec_apic_timer_interrupt",
                           "asm_common_interrupt") or f.endswith("_[k]") for f in frames)
        where = "other kernel" if kernel else "user"
    threads[frames[0]][where] += n
print("| thread | share | user | system calls (share of all samples) |")
print("| --- | ---: | ---: | --- |")
for name, parts in sorted(threads.items(), key=lambda kv: -sum(kv[1].values())):
    calls = ", ".join(f"{k} {v / total:.1%}" for k, v in parts.most_common() if k != "user")
    print(f"| {name} | {sum(parts.values()) / total:.1%} | {parts['user'] / total:.1%} | {calls} |")
PY
