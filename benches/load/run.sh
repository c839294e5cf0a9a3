#!/usr/bin/env bash
# Side-by-side load benchmark of Portcullis against the anchors of ../shared/bench
# (nginx as a plain proxy, HAProxy with jwt_verify, Apache + mod_auth_openidc, and
# the static0 ceiling), all in the same run, on this machine. Writes BENCHMARKS.md.
#
#   bash benches/load/run.sh [-d SECONDS] [-r ROUNDS] [--no-apache]
#
# It copies ../shared/bench to a scratch folder, runs its setup (Debian packages,
# keys, tokens), signs FRESH_TOKENS (default 100,000) more distinct tokens, builds
# Portcullis in release mode and starts three gateways pinned to CPU 0 at the
# anchors' nice level, all with the anchors' checks:
#   19700  verified-token cache on
#   19701  cache off: every request is verified
#   19702  cache on with room for 1,000 tokens (admin on 19712), for the run in
#          which the 100,000 fresh tokens come in turn: every request carries a
#          token the cache does not hold (wrk restarts the list at the same place
#          each run, so a token comes back only after tens of thousands of others), and
#          pays for lookup, verification, insert and eviction
# It records 19700's idle RSS, checks that all three enforce (verify.sh), runs the
# harness at -c 1, -c 50, -c 256, with --rotate (1,000 tokens) and with the fresh
# tokens, then writes the tables (req/s, p50, p99, peak RSS, paired ratios to nginx
# and HAProxy) into BENCHMARKS.md between its load-benchmark markers and the raw
# summaries to benches/load/results/. Needs a quiet machine; stops what it started.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
scratch=${SCRATCH:-/tmp/portcullis-bench}
DUR=8; ROUNDS=2; APACHE=apache; FRESH=${FRESH_TOKENS:-100000}
while [ $# -gt 0 ]; do
  case "$1" in
    -d) DUR=$2; shift 2 ;; -r) ROUNDS=$2; shift 2 ;; --no-apache) APACHE=""; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command="bash benches/load/run.sh -d $DUR -r $ROUNDS"; [ -n "$APACHE" ] || command+=" --no-apache"

# Stop servers a previous run of this script left behind, before replacing the folder.
[ -x "$scratch/stop.sh" ] && "$scratch/stop.sh" >/dev/null 2>&1 || true
rm -rf "$scratch"; cp -r "$repo/../shared/bench" "$scratch"; chmod -R u+w "$scratch"
cd "$scratch"
./setup.sh
.venv/bin/python "$repo/benches/load/fresh_tokens.py" "$FRESH" tokens/fresh_many.txt
(cd "$repo" && cargo build --release --locked -p portcullis)
bin="$repo/target/release/portcullis"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  [ -f tokens/valid_many.txt.kept ] && mv -f tokens/valid_many.txt.kept tokens/valid_many.txt
  ./stop.sh >/dev/null 2>&1 || true
}
trap cleanup EXIT
start_gateway() { # port cache max_entries admin
  sed -e "s|@BENCH@|$scratch|g" -e "s|@PORT@|$1|g" -e "s|@CACHE@|$2|g" \
    -e "s|@ENTRIES@|$3|g" -e "s|@ADMIN@|$4|g" \
    "$repo/benches/load/portcullis.yaml.in" > "portcullis-$1.yaml"
  "$bin" validate --config "portcullis-$1.yaml" >/dev/null
  nice -n "${NICE:--10}" taskset -c 0 "$bin" run --no-watch --config "portcullis-$1.yaml" > "logs/portcullis-$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "portcullis on :$1 did not start" >&2; exit 1
}
./start.sh
start_gateway 19700 true 200000 "{ enabled: false }"
sleep 2
idle_rss=$(awk '/VmRSS/{printf "%.1f", $2 / 1024}' "/proc/${pids[0]}/status")
start_gateway 19701 false 200000 "{ enabled: false }"
start_gateway 19702 true 1000 '{ address: "127.0.0.1:19712" }'
./verify.sh port:19700 port:19701 port:19702 haproxy ${APACHE} | tee verify.txt
for port in 19700 19701 19702; do grep -q "^port:$port.*ENFORCES" verify.txt; done

out="$scratch/portcullis-results.md"
{ echo "# Raw results ($(date -Is))"; echo; echo '```'; cat verify.txt; echo '```'; } > "$out"
cases=()
run() { # label args...
  echo "== $1" | tee -a "$out"
  QUIET_WAIT=${QUIET_WAIT:-30} ./run.sh -d "$DUR" -r "$ROUNDS" "${@:2}" | tee run.txt
  sed -n '/^| target/,$p' run.txt >> "$out"; echo >> "$out"
  cases+=("$1=$scratch/$(sed -n 's/^== \(results\/[^ ]*\) .*/\1/p' run.txt)")
}
run "c = 50" -c 50 port:19700 port:19701 static0 nginx haproxy ${APACHE}
run "c = 1" -c 1 port:19700 static0 nginx haproxy
run "c = 256" -c 256 port:19700 static0 nginx haproxy
run "c = 50, 1,000 distinct tokens in rotation (--rotate)" -c 50 --rotate port:19700 nginx haproxy
mv tokens/valid_many.txt tokens/valid_many.txt.kept
cp tokens/fresh_many.txt tokens/valid_many.txt
run "c = 50, a new token on every request ($FRESH fresh tokens in turn, --rotate)" \
  -c 50 --rotate port:19702 port:19701 haproxy
mv -f tokens/valid_many.txt.kept tokens/valid_many.txt

# The fresh-token gateway's own count of what its cache did.
counter() { curl -s http://127.0.0.1:19712/metrics | awk -v r="$1" \
  '$1 ~ /^portcullis_token_cache_total/ && index($1, "result=\"" r "\"") {print $2}'; }
hits=$(counter hit); misses=$(counter miss); evictions=$(counter eviction)
cache_note=$(awk -v h="${hits:-0}" -v m="${misses:-0}" -v e="${evictions:-0}" 'BEGIN {
  printf "Token cache of the fresh-token gateway (19702) over all its requests: %d hits, %d misses, %d evictions (%.2f %% hits).", h, m, e, (h + m) ? 100 * h / (h + m) : 0 }')
echo "$cache_note" | tee -a "$out"

stamp=$(date +%Y-%m-%d-%H%M)
mkdir -p "$repo/benches/load/results"
cp "$out" "$repo/benches/load/results/$stamp.md"
.venv/bin/python "$repo/benches/load/report.py" --harness "$scratch" \
  --benchmarks "$repo/BENCHMARKS.md" --command "$command" --verify verify.txt \
  --name "port:19700=Portcullis, token cache" \
  --name "port:19701=Portcullis, cache off (RS256 on every request)" \
  --name "port:19702=Portcullis, cache on, a token it has not seen on every request" \
  --name "static0=static0 (nginx answering itself)" --name "nginx=nginx (plain proxy, no auth)" \
  --name "haproxy=HAProxy (jwt_verify)" --name "apache=Apache + mod_auth_openidc" \
  --note "Layout: every proxy under test pinned to CPU 0, wrk -t1 and the upstream nginx on CPU 1, everything at nice -10, keep-alive; Portcullis runs workers: 1 with benches/load/portcullis.yaml.in (the anchors' checks; access log off as in the anchors)." \
  --note "Idle RSS of the token-cache gateway 2 s after start: $idle_rss MiB. Peak RSS is per run; the same gateway process serves every run it appears in." \
  --note "$cache_note" \
  --note "Raw summaries: benches/load/results/$stamp.md." \
  "${cases[@]}"
echo "wrote $out, benches/load/results/$stamp.md and BENCHMARKS.md"
