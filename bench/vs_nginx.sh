#!/usr/bin/env bash
# ghgate side by side with nginx as a caching reverse proxy, on loopback, same upstream, same
# requests. Prints a Markdown table (the one in BENCHMARKS.md comes from this script).
#
#   bash bench/vs_nginx.sh                    # 10 s per run
#   DURATION=30s CONNECTIONS=100 bash bench/vs_nginx.sh
#   WORKLOADS="hot zipf" bash bench/vs_nginx.sh
#   RUNS=5 bash bench/vs_nginx.sh             # the median of 5 runs (by throughput) per proxy
#
# For each workload, each proxy is started afresh (empty cache) in front of one upstream (the
# test suite's fake GitHub: ETags per credential, free 304s, units counted per answer), loaded
# by wrk for DURATION, then stopped. Reported per run: requests/s, p50/p99/p99.9 latency,
# CPU seconds and peak RSS of the proxy (nginx: master + workers), upstream requests and
# rate-limit units spent (upstream answers other than 304), and ghgate's ratio to nginx.
#
# nginx is configured like the public GitHub-cache setups: proxy_cache with 1-minute validity,
# proxy_cache_revalidate, proxy_cache_use_stale updating error timeout,
# proxy_cache_background_update, proxy_cache_lock; keyed on Authorization (and Accept) so
# credentials do not share answers; Cache-Control/Vary ignored (GitHub marks authenticated
# answers private, which nginx would otherwise never cache).
#
# Needs nginx and wrk (Debian packages `nginx-light` and `wrk`; installed when missing and
# running as root), curl and a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
case "$DURATION" in *[0-9]s) ;; *) echo "DURATION is in seconds, e.g. 30s" >&2; exit 1 ;; esac
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
RUNS=${RUNS:-1}
WORKLOADS=${WORKLOADS:-hot zipf credentials schemes revalidate revalidate_2s cold}
UP_PORT=${UP_PORT:-18281}
STATS_PORT=${STATS_PORT:-18282}
PROXY_PORT=${PROXY_PORT:-18280}
ADMIN_PORT=${ADMIN_PORT:-18290}
export BENCH_LUA="$PWD/bench/lua"

need() { # command package
  command -v "$1" >/dev/null && return
  if [ "$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else echo "install $2 first" >&2; exit 1; fi
}
need wrk wrk
need nginx nginx-light
NGINX=$(command -v nginx)

cargo build --release --quiet --bin ghgate --example bench_upstream
work=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

wait_for() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; exit 1; }
stats() { curl -sf "http://127.0.0.1:$STATS_PORT/"; }
json() { sed -E "s/.*\"$1\":([0-9]+).*/\1/"; }
cpu_ticks() { # utime + stime of the given pids
  local t=0
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
peak_rss_kib() { # sum of VmHWM of the given pids
  local t=0
  for p in "$@"; do t=$((t + $(awk '/^VmHWM/ {print $2}' "/proc/$p/status"))); done
  echo "$t"
}

start_upstream() { # max-age
  target/release/examples/bench_upstream --port "$UP_PORT" --stats-port "$STATS_PORT" --resources 10000 --max-age "$1" \
    >"$work/upstream.log" 2>&1 &
  UP_PID=$!
  PIDS+=("$UP_PID")
  wait_for "http://127.0.0.1:$STATS_PORT/"
}
stop_upstream() { kill "$UP_PID"; wait "$UP_PID" 2>/dev/null || true; }

start_nginx() { # validity
  rm -rf "$work/nginx" && mkdir -p "$work/nginx/cache" "$work/nginx/tmp"
  # As root, nginx's workers drop to an unprivileged user: give it the cache and temp dirs.
  local user_line=""
  if [ "$(id -u)" = 0 ]; then
    chmod 755 "$work" "$work/nginx"
    chown -R nobody:nogroup "$work/nginx/cache" "$work/nginx/tmp"
    user_line="user nobody nogroup;"
  fi
  cat >"$work/nginx/nginx.conf" <<CONF
$user_line
worker_processes $(nproc);
pid $work/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/tmp; proxy_temp_path $work/nginx/tmp;
  fastcgi_temp_path $work/nginx/tmp; uwsgi_temp_path $work/nginx/tmp; scgi_temp_path $work/nginx/tmp;
  proxy_cache_path $work/nginx/cache levels=1:2 keys_zone=github:64m max_size=256m inactive=24h use_temp_path=off;
  upstream github { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$PROXY_PORT;
    location / {
      proxy_pass http://github;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache github;
      proxy_cache_key "\$request_method\$request_uri|\$http_authorization|\$http_accept";
      proxy_cache_valid 200 301 302 $1;
      proxy_cache_revalidate on;
      proxy_cache_use_stale updating error timeout;
      proxy_cache_background_update on;
      proxy_cache_lock on;
      proxy_ignore_headers Cache-Control Expires Set-Cookie Vary X-Accel-Expires;
      add_header X-Cache-Status \$upstream_cache_status;
    }
  }
}
CONF
  "$NGINX" -c "$work/nginx/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log"
  for _ in $(seq 100); do [ -s "$work/nginx.pid" ] && break; sleep 0.05; done
  NGINX_MASTER=$(cat "$work/nginx.pid")
  sleep 0.3
  PROXY_PIDS=("$NGINX_MASTER" $(pgrep -P "$NGINX_MASTER"))
}
stop_nginx() { kill -QUIT "$NGINX_MASTER"; for _ in $(seq 100); do kill -0 "$NGINX_MASTER" 2>/dev/null || break; sleep 0.05; done; rm -f "$work/nginx.pid"; }

start_ghgate() { # [config file]
  rm -rf "$work/ghgate"
  local config=()
  [ -n "${1:-}" ] && config=(--config "$1")
  GHGATE_INBOUND__LIMIT_ENABLED=false GHGATE_LOG__LEVEL=warn GHGATE_STORE__DATA_DIR="$work/ghgate" \
    target/release/ghgate serve "${config[@]}" --listen "127.0.0.1:$PROXY_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --upstream "http://127.0.0.1:$UP_PORT" >"$work/ghgate.log" 2>&1 &
  GHGATE_PID=$!
  PIDS+=("$GHGATE_PID")
  wait_for "http://127.0.0.1:$ADMIN_PORT/healthz"
  PROXY_PIDS=("$GHGATE_PID")
}
stop_ghgate() { kill "$GHGATE_PID"; wait "$GHGATE_PID" 2>/dev/null || true; }

# One run: prints "rps p50 p99 p999 errors cpu_s peak_mib upstream_requests units".
run() { # workload
  local before after ticks0 ticks1 out
  before=$(stats)
  ticks0=$(cpu_ticks "${PROXY_PIDS[@]}")
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "bench/lua/$1.lua" "http://127.0.0.1:$PROXY_PORT" | grep '^RESULT')
  ticks1=$(cpu_ticks "${PROXY_PIDS[@]}")
  after=$(stats)
  local peak; peak=$(peak_rss_kib "${PROXY_PIDS[@]}")
  local hz; hz=$(getconf CLK_TCK)
  local rps p50 p99 p999 errors
  rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$out")
  p50=$(sed -E 's/.* p50=([0-9]+).*/\1/' <<<"$out")
  p99=$(sed -E 's/.* p99=([0-9]+).*/\1/' <<<"$out")
  p999=$(sed -E 's/.* p999=([0-9]+).*/\1/' <<<"$out")
  errors=$(sed -E 's/.* socket_errors=([0-9]+).*/\1/' <<<"$out")
  echo "$rps $p50 $p99 $p999 $errors $(awk -v t=$((ticks1 - ticks0)) -v hz="$hz" 'BEGIN{printf "%.1f", t/hz}') $((peak / 1024)) \
$(( $(json requests <<<"$after") - $(json requests <<<"$before") )) $(( $(json charged <<<"$after") - $(json charged <<<"$before") ))"
}

# The run with the median throughput (of RUNS).
median() { sort -n -k1,1 "$1" | awk '{ line[NR] = $0 } END { print line[int((NR + 1) / 2)] }'; }

# A total over the run per answer, scaled: per_request TOTAL RPS SCALE (the run lasts DURATION).
per_request() {
  awk -v t="$1" -v rps="$2" -v scale="$3" -v d="${DURATION%s}" 'BEGIN { n = rps * d; if (n == 0) print "-"; else printf "%.1f", t * scale / n }'
}

ms() { awk -v us="$1" 'BEGIN { if (us >= 1000) printf "%.2f ms", us / 1000; else printf "%d µs", us }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print (a == 0 ? "=" : "∞"); else printf "%.2f×", a / b }'; }

echo "## ghgate vs nginx, same upstream and requests"
echo
echo "$(nproc) cores, wrk -t$THREADS -c$CONNECTIONS -d$DURATION per run, median of $RUNS run(s) by throughput; each proxy starts with an empty cache."
echo
echo "| workload | proxy | req/s | p50 | p99 | p99.9 | errors | CPU s | CPU µs/req | peak RSS | upstream requests | per 1k answers | units spent |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
# revalidate_2s: the revalidate load with ghgate given the freshness nginx ends up with.
# nginx's shortest validity, `proxy_cache_valid 1s`, counts whole seconds on its clock (an
# answer stored in second T is fresh until T+2 begins: 1-2 s, one refresh per key every 2 s
# in practice), after which it serves stale while one request updates in the background.
# ghgate gets min_fresh 2s, then serves stale for up to 1 s while one request revalidates.
cat >"$work/nginx-freshness.toml" <<'TOML'
[[cache.rules]]
path = "/bench/**"
min_fresh = "2s"
stale_while_revalidate = "1s"
TOML

for workload in $WORKLOADS; do
  max_age=60; validity=1m; ghgate_config=""
  case "$workload" in
    revalidate) max_age=0; validity=1s ;;
    revalidate_2s) max_age=0; validity=1s; ghgate_config="$work/nginx-freshness.toml" ;;
  esac
  : >"$work/nginx.runs"
  : >"$work/ghgate.runs"
  for _ in $(seq "$RUNS"); do
    # Each run starts both proxies afresh, alternating, so drift hits both alike.
    start_upstream "$max_age"
    start_nginx "$validity"
    run "$workload" >>"$work/nginx.runs"
    stop_nginx
    start_ghgate "$ghgate_config"
    run "$workload" >>"$work/ghgate.runs"
    stop_ghgate
    stop_upstream
  done
  read -r n_rps n_p50 n_p99 n_p999 n_err n_cpu n_rss n_up n_units < <(median "$work/nginx.runs")
  read -r g_rps g_p50 g_p99 g_p999 g_err g_cpu g_rss g_up g_units < <(median "$work/ghgate.runs")
  n_cpr=$(per_request "$n_cpu" "$n_rps" 1000000); g_cpr=$(per_request "$g_cpu" "$g_rps" 1000000)
  n_upk=$(per_request "$n_up" "$n_rps" 1000); g_upk=$(per_request "$g_up" "$g_rps" 1000)
  echo "| $workload | nginx | $n_rps | $(ms "$n_p50") | $(ms "$n_p99") | $(ms "$n_p999") | $n_err | $n_cpu | $n_cpr | $n_rss MiB | $n_up | $n_upk | $n_units |"
  echo "| | ghgate | $g_rps | $(ms "$g_p50") | $(ms "$g_p99") | $(ms "$g_p999") | $g_err | $g_cpu | $g_cpr | $g_rss MiB | $g_up | $g_upk | $g_units |"
  echo "| | ghgate / nginx | $(ratio "$g_rps" "$n_rps") | $(ratio "$g_p50" "$n_p50") | $(ratio "$g_p99" "$n_p99") | $(ratio "$g_p999" "$n_p999") | | $(ratio "$g_cpu" "$n_cpu") | $(ratio "$g_cpr" "$n_cpr") | $(ratio "$g_rss" "$n_rss") | $(ratio "$g_up" "$n_up") | $(ratio "$g_upk" "$n_upk") | $(ratio "$g_units" "$n_units") |"
done
