#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the end-to-end tests
# in tests/ (real gateway, authorization server and upstream on 127.0.0.1), then
# prints one total line ("tests: N passed, N failed").
# Installs nothing beyond the Rust toolchain today; add installs here when a test
# needs a third-party tool, so that a fresh machine runs the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
