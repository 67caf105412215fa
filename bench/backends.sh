#!/usr/bin/env bash
# Cache-hit throughput and latency with each store backend (memory, disk, redis), one run,
# as ratios against memory; and Redis round trips per cache hit (from Redis's own command
# counters). Needs wrk, curl and redis-server (Debian packages).
#
#   bash bench/backends.sh        # DURATION=10s CONNECTIONS=50 by default
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
UP_PORT=${UP_PORT:-18281}
GW_PORT=${GW_PORT:-18280}
ADMIN_PORT=${ADMIN_PORT:-18290}
REDIS_PORT=${REDIS_PORT:-18279}
TOKEN="token bench-token-0001"

cargo build --release --quiet --bin ghgate --example bench_upstream
work=$(mktemp -d)
cleanup() { kill "${GW_PID:-}" "${UP_PID:-}" "${REDIS_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

target/release/examples/bench_upstream --port "$UP_PORT" --resources 10 >"$work/upstream.log" 2>&1 &
UP_PID=$!
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
REDIS_PID=$!
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done

redis_calls() { redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[=,:]' '/^cmdstat_(get|set|del|evalsha|eval)/ {n += $3} END {print n + 0}'; }

declare -A RPS P50 P99 TRIPS
# "disk-cold" and "redis-cold" turn the memory tier off (1 byte), so every hit is read from
# the backend: what a replica pays for an entry another replica (or an earlier run) stored.
for run in memory disk redis disk-cold redis-cold; do
  backend=${run%-cold}
  hot=$([ "$run" = "$backend" ] && echo 64MiB || echo 1)
  env GHGATE_INBOUND__LIMIT_ENABLED=false GHGATE_LOG__LEVEL=warn GHGATE_STORE__HOT_MAX_BYTES=$hot GHGATE_STORE__DATA_DIR="$work/data-$backend" GHGATE_STORE__BACKEND=$backend \
    GHGATE_STORE__REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    target/release/ghgate serve --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --upstream "http://127.0.0.1:$UP_PORT" >"$work/gateway-$backend.log" 2>&1 &
  GW_PID=$!
  until curl -sf "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null; do sleep 0.1; done
  curl -sf -o /dev/null -H "Authorization: $TOKEN" "http://127.0.0.1:$GW_PORT/repos/octo/hello"
  before=$(redis_calls)
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "Authorization: $TOKEN" \
    "http://127.0.0.1:$GW_PORT/repos/octo/hello" >"$work/$run.txt"
  after=$(redis_calls)
  requests=$(awk '/requests in/ {print $1}' "$work/$run.txt")
  RPS[$run]=$(awk '/^Requests\/sec/ {print $2}' "$work/$run.txt")
  P50[$run]=$(awk '$1 == "50%" {print $2}' "$work/$run.txt")
  P99[$run]=$(awk '$1 == "99%" {print $2}' "$work/$run.txt")
  TRIPS[$run]=$(awk -v a="$after" -v b="$before" -v n="$requests" 'BEGIN { printf "%.4f", (a - b) / n }')
  kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "## cache hits by store backend, one run ($(nproc) cores, wrk -t1 -c$CONNECTIONS -d$DURATION)"
echo
echo "| backend | requests/s | vs memory | p50 | p99 | Redis commands per hit |"
echo "|---|---:|---:|---:|---:|---:|"
for run in memory disk redis disk-cold redis-cold; do
  echo "| $run | ${RPS[$run]} | $(ratio "${RPS[$run]}" "${RPS[memory]}") | ${P50[$run]} | ${P99[$run]} | ${TRIPS[$run]} |"
done
