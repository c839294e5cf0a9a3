#!/usr/bin/env bash
# What reading token usage costs on a streamed answer: instructions per
# streamed response (valgrind's cachegrind, deterministic to about ±0.1 %)
# of the same gateway relaying the same OpenAI-style event stream from
# benches/load/sse_upstream.py (CHUNKS events, one write each, then a usage
# chunk), once through an upstream with `provider: openai_compatible` (usage
# read as the stream passes) and once through a plain upstream (relayed only).
#
#   bash benches/load/stream_usage.sh [-n RESPONSES] [-c CHUNKS] [-t ROUNDS] BINARY
#
# With -t ROUNDS it also measures CPU time (user + system, from /proc, so the
# kernel's share of relaying each event counts too) per streamed response of
# the gateway running natively, plain and usage alternating for ROUNDS paired
# rounds of RESPONSES each, and prints the medians and the median paired ratio.
#
# Loopback only; every process it starts is stopped when it ends.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
N=300; CHUNKS=200; ROUNDS=0
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N=$2; shift 2 ;; -c) CHUNKS=$2; shift 2 ;; -t) ROUNDS=$2; shift 2 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -eq 1 ] || { echo "usage: stream_usage.sh [-n RESPONSES] [-c CHUNKS] [-t ROUNDS] BINARY" >&2; exit 2; }
bin=$1
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
work=$(mktemp -d)
upstream_pid=""
cleanup() { [ -n "$upstream_pid" ] && kill "$upstream_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
up_port=19795; gw_port=19796
python3 "$repo/benches/load/sse_upstream.py" "$up_port" "$CHUNKS" &
upstream_pid=$!
for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$up_port/" && break; sleep 0.1; done
config() { # provider line
  cat <<YAML
listen: { address: 127.0.0.1:$gw_port }
admin: { enabled: false }
workers: 1
logging: { level: warn, access_log: false }
upstreams:
  ai:
    targets: ["http://127.0.0.1:$up_port"]
$1
routes:
  - { name: chat, match: { path_prefix: /v1/ }, upstream: ai, public: true }
YAML
}
url="http://127.0.0.1:$gw_port/v1/chat/completions"
# curl, not ab: ab cannot read chunked answers on kept-alive connections.
requests() { # count: that many requests, two at a time, on kept-alive connections
  local list="$work/requests.$1"
  [ -f "$list" ] || for _ in $(seq 1 "$1"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url"; done > "$list"
  curl -s --no-progress-meter --parallel --parallel-max 2 -K "$list" 2>/dev/null
}
run() { # config count
  local out="$work/cg.out"
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$out" \
    "$bin" run --no-watch --config "$1" >/dev/null 2>"$work/valgrind.log" &
  local pid=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "$url" && break; sleep 0.3; done
  requests 5
  if [ "$2" -gt 0 ]; then requests "$2"; fi
  kill -TERM "$pid"; wait "$pid" || true
  awk '/^summary:/ {print $2}' "$out"
}
config "" > "$work/plain.yaml"
config "    provider: openai_compatible" > "$work/usage.yaml"
printf '%-34s %22s\n' "upstream ($CHUNKS events a response)" "instructions/response"
for kind in plain usage; do
  base=$(run "$work/$kind.yaml" 0); loaded=$(run "$work/$kind.yaml" "$N")
  per=$(( (loaded - base) / N ))
  printf '%-34s %22d\n' "$kind" "$per"
  eval "per_$kind=$per"
done
awk -v p="$per_plain" -v u="$per_usage" 'BEGIN { printf "usage reading adds %.2f %%\n", (u - p) * 100 / p }'

[ "$ROUNDS" -gt 0 ] || exit 0
# CPU ticks (user + system) of a process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
cpu_round() { # config -> microseconds of gateway CPU per response
  "$bin" run --no-watch --config "$1" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "$url" && break; sleep 0.1; done
  requests 20
  local before; before=$(ticks "$pid")
  requests "$N"
  local after; after=$(ticks "$pid")
  kill -TERM "$pid"; wait "$pid" || true
  awk -v a="$after" -v b="$before" -v hz="$hz" -v n="$N" 'BEGIN { printf "%.1f", (a - b) * 1e6 / hz / n }'
}
: > "$work/cpu"
for r in $(seq 1 "$ROUNDS"); do
  p=$(cpu_round "$work/plain.yaml"); u=$(cpu_round "$work/usage.yaml")
  echo "$p $u" >> "$work/cpu"
  echo "round $r: plain $p us, usage $u us per response"
done
sort -n -k1 "$work/cpu" | awk '{a[NR]=$1} END {printf "median CPU per response, plain: %s us\n", a[int((NR+1)/2)]}'
sort -n -k2 "$work/cpu" | awk '{a[NR]=$2} END {printf "median CPU per response, usage: %s us\n", a[int((NR+1)/2)]}'
awk '{print $2 / $1}' "$work/cpu" | sort -n | awk '{a[NR]=$1} END {printf "median paired ratio usage/plain: %.3f\n", a[int((NR+1)/2)]}'
