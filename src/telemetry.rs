//! Metrics and logs. Metrics are registered once per gateway instance on its own Prometheus
//! recorder (no global state), so handles are plain atomics on the hot path and several
//! gateways can run in one test process.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::cache::{Outcome, PerOutcome};
use crate::config::{LogFormat, LogSettings};

static METADATA: Metadata<'static> = Metadata::new("ghgate", Level::INFO, Some("ghgate"));

/// Latency buckets in seconds: from a 50 µs cache hit to a slow upstream.
const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Upstream status classes, as metric labels.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Every metric the gateway exports, registered up front.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// `ghgate_requests_total{outcome}`
    pub(crate) requests: PerOutcome<Counter>,
    outcome_totals: PerOutcome<AtomicU64>,
    /// Readable twins of `units_spent` / `units_saved` (Prometheus handles cannot be read).
    spent_total: AtomicU64,
    saved_total: AtomicU64,
    /// `ghgate_request_duration_seconds{outcome}`
    pub(crate) request_duration: PerOutcome<Histogram>,
    upstream_requests: [Counter; 6],
    /// `ghgate_upstream_duration_seconds`
    pub(crate) upstream_duration: Histogram,
    /// `ghgate_ratelimit_units_spent_total`: upstream answers other than 304.
    pub(crate) units_spent: Counter,
    /// `ghgate_ratelimit_units_saved_total`: answers that did not cost a unit.
    pub(crate) units_saved: Counter,
    /// `ghgate_cache_stores_total`: entries written.
    pub(crate) cache_stores: Counter,
    /// `ghgate_cache_invalidations_total`: paths marked stale by unsafe requests.
    pub(crate) invalidations: Counter,
    /// `ghgate_store_errors_total`
    pub(crate) store_errors: Counter,
    /// `ghgate_store_corrupt_entries_total`
    pub(crate) store_corrupt: Counter,
    /// `ghgate_replica_marks_received_total`: staleness marks applied from other replicas.
    pub(crate) replica_marks: Counter,
    /// `ghgate_store_recoveries_total`: a failing disk store that works again (probe or reopen).
    pub(crate) store_recoveries: Counter,
    /// `ghgate_store_degraded`: 1 while the backend is failing.
    pub(crate) store_degraded: Gauge,
    /// `ghgate_store_hot_bytes`
    pub(crate) store_hot_bytes: Gauge,
    /// `ghgate_store_hot_body_bytes`: the distinct bodies in the memory tier, each once.
    pub(crate) store_hot_body_bytes: Gauge,
    /// `ghgate_store_lock_waits_total`: requests that waited for another replica's work.
    pub(crate) lock_waits: Counter,
    /// `ghgate_store_lock_timeouts_total`: waits that gave up and went upstream alone.
    pub(crate) lock_timeouts: Counter,
    /// `ghgate_bad_requests_total`: requests refused before reaching the pipeline.
    pub(crate) bad_requests: Counter,
    /// `ghgate_store_bytes`
    pub(crate) store_bytes: Gauge,
    /// `ghgate_store_entries`
    pub(crate) store_entries: Gauge,
    /// `ghgate_store_max_bytes`
    pub(crate) store_max_bytes: Gauge,
    /// `ghgate_inflight_fills`
    pub(crate) inflight_fills: Gauge,
    /// `ghgate_runtime_alive_tasks`: tasks alive in the runtimes (a leak shows as growth).
    pub(crate) alive_tasks: Gauge,
    /// The proxy workers' runtimes, whose tasks `alive_tasks` counts too.
    runtimes: std::sync::Mutex<Vec<tokio::runtime::Handle>>,
    /// `ghgate_proxy_workers`: threads serving proxy connections (`server.workers`).
    pub(crate) proxy_workers: Gauge,
    /// `ghgate_ratelimit_reserve_stale_total`: reads answered stale to save a low budget.
    pub(crate) reserve_stale: Counter,
    /// `ghgate_ratelimit_local_answers_total`: requests answered locally because the identity's
    /// budget was exhausted or it was held back after a secondary limit.
    pub(crate) local_limit_answers: Counter,
    /// `ghgate_ratelimit_blocked_identities`: identities held back after a secondary limit.
    pub(crate) blocked_identities: Gauge,
    /// `ghgate_inbound_limited_total`: requests refused by the inbound limiter.
    pub(crate) inbound_limited: Counter,
    /// `ghgate_inbound_refused_credentials_total`: requests answered 401 locally because
    /// GitHub had just refused their credential.
    pub(crate) refused_credentials: Counter,
    /// `ghgate_upstream_queue_overflows_total`: requests refused because their identity's queue was full.
    pub(crate) queue_overflows: Counter,
    /// `ghgate_negative_canaries_total`: all rules' canaries together, for one alert.
    pub(crate) negative_canaries: Counter,
    /// `ghgate_etag_algorithm_total{result="match"|"mismatch"}`: 200s whose ETag was (not) the
    /// one GitHub's known rule gives (see `cache::etag`).
    pub(crate) etag_algorithm: EtagResults,
    /// `ghgate_graphql_requests_total{kind}`: `POST /graphql` requests by operation kind
    /// (`query`, `mutation`, `subscription`), or `refused` (bad input answered locally).
    pub(crate) graphql_requests: GraphqlRequests,
    /// `ghgate_etag_algorithm_trusted`: 1 while computed validators may cross partitions.
    pub(crate) etag_rule_trusted: Gauge,
    /// `ghgate_stale_if_slow_total`: reads answered from a stale entry because GitHub was slow
    /// (past `cache.stale_if_slow`) or failing (the breaker open).
    pub(crate) stale_if_slow: Counter,
    /// `ghgate_upstream_breaker_open`: 1 while GitHub is failing and stale entries are served at once.
    pub(crate) breaker_open: Gauge,
    /// `ghgate_config_last_reload_successful`: 0 after a refused reload, until one succeeds.
    pub(crate) last_reload_successful: Gauge,
    /// `ghgate_shared_revalidations_total`: 304s that confirmed a body held for another
    /// partition (a unit the fleet did not spend).
    pub(crate) shared_revalidations: Counter,
    /// The GitHub App broker's metrics.
    pub(crate) app: AppMetrics,
    /// Per-minute history and recent events, for the status page.
    pub(crate) activity: crate::activity::Activity,
}

/// `ghgate_graphql_requests_total` by kind, registered once (queries are a hot path).
pub(crate) struct GraphqlRequests {
    /// `kind="query"`
    pub(crate) query: Counter,
    /// `kind="mutation"`
    pub(crate) mutation: Counter,
    /// `kind="subscription"`
    pub(crate) subscription: Counter,
    /// `kind="refused"`: bad input answered locally.
    pub(crate) refused: Counter,
}

/// `ghgate_etag_algorithm_total` by result.
pub(crate) struct EtagResults {
    matched: Counter,
    mismatched: Counter,
}

impl EtagResults {
    /// The counter of one result.
    pub(crate) fn get(&self, matched: bool) -> &Counter {
        if matched { &self.matched } else { &self.mismatched }
    }
}

/// Metrics of the GitHub App broker.
pub(crate) struct AppMetrics {
    /// `ghgate_app_tokens_minted_total`
    pub(crate) tokens_minted: Counter,
    /// `ghgate_app_token_cache_hits_total`
    pub(crate) token_hits: Counter,
    /// `ghgate_app_mint_failures_total`
    pub(crate) mint_failures: Counter,
    /// `ghgate_app_mint_duration_seconds`
    pub(crate) mint_duration: Histogram,
    /// `ghgate_app_installation_lookups_total{result="hit"}`
    pub(crate) lookup_hits: Counter,
    /// `ghgate_app_installation_lookups_total{result="miss"}`
    pub(crate) lookup_misses: Counter,
    /// `ghgate_app_installation_lookups_total{result="not_installed"}`
    pub(crate) not_installed: Counter,
    /// `ghgate_app_stale_token_retries_total`: requests retried with a re-minted token.
    pub(crate) stale_token_retries: Counter,
    /// `ghgate_app_settle_retries_total`: tries repeated while a new token replicated.
    pub(crate) settle_retries: Counter,
    /// `ghgate_app_rotation_refreshes_total`: revalidations that cost a full answer because the
    /// entry was fetched with an earlier token.
    pub(crate) rotation_refreshes: Counter,
}

impl Metrics {
    /// Registers every metric on a fresh recorder.
    pub fn new() -> Arc<Metrics> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .expect("static, non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        let r = &recorder;
        let counter = |name: &'static str, help: &'static str| {
            r.describe_counter(name.into(), None, help.into());
            r.register_counter(&Key::from_name(name), &METADATA)
        };
        let gauge = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            r.describe_gauge(name.into(), unit, help.into());
            r.register_gauge(&Key::from_name(name), &METADATA)
        };
        r.describe_counter("ghgate_requests_total".into(), None, "Proxied requests by cache outcome.".into());
        r.describe_counter(
            "ghgate_proxy_connections_total".into(),
            None,
            "Connections handed to each proxy worker (server.workers).".into(),
        );
        r.describe_gauge(
            "ghgate_ratelimit_identities".into(),
            None,
            "Identities by resource and budget state (ok, reserve, exhausted).".into(),
        );
        r.describe_counter(
            "ghgate_negative_stored_total".into(),
            None,
            "Futile answers remembered, by rule.".into(),
        );
        r.describe_counter(
            "ghgate_negative_hits_total".into(),
            None,
            "Requests answered from a remembered futile answer, by rule.".into(),
        );
        r.describe_counter(
            "ghgate_negative_canary_total".into(),
            None,
            "Answers that looked futile but lacked the known phrase (GitHub may have reworded it), by rule."
                .into(),
        );
        r.describe_counter(
            "ghgate_graphql_requests_total".into(),
            None,
            "POST /graphql requests by operation kind (query, mutation, subscription; refused: bad input answered locally).".into(),
        );
        r.describe_counter(
            "ghgate_graphql_invalidations_total".into(),
            None,
            "Writes and webhooks that made cached GraphQL answers stale, by cause (write, webhook).".into(),
        );
        r.describe_histogram(
            "ghgate_request_duration_seconds".into(),
            Some(Unit::Seconds),
            "Time from request to answer headers, by cache outcome.".into(),
        );
        r.describe_counter(
            "ghgate_upstream_requests_total".into(),
            None,
            "Requests sent to GitHub, by answer status class (error: no answer).".into(),
        );
        let outcome_key = |name: &'static str, o: Outcome| {
            Key::from_parts(name, vec![Label::new("outcome", o.as_str().to_ascii_lowercase())])
        };
        let requests =
            PerOutcome::new(|o| r.register_counter(&outcome_key("ghgate_requests_total", o), &METADATA));
        let request_duration = PerOutcome::new(|o| {
            r.register_histogram(&outcome_key("ghgate_request_duration_seconds", o), &METADATA)
        });
        let upstream_requests = STATUS_CLASSES.map(|class| {
            r.register_counter(
                &Key::from_parts("ghgate_upstream_requests_total", vec![Label::new("status", class)]),
                &METADATA,
            )
        });
        r.describe_histogram(
            "ghgate_upstream_duration_seconds".into(),
            Some(Unit::Seconds),
            "Time GitHub took to send answer headers.".into(),
        );
        let upstream_duration =
            r.register_histogram(&Key::from_name("ghgate_upstream_duration_seconds"), &METADATA);
        let metrics = Metrics {
            outcome_totals: PerOutcome::new(|_| AtomicU64::new(0)),
            spent_total: AtomicU64::new(0),
            saved_total: AtomicU64::new(0),
            requests,
            request_duration,
            upstream_requests,
            upstream_duration,
            units_spent: counter(
                "ghgate_ratelimit_units_spent_total",
                "Upstream answers that cost a rate-limit unit (anything but 304).",
            ),
            units_saved: counter(
                "ghgate_ratelimit_units_saved_total",
                "Answers that cost no unit: served without going upstream, or revalidated with a 304.",
            ),
            cache_stores: counter("ghgate_cache_stores_total", "Answers written to the cache."),
            invalidations: counter(
                "ghgate_cache_invalidations_total",
                "Paths marked stale because an unsafe request changed them.",
            ),
            store_errors: counter("ghgate_store_errors_total", "Store operations that failed."),
            store_recoveries: counter(
                "ghgate_store_recoveries_total",
                "Times a failing disk store worked again without a restart (after a probe write or a reopen).",
            ),
            replica_marks: counter(
                "ghgate_replica_marks_received_total",
                "Staleness marks (writes, webhooks, purges) other replicas announced and this one applied.",
            ),
            store_corrupt: counter(
                "ghgate_store_corrupt_entries_total",
                "Stored values dropped because their checksum or format did not match.",
            ),
            store_degraded: gauge(
                "ghgate_store_degraded",
                None,
                "1 while the store backend is failing and requests are served without it.",
            ),
            store_hot_bytes: gauge(
                "ghgate_store_hot_bytes",
                Some(Unit::Bytes),
                "Bytes held by the in-memory tier in front of the backend.",
            ),
            store_hot_body_bytes: gauge(
                "ghgate_store_hot_body_bytes",
                Some(Unit::Bytes),
                "Bytes of the distinct bodies in the memory tier (entries with equal bodies share one).",
            ),
            lock_waits: counter(
                "ghgate_store_lock_waits_total",
                "Requests that waited for another replica's fetch, mint or look-up of the same key.",
            ),
            lock_timeouts: counter(
                "ghgate_store_lock_timeouts_total",
                "Waits for another replica that timed out; the request went upstream itself.",
            ),
            bad_requests: counter(
                "ghgate_bad_requests_total",
                "Requests refused as malformed before reaching upstream.",
            ),
            store_bytes: gauge(
                "ghgate_store_bytes",
                Some(Unit::Bytes),
                "Bytes held by the store: answers, and with disk also tokens, look-ups and negative entries.",
            ),
            store_entries: gauge(
                "ghgate_store_entries",
                None,
                "Entries held by the store (counted like ghgate_store_bytes).",
            ),
            store_max_bytes: gauge(
                "ghgate_store_max_bytes",
                Some(Unit::Bytes),
                "Configured upper bound of the response store.",
            ),
            graphql_requests: {
                let kind = |value: &'static str| {
                    r.register_counter(
                        &Key::from_parts("ghgate_graphql_requests_total", vec![Label::new("kind", value)]),
                        &METADATA,
                    )
                };
                GraphqlRequests {
                    query: kind("query"),
                    mutation: kind("mutation"),
                    subscription: kind("subscription"),
                    refused: kind("refused"),
                }
            },
            etag_algorithm: {
                r.describe_counter(
                    "ghgate_etag_algorithm_total".into(),
                    None,
                    "200 answers whose ETag matched (or not) SHA-256 over Accept, Authorization, Cookie and body.".into(),
                );
                let result = |value: &'static str| {
                    r.register_counter(
                        &Key::from_parts("ghgate_etag_algorithm_total", vec![Label::new("result", value)]),
                        &METADATA,
                    )
                };
                EtagResults { matched: result("match"), mismatched: result("mismatch") }
            },
            etag_rule_trusted: gauge(
                "ghgate_etag_algorithm_trusted",
                None,
                "1 while GitHub's ETags follow the known rule and computed validators cross credentials.",
            ),
            stale_if_slow: counter(
                "ghgate_stale_if_slow_total",
                "Reads answered from a stale entry because GitHub was slow (cache.stale_if_slow) or failing (breaker open).",
            ),
            last_reload_successful: gauge(
                "ghgate_config_last_reload_successful",
                None,
                "1 unless the last reload (SIGHUP, POST /reload) was refused; the settings in force are then the older ones.",
            ),
            breaker_open: gauge(
                "ghgate_upstream_breaker_open",
                None,
                "1 while GitHub is failing (timeouts, refused connections) and stale entries are served at once.",
            ),
            shared_revalidations: counter(
                "ghgate_shared_revalidations_total",
                "Free 304s that confirmed a body held for another credential (units the fleet did not spend).",
            ),
            negative_canaries: counter(
                "ghgate_negative_canaries_total",
                "Answers that looked futile but lacked GitHub's known phrase (all rules).",
            ),
            reserve_stale: counter(
                "ghgate_ratelimit_reserve_stale_total",
                "Reads answered from a stale entry to save an identity's low or exhausted budget.",
            ),
            local_limit_answers: counter(
                "ghgate_ratelimit_local_answers_total",
                "Requests answered locally because the budget was exhausted or the identity held back.",
            ),
            inbound_limited: counter(
                "ghgate_inbound_limited_total",
                "Requests refused with 429 by the inbound limiter.",
            ),
            refused_credentials: counter(
                "ghgate_inbound_refused_credentials_total",
                "Requests answered 401 locally because GitHub had just refused their credential.",
            ),
            queue_overflows: counter(
                "ghgate_upstream_queue_overflows_total",
                "Requests refused with 503 because their identity already had the most requests waiting.",
            ),
            blocked_identities: gauge(
                "ghgate_ratelimit_blocked_identities",
                None,
                "Identities held back after a secondary rate limit.",
            ),
            inflight_fills: gauge(
                "ghgate_inflight_fills",
                None,
                "Upstream fetches under way that concurrent requests can join.",
            ),
            alive_tasks: gauge(
                "ghgate_runtime_alive_tasks",
                None,
                "Tasks alive in the async runtimes (connections, fills, background work); steady growth means a leak.",
            ),
            runtimes: std::sync::Mutex::new(Vec::new()),
            proxy_workers: gauge(
                "ghgate_proxy_workers",
                None,
                "Threads serving proxy connections, each with its own runtime (server.workers).",
            ),
            app: AppMetrics::register(r),
            activity: crate::activity::Activity::default(),
            recorder: Arc::new(recorder),
            handle,
        };
        metrics.activity.sample(std::time::SystemTime::now(), metrics.totals());
        Arc::new(metrics)
    }

    /// `ghgate_ratelimit_identities{resource, state}`: identities per budget state. Resources
    /// are GitHub's few (`core`, `search`, ...), states three, so the series stay bounded.
    pub(crate) fn identities_gauge(&self, resource: &str, state: &'static str) -> Gauge {
        let resource =
            if resource.len() <= 32 && resource.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                resource.to_string()
            } else {
                "other".to_string()
            };
        self.recorder.register_gauge(
            &Key::from_parts(
                "ghgate_ratelimit_identities",
                vec![Label::new("resource", resource), Label::new("state", state)],
            ),
            &METADATA,
        )
    }

    /// `ghgate_webhooks_total{result}`: deliveries by result (`accepted`, `bad_signature`,
    /// `too_large`).
    pub(crate) fn webhook(&self, result: &'static str) -> Counter {
        self.labelled_counter("ghgate_webhooks_total", "result", result)
    }

    /// `ghgate_graphql_invalidations_total{cause}`: writes (`write`) and webhooks (`webhook`)
    /// that made cached GraphQL answers stale.
    pub(crate) fn graphql_invalidation(&self, cause: &'static str) -> Counter {
        self.labelled_counter("ghgate_graphql_invalidations_total", "cause", cause)
    }

    /// `ghgate_reloads_total{result}`: reloads `applied` or `refused`.
    pub(crate) fn reload(&self, result: &'static str) -> Counter {
        self.labelled_counter("ghgate_reloads_total", "result", result)
    }

    /// Registers a counter with one label (for sets known at start-up, such as rule names).
    pub(crate) fn labelled_counter(&self, name: &'static str, label: &'static str, value: &str) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, vec![Label::new(label, value.to_string())]), &METADATA)
    }

    /// Counts one upstream answer (or failure, `None`).
    pub(crate) fn upstream_answer(&self, status: Option<http::StatusCode>, took: Duration) {
        let class = match status.map(|s| s.as_u16() / 100) {
            Some(1) => 0,
            Some(2) => 1,
            Some(3) => 2,
            Some(4) => 3,
            Some(5) => 4,
            _ => 5,
        };
        self.upstream_requests[class].increment(1);
        if status.is_some() {
            self.upstream_duration.record(took.as_secs_f64());
        }
        match status {
            Some(http::StatusCode::NOT_MODIFIED) => {
                self.units_saved.increment(1);
                self.saved_total.fetch_add(1, Relaxed);
            }
            Some(_) => {
                self.units_spent.increment(1);
                self.spent_total.fetch_add(1, Relaxed);
            }
            None => {}
        }
    }

    /// The running totals the status page charts: units spent and saved, answers, and answers
    /// that needed no paid upstream request.
    pub(crate) fn totals(&self) -> crate::activity::Totals {
        let (mut answers, mut local) = (0, 0);
        for outcome in Outcome::ALL {
            let n = self.outcome_totals.get(outcome).load(Relaxed);
            answers += n;
            if outcome.served_locally() {
                local += n;
            }
        }
        crate::activity::Totals {
            spent: self.spent_total.load(Relaxed),
            saved: self.saved_total.load(Relaxed),
            answers,
            local,
        }
    }

    /// Answers so far per outcome (for the admin API's statistics).
    pub(crate) fn outcome_counts(&self) -> Vec<(&'static str, u64)> {
        Outcome::ALL.iter().map(|o| (o.as_str(), self.outcome_totals.get(*o).load(Relaxed))).collect()
    }

    /// Counts one answered request.
    pub(crate) fn answered(&self, outcome: Outcome, took: Duration) {
        self.outcome_totals.get(outcome).fetch_add(1, Relaxed);
        self.requests.get(outcome).increment(1);
        self.request_duration.get(outcome).record(took.as_secs_f64());
        // An upstream 304 is counted as saved where it arrives; everything else that never
        // reached upstream is counted here.
        if matches!(outcome, Outcome::Hit | Outcome::Stale | Outcome::Coalesced | Outcome::Negative) {
            self.units_saved.increment(1);
            self.saved_total.fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        self.handle.render()
    }

    /// Counts the tasks of the proxy workers' runtimes too (see [`Metrics::count_alive_tasks`]).
    pub(crate) fn watch_runtime(&self, runtime: tokio::runtime::Handle) {
        self.runtimes.lock().expect("runtime list poisoned").push(runtime);
    }

    /// Sets `ghgate_runtime_alive_tasks`: the current runtime's tasks plus every watched one's.
    pub(crate) fn count_alive_tasks(&self) {
        let mut alive = tokio::runtime::Handle::try_current().map_or(0, |r| r.metrics().num_alive_tasks());
        for runtime in self.runtimes.lock().expect("runtime list poisoned").iter() {
            alive += runtime.metrics().num_alive_tasks();
        }
        self.alive_tasks.set(alive as f64);
    }

    /// `ghgate_proxy_connections_total{worker}`: connections handed to one proxy worker (an
    /// uneven spread shows here).
    pub(crate) fn worker_connections(&self, worker: usize) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(
                "ghgate_proxy_connections_total",
                vec![Label::new("worker", worker.to_string())],
            ),
            &METADATA,
        )
    }

    /// Drains histogram buffers; call every few seconds.
    pub(crate) fn run_upkeep(&self) {
        self.handle.run_upkeep();
        self.count_alive_tasks();
        self.activity.sample(std::time::SystemTime::now(), self.totals());
        let _ = &self.recorder;
    }
}

impl AppMetrics {
    fn register(r: &PrometheusRecorder) -> AppMetrics {
        let counter = |name: &'static str, help: &'static str| {
            r.describe_counter(name.into(), None, help.into());
            r.register_counter(&Key::from_name(name), &METADATA)
        };
        r.describe_counter(
            "ghgate_app_installation_lookups_total".into(),
            None,
            "Installation look-ups by result: hit (cached), miss (asked GitHub), not_installed.".into(),
        );
        let lookup = |result: &'static str| {
            r.register_counter(
                &Key::from_parts("ghgate_app_installation_lookups_total", vec![Label::new("result", result)]),
                &METADATA,
            )
        };
        r.describe_histogram(
            "ghgate_app_mint_duration_seconds".into(),
            Some(Unit::Seconds),
            "Time to mint an installation token.".into(),
        );
        AppMetrics {
            tokens_minted: counter("ghgate_app_tokens_minted_total", "Installation tokens minted."),
            token_hits: counter("ghgate_app_token_cache_hits_total", "Requests served with a cached token."),
            mint_failures: counter("ghgate_app_mint_failures_total", "Token mints that failed."),
            mint_duration: r
                .register_histogram(&Key::from_name("ghgate_app_mint_duration_seconds"), &METADATA),
            lookup_hits: lookup("hit"),
            lookup_misses: lookup("miss"),
            not_installed: lookup("not_installed"),
            stale_token_retries: counter(
                "ghgate_app_stale_token_retries_total",
                "Requests retried once with a fresh token after GitHub rejected the cached one.",
            ),
            settle_retries: counter(
                "ghgate_app_settle_retries_total",
                "Tries repeated while a freshly minted token replicated at GitHub.",
            ),
            rotation_refreshes: counter(
                "ghgate_app_rotation_refreshes_total",
                "Revalidations answered with a paid 200 because the entry was fetched with an earlier token.",
            ),
        }
    }
}

/// Installs the global log subscriber: text or JSON, filtered by `RUST_LOG` or the setting.
pub fn init_logging(settings: &LogSettings) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = match &from_env {
        Some(v) => EnvFilter::try_new(v).map_err(|e| format!("RUST_LOG: {e}"))?,
        None => EnvFilter::try_new(&settings.level).map_err(|e| format!("log.level: {e}"))?,
    };
    // `log.level` reloads unless RUST_LOG, which wins over it, is set.
    let reloadable = from_env.is_none();
    // Colour only for a person at a terminal: a file, a pipe or a log collector would get
    // `ESC[2m…` sequences in every line. JSON lines never carry any.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let base = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let result = match settings.format {
        LogFormat::Json => {
            let builder = base
                .with_ansi(false)
                .json()
                .flatten_event(true)
                .with_env_filter(filter)
                .with_filter_reloading();
            if reloadable {
                keep_filter_handle(builder.reload_handle());
            }
            builder.try_init()
        }
        LogFormat::Text => {
            let builder = base.with_ansi(colour).with_env_filter(filter).with_filter_reloading();
            if reloadable {
                keep_filter_handle(builder.reload_handle());
            }
            builder.try_init()
        }
    };
    result.map_err(|e| format!("log subscriber: {e}"))
}

fn keep_filter_handle<S: 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) {
    let _ = LOG_FILTER.set(Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string())));
}

/// Replaces the log filter of the subscriber [`init_logging`] installed.
type FilterReload = Box<dyn Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync>;

/// Set when the log filter comes from `log.level` (not `RUST_LOG`) in this process.
static LOG_FILTER: std::sync::OnceLock<FilterReload> = std::sync::OnceLock::new();

/// A reload's new `log.level`. Without effect (and saying so) when `RUST_LOG` set the filter
/// or the logging was not installed by [`init_logging`] (tests in process).
pub fn set_log_level(level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| format!("log.level: {e}"))?;
    match LOG_FILTER.get() {
        Some(reload) => reload(filter),
        None => Err("log.level: not applied, RUST_LOG sets the log filter".into()),
    }
}
