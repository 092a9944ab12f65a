#!/usr/bin/env bash
# HTTP throughput of trivial executions over keep-alive connections.
#
#   benches/load.sh [connections] [seconds]
#
# Builds the release binary, starts it on a loopback port and drives it with wrk
# (installed from Debian if missing). Prints wrk's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
connections="${1:-32}"
seconds="${2:-10}"
port="${SANDGATE_BENCH_PORT:-18420}"

if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --quiet

work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/policies"
cat > "$work/policies/bench.toml" <<'TOML'
# No rate limit: the load test measures the server, not the policy.
[[policy]]
name = "bench"
principals = ["*"]
[policy.limits]
TOML
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"code": "return 1 + 1"}'
wrk.headers["Content-Type"] = "application/json"
LUA
SANDGATE_CACHE_DIR="$work/cache" SANDGATE_LEDGER="$work/ledger.db" \
  target/release/sandgate serve --listen "127.0.0.1:$port" --policies "$work/policies" >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/v1/execute" -d '{"code":"return 1 + 1"}' >/dev/null
wrk -t1 -c"$connections" -d"${seconds}s" --latency -s "$work/post.lua" "http://127.0.0.1:$port/v1/execute"
