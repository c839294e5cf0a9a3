#!/usr/bin/env bash
# Instructions per request of a Portcullis build, counted by valgrind's
# cachegrind: deterministic to about ±0.1 %, where CPU time on a shared machine
# moves by ±20 % from one run to the next (benches/load/cost.sh). Run
# benches/load/run.sh (or the harness's setup.sh) once first for the keys,
# tokens and the upstream.
#
#   bash benches/load/instructions.sh [-n REQUESTS] [-e 'YAML'] BINARY...
#
# For each binary: the harness configuration (token cache on, one worker), with
# -e's YAML appended (e.g. -e 'tracing: { enabled: true }'); the gateway runs
# under cachegrind twice, once with 20 warm-up requests only and once with N
# more cached-token requests from ab (keep-alive, 4 connections); the difference
# of the two instruction totals divided by N is the cost of one request.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
scratch=${SCRATCH:-/tmp/portcullis-bench}
N=3000; EXTRA=""
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N=$2; shift 2 ;; -e) EXTRA=$2; shift 2 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: instructions.sh [-n REQUESTS] [-e YAML] BINARY..." >&2; exit 2; }
[ -d "$scratch/tokens" ] || { echo "run benches/load/run.sh first (no $scratch)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cd "$scratch"
./start.sh >/dev/null
token=$(cat tokens/valid.jwt)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=19790
sed -e "s|@BENCH@|$scratch|g" -e "s|@PORT@|$port|g" -e "s|@CACHE@|true|g" \
  -e "s|@ENTRIES@|200000|g" -e "s|@ADMIN@|{ enabled: false }|g" \
  "$repo/benches/load/portcullis.yaml.in" > "$work/gateway.yaml"
[ -n "$EXTRA" ] && printf '%s\n' "$EXTRA" >> "$work/gateway.yaml"
url="http://127.0.0.1:$port/v1/chat/completions"
# Instructions of one gateway run that served `count` requests after the warm-up.
run() {
  local bin=$1 count=$2
  local out="$work/cg.$count.out"
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$out" \
    "$bin" run --no-watch --config "$work/gateway.yaml" >/dev/null 2>"$work/valgrind.log" &
  local pid=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "$url" && break; sleep 0.3; done
  ab -q -k -n 20 -c 1 -H "Authorization: Bearer $token" "$url" >/dev/null
  if [ "$count" -gt 0 ]; then
    ab -q -k -n "$count" -c 4 -H "Authorization: Bearer $token" "$url" >/dev/null
  fi
  kill -TERM "$pid"; wait "$pid" || true
  awk '/^summary:/ {print $2}' "$out"
}
printf '%-40s %16s\n' binary "instructions/req"
for bin in "$@"; do
  base=$(run "$bin" 0); loaded=$(run "$bin" "$N")
  printf '%-40s %16d\n' "$bin" $(( (loaded - base) / N ))
done
