#!/usr/bin/env bash
# Side-by-side load benchmark of Portcullis against the anchors of ../shared/bench
# (nginx as a plain proxy, HAProxy with jwt_verify, Apache + mod_auth_openidc, and
# the static0 ceiling), all in the same run, on this machine.
#
#   bash benches/load/run.sh [-d SECONDS] [-r ROUNDS] [--no-apache]
#
# It copies ../shared/bench to a scratch folder, runs its setup (Debian packages,
# keys, tokens), builds Portcullis in release mode, starts two gateways pinned to
# CPU 0 at the anchors' nice level (port 19700 with the verified-token cache, 19701 without it, so that every
# request is verified), checks that both enforce (verify.sh), then runs the harness
# at -c 1, -c 50, -c 256 and with --rotate, and writes the raw summaries to
# $SCRATCH/portcullis-results.md. Needs a quiet machine; stops what it started.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
scratch=${SCRATCH:-/tmp/portcullis-bench}
DUR=8; ROUNDS=2; APACHE=apache
while [ $# -gt 0 ]; do
  case "$1" in
    -d) DUR=$2; shift 2 ;; -r) ROUNDS=$2; shift 2 ;; --no-apache) APACHE=""; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

# Stop servers a previous run of this script left behind, before replacing the folder.
[ -x "$scratch/stop.sh" ] && "$scratch/stop.sh" >/dev/null 2>&1 || true
rm -rf "$scratch"; cp -r "$repo/../shared/bench" "$scratch"; chmod -R u+w "$scratch"
cd "$scratch"
./setup.sh
(cd "$repo" && cargo build --release --locked -p portcullis)
bin="$repo/target/release/portcullis"

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; ./stop.sh >/dev/null 2>&1 || true; }
trap cleanup EXIT
start_gateway() { # port cache
  sed -e "s|@BENCH@|$scratch|g" -e "s|@PORT@|$1|g" -e "s|@CACHE@|$2|g" "$repo/benches/load/portcullis.yaml.in" > "portcullis-$1.yaml"
  "$bin" validate --config "portcullis-$1.yaml" >/dev/null
  nice -n "${NICE:--10}" taskset -c 0 "$bin" run --no-watch --config "portcullis-$1.yaml" > "logs/portcullis-$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "portcullis on :$1 did not start" >&2; exit 1
}
./start.sh
start_gateway 19700 true
start_gateway 19701 false
./verify.sh port:19700 port:19701 haproxy ${APACHE} | tee verify.txt
grep -q "^port:19700.*ENFORCES" verify.txt && grep -q "^port:19701.*ENFORCES" verify.txt

out="$scratch/portcullis-results.md"
{ echo "# Raw results ($(date -Is))"; echo; echo '```'; cat verify.txt; echo '```'; } > "$out"
run() { # label args...
  echo "== $1" | tee -a "$out"
  QUIET_WAIT=${QUIET_WAIT:-30} ./run.sh -d "$DUR" -r "$ROUNDS" "${@:2}" | tee run.txt
  sed -n '/^| target/,$p' run.txt >> "$out"; echo >> "$out"
}
run "c=1" -c 1 port:19700 static0 nginx haproxy
run "c=50" -c 50 port:19700 port:19701 static0 nginx haproxy ${APACHE}
run "c=256" -c 256 port:19700 static0 nginx haproxy
run "c=50 rotating tokens" -c 50 --rotate port:19700 nginx haproxy
echo "wrote $out"
