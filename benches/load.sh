#!/usr/bin/env bash
# HTTP throughput of trivial executions over keep-alive connections, and the floor:
# the same requests against a bare axum server that parses the body and answers
# (examples/floor.rs), so the ratio to what this machine's HTTP stack allows is
# printed beside the figure.
#
#   benches/load.sh [connections] [seconds]
#
# SANDGATE_BENCH_FLOOR=0 skips the floor.
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
floor="${SANDGATE_BENCH_FLOOR:-1}"
if [ "$floor" != 0 ]; then
  cargo build --release --quiet --example floor
fi

work="$(mktemp -d)"
floor_server=
trap 'kill "$server" $floor_server 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"code": "return 1 + 1"}'
wrk.headers["Content-Type"] = "application/json"
LUA
# The compile cache filled first (a one-off `exec` ends once the optimised code is
# cached), so the load meets Cranelift's code, not Winch's while Cranelift compiles.
(cd "$work" && echo 'return 1' | SANDGATE_CACHE_DIR="$work/cache" SANDGATE_LEDGER="$work/warm.db" \
  "$binary" exec - >/dev/null 2>&1)
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
wrk -t1 -c"$connections" -d"${seconds}s" --latency -s "$work/post.lua" "http://127.0.0.1:$port/v1/execute" | tee "$work/sandgate.txt"
kill "$server"
wait "$server" 2>/dev/null || true
[ "$floor" != 0 ] || exit 0

floor_port=$((port + 1))
"$PWD/target/release/examples/floor" "127.0.0.1:$floor_port" &
floor_server=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$floor_port/healthz" >/dev/null && break
  sleep 0.1
done
echo
echo "floor: a bare axum server, same requests (examples/floor.rs)"
wrk -t1 -c"$connections" -d"${seconds}s" --latency -s "$work/post.lua" "http://127.0.0.1:$floor_port/v1/execute" | tee "$work/floor.txt"
rate() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
awk -v s="$(rate "$work/sandgate.txt")" -v f="$(rate "$work/floor.txt")" \
  'BEGIN { printf "\nsandgate %.0f/s, floor %.0f/s: %.1f%% of the floor\n", s, f, 100 * s / f }'
