-- Shared by the workloads: prints p50/p99/p99.9 (µs) and the error count (socket errors and
-- non-2xx/3xx answers) in one
-- machine-readable line that bench/vs_nginx.sh reads.
function done(summary, latency, requests)
  io.write(string.format("RESULT rps=%.1f p50=%d p99=%d p999=%d requests=%d socket_errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout + summary.errors.status))
end
