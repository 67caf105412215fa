#!/usr/bin/env bash
# Cache-hit throughput and latency of ghgate over loopback, against the same requests sent
# straight to the upstream in the same run; then ghgate's RSS with 10,000 cached entries.
#
#   bash bench/hit_path.sh            # defaults: 10 s per run, 50 connections
#   DURATION=30s CONNECTIONS=100 bash bench/hit_path.sh
#
# Needs wrk (Debian package `wrk`; installed when missing and running as root) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
ENTRIES=${ENTRIES:-10000}
UP_PORT=${UP_PORT:-18181}
GW_PORT=${GW_PORT:-18080}
ADMIN_PORT=${ADMIN_PORT:-18090}
TOKEN="token bench-token-0001"

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq wrk >/dev/null; else echo "install wrk first" >&2; exit 1; fi
fi

cargo build --release --quiet --bin ghgate --example bench_upstream
work=$(mktemp -d)
cleanup() { kill "${GW_PID:-}" "${UP_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

target/release/examples/bench_upstream --port "$UP_PORT" --resources "$ENTRIES" >"$work/upstream.log" 2>&1 &
UP_PID=$!
env ${GATEWAY_ENV:-} GHGATE_INBOUND__LIMIT_ENABLED=false GHGATE_LOG__LEVEL=warn GHGATE_STORE__DATA_DIR="$work/data" \
  target/release/ghgate serve --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --upstream "http://127.0.0.1:$UP_PORT" >"$work/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null && curl -sf -o /dev/null "http://127.0.0.1:$UP_PORT/repos/octo/hello" && break
  sleep 0.1
done

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
metric() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v s="$1" '$1 == s {print $2}'; }

# Warm the one hot entry, then load both targets with the same request.
curl -sf -o /dev/null -H "Authorization: $TOKEN" "http://127.0.0.1:$GW_PORT/repos/octo/hello"
run() {
  wrk -t1 -c"${3:-$CONNECTIONS}" -d"$DURATION" --latency -H "Authorization: $TOKEN" "$1" >"$work/$2.txt"
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' "$work/$2.txt")
  p50=$(awk '$1 == "50%" {print $2}' "$work/$2.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$work/$2.txt")
  echo "$rps $p50 $p99"
}
read -r up_rps up_p50 up_p99 < <(run "http://127.0.0.1:$UP_PORT/repos/octo/hello" upstream)
read -r gw_rps gw_p50 gw_p99 < <(run "http://127.0.0.1:$GW_PORT/repos/octo/hello" gateway)
# One connection: the time one request takes, without queueing behind others.
read -r up1_rps up1_p50 up1_p99 < <(run "http://127.0.0.1:$UP_PORT/repos/octo/hello" upstream1 1)
read -r gw1_rps gw1_p50 gw1_p99 < <(run "http://127.0.0.1:$GW_PORT/repos/octo/hello" gateway1 1)
hits=$(metric 'ghgate_requests_total{outcome="hit"}')
upstream_2xx=$(metric 'ghgate_upstream_requests_total{status="2xx"}')

# Fill ENTRIES distinct entries and measure RSS.
rss_before=$(rss_kib "$GW_PID")
seq 0 $((ENTRIES - 1)) | awk -v p="$GW_PORT" '{printf "url = \"http://127.0.0.1:%s/bench/%d\"\noutput = /dev/null\n", p, $1}' >"$work/urls.cfg"
curl -s --parallel --parallel-max 32 -H "Authorization: $TOKEN" -K "$work/urls.cfg"
entries=$(metric ghgate_store_entries)
store_bytes=$(metric ghgate_store_bytes)
hot_bytes=$(metric ghgate_store_hot_bytes)
rss_after=$(rss_kib "$GW_PID")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "## ghgate cache hits vs. the upstream, same requests, one run ($(nproc) cores, wrk -t1 -c$CONNECTIONS -d$DURATION)"
echo
echo "| target | requests/s | p50 | p99 |"
echo "|---|---:|---:|---:|"
echo "| upstream direct (baseline) | $up_rps | $up_p50 | $up_p99 |"
echo "| ghgate, cache hits | $gw_rps | $gw_p50 | $gw_p99 |"
echo "| ratio ghgate / baseline (throughput) | $(ratio "$gw_rps" "$up_rps") | | |"
echo "| upstream direct, 1 connection | $up1_rps | $up1_p50 | $up1_p99 |"
echo "| ghgate cache hits, 1 connection | $gw1_rps | $gw1_p50 | $gw1_p99 |"
echo "| ratio ghgate / baseline, 1 connection | $(ratio "$gw1_rps" "$up1_rps") | | |"
echo
echo "hits counted by ghgate: $hits; upstream 2xx answers during the run: $upstream_2xx"
echo
echo "## memory with $ENTRIES cached entries (~1.7 KB bodies)"
echo
echo "| | value |"
echo "|---|---:|"
echo "| RSS before filling | $((rss_before / 1024)) MiB |"
echo "| RSS after filling | $((rss_after / 1024)) MiB |"
echo "| entries in store | $entries |"
echo "| disk store bytes (weighted) | $store_bytes |"
echo "| memory tier bytes (weighted) | $hot_bytes |"
