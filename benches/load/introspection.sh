#!/usr/bin/env bash
# A cached introspected (opaque) token against a cached JWT, on the anchor
# harness that benches/load/run.sh prepared (run that once first).
#
#   bash benches/load/introspection.sh [-r ROUNDS] [-c CONNECTIONS] BINARY
#
# Two instances of BINARY run pinned to CPU 0: one with the harness
# configuration (issuer `bench`, RS256 JWTs from static keys), one where the
# route's issuer is `opaque` (tokens: opaque, introspected at a small loopback
# endpoint that says every token is active). wrk (CPU 1) runs 5 s against each
# in turn, ROUNDS times, each with its own kind of token; after the first
# request both are served from the token cache. Prints req/s and CPU µs per
# request (as cost.sh does), then the introspection calls the endpoint got.
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
[ $# -eq 1 ] || { echo "usage: introspection.sh [-r ROUNDS] [-c CONNECTIONS] BINARY" >&2; exit 2; }
bin=$1
[ -d "$scratch/tokens" ] || { echo "run benches/load/run.sh first (no $scratch)" >&2; exit 1; }
cd "$scratch"
./start.sh >/dev/null
jwt=$(cat tokens/valid.jwt)
opaque="bench-opaque-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
tick=$(getconf CLK_TCK)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# The introspection endpoint: every token active for an hour, for the route's
# audience and scope; it counts the calls it gets.
intro_port=19799
python3 - "$intro_port" > logs/introspection-endpoint.log 2>&1 <<'PY' &
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
calls = 0
class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global calls
        self.rfile.read(int(self.headers.get("content-length", 0)))
        calls += 1
        body = json.dumps({"active": True, "aud": "bench-gateway", "scope": "chat:write",
                           "exp": int(time.time()) + 3600, "client_id": "bench"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        body = json.dumps({"calls": calls}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
PY
pids+=($!)

render() { # PORT
  sed -e "s|@BENCH@|$scratch|g" -e "s|@PORT@|$1|g" -e "s|@CACHE@|true|g" \
    -e "s|@ENTRIES@|200000|g" -e "s|@ADMIN@|{ enabled: false }|g" \
    "$repo/benches/load/portcullis.yaml.in"
}
render 19770 > intro-jwt.yaml
render 19771 | sed -e 's|issuers: \[bench\]|issuers: [opaque]|' \
  -e "s|^issuers:|issuers:\n  opaque:\n    issuer: \"https://auth.bench.local/\"\n    tokens: opaque\n    introspection: { endpoint: \"http://127.0.0.1:$intro_port/introspect\", client_id: gw, client_secret: s }|" \
  > intro-opaque.yaml
names=("cached JWT" "cached opaque token"); ports=(19770 19771); tokens=("$jwt" "$opaque")
for conf in intro-jwt.yaml intro-opaque.yaml; do
  nice -n -10 taskset -c 0 "$bin" run --no-watch --config "$conf" > "logs/$conf.log" 2>&1 &
  pids+=($!)
done
gw_pids=("${pids[1]}" "${pids[2]}")
sleep 1
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
printf '%-24s %6s %10s %14s\n' target round "req/s" "CPU µs/req"
for round in $(seq 1 "$ROUNDS"); do
  for j in 0 1; do
    before=$(cpu_ticks "${gw_pids[$j]}")
    out=$(nice -n -10 taskset -c 1 wrk -t1 -c"$CONNS" -d5s -H "Authorization: Bearer ${tokens[$j]}" \
      "http://127.0.0.1:${ports[$j]}/v1/chat/completions")
    after=$(cpu_ticks "${gw_pids[$j]}")
    requests=$(awk '/requests in/{print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/{print $NF}' <<<"$out")
    cost=$(awk -v a="$before" -v b="$after" -v t="$tick" -v n="$requests" 'BEGIN{printf "%.1f", (b-a)*1e6/t/n}')
    printf '%-24s %6s %10s %14s%s\n' "${names[$j]}" "$round" "$rps" "$cost" "${non2xx:+  ($non2xx non-2xx!)}"
  done
done
echo "introspection calls: $(curl -s "http://127.0.0.1:$intro_port/")"
