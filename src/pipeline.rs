//! The request path. Every proxied request walks the same phases, in this order, in
//! [`Gateway::handle`]:
//!
//! 1. **admit**: refuse malformed requests ([`check_request`]);
//! 2. **identify**: derive the credential partition ([`crate::identity`]);
//! 3. **look up**: for cacheable reads, find the entry and serve it when fresh
//!    ([`Gateway::serve_cached`]);
//! 4. **fetch**: otherwise go upstream — coalesced per key, conditional when an entry exists
//!    ([`Gateway::fill`]) — or pass the request through unchanged ([`Gateway::pass_through`]);
//! 5. **store**: keep what the policy allows ([`crate::cache::policy`]);
//! 6. **answer**: rewrite links, add `x-ghgate-cache`, count the outcome ([`Gateway::finish`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http::header::{AGE, CACHE_CONTROL, CONTENT_LENGTH, IF_MODIFIED_SINCE, IF_NONE_MATCH, PRAGMA};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use tracing::{debug, warn};

use crate::app_auth::{AppAuth, Broker, Identity, InstallationToken};
use crate::cache::policy::{self, FreshnessPolicy};
use crate::cache::{CacheKey, CachedResponse, Outcome};
use crate::coalesce::{Coalescer, Role};
use crate::config::Settings;
use crate::github;
use crate::identity::{Partition, Partitioner};
use crate::inbound::{Cors, InboundLimiter};
use crate::limits::{self, Admission, Budgets, Lanes};
use crate::negative::{Candidate, NegativeCache, Verdict};
use crate::rewrite;
use crate::store::{self, ResponseCache, Stores};
use crate::telemetry::Metrics;
use crate::upstream::{self, Upstream, UpstreamError};

/// The header that tells clients how their answer came about.
pub const CACHE_STATUS_HEADER: HeaderName = HeaderName::from_static("x-ghgate-cache");

/// How long staleness marks are kept in a shared store (entries kept fresh longer than this by
/// `webhooks.covered_freshness` could outlive their mark on other replicas).
const MARK_TTL: Duration = Duration::from_secs(3600);

/// Request and answer bodies up to this size are read whole when a negative rule needs them.
const NEGATIVE_BODY_MAX: u64 = 64 * 1024;

/// Request headers whose values, when `Vary` names them, also separate concurrent fetches.
const VARY_SELECTORS: [HeaderName; 3] = [
    http::header::COOKIE,
    HeaderName::from_static("x-github-otp"),
    HeaderName::from_static("x-requested-with"),
];

/// The shared state of one gateway: settings, store, upstream client, metrics.
pub struct Gateway {
    settings: Arc<Settings>,
    policy: FreshnessPolicy,
    partitioner: Partitioner,
    responses: ResponseCache,
    upstream: Upstream,
    upstream_base: String,
    public_url: Option<String>,
    fills: Coalescer<String, Fill>,
    broker: Broker,
    negative: Arc<NegativeCache>,
    /// The rate-limit ledger per identity and resource, and the holds after secondary limits.
    budgets: Budgets,
    /// Per-identity concurrency and write spacing upstream.
    lanes: Lanes,
    /// The inbound limiter.
    inbound: InboundLimiter,
    /// CORS for browser clients.
    cors: Cors,
    /// When an unsafe request last changed a path; entries older than that are stale.
    invalidated: moka::sync::Cache<String, SystemTime>,
    /// Set by the first staleness mark; until then hits skip the mark look-ups.
    any_marks: std::sync::atomic::AtomicBool,
    /// Repositories (`owner/repo`) that sent a webhook delivery recently: their changes
    /// would invalidate, so their entries may stay fresh longer.
    covered: moka::sync::Cache<String, SystemTime>,
    metrics: Arc<Metrics>,
}

/// What one upstream fetch for the cache produced; shared by every coalesced caller.
#[derive(Clone)]
enum Fill {
    /// A complete answer every caller can serve.
    Complete(Arc<Answer>),
    /// The body was too large to buffer: only the leader can stream it; followers go alone.
    Streaming(Arc<Mutex<Option<Streamed>>>),
    /// Upstream failed (or the broker refused) and no stale entry may stand in.
    Failed(Arc<SendError>),
}

/// A buffered answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// `Miss`, `Revalidated` or `Stale`.
    outcome: Outcome,
    /// The entry it came from or went into, for `Age` and conditional checks.
    entry: Option<Arc<CachedResponse>>,
}

impl Answer {
    /// The answer a stored entry gives.
    fn from_entry(entry: Arc<CachedResponse>, outcome: Outcome) -> Answer {
        Answer {
            status: entry.status,
            headers: entry.headers.clone(),
            body: entry.body.clone(),
            outcome,
            entry: Some(entry),
        }
    }
}

/// An upstream answer whose body is being streamed, with what was read before the cap.
struct Streamed {
    response: reqwest::Response,
    prefix: Vec<Bytes>,
}

/// Who a request acts as upstream, and where its answers are cached.
#[derive(Clone, Debug)]
struct Caller {
    /// The cache partition.
    partition: Partition,
    /// The credential sent upstream.
    auth: UpstreamAuth,
}

/// The credential a request is sent upstream with.
#[derive(Clone, Debug)]
enum UpstreamAuth {
    /// Whatever the client sent (its own token, or nothing).
    Client,
    /// An installation token the broker mints for the app.
    App(AppAuth),
}

/// A request body for upstream: none, buffered (can be sent again), or streamed (once).
enum SendBody {
    None,
    Buffered(Bytes),
    Stream(Body),
}

impl SendBody {
    /// The body for one try, and whether another try could send it again.
    fn take(&mut self) -> (Option<reqwest::Body>, bool) {
        match std::mem::replace(self, SendBody::None) {
            SendBody::None => (None, true),
            SendBody::Buffered(bytes) => {
                *self = SendBody::Buffered(bytes.clone());
                (Some(reqwest::Body::from(bytes)), true)
            }
            SendBody::Stream(body) => (Some(reqwest::Body::wrap_stream(body.into_data_stream())), false),
        }
    }
}

/// Why there is no upstream answer: GitHub failed, or the broker refused first.
enum SendError {
    Upstream(UpstreamError),
    Broker(crate::app_auth::Rejection),
}

/// Everything a fill needs, owned, so it can run in its own task.
struct FillRequest {
    key: CacheKey,
    caller: Caller,
    path_and_query: String,
    path: String,
    headers: HeaderMap,
    prior: Option<Arc<CachedResponse>>,
    /// The negative-cache entry a 404/410 answer would be remembered under.
    negative: Option<Candidate>,
}

impl Gateway {
    /// Assembles a gateway from validated settings, its stores and the partition secret.
    pub fn new(
        settings: Arc<Settings>,
        stores: Stores,
        secret: &[u8],
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Gateway>, String> {
        let upstream = Upstream::new(&settings.upstream, settings.server.worker_count())?;
        let sealer = store::Sealer::new(secret);
        let negative = Arc::new(NegativeCache::new(
            &settings.negative,
            settings.broker.not_installed_ttl,
            Arc::clone(&stores.state),
            &metrics,
        )?);
        let broker = Broker::new(
            &settings,
            upstream.clone(),
            stores.backend.clone(),
            sealer,
            Arc::clone(&negative),
            Arc::clone(&metrics),
        )?;
        let upstream_base = rewrite::base_of(&settings.upstream.url);
        let public_url =
            settings.server.public_url.as_ref().map(|u| u.as_str().trim_end_matches('/').to_string());
        metrics.store_max_bytes.set(settings.cache.max_bytes as f64);
        Ok(Arc::new(Gateway {
            policy: FreshnessPolicy::new(settings.cache.clone()),
            partitioner: Partitioner::new(secret),
            upstream,
            upstream_base,
            public_url,
            fills: Coalescer::default(),
            broker,
            negative,
            budgets: Budgets::new(settings.limits.clone(), stores.backend.clone()),
            lanes: Lanes::new(&settings.limits),
            inbound: InboundLimiter::new(&settings.inbound),
            cors: Cors::new(&settings.cors),
            covered: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.webhooks.coverage_window.max(Duration::from_secs(1)))
                .build(),
            any_marks: std::sync::atomic::AtomicBool::new(false),
            invalidated: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.cache.retain_stale.max(Duration::from_secs(60)))
                .build(),
            responses: stores.responses,
            metrics,
            settings,
        }))
    }

    /// The metrics this gateway records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The inbound limiter.
    pub fn inbound(&self) -> &InboundLimiter {
        &self.inbound
    }

    /// The rate-limit ledger.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// The negative cache.
    pub fn negative(&self) -> &NegativeCache {
        &self.negative
    }

    /// The GitHub App broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The response cache (hot tier and backend).
    pub fn responses(&self) -> &ResponseCache {
        &self.responses
    }

    /// Handles one proxied request, start to finish.
    pub async fn handle(self: Arc<Self>, request: http::Request<Body>, peer: SocketAddr) -> Response {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        if parts.uri.path() == crate::webhook::PATH && parts.method == Method::POST {
            let response = self.receive_webhook(&parts, body).await;
            return self.finish(response, Outcome::Bypass, peer, started, &parts, None);
        }
        if let Err(message) = check_request(&parts) {
            self.metrics.bad_requests.increment(1);
            warn!(%peer, method = %parts.method, %message, "refused malformed request");
            let response = github::error_response(StatusCode::BAD_REQUEST, &message);
            return self.finish(response, Outcome::Bypass, peer, started, &parts, None);
        }
        let max_body = self.settings.server.max_body_bytes;
        if declared_length(&parts.headers).is_some_and(|len| len > max_body) {
            self.metrics.bad_requests.increment(1);
            warn!(%peer, method = %parts.method, path = parts.uri.path(), "refused a request body over server.max_body_bytes");
            let response = body_too_large(max_body);
            return self.finish(response, Outcome::Bypass, peer, started, &parts, None);
        }
        if self.cors.is_preflight(&parts.method, &parts.headers) {
            let response = self.cors.preflight(&parts.headers);
            return self.finish(response, Outcome::Bypass, peer, started, &parts, None);
        }
        // The inbound limiter keys on the client's credential, else its real address. The
        // credential's partition is kept for identification, which needs it too.
        let mut credential_partition = None;
        let client = if !self.inbound.is_enabled() {
            String::new()
        } else if parts.headers.contains_key(http::header::AUTHORIZATION) {
            let partition = self.partitioner.partition(&parts.headers);
            let key = format!("k:{partition}");
            credential_partition = Some(partition);
            key
        } else {
            let trusted = &self.settings.server.trusted_proxies;
            let address = crate::inbound::client_address(
                peer,
                &parts.headers,
                trusted,
                self.settings.inbound.cf_connecting_ip,
            );
            format!("a:{address}")
        };
        if let Err(wait) = self.inbound.check(&client) {
            self.metrics.inbound_limited.increment(1);
            let mut response = github::error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "ghgate: too many requests from this client; slow down and retry after the time given",
            );
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            return self.finish(response, Outcome::Bypass, peer, started, &parts, None);
        }
        let mut parts = parts;
        let caller = match self.identify(&mut parts, credential_partition).await {
            Ok(caller) => caller,
            Err(rejection) => {
                let response = github::error_response(rejection.status, &rejection.message);
                return self.finish(response, Outcome::Bypass, peer, started, &parts, None);
            }
        };
        let (response, outcome) = if self.is_cacheable(&parts) {
            self.serve_cached(&parts, &caller).await
        } else {
            self.pass_through(&parts, body, &caller).await
        };
        self.finish(response, outcome, peer, started, &parts, Some(&caller.partition))
    }

    /// Phase 2: who the request acts as. A broker client's key is swapped for its app
    /// installation (the key itself never goes upstream); anything else keeps its credential.
    async fn identify(
        &self,
        parts: &mut Parts,
        credential_partition: Option<Partition>,
    ) -> Result<Caller, crate::app_auth::Rejection> {
        match self.broker.identify(&parts.headers, parts.uri.path())? {
            Identity::PassThrough => Ok(Caller {
                partition: credential_partition.unwrap_or_else(|| self.partitioner.partition(&parts.headers)),
                auth: UpstreamAuth::Client,
            }),
            Identity::App(request) => {
                let auth = self.broker.resolve(&request).await?;
                parts.headers.remove(http::header::AUTHORIZATION);
                parts.headers.remove(crate::app_auth::INSTALLATION_HEADER);
                Ok(Caller {
                    partition: Partition::from_safe_id(auth.partition_id()),
                    auth: UpstreamAuth::App(auth),
                })
            }
        }
    }

    /// Phase 6: the common end of every answer.
    fn finish(
        &self,
        mut response: Response,
        outcome: Outcome,
        peer: SocketAddr,
        started: Instant,
        parts: &Parts,
        partition: Option<&Partition>,
    ) -> Response {
        // Upstream URLs in Link / Location become the gateway's (the base is worked out only
        // for answers that carry one).
        let headers = response.headers();
        if headers.contains_key(http::header::LINK) || headers.contains_key(http::header::LOCATION) {
            let public_base = rewrite::public_base(
                self.public_url.as_deref(),
                &parts.headers,
                &parts.uri,
                peer.ip(),
                &self.settings.server.trusted_proxies,
            );
            if let Some(base) = public_base {
                rewrite::rewrite_headers(response.headers_mut(), &self.upstream_base, &base);
            }
        }
        response.headers_mut().insert(CACHE_STATUS_HEADER, HeaderValue::from_static(outcome.as_str()));
        self.cors.apply(&parts.headers, response.headers_mut());
        let took = started.elapsed();
        self.metrics.answered(outcome, took);
        debug!(
            target: "ghgate::access",
            method = %parts.method,
            path = parts.uri.path(),
            status = response.status().as_u16(),
            cache = outcome.as_str(),
            partition = partition.map(Partition::as_str).unwrap_or("-"),
            micros = took.as_micros() as u64,
        );
        response
    }

    /// Whether a request may be answered from the cache at all.
    fn is_cacheable(&self, parts: &Parts) -> bool {
        let cache = &self.settings.cache;
        cache.enabled
            && (parts.method == Method::GET || parts.method == Method::HEAD)
            && !cache.bypass_paths.iter().any(|p| path_has_prefix(parts.uri.path(), p))
            && !parts.headers.contains_key(http::header::RANGE)
            && !directive_present(&parts.headers, CACHE_CONTROL, "no-store")
    }

    /// Phases 3–5 for a cacheable read.
    async fn serve_cached(self: &Arc<Self>, parts: &Parts, caller: &Caller) -> (Response, Outcome) {
        let partition = &caller.partition;
        let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let key = CacheKey::new(partition, path_and_query, &parts.headers);
        let head = parts.method == Method::HEAD;
        let now = SystemTime::now();
        let entry = match self.responses.get(&key.key).await {
            Ok(entry) => entry.filter(|e| e.vary_matches(&parts.headers)),
            Err(e) => {
                self.metrics.store_errors.increment(1);
                warn!(error = %e, "cache look-up failed; going upstream");
                None
            }
        };
        if let Some(entry) = &entry {
            let invalidated = self.is_marked_stale(entry);
            if !invalidated && !client_wants_revalidation(&parts.headers) {
                if entry.is_fresh(now) || self.fresh_by_webhook_coverage(entry, now) {
                    return (self.entry_response(entry, partition, &parts.headers, head, now), Outcome::Hit);
                }
                if entry.within_stale_while_revalidate(now) {
                    let request = self.fill_request(key, caller, parts, Some(Arc::clone(entry)));
                    let coalesce_key = coalesce_key(&request.key, &parts.headers);
                    let me = Arc::clone(self);
                    drop(self.fills.join(coalesce_key, move || me.fill(request).boxed()));
                    return (
                        self.entry_response(entry, partition, &parts.headers, head, now),
                        Outcome::Stale,
                    );
                }
            }
        }

        // Guard the budget: below the reserve, or while held back, a stale entry beats spending.
        let resource = Budgets::resource_of_path(parts.uri.path());
        self.budgets.refresh(partition, resource).await;
        match self.budgets.admit(partition, resource) {
            Admission::Go => {}
            Admission::Reserve => {
                if let Some(entry) = &entry {
                    self.metrics.reserve_stale.increment(1);
                    return (
                        self.entry_response(entry, partition, &parts.headers, head, now),
                        Outcome::Stale,
                    );
                }
            }
            Admission::Stop { until, status, message, limit } => {
                if let Some(entry) = &entry {
                    self.metrics.reserve_stale.increment(1);
                    return (
                        self.entry_response(entry, partition, &parts.headers, head, now),
                        Outcome::Stale,
                    );
                }
                self.metrics.local_limit_answers.increment(1);
                return (limits::stop_response(until, status, &message, limit.as_deref()), Outcome::Negative);
            }
        }

        let client_conditional =
            parts.headers.contains_key(IF_NONE_MATCH) || parts.headers.contains_key(IF_MODIFIED_SINCE);
        // Known not to exist (for this credential, a moment ago)? Then do not ask again.
        let negative = match &entry {
            Some(_) => None,
            None => self.negative.rule_for(&Method::GET, parts.uri.path(), true).and_then(|rule| {
                self.negative.candidate(rule, parts.uri.path(), None, partition.as_str(), &key.key)
            }),
        };
        if let Some(candidate) = &negative {
            if let Some(remembered) = self.negative.lookup(candidate).await {
                return (self.negative_response(candidate, &remembered, partition, head), Outcome::Negative);
            }
        }
        let mut request = self.fill_request(key, caller, parts, entry);
        request.negative = negative;
        let (fill, role) = if request.prior.is_none() && client_conditional {
            // The client's own validators go upstream as they are: a 304 is free for it too,
            // but has no body to share, so this fetch is not coalesced.
            (Arc::clone(self).fill(request).await, Role::Leader)
        } else {
            let coalesce_key = coalesce_key(&request.key, &parts.headers);
            let me = Arc::clone(self);
            self.metrics.inflight_fills.set(self.fills.len() as f64);
            let (flight, role) = self.fills.join(coalesce_key, move || me.fill(request).boxed());
            match flight.await {
                Ok(fill) => (fill, role),
                Err(panicked) => {
                    warn!(error = %panicked, "cache fill failed");
                    let r = github::error_response(
                        StatusCode::BAD_GATEWAY,
                        "ghgate: internal error while fetching",
                    );
                    return (r, Outcome::Miss);
                }
            }
        };
        match fill {
            Fill::Complete(answer) => {
                let outcome = if role == Role::Follower { Outcome::Coalesced } else { answer.outcome };
                (self.answer_response(&answer, partition, &parts.headers, head), outcome)
            }
            Fill::Streaming(slot) => {
                let streamed = slot.lock().expect("stream slot poisoned").take();
                match streamed {
                    Some(streamed) if role == Role::Leader => {
                        (streamed_response(streamed, head), Outcome::Miss)
                    }
                    // A follower cannot share a stream: it fetches for itself.
                    _ => (self.pass_through(parts, Body::empty(), caller).await.0, Outcome::Miss),
                }
            }
            Fill::Failed(error) => (send_error_response(&error), Outcome::Miss),
        }
    }

    fn fill_request(
        &self,
        key: CacheKey,
        caller: &Caller,
        parts: &Parts,
        prior: Option<Arc<CachedResponse>>,
    ) -> FillRequest {
        let mut headers = upstream::request_headers(&parts.headers);
        headers.remove(CONTENT_LENGTH);
        headers.remove(http::header::CONTENT_TYPE);
        if prior.is_some() {
            headers.remove(IF_NONE_MATCH);
            headers.remove(IF_MODIFIED_SINCE);
        }
        FillRequest {
            key,
            caller: caller.clone(),
            path_and_query: parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string(),
            path: parts.uri.path().to_string(),
            headers,
            prior,
            negative: None,
        }
    }

    /// Phases 4–5, once across replicas: with a shared store, one replica fetches a key while
    /// the others wait for the entry it stores (see [`store::once_across_replicas`]).
    async fn fill(self: Arc<Self>, request: FillRequest) -> Fill {
        if let Some(landed) = self.landed_since_look_up(&request) {
            return landed;
        }
        let Some(backend) = self.responses.backend().filter(|b| b.is_shared()).cloned() else {
            // No other replica can be fetching it: nothing to wait for.
            return self.fill_from_upstream(request).await;
        };
        let lock_key = format!("lock:{}", ResponseCache::backend_key(&request.key.key));
        let hold = self.settings.upstream.timeout + Duration::from_secs(2);
        let wait = self.settings.store.lock_wait;
        let checker = Arc::clone(&self);
        let cache_key = request.key.key.clone();
        let prior_time = request.prior.as_ref().map(|p| p.response_time);
        let client_headers = request.headers.clone();
        let check = move || {
            let gateway = Arc::clone(&checker);
            let cache_key = cache_key.clone();
            let client_headers = client_headers.clone();
            async move {
                let entry = gateway.responses.get_from_backend(&cache_key).await.ok().flatten()?;
                let newer = prior_time.is_none_or(|t| entry.response_time > t);
                (newer && entry.vary_matches(&client_headers))
                    .then(|| Fill::Complete(Arc::new(Answer::from_entry(entry, Outcome::Coalesced))))
            }
            .boxed()
        };
        let worker = Arc::clone(&self);
        let work = move || worker.fill_from_upstream(request).boxed();
        store::once_across_replicas(Some(&backend), &lock_key, hold, wait, &self.metrics, check, work).await
    }

    /// The entry another flight for this key stored between this request's look-up and its
    /// join (that flight had just finished, so there was nothing left to join): fresher than
    /// what the look-up found, so it answers the request without a second upstream request.
    fn landed_since_look_up(&self, request: &FillRequest) -> Option<Fill> {
        let entry = self.responses.get_hot(&request.key.key)?;
        let newer = request.prior.as_ref().is_none_or(|prior| entry.response_time > prior.response_time);
        let usable = newer
            && entry.is_fresh(SystemTime::now())
            && entry.vary_matches(&request.headers)
            && !self.is_marked_stale(&entry);
        usable.then(|| Fill::Complete(Arc::new(Answer::from_entry(entry, Outcome::Coalesced))))
    }

    /// Fetches from upstream (conditionally when there is a prior entry) and stores what may
    /// be stored. Runs in its own task; its result is shared by coalesced callers.
    async fn fill_from_upstream(self: Arc<Self>, request: FillRequest) -> Fill {
        let FillRequest { key, caller, path_and_query, path, mut headers, prior, negative } = request;
        let partition = &caller.partition;
        if let Some(prior) = &prior {
            if let Some(etag) = prior.etag() {
                headers.insert(IF_NONE_MATCH, etag.clone());
            }
            if let Some(modified) = prior.last_modified() {
                headers.insert(IF_MODIFIED_SINCE, modified.clone());
            }
        }
        let stale_fallback = |prior: &Option<Arc<CachedResponse>>| {
            let now = SystemTime::now();
            prior
                .as_ref()
                .filter(|p| p.within_stale_if_error(now))
                .map(|p| Fill::Complete(Arc::new(Answer::from_entry(Arc::clone(p), Outcome::Stale))))
        };
        let url = match self.upstream.url_for(&path_and_query) {
            Ok(url) => url,
            Err(e) => return Fill::Failed(Arc::new(SendError::Upstream(UpstreamError::Unreachable(e)))),
        };
        let request_headers = headers.clone();
        let sent =
            self.send_upstream(&caller, Method::GET, url, headers, SendBody::None, prior.as_deref()).await;
        let (response, credential_tag) = match sent {
            Ok(answer) => answer,
            Err(SendError::Upstream(error)) => {
                warn!(%error, path = %path, "upstream request failed");
                return stale_fallback(&prior)
                    .unwrap_or_else(|| Fill::Failed(Arc::new(SendError::Upstream(error))));
            }
            Err(refused) => return Fill::Failed(Arc::new(refused)),
        };
        let status = response.status();
        if status == StatusCode::OK {
            if let Some(prior) = &prior {
                if prior.credential_tag.is_some() && prior.credential_tag != credential_tag {
                    // GitHub ties ETags to the token: after a rotation this one was paid.
                    self.metrics.app.rotation_refreshes.increment(1);
                }
            }
        }
        let mut response_headers = response.headers().clone();
        upstream::strip_hop_by_hop(&mut response_headers);
        policy::merge_vary(&mut response_headers);

        if status == StatusCode::NOT_MODIFIED {
            let Some(prior) = prior else {
                // The client's own validators matched: a bodiless 304 for it alone.
                return Fill::Complete(Arc::new(Answer {
                    status,
                    headers: response_headers,
                    body: Bytes::new(),
                    outcome: Outcome::Miss,
                    entry: None,
                }));
            };
            // Only the 304's own headers need copying out of the connection's buffers.
            let merged = policy::merge_not_modified(&prior.headers, &detach_headers(&response_headers));
            let refreshed = Stored::Refreshed { headers: merged, body: prior.body.clone() };
            let entry = self
                .store_entry(
                    &key,
                    partition,
                    &path,
                    &request_headers,
                    prior.status,
                    refreshed,
                    credential_tag,
                )
                .await;
            let entry = match entry {
                Some(entry) => entry,
                None => Arc::new(CachedResponse { response_time: SystemTime::now(), ..(*prior).clone() }),
            };
            return Fill::Complete(Arc::new(Answer::from_entry(entry, Outcome::Revalidated)));
        }
        if status.is_server_error() {
            if let Some(stale) = stale_fallback(&prior) {
                warn!(status = status.as_u16(), path = %path, "upstream error; serving stale");
                return stale;
            }
        }

        let cap = self.settings.cache.max_body_bytes;
        let declared = response.content_length();
        if declared.is_some_and(|len| len > cap) {
            return Fill::Streaming(Arc::new(Mutex::new(Some(Streamed { response, prefix: Vec::new() }))));
        }
        let mut response = response;
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut read: u64 = 0;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len() as u64;
                    chunks.push(chunk);
                    if read > cap {
                        let streamed = Streamed { response, prefix: chunks };
                        return Fill::Streaming(Arc::new(Mutex::new(Some(streamed))));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let error = UpstreamError::BadBody(upstream::error_chain(&e.without_url()));
                    warn!(%error, path = %path, "upstream body failed; nothing cached");
                    return stale_fallback(&prior)
                        .unwrap_or_else(|| Fill::Failed(Arc::new(SendError::Upstream(error))));
                }
            }
        }
        let body = concat(chunks);
        if status == StatusCode::FORBIDDEN && !response_headers.contains_key(http::header::RETRY_AFTER) {
            self.budgets.record_secondary_message(partition, status, &body);
        }
        if let Some(candidate) = &negative {
            if matches!(status.as_u16(), 404 | 410) {
                self.negative.consider(candidate, status, &response_headers, &body).await;
            }
        }
        let fetched = Stored::Fetched { headers: &response_headers, body: &body };
        let entry =
            self.store_entry(&key, partition, &path, &request_headers, status, fetched, credential_tag).await;
        if entry.is_none() && prior.is_some() {
            // A newer answer that may not be stored replaces the old one: forget it.
            if let Err(e) = self.responses.remove(&key.key).await {
                self.metrics.store_errors.increment(1);
                warn!(error = %e, "could not drop a replaced cache entry");
            }
        }
        Fill::Complete(Arc::new(Answer {
            status,
            headers: response_headers,
            body,
            outcome: Outcome::Miss,
            entry,
        }))
    }

    /// Phase 5: stores an answer if the policy allows, returning the entry.
    #[allow(clippy::too_many_arguments)]
    async fn store_entry(
        &self,
        key: &CacheKey,
        partition: &Partition,
        path: &str,
        request_headers: &HeaderMap,
        status: StatusCode,
        answer: Stored<'_>,
        credential_tag: Option<u64>,
    ) -> Option<Arc<CachedResponse>> {
        let now = SystemTime::now();
        let verdict =
            self.policy.evaluate(partition, path, request_headers, status, answer.headers(), now)?;
        let (headers, body, refreshed) = match answer {
            // Copies of exactly the body's size and of each header value: the chunk the body
            // came in may be a slice of a much larger read buffer, which would stay pinned for
            // the entry's whole life (and so would the header block's buffer).
            Stored::Fetched { headers, body } => {
                (detach_headers(headers), Bytes::copy_from_slice(body), false)
            }
            Stored::Refreshed { headers, body } => (headers, body, true),
        };
        let vary = policy::extra_vary_names(&headers)
            .into_iter()
            .map(|name| {
                let value = request_headers.get(&name).cloned();
                (name, value)
            })
            .collect();
        let entry = Arc::new(CachedResponse {
            status,
            headers,
            body,
            response_time: now,
            initial_age: verdict.initial_age,
            freshness: verdict.freshness,
            vary,
            path_key: key.path_key.clone(),
            credential_tag,
        });
        self.metrics.cache_stores.increment(1);
        let ttl = entry.time_to_keep(now);
        let stored = if refreshed {
            self.responses.put_refreshed(key.key.clone(), Arc::clone(&entry), ttl).await
        } else {
            self.responses.put(key.key.clone(), Arc::clone(&entry), ttl).await
        };
        if let Err(e) = stored {
            // The memory tier has it; the backend's failure is counted and logged by the backend.
            tracing::debug!(error = %e, "cache entry kept in memory only");
        }
        Some(entry)
    }

    /// A remembered futile answer, with the latest rate-limit values.
    fn negative_response(
        &self,
        candidate: &Candidate,
        remembered: &crate::negative::Remembered,
        partition: &Partition,
        head: bool,
    ) -> Response {
        let (status, mut headers, body) = self.negative.answer(candidate, remembered);
        if let Some(limit) = self.budgets.latest(partition, "core") {
            limit.apply(&mut headers);
        }
        build_response(status, headers, if head { Body::empty() } else { Body::from(body) })
    }

    /// Phase 4 for everything that is not a cacheable read: forwarded as it is, bodies
    /// streamed both ways — unless a negative rule knows the answer already.
    async fn pass_through(&self, parts: &Parts, body: Body, caller: &Caller) -> (Response, Outcome) {
        let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let url = match self.upstream.url_for(path_and_query) {
            Ok(url) => url,
            Err(e) => return (github::error_response(StatusCode::BAD_REQUEST, &e), Outcome::Bypass),
        };
        let rule = self.negative.rule_for(&parts.method, parts.uri.path(), false);
        let mut body = Some(body);
        let mut buffered: Option<Bytes> = None;
        if let Some(rule) = rule {
            if self.negative.needs_body(rule)
                && declared_length(&parts.headers).is_some_and(|len| len <= NEGATIVE_BODY_MAX)
            {
                match axum::body::to_bytes(body.take().expect("body present"), NEGATIVE_BODY_MAX as usize)
                    .await
                {
                    Ok(bytes) => buffered = Some(bytes),
                    Err(e) => {
                        let message = format!("could not read the request body: {e}");
                        return (github::error_response(StatusCode::BAD_REQUEST, &message), Outcome::Bypass);
                    }
                }
            }
        }
        let candidate = rule.and_then(|rule| {
            if self.negative.needs_body(rule) && buffered.is_none() {
                return None;
            }
            self.negative.candidate(
                rule,
                parts.uri.path(),
                buffered.as_deref(),
                caller.partition.as_str(),
                "",
            )
        });
        if let Some(candidate) = &candidate {
            if let Some(remembered) = self.negative.lookup(candidate).await {
                let head = parts.method == Method::HEAD;
                return (
                    self.negative_response(candidate, &remembered, &caller.partition, head),
                    Outcome::Negative,
                );
            }
        }
        let resource = Budgets::resource_of_path(parts.uri.path());
        self.budgets.refresh(&caller.partition, resource).await;
        if let Admission::Stop { until, status, message, limit } =
            self.budgets.admit(&caller.partition, resource)
        {
            self.metrics.local_limit_answers.increment(1);
            return (limits::stop_response(until, status, &message, limit.as_deref()), Outcome::Negative);
        }
        let mut response = self.forward(parts, body, buffered, caller, url).await;
        if response.status() == StatusCode::FORBIDDEN
            && !response.headers().contains_key(http::header::RETRY_AFTER)
        {
            response = self.inspect_refusal(&caller.partition, response).await;
        }
        let Some(candidate) = candidate else { return (response, Outcome::Bypass) };
        (self.remember_if_futile(&candidate, response).await, Outcome::Bypass)
    }

    /// Reads a small 403 to tell a secondary rate limit (held back) from a permissions answer,
    /// giving the client the same answer.
    async fn inspect_refusal(&self, partition: &Partition, response: Response) -> Response {
        if declared_length(response.headers()).is_none_or(|len| len > NEGATIVE_BODY_MAX) {
            return response;
        }
        let (parts, body) = response.into_parts();
        match axum::body::to_bytes(body, NEGATIVE_BODY_MAX as usize).await {
            Ok(bytes) => {
                self.budgets.record_secondary_message(partition, parts.status, &bytes);
                Response::from_parts(parts, Body::from(bytes))
            }
            Err(_) => github::error_response(StatusCode::BAD_GATEWAY, "ghgate: upstream answer broke off"),
        }
    }

    /// Offers a small answer to the negative cache, giving the client the same answer.
    async fn remember_if_futile(&self, candidate: &Candidate, response: Response) -> Response {
        let too_large = declared_length(response.headers()).is_none_or(|len| len > NEGATIVE_BODY_MAX);
        if response.status().is_success() || response.status().is_server_error() || too_large {
            return response;
        }
        let (parts, body) = response.into_parts();
        let bytes = match axum::body::to_bytes(body, NEGATIVE_BODY_MAX as usize).await {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(error = %e, "upstream body broke off");
                return github::error_response(StatusCode::BAD_GATEWAY, "ghgate: upstream answer broke off");
            }
        };
        if self.negative.consider(candidate, parts.status, &parts.headers, &bytes).await == Verdict::Canary {
            self.metrics.negative_canaries.increment(1);
        }
        Response::from_parts(parts, Body::from(bytes))
    }

    /// Sends a request upstream as it is and streams the answer back.
    async fn forward(
        &self,
        parts: &Parts,
        body: Option<Body>,
        buffered: Option<Bytes>,
        caller: &Caller,
        url: url::Url,
    ) -> Response {
        let body = body.unwrap_or_default();
        let over_limit = Arc::new(AtomicBool::new(false));
        let headers = upstream::request_headers(&parts.headers);
        let has_body = parts.headers.contains_key(http::header::TRANSFER_ENCODING)
            || parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() != "0");
        let body = match (&caller.auth, has_body) {
            (_, false) => SendBody::None,
            (_, true) if buffered.is_some() => SendBody::Buffered(buffered.expect("checked")),
            // A broker request may need a second try with a fresh token: keep small bodies.
            (UpstreamAuth::App(_), true)
                if declared_length(&parts.headers)
                    .is_some_and(|len| len <= self.broker.settings().retry_body_max_bytes) =>
            {
                match axum::body::to_bytes(body, usize::MAX).await {
                    Ok(bytes) => SendBody::Buffered(bytes),
                    Err(e) => {
                        let message = format!("could not read the request body: {e}");
                        return github::error_response(StatusCode::BAD_REQUEST, &message);
                    }
                }
            }
            (_, true) => SendBody::Stream(limit_body(body, self.settings.server.max_body_bytes, &over_limit)),
        };
        let sent = self.send_upstream(caller, parts.method.clone(), url, headers, body, None).await;
        let response = match sent {
            Ok((response, _)) => response,
            Err(_) if over_limit.load(Ordering::Relaxed) => {
                // A chunked body crossed the limit: the upstream request was cut off with it.
                self.metrics.bad_requests.increment(1);
                warn!(method = %parts.method, path = parts.uri.path(), "cut off a request body over server.max_body_bytes");
                return body_too_large(self.settings.server.max_body_bytes);
            }
            Err(error) => {
                if let SendError::Upstream(e) = &error {
                    warn!(error = %e, method = %parts.method, path = parts.uri.path(), "upstream request failed");
                }
                return send_error_response(&error);
            }
        };
        if is_unsafe(&parts.method) && (response.status().is_success() || response.status().is_redirection())
        {
            self.invalidate_after_unsafe(parts.uri.path(), response.headers());
        }
        streamed_response(Streamed { response, prefix: Vec::new() }, parts.method == Method::HEAD)
    }

    /// Whether an entry is fresh because its repository has webhook coverage (see
    /// `webhooks.covered_freshness`): any change would have marked it stale.
    fn fresh_by_webhook_coverage(&self, entry: &CachedResponse, now: SystemTime) -> bool {
        let extra = self.settings.webhooks.covered_freshness;
        if extra.is_zero() || entry.freshness.fresh_for.is_zero() {
            return false;
        }
        let (Some(owner), Some(repo)) = crate::webhook::tags_of(&entry.path_key) else { return false };
        now < entry.response_time + extra && self.covered.contains_key(&format!("{owner}/{repo}"))
    }

    /// Marks a scope (`repo:o/r`, `owner:o`) stale now, here and — with a shared store — for
    /// every replica (they pick marks up within a second, see [`Gateway::pull_marks`]).
    async fn mark_stale(&self, scope: String) {
        let now = SystemTime::now();
        self.mark(scope.clone(), now);
        if let Some(backend) = self.responses.backend().filter(|b| b.is_shared()) {
            let millis = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
            let ttl = MARK_TTL;
            let _ = backend
                .put(&format!("inv:{scope}"), store::frame(&millis.to_be_bytes(), now + ttl), ttl)
                .await;
        }
    }

    /// Admin purge: marks the entries of a path, a repository or an owner stale (in every
    /// partition; with a shared store on every replica). The next read revalidates — free when
    /// the data did not change — so purging never re-buys what is still current.
    pub async fn purge(&self, path: Option<&str>, owner: Option<&str>, repo: Option<&str>) {
        self.metrics.invalidations.increment(1);
        let what = match (path, owner, repo) {
            (Some(path), _, _) => format!("purge {}", path.split('?').next().unwrap_or(path)),
            (None, Some(owner), Some(repo)) => format!("purge repo {owner}/{repo}"),
            (None, Some(owner), None) => format!("purge owner {owner}"),
            _ => "purge".to_string(),
        };
        self.metrics.activity.event("invalidation", what);
        match (path, owner, repo) {
            (Some(path), _, _) => {
                self.mark(crate::cache::key::path_key(path), SystemTime::now());
            }
            (None, Some(owner), Some(repo)) => {
                self.mark_stale(format!("repo:{}/{}", owner.to_ascii_lowercase(), repo.to_ascii_lowercase()))
                    .await
            }
            (None, Some(owner), None) => {
                self.mark_stale(format!("owner:{}", owner.to_ascii_lowercase())).await
            }
            _ => {}
        }
    }

    /// Brings in staleness marks other replicas wrote (called every second with a shared store).
    pub async fn pull_marks(&self) {
        let Some(backend) = self.responses.backend().filter(|b| b.is_shared()) else { return };
        let Ok(keys) = backend.keys_with_prefix("inv:").await else { return };
        for key in keys {
            let Ok(Some(framed)) = backend.get(&key).await else { continue };
            let Ok((_, payload)) = store::unframe(&framed) else { continue };
            let Ok(bytes) = <[u8; 8]>::try_from(payload) else { continue };
            let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(bytes));
            let scope = key.trim_start_matches("inv:").to_string();
            if self.invalidated.get(&scope).is_none_or(|t| t < at) {
                // Marks made while this replica runs show on its status page too.
                if self.metrics.activity.started().is_some_and(|started| at > started) {
                    let what = scope.replacen(':', " ", 1);
                    self.metrics.activity.event("invalidation", format!("from another replica: {what}"));
                }
                self.mark(scope, at);
            }
        }
    }

    /// Records a staleness mark for a path key or a scope (`repo:o/r`, `owner:o`).
    fn mark(&self, key: String, at: SystemTime) {
        self.any_marks.store(true, std::sync::atomic::Ordering::Release);
        self.invalidated.insert(key, at);
    }

    /// Whether something changed an entry after it was fetched: a write to its path, or a
    /// webhook about its repository or owner.
    fn is_marked_stale(&self, entry: &CachedResponse) -> bool {
        // Until the first mark, nothing can be stale by one (and hits skip the look-ups).
        if !self.any_marks.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let after = |key: &str| self.invalidated.get(key).is_some_and(|t| t >= entry.response_time);
        if after(&entry.path_key) {
            return true;
        }
        match crate::webhook::tags_of(&entry.path_key) {
            (Some(owner), repo) => {
                after(&format!("owner:{owner}")) || repo.is_some_and(|r| after(&format!("repo:{owner}/{r}")))
            }
            _ => false,
        }
    }

    /// `POST /_ghgate/webhook`: checks the signature and size, answers 202 at once, and applies
    /// what the delivery says changed afterwards.
    async fn receive_webhook(self: &Arc<Self>, parts: &Parts, body: Body) -> Response {
        let settings = &self.settings.webhooks;
        if settings.secrets.is_empty() {
            return github::error_response(
                StatusCode::NOT_FOUND,
                "ghgate: the webhook receiver is not configured (webhooks.secrets)",
            );
        }
        let cap = settings.max_body_bytes;
        if declared_length(&parts.headers).is_some_and(|len| len > cap) {
            self.metrics.webhook("too_large").increment(1);
            return github::error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "ghgate: webhook delivery too large",
            );
        }
        let Ok(bytes) = axum::body::to_bytes(body, cap as usize).await else {
            self.metrics.webhook("too_large").increment(1);
            return github::error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "ghgate: webhook delivery too large",
            );
        };
        if !crate::webhook::verify(&settings.secrets, &bytes, parts.headers.get("x-hub-signature-256")) {
            self.metrics.webhook("bad_signature").increment(1);
            warn!("refused a webhook delivery with a missing or bad signature");
            return github::error_response(
                StatusCode::UNAUTHORIZED,
                "ghgate: missing or bad X-Hub-Signature-256",
            );
        }
        self.metrics.webhook("accepted").increment(1);
        // The event name is shown on the status page: keep it short and plain.
        let event: String = parts
            .headers
            .get("x-github-event")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let payload: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            for effect in crate::webhook::effects(&event, &payload) {
                me.apply_webhook(&event, effect).await;
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::ACCEPTED;
        response
    }

    async fn apply_webhook(&self, event: &str, effect: crate::webhook::Effect) {
        use crate::webhook::Effect;
        let now = SystemTime::now();
        self.metrics.invalidations.increment(1);
        let what = match &effect {
            Effect::Repo { owner, repo } => format!("webhook {event}: repo {owner}/{repo}"),
            Effect::Owner(owner) => format!("webhook {event}: owner {owner}"),
            Effect::Installation { id, .. } => format!("webhook {event}: installation {id}"),
        };
        self.metrics.activity.event("invalidation", what);
        match effect {
            Effect::Repo { owner, repo } => {
                self.covered.insert(format!("{owner}/{repo}"), now);
                self.mark_stale(format!("repo:{owner}/{repo}")).await;
                let _ =
                    self.negative.clear(Some(crate::negative::NOT_FOUND), Some(&owner), Some(&repo)).await;
            }
            Effect::Owner(owner) => {
                self.mark_stale(format!("owner:{owner}")).await;
                let _ = self.negative.clear(Some(crate::negative::NOT_FOUND), Some(&owner), None).await;
                let _ =
                    self.negative.clear(Some(crate::negative::APP_NOT_INSTALLED), Some(&owner), None).await;
            }
            Effect::Installation { id, account } => {
                self.broker.forget_installation(id, account.as_deref()).await
            }
        }
    }

    /// RFC 9111 §4.4: a successful unsafe request makes the stored answers for its target
    /// (and its `Location`) stale, in every partition.
    fn invalidate_after_unsafe(&self, path: &str, response_headers: &HeaderMap) {
        let now = SystemTime::now();
        self.mark(crate::cache::key::path_key(path), now);
        self.metrics.invalidations.increment(1);
        self.metrics
            .activity
            .event("invalidation", format!("write {}", path.split('?').next().unwrap_or(path)));
        let location = response_headers.get(http::header::LOCATION).and_then(|v| v.to_str().ok());
        if let Some(rest) = location.and_then(|l| l.strip_prefix(self.upstream_base.as_str())) {
            if rest.starts_with('/') {
                self.mark(crate::cache::key::path_key(rest), now);
            }
        }
    }

    /// Sends one request upstream with the caller's credential, counting the answer and
    /// recording its rate-limit headers. For an app identity: attaches the installation token;
    /// a 401 while the token is still settling is retried after a short pause (GitHub has not
    /// replicated it yet); a 401 after that evicts the token and the request is tried once more
    /// with a fresh one. Returns the fingerprint of the token used, if any.
    async fn send_upstream(
        &self,
        caller: &Caller,
        method: Method,
        url: url::Url,
        headers: HeaderMap,
        mut body: SendBody,
        prior: Option<&CachedResponse>,
    ) -> Result<(reqwest::Response, Option<u64>), SendError> {
        // Politeness: this identity's turn (held until the answer's headers arrive).
        let _turn = match self.lanes.enter(&caller.partition, is_unsafe(&method)).await {
            Ok(permit) => permit,
            Err(_) => {
                self.metrics.queue_overflows.increment(1);
                return Err(SendError::Broker(crate::app_auth::Rejection {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "ghgate: too many requests of this identity are already waiting for GitHub; retry shortly".into(),
                }));
            }
        };
        let UpstreamAuth::App(auth) = &caller.auth else {
            let (body, _) = body.take();
            let result = self.upstream.send(method, url, headers, body).await;
            return self.account(&caller.partition, result).map(|r| (r, None));
        };
        let mut reminted = false;
        loop {
            let token = self.broker.token(auth).await.map_err(SendError::Broker)?;
            let mut headers = headers.clone();
            headers.insert(http::header::AUTHORIZATION, token.authorization());
            if let Some(prior) = prior {
                adjust_validators_for_token(&mut headers, prior, &token);
            }
            let (send_body, replayable) = body.take();
            let result = self.upstream.send(method.clone(), url.clone(), headers, send_body).await;
            let response = self.account(&caller.partition, result)?;
            if !replayable {
                return Ok((response, Some(token.tag)));
            }
            let settling = self.broker.settling(&token);
            let (response, refused) = token_refused(response, settling).await;
            if !refused {
                return Ok((response, Some(token.tag)));
            }
            if settling {
                self.metrics.app.settle_retries.increment(1);
                tokio::time::sleep(self.broker.settings().settle_retry_interval).await;
                continue;
            }
            if !reminted && self.broker.evict_rejected(auth, &token).await {
                reminted = true;
                self.metrics.app.stale_token_retries.increment(1);
                warn!(
                    app = auth.app.name(),
                    installation = auth.installation,
                    "GitHub rejected a cached token; retrying with a fresh one"
                );
                continue;
            }
            return Ok((response, Some(token.tag)));
        }
    }

    /// Counts an upstream answer (or failure) and records its rate-limit headers.
    fn account(
        &self,
        partition: &Partition,
        result: Result<(reqwest::Response, Duration), UpstreamError>,
    ) -> Result<reqwest::Response, SendError> {
        match result {
            Ok((response, took)) => {
                self.metrics.upstream_answer(Some(response.status()), took);
                self.record_rate_limit(partition, response.status(), response.headers());
                Ok(response)
            }
            Err(error) => {
                self.metrics.upstream_answer(None, Duration::ZERO);
                Err(SendError::Upstream(error))
            }
        }
    }

    fn record_rate_limit(&self, partition: &Partition, status: StatusCode, headers: &HeaderMap) {
        self.budgets.record(partition, status, headers);
    }

    /// The latest rate-limit values known for this partition replace the stored ones.
    fn apply_rate_limit(&self, partition: &Partition, headers: &mut HeaderMap) {
        let latest = self.budgets.latest(partition, github::resource_of(headers));
        if let Some(limit) = latest {
            limit.apply(headers);
        }
    }

    /// Phase 6 for a stored entry: headers with `Age` and fresh rate-limit values, a 304 when
    /// the client's validators match, no body for HEAD.
    fn entry_response(
        &self,
        entry: &CachedResponse,
        partition: &Partition,
        client: &HeaderMap,
        head: bool,
        now: SystemTime,
    ) -> Response {
        let mut headers = entry.headers.clone();
        headers.insert(AGE, entry.age_header(now));
        self.apply_rate_limit(partition, &mut headers);
        if entry.satisfies_conditional(client) {
            return not_modified(headers);
        }
        let body = if head { Body::empty() } else { Body::from(entry.body.clone()) };
        build_response(entry.status, headers, body)
    }

    fn answer_response(
        &self,
        answer: &Answer,
        partition: &Partition,
        client: &HeaderMap,
        head: bool,
    ) -> Response {
        if let Some(entry) = &answer.entry {
            return self.entry_response(entry, partition, client, head, SystemTime::now());
        }
        let mut headers = answer.headers.clone();
        self.apply_rate_limit(partition, &mut headers);
        if answer.status == StatusCode::NOT_MODIFIED {
            return not_modified(headers);
        }
        let body = if head { Body::empty() } else { Body::from(answer.body.clone()) };
        build_response(answer.status, headers, body)
    }
}

/// An answer to store. Stored headers and bodies are copies detached from connection buffers;
/// each is copied once.
enum Stored<'a> {
    /// Fetched just now: headers and body are copied here.
    Fetched { headers: &'a HeaderMap, body: &'a Bytes },
    /// A 304 refresh: the prior entry's headers merged with the 304's (both already detached)
    /// and the prior entry's body, shared.
    Refreshed { headers: HeaderMap, body: Bytes },
}

impl Stored<'_> {
    fn headers(&self) -> &HeaderMap {
        match self {
            Stored::Fetched { headers, .. } => headers,
            Stored::Refreshed { headers, .. } => headers,
        }
    }
}

/// Phase 1: refuses requests a proxy must not forward.
pub fn check_request(parts: &Parts) -> Result<(), String> {
    if parts.method == Method::CONNECT {
        return Err("CONNECT is not supported: ghgate is a reverse proxy for the GitHub API".into());
    }
    if parts.version <= Version::HTTP_11 && parts.uri.scheme().is_some() {
        return Err("absolute-form request targets are not accepted; send the path only".into());
    }
    let path = parts.uri.path();
    if !path.starts_with('/') {
        return Err("the request path must start with '/'".into());
    }
    check_path(path)
}

/// `.` or `..`, each dot possibly written `%2e` / `%2E` (checked without allocating: this
/// runs on every request).
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2].eq_ignore_ascii_case(&b'e')
        {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// Refuses dot segments (also percent-encoded): appended to an enterprise base such as
/// `/api/v3`, `..` would climb out of it.
pub fn check_path(path: &str) -> Result<(), String> {
    for segment in path.split('/') {
        if is_dot_segment(segment) {
            return Err("dot segments ('.' or '..') are not allowed in request paths".into());
        }
        if segment.contains('\\') || contains_ignore_ascii_case(segment.as_bytes(), b"%5c") {
            return Err("backslashes are not allowed in request paths".into());
        }
    }
    Ok(())
}

/// Whether GitHub refused the token itself (so a retry with the same token after it settles,
/// or with a fresh one, can succeed): any 401; a 403 only when it says "Bad credentials", or
/// while a new token is settling and the 403 is not a rate-limit answer. A 403 that is a
/// permissions or rate-limit answer goes back to the client. Small 403 bodies are read to
/// decide and put back.
async fn token_refused(response: reqwest::Response, settling: bool) -> (reqwest::Response, bool) {
    match response.status() {
        StatusCode::UNAUTHORIZED => (response, true),
        StatusCode::FORBIDDEN => {
            let rate_limited = response.headers().contains_key(http::header::RETRY_AFTER)
                || response.headers().get("x-ratelimit-remaining").is_some_and(|v| v == "0");
            let status = response.status();
            let version = response.version();
            let headers = response.headers().clone();
            let body = match response.bytes().await {
                Ok(body) => body,
                // The body broke off: an empty 403 still tells the client it was refused.
                Err(_) => Bytes::new(),
            };
            let text = String::from_utf8_lossy(&body).to_ascii_lowercase();
            let refused = text.contains("bad credentials")
                || (settling
                    && !rate_limited
                    && !text.contains("rate limit")
                    && !text.contains("not accessible"));
            let mut rebuilt = http::Response::new(body);
            *rebuilt.status_mut() = status;
            *rebuilt.version_mut() = version;
            *rebuilt.headers_mut() = headers;
            (reqwest::Response::from(rebuilt), refused)
        }
        _ => (response, false),
    }
}

/// GitHub ties ETags to the token that fetched them: revalidating an entry fetched with an
/// earlier token by its ETag would cost a full answer. GitHub Support's workaround is to
/// revalidate with `If-Modified-Since` alone when the entry has a `Last-Modified`.
fn adjust_validators_for_token(headers: &mut HeaderMap, prior: &CachedResponse, token: &InstallationToken) {
    let rotated = prior.credential_tag.is_some_and(|tag| tag != token.tag);
    if rotated && headers.contains_key(IF_MODIFIED_SINCE) {
        headers.remove(IF_NONE_MATCH);
    }
}

fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

fn path_has_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'))
}

/// Whether the request's `Cache-Control` (or `Pragma`) holds a directive.
fn directive_present(headers: &HeaderMap, name: HeaderName, directive: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().split('=').next().is_some_and(|n| n.trim().eq_ignore_ascii_case(directive)))
}

/// `no-cache`, `max-age=0` or `Pragma: no-cache` from a client means "revalidate" — which is
/// free upstream — not "bypass". Node adds them to every conditional request.
fn client_wants_revalidation(headers: &HeaderMap) -> bool {
    directive_present(headers, CACHE_CONTROL, "no-cache")
        || directive_present(headers, PRAGMA, "no-cache")
        || headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("max-age=0"))
}

/// The key concurrent fetches share: the cache key plus the values of headers that `Vary`
/// may select on but the key does not include.
fn coalesce_key(key: &CacheKey, headers: &HeaderMap) -> String {
    let mut k = key.key.clone();
    for name in &VARY_SELECTORS {
        if let Some(v) = headers.get(name) {
            k.push('\n');
            k.push_str(name.as_str());
            k.push('=');
            k.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
    }
    k
}

fn concat(chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.into_iter().next().expect("one chunk"),
        _ => {
            let mut all = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in chunks {
                all.extend_from_slice(&c);
            }
            Bytes::from(all)
        }
    }
}

/// Copies header values out of the connection's read buffer (hyper hands out slices of it),
/// so a stored entry pins only its own bytes; GitHub's usual names and values become static
/// ones ([`github::intern_header`]), which every hit then copies for free.
fn detach_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        let (name, copy) = github::intern_header(name.clone(), copy);
        out.append(name, copy);
    }
    out
}

fn build_response(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn not_modified(mut headers: HeaderMap) -> Response {
    headers.remove(CONTENT_LENGTH);
    headers.remove(http::header::CONTENT_TYPE);
    build_response(StatusCode::NOT_MODIFIED, headers, Body::empty())
}

fn streamed_response(streamed: Streamed, head: bool) -> Response {
    let Streamed { response, prefix } = streamed;
    let status = response.status();
    let mut headers = response.headers().clone();
    upstream::strip_hop_by_hop(&mut headers);
    if head {
        return build_response(status, headers, Body::empty());
    }
    let prefix = futures::stream::iter(prefix.into_iter().map(Ok::<Bytes, reqwest::Error>));
    let body = Body::from_stream(prefix.chain(response.bytes_stream()));
    build_response(status, headers, body)
}

fn send_error_response(error: &SendError) -> Response {
    match error {
        SendError::Upstream(error) => {
            let status = match error {
                UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            github::error_response(status, &format!("ghgate: {error}"))
        }
        SendError::Broker(rejection) => github::error_response(rejection.status, &rejection.message),
    }
}

/// A streamed request body that fails once more than `max` bytes have passed, setting
/// `over_limit` so the failed upstream request can be reported as the client's 413.
fn limit_body(body: Body, max: u64, over_limit: &Arc<AtomicBool>) -> Body {
    let over_limit = Arc::clone(over_limit);
    let mut passed: u64 = 0;
    Body::from_stream(body.into_data_stream().map(move |chunk| {
        let chunk = chunk?;
        passed = passed.saturating_add(chunk.len() as u64);
        if passed > max {
            over_limit.store(true, Ordering::Relaxed);
            return Err(axum::Error::new("request body larger than server.max_body_bytes"));
        }
        Ok(chunk)
    }))
}

/// The 413 for a request body over `server.max_body_bytes`.
fn body_too_large(max: u64) -> Response {
    github::error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("ghgate: request body larger than server.max_body_bytes ({max} bytes)"),
    )
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str) -> Parts {
        http::Request::builder().method(method).uri(uri).body(()).unwrap().into_parts().0
    }

    #[test]
    fn dot_segments_and_connect_are_refused() {
        assert!(check_request(&parts("GET", "/repos/o/r")).is_ok());
        assert!(check_request(&parts("GET", "/repos/../admin")).is_err());
        assert!(check_request(&parts("GET", "/repos/%2E%2e/admin")).is_err());
        assert!(check_request(&parts("GET", "/a/%5c/b")).is_err());
        assert!(check_request(&parts("CONNECT", "example.com:443")).is_err());
        assert!(check_request(&parts("GET", "http://evil.example/x")).is_err());
        for dots in [".", "..", "%2e", "%2E%2e", ".%2e", "%2e."] {
            assert!(check_path(&format!("/a/{dots}/b")).is_err(), "{dots}");
            assert!(check_path(&format!("/a/{dots}")).is_err(), "{dots} at the end");
        }
        for fine in ["...", ".a", "a.", "%2e%2e%2e", "%2", "v1.2", "%2ex", ""] {
            assert!(check_path(&format!("/a/{fine}/b")).is_ok(), "{fine}");
        }
        assert!(check_path("/a/%5C").is_err() && check_path("/a/b\\c").is_err());
    }

    #[test]
    fn revalidation_requests_are_recognised() {
        let mut h = HeaderMap::new();
        assert!(!client_wants_revalidation(&h));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        assert!(client_wants_revalidation(&h));
        let mut h = HeaderMap::new();
        h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(client_wants_revalidation(&h));
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
        assert!(client_wants_revalidation(&h));
    }

    #[test]
    fn bypass_prefixes_match_whole_segments() {
        assert!(path_has_prefix("/rate_limit", "/rate_limit"));
        assert!(path_has_prefix("/graphql/x", "/graphql"));
        assert!(!path_has_prefix("/rate_limits", "/rate_limit"));
    }
}
