#!/usr/bin/env bash
# Memory held against the settings that bound it: each configuration is driven far past its
# bound with cold misses (every request a new key, ~1.7 KB GitHub-like answers) for DURATION,
# RSS sampled every second. Prints a Markdown table (the one in BENCHMARKS.md comes from it).
#
#   bash bench/memory.sh                  # 30 s per configuration
#   DURATION=60s bash bench/memory.sh
#
# Reported per configuration: answers stored and their weighted size against the bound
# (`ghgate_store_bytes` / `ghgate_store_hot_bytes`), RSS at start, at its peak, and its range
# over the last third of the run (flat once the bound is reached), and the growth of RSS
# over the start divided by the configured bytes.
#
# Needs wrk (Debian package `wrk`; installed when missing and running as root), curl and a
# Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30s}
case "$DURATION" in *[0-9]s) ;; *) echo "DURATION is in seconds, e.g. 30s" >&2; exit 1 ;; esac
seconds=${DURATION%s}
CONNECTIONS=${CONNECTIONS:-50}
UP_PORT=${UP_PORT:-18281}
STATS_PORT=${STATS_PORT:-18282}
PROXY_PORT=${PROXY_PORT:-18280}
ADMIN_PORT=${ADMIN_PORT:-18290}
export BENCH_LUA="$PWD/bench/lua"

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else echo "install wrk first" >&2; exit 1; fi
fi

cargo build --release --quiet --bin ghgate --example bench_upstream
work=$(mktemp -d)
cleanup() { kill "${GW_PID:-}" "${UP_PID:-}" "${WRK_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

target/release/examples/bench_upstream --port "$UP_PORT" --stats-port "$STATS_PORT" --resources 10000 --max-age 60 \
  >"$work/upstream.log" 2>&1 &
UP_PID=$!
until curl -sf -o /dev/null "http://127.0.0.1:$STATS_PORT/"; do sleep 0.05; done

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
metric() { curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m {printf "%d", $2}'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

echo "## Memory against its bounds, cold misses past the bound ($(nproc) cores, wrk -c$CONNECTIONS, $DURATION per row)"
echo
echo "| backend | cache.max_bytes | store.hot_max_bytes | answers stored | weighted bytes held | RSS start | RSS peak | RSS, last third | (peak − start) / bound |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
# backend, cache.max_bytes (MiB), store.hot_max_bytes (MiB; 0 = tier off). The memory backend
# is its memory tier, bounded by cache.max_bytes.
for config in "memory 32 -" "memory 64 -" "memory 128 -" "disk 64 0" "disk 256 0" "disk 256 64"; do
  read -r backend store_mib hot_mib <<<"$config"
  hot_bytes=$([ "$hot_mib" = "-" ] && echo 0 || echo $((hot_mib * 1024 * 1024)))
  [ "$hot_bytes" = 0 ] && hot_bytes=1 # 1 byte: no memory tier
  rm -rf "$work/data"
  GHGATE_INBOUND__LIMIT_ENABLED=false GHGATE_LOG__LEVEL=warn GHGATE_STORE__DATA_DIR="$work/data" \
    GHGATE_STORE__BACKEND="$backend" GHGATE_CACHE__MAX_BYTES=$((store_mib * 1024 * 1024)) GHGATE_STORE__HOT_MAX_BYTES="$hot_bytes" \
    target/release/ghgate serve --listen "127.0.0.1:$PROXY_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --upstream "http://127.0.0.1:$UP_PORT" >"$work/ghgate.log" 2>&1 &
  GW_PID=$!
  until curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/healthz"; do sleep 0.05; done
  start=$(rss_kib "$GW_PID")
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s bench/lua/cold.lua "http://127.0.0.1:$PROXY_PORT" >"$work/wrk.txt" &
  WRK_PID=$!
  peak=$start; tail_min=""; tail_max=0
  for s in $(seq "$seconds"); do
    sleep 1
    now=$(rss_kib "$GW_PID")
    [ "$now" -gt "$peak" ] && peak=$now
    if [ "$s" -gt $((seconds * 2 / 3)) ]; then
      [ -z "$tail_min" ] || [ "$now" -lt "$tail_min" ] && tail_min=$now
      [ "$now" -gt "$tail_max" ] && tail_max=$now
    fi
  done
  wait "$WRK_PID"
  entries=$(metric ghgate_store_entries)
  held=$(metric ghgate_store_bytes)
  bound_bytes=$((store_mib * 1024 * 1024))
  if [ "$backend" = disk ] && [ "$hot_bytes" -gt 1 ]; then
    held=$((held + $(metric ghgate_store_hot_bytes)))
    bound_bytes=$((bound_bytes + hot_bytes))
  fi
  kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
  hot_col=$([ "$hot_mib" = "-" ] && echo "—" || { [ "$hot_mib" = 0 ] && echo "off" || echo "$hot_mib MiB"; })
  held_mib=$(awk -v h="$held" 'BEGIN { printf "%.1f MiB", h / 1048576 }')
  echo "| $backend | $store_mib MiB | $hot_col | $entries | $held_mib | $(mib "$start") MiB | $(mib "$peak") MiB | $(mib "$tail_min")–$(mib "$tail_max") MiB | $(awk -v p="$peak" -v s="$start" -v b="$bound_bytes" 'BEGIN { printf "%.2f", (p - s) * 1024 / b }') |"
done
