#!/usr/bin/env bash
# CPU cost per request of Portcullis builds and of nginx's plain proxy, on the
# anchor harness that benches/load/run.sh prepared (run that once first).
#
#   bash benches/load/cost.sh [-r ROUNDS] [-c CONNECTIONS] BINARY[@EXTRA.yaml]...
#
# Each binary is started pinned to CPU 0 with the harness configuration (token cache
# on), then wrk (CPU 1) runs 5 s against each binary and against the nginx proxy in
# turn, ROUNDS times. For every run it prints req/s and the CPU time the process
# spent per request (utime+stime from /proc/PID/stat, divided by the requests wrk
# completed). CPU per request moves far less with the load generator's speed than
# req/s does, so it tells two builds apart where req/s ratios are lost in the noise.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
scratch=${SCRATCH:-/tmp/portcullis-bench}
ROUNDS=5; CONNS=50
while [ $# -gt 0 ]; do
  case "$1" in
    -r) ROUNDS=$2; shift 2 ;; -c) CONNS=$2; shift 2 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: cost.sh [-r ROUNDS] [-c CONNECTIONS] BINARY[@EXTRA.yaml]..." >&2; exit 2; }
[ -d "$scratch/tokens" ] || { echo "run benches/load/run.sh first (no $scratch)" >&2; exit 1; }
cd "$scratch"
./start.sh >/dev/null
token=$(cat tokens/valid.jwt)
tick=$(getconf CLK_TCK)
names=(); ports=(); pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
i=0
for target in "$@"; do
  # BINARY, or BINARY@FILE: FILE's YAML is appended to the harness configuration
  # (e.g. a rate_limits block), so one build can run beside itself configured
  # otherwise.
  bin=${target%%@*}; extra=""
  [ "$target" != "$bin" ] && extra=${target#*@}
  port=$((19760 + i))
  sed -e "s|@BENCH@|$scratch|g" -e "s|@PORT@|$port|g" -e "s|@CACHE@|true|g" \
    -e "s|@ENTRIES@|200000|g" -e "s|@ADMIN@|{ enabled: false }|g" \
    "$repo/benches/load/portcullis.yaml.in" > "cost-$port.yaml"
  [ -n "$extra" ] && cat "$extra" >> "cost-$port.yaml"
  nice -n -10 taskset -c 0 "$bin" run --no-watch --config "cost-$port.yaml" > "logs/cost-$port.log" 2>&1 &
  pids+=($!); ports+=("$port"); names+=("$target"); i=$((i + 1))
done
# The nginx proxy's worker: the child of the master whose pid file start.sh wrote.
nginx_worker=$(pgrep -P "$(cat run/nginx-proxy.pid)" | head -1)
ports+=(18081); pids+=(""); names+=("nginx (plain proxy)")
sleep 1
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
printf '%-40s %6s %10s %14s\n' target round "req/s" "CPU µs/req"
for round in $(seq 1 "$ROUNDS"); do
  for j in "${!ports[@]}"; do
    pid=${pids[$j]:-$nginx_worker}
    before=$(cpu_ticks "$pid")
    out=$(nice -n -10 taskset -c 1 wrk -t1 -c"$CONNS" -d5s -H "Authorization: Bearer $token" \
      "http://127.0.0.1:${ports[$j]}/v1/chat/completions")
    after=$(cpu_ticks "$pid")
    requests=$(awk '/requests in/{print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    cost=$(awk -v a="$before" -v b="$after" -v t="$tick" -v n="$requests" 'BEGIN{printf "%.1f", (b-a)*1e6/t/n}')
    printf '%-40s %6s %10s %14s\n' "${names[$j]}" "$round" "$rps" "$cost"
  done
done
