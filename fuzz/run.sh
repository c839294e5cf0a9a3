#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 45) each, from its seed corpus in
# fuzz/corpus/<target> (new inputs are added there), and prints one line per
# target with the executions reached and their rate. A crash stops the run with
# libFuzzer's report; its input lands in fuzz/artifacts/<target>/ and becomes a
# regression test by copying it into the corpus folder (or a unit test).
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]
#
# Uses the machine's stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo fuzz pass its
# -Z sanitizer flags to it.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-45}; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list 2>/dev/null)
export RUSTC_BOOTSTRAP=1
cargo fuzz build >/dev/null
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  if ! cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"; echo "fuzz: $t FAILED"; rm -f "$log"; exit 1
  fi
  execs=$(awk -F: '/stat::number_of_executed_units/ {gsub(/ /,"",$NF); print $NF}' "$log")
  rate=$(awk -F: '/stat::average_exec_per_sec/ {gsub(/ /,"",$NF); print $NF}' "$log")
  printf 'fuzz: %-20s %10s executions in %ss (%s/s)\n' "$t" "${execs:-?}" "$seconds" "${rate:-?}"
  rm -f "$log"
done
