#!/usr/bin/env bash
# Fuzzes each target with AFL++ for SECONDS (default 30), from the checked-in
# corpus, and fails if any target found a crash or a hang.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]    targets: frame request handshake
#
# Installs cargo-afl and builds AFL++ if they are missing. Findings land in
# target/fuzz/<target>/default/{crashes,hangs,queue}; a crash input replays
# with `target/afl/debug/fuzz-<target> < FILE`, and belongs in
# fuzz/corpus/<target>/ once fixed, so that `cargo test` replays it for good.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame request handshake)

if ! cargo afl --version >/dev/null 2>&1; then
    cargo install --locked cargo-afl
fi
# Builds AFL++ itself once per toolchain (a few minutes); after that it
# only says it was built already.
if ! built=$(cargo afl config --build 2>&1); then
    if ! grep -q "already built" <<<"$built"; then
        echo "$built" >&2
        echo "fuzz/run.sh: could not build AFL++ (cargo afl config --build)" >&2
        exit 1
    fi
fi

# A separate target directory: the instrumented build must not evict the
# plain one `cargo test` uses.
export CARGO_TARGET_DIR="$PWD/target/afl"
cargo afl build -p nexusd-fuzz --features afl --bins

# Machines here send core dumps to a handler and scale CPU frequency; AFL++
# wants neither, and neither changes what it finds.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
# Nor does it need a core of its own (it would refuse to start with every
# core busy).
export AFL_NO_UI=1 AFL_QUIET=1 AFL_SKIP_CRASHES=1 AFL_NO_AFFINITY=1

status=0
for t in "${targets[@]}"; do
    out="$PWD/target/fuzz/$t"
    rm -rf "$out"
    mkdir -p "$out"
    echo "== fuzz $t for ${seconds}s"
    cargo afl fuzz -V "$seconds" -i "fuzz/corpus/$t" -o "$out" \
        -- "$CARGO_TARGET_DIR/debug/fuzz-$t" > "$out/afl.log" 2>&1 || {
        echo "afl-fuzz failed for $t:" >&2
        tail -20 "$out/afl.log" >&2
        status=1
        continue
    }
    stats="$out/default/fuzzer_stats"
    execs=$(awk -F' *: *' '$1 == "execs_done" { print $2 }' "$stats")
    paths=$(awk -F' *: *' '$1 == "corpus_count" { print $2 }' "$stats")
    crashes=$(find "$out/default/crashes" -type f ! -name README.txt | wc -l)
    hangs=$(find "$out/default/hangs" -type f | wc -l)
    echo "fuzz $t: ${execs} executions, ${paths} inputs in the queue, ${crashes} crashes, ${hangs} hangs"
    if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
        find "$out/default/crashes" "$out/default/hangs" -type f ! -name README.txt >&2
        status=1
    fi
done
exit "$status"
