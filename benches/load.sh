#!/usr/bin/env bash
# HTTP throughput of trivial executions over keep-alive connections.
#
#   benches/load.sh [connections] [seconds]
#
# SANDGATE_BENCH_BINARY=path runs that binary instead (to compare two builds);
# otherwise it builds the release binary, starts it on a loopback port on its embedded defaults and
# drives it with wrk (installed from Debian if missing). Prints wrk's summary; any
# response other than a 200 shows there as "Non-2xx or 3xx responses".
set -euo pipefail
cd "$(dirname "$0")/.."
connections="${1:-32}"
seconds="${2:-10}"
port="${SANDGATE_BENCH_PORT:-18420}"

if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
binary="${SANDGATE_BENCH_BINARY:-}"
if [ -z "$binary" ]; then
  cargo build --release --quiet
  binary="$PWD/target/release/sandgate"
fi

work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"code": "return 1 + 1"}'
wrk.headers["Content-Type"] = "application/json"
LUA
# The embedded defaults: no configuration, no ./policies (the server starts in an
# empty directory), so the local user's shipped policy applies, with no rate limit.
(cd "$work" && SANDGATE_CACHE_DIR="$work/cache" SANDGATE_LEDGER="$work/ledger.db" \
  exec "$binary" serve --listen "127.0.0.1:$port" >"$work/out" 2>"$work/err") &
server=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/v1/execute" --json '{"code":"return 1 + 1"}' >/dev/null
wrk -t1 -c"$connections" -d"${seconds}s" --latency -s "$work/post.lua" "http://127.0.0.1:$port/v1/execute"
