#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need
# (Node.js and the third-party authorization servers oauth2-mock-server for
# tests/third_party_idp.rs and oidc-provider for tests/introspection.rs; kubernetes-validate for tests/deploy_manifests.rs;
# promtool, from Debian's prometheus package, for the alert-rule tests;
# Debian's chromium and playwright-core for tests/status_page.rs;
# redis-server for tests/rate_limits_redis.rs; the official MCP, OpenAI and
# Anthropic Python SDKs for tests/mcp_sdk.rs and tests/streaming_hygiene.rs),
# then unit tests of every crate and the end-to-end
# tests in tests/ (real gateways, authorization servers and upstreams on
# 127.0.0.1), then prints one total line ("tests: N passed, N failed").
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "== installing Node.js (Debian packages)"
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -d tests/third_party/node_modules/oauth2-mock-server ] \
   || [ ! -d tests/third_party/node_modules/oidc-provider ] \
   || [ ! -d tests/third_party/node_modules/playwright-core ] \
   || [ tests/third_party/package-lock.json -nt tests/third_party/node_modules/.package-lock.json ]; then
  echo "== npm ci (tests/third_party: oauth2-mock-server, oidc-provider, playwright-core)"
  npm ci --prefix tests/third_party --no-audit --no-fund --loglevel=error
fi

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (Debian package) for the status-page browser test"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian package prometheus) for the alert-rule tests"
  # Only the tool is wanted: the package must not start a Prometheus server.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created_policy=1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server (Debian package) for tests/rate_limits_redis.rs"
  # Only the binary is wanted: each test starts its own server on a free port.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created_policy=1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

if [ ! -x target/sdk-venv/bin/python ] || ! target/sdk-venv/bin/python -c 'import mcp, uvicorn, openai, anthropic' 2>/dev/null; then
  echo "== pip install the official SDKs: mcp (tests/mcp_sdk.rs), openai and anthropic (tests/streaming_hygiene.rs)"
  python3 -m venv target/sdk-venv
  target/sdk-venv/bin/pip install -q --disable-pip-version-check mcp==2.3.0 openai==3.51.0 anthropic==2.10.0
fi

if [ ! -x target/deploy-venv/bin/kubernetes-validate ]; then
  echo "== pip install kubernetes-validate (offline Kubernetes schema checks of deploy/)"
  python3 -m venv target/deploy-venv
  target/deploy-venv/bin/pip install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
