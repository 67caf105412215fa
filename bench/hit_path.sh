#!/usr/bin/env bash
# Cache-hit throughput and latency of ghgate over loopback, as a share of the physical limit:
# a bare hyper server (examples/bare_hyper.rs) answering the same bytes, in the same run.
# Optionally a second ghgate binary (BASELINE_BIN, e.g. the previous commit's) runs in the
# same alternation, so a change is measured against what it replaced. Then ghgate's RSS with
# 10,000 cached entries.
#
#   bash bench/hit_path.sh                         # 10 s per run, 50 connections, 5 rounds
#   RUNS=7 DURATION=5s bash bench/hit_path.sh
#   BASELINE_BIN=/tmp/ghgate-before bash bench/hit_path.sh
#   BODY_URLS=40 bash bench/hit_path.sh            # bodies with 40 URLs to rewrite
#
# Each round loads every target once, in turn (bare, ghgate[, baseline]); the table gives per
# target the median of the rounds with the range (min–max) of throughput, the median p50 and
# p99, and the median CPU time the server spent per answer (from /proc: less noisy than
# throughput on a shared machine, and independent of the load generator). THREADS sets wrk's
# threads (default 1); after the rounds, wrk with one more thread is run against the bare
# server, to show whether the load generator set the pace (on 2 cores it often does for the
# bare server: then the CPU columns are the ones to read).
#
# Needs wrk (Debian package `wrk`; installed when missing and running as root) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
RUNS=${RUNS:-5}
THREADS=${THREADS:-1}
ENTRIES=${ENTRIES:-10000}
UP_PORT=${UP_PORT:-18181}
# Upstream URLs in each body, which ghgate rewrites to itself on every answer (a real
# `GET /repos/o/r` has about 40).
BODY_URLS=${BODY_URLS:-0}
GW_PORT=${GW_PORT:-18080}
ADMIN_PORT=${ADMIN_PORT:-18090}
BASE_PORT=${BASE_PORT:-18081}
BASE_ADMIN_PORT=${BASE_ADMIN_PORT:-18091}
BARE_PORT=${BARE_PORT:-18183}
BASELINE_BIN=${BASELINE_BIN:-}
TOKEN="token bench-token-0001"
PATH_HOT=/repos/octo/hello

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq wrk >/dev/null; else echo "install wrk first" >&2; exit 1; fi
fi

cargo build --release --quiet --bin ghgate --example bench_upstream --example bare_hyper
work=$(mktemp -d)
cleanup() { kill "${GW_PID:-}" "${BASE_PID:-}" "${UP_PID:-}" "${BARE_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

target/release/examples/bench_upstream --port "$UP_PORT" --resources "$ENTRIES" --body-urls "$BODY_URLS" \
  >"$work/upstream.log" 2>&1 &
UP_PID=$!
start_gateway() { # binary port admin_port data_dir
  env ${GATEWAY_ENV:-} GHGATE_INBOUND__LIMIT_ENABLED=false GHGATE_LOG__LEVEL=warn GHGATE_STORE__DATA_DIR="$4" \
    "$1" serve --listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$3" \
    --upstream "http://127.0.0.1:$UP_PORT" >"$4.log" 2>&1 &
}
wait_up() { # admin_port
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && curl -sf -o /dev/null "http://127.0.0.1:$UP_PORT$PATH_HOT" && return 0
    sleep 0.1
  done
  echo "a gateway did not start" >&2; exit 1
}
start_gateway target/release/ghgate "$GW_PORT" "$ADMIN_PORT" "$work/data"
GW_PID=$!
wait_up "$ADMIN_PORT"
if [ -n "$BASELINE_BIN" ]; then
  start_gateway "$BASELINE_BIN" "$BASE_PORT" "$BASE_ADMIN_PORT" "$work/base"
  BASE_PID=$!
  wait_up "$BASE_ADMIN_PORT"
fi

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
metric() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v s="$1" '$1 == s {print $2}'; }

# Warm the one hot entry (each gateway), then capture ghgate's hit for the bare server.
curl -sf -o /dev/null -H "Authorization: $TOKEN" "http://127.0.0.1:$GW_PORT$PATH_HOT"
[ -n "$BASELINE_BIN" ] && curl -sf -o /dev/null -H "Authorization: $TOKEN" "http://127.0.0.1:$BASE_PORT$PATH_HOT"
target/release/examples/bare_hyper --port "$BARE_PORT" --capture "http://127.0.0.1:$GW_PORT$PATH_HOT" \
  --header "Authorization: $TOKEN" >"$work/bare.log" 2>&1 &
BARE_PID=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$BARE_PORT$PATH_HOT" && break; sleep 0.1; done

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
run() { # url label [connections] [threads] [pid] -> "rps p50_ms p99_ms cpu_us_per_answer"
  local before=0 after=0
  [ -n "${5:-}" ] && before=$(cpu_ticks "$5")
  wrk -t"${4:-1}" -c"${3:-$CONNECTIONS}" -d"$DURATION" --latency -H "Authorization: $TOKEN" "$1" >"$work/$2.txt"
  [ -n "${5:-}" ] && after=$(cpu_ticks "$5")
  awk -v ticks="$((after - before))" -v hz="$(getconf CLK_TCK)" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^Requests\/sec/ { rps = $2 } $1 == "50%" { p50 = ms($2) } $1 == "99%" { p99 = ms($2) }
    /requests in/ { n = $1 }
    END { printf "%s %.3f %.3f %.2f\n", rps, p50, p99, (n > 0 ? ticks / hz * 1e6 / n : 0) }' "$work/$2.txt"
}
targets="bare ghgate"
[ -n "$BASELINE_BIN" ] && targets="$targets baseline"
pid_of() { case "$1" in bare) echo "$BARE_PID" ;; ghgate) echo "$GW_PID" ;; baseline) echo "$BASE_PID" ;; esac; }
url_of() { case "$1" in bare) echo "http://127.0.0.1:$BARE_PORT$PATH_HOT" ;; ghgate) echo "http://127.0.0.1:$GW_PORT$PATH_HOT" ;; baseline) echo "http://127.0.0.1:$BASE_PORT$PATH_HOT" ;; esac; }
for round in $(seq "$RUNS"); do
  for t in $targets; do
    run "$(url_of "$t")" "$t.$round" "$CONNECTIONS" "$THREADS" "$(pid_of "$t")" >>"$work/$t.runs"
  done
done
read -r ceiling _ _ _ < <(run "$(url_of bare)" ceiling "$CONNECTIONS" $((THREADS + 1)))
# One connection: the time one request takes, without queueing behind others.
for t in $targets; do run "$(url_of "$t")" "$t.one" 1 >"$work/$t.one"; done
hits=$(metric 'ghgate_requests_total{outcome="hit"}')
upstream_2xx=$(metric 'ghgate_upstream_requests_total{status="2xx"}')

median_of() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
col() { awk -v c="$2" '{ print $c }' "$work/$1.runs" | median_of; }
range() { awk '{ print $1 }' "$work/$1.runs" | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
bare_rps=$(col bare 1); bare_p99=$(col bare 3); bare_cpu=$(col bare 4)
echo
echo "## ghgate cache hits vs. a bare hyper server answering the same bytes ($(nproc) cores, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, median of $RUNS alternating rounds)"
echo
echo "| target | requests/s (median) | range | p50 ms | p99 ms | CPU µs per answer | share of bare (req/s) | share of bare (CPU) | p99 / bare p99 |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for t in $targets; do
  name=$t; [ "$t" = ghgate ] && name="ghgate (this build)"; [ "$t" = baseline ] && name="ghgate (BASELINE_BIN)"; [ "$t" = bare ] && name="bare hyper (limit)"
  rps=$(col "$t" 1); p50=$(col "$t" 2); p99=$(col "$t" 3); cpu=$(col "$t" 4)
  echo "| $name | $rps | $(range "$t") | $p50 | $p99 | $cpu | $(ratio "$rps" "$bare_rps") | $(ratio "$bare_cpu" "$cpu") | $(ratio "$p99" "$bare_p99") |"
done
if [ -n "$BASELINE_BIN" ]; then
  echo
  echo "this build / baseline: $(ratio "$(col ghgate 1)" "$(col baseline 1)") (throughput, medians); CPU per answer $(ratio "$(col ghgate 4)" "$(col baseline 4)")"
fi
echo
if awk -v c="$ceiling" -v b="$bare_rps" 'BEGIN { exit !(c > b * 1.05) }'; then
  verdict="more than the bare row: the load generator, not the server, set that row's pace, so read the CPU columns"
else
  verdict="not more than the bare row: the load generator was not the limit"
fi
echo "wrk with one more thread against the bare server: $ceiling req/s ($verdict)"
echo
echo "| one connection | requests/s | p50 ms | p99 ms |"
echo "|---|---:|---:|---:|"
for t in $targets; do read -r r a b _ <"$work/$t.one"; echo "| $t | $r | $a | $b |"; done
echo
echo "hits counted by ghgate: $hits; upstream 2xx answers during the run: $upstream_2xx"

# Fill ENTRIES distinct entries and measure RSS.
rss_before=$(rss_kib "$GW_PID")
seq 0 $((ENTRIES - 1)) | awk -v p="$GW_PORT" '{printf "url = \"http://127.0.0.1:%s/bench/%d\"\noutput = /dev/null\n", p, $1}' >"$work/urls.cfg"
curl -s --parallel --parallel-max 32 -H "Authorization: $TOKEN" -K "$work/urls.cfg"
entries=$(metric ghgate_store_entries)
store_bytes=$(metric ghgate_store_bytes)
hot_bytes=$(metric ghgate_store_hot_bytes)
rss_after=$(rss_kib "$GW_PID")

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
