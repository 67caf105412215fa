//! Phase 5 on the cached track, fill: one upstream request per key — coalesced within the
//! process, done once across replicas, conditional when an entry exists so GitHub's free 304
//! can confirm it — whose answer every waiting request shares. A large body is streamed to
//! the leader instead; an upstream failure falls back to a stale entry where the entry allows.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::FutureExt;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::{HeaderMap, HeaderName, Method, StatusCode};
use tracing::warn;

use super::finish::{send_error_response, streamed_response};
use super::send::{Outgoing, SendBody, SendError};
use super::storing::{Stored, detach_headers};
use super::{Caller, Gateway, RequestCtx};
use crate::cache::etag::{self, Conditional, Verdict};
use crate::cache::policy;
use crate::cache::{CacheKey, CachedResponse, Outcome};
use crate::coalesce::Role;
use crate::github;
use crate::identity;
use crate::negative::Candidate;
use crate::store::{ReplicaLock, ReplicaWork, ResponseCache};
use crate::upstream::{self, UpstreamError};

/// Request headers whose values, when `Vary` names them, also separate concurrent fetches.
const VARY_SELECTORS: [HeaderName; 3] = [
    http::header::COOKIE,
    HeaderName::from_static("x-github-otp"),
    HeaderName::from_static("x-requested-with"),
];

/// What one upstream fetch for the cache produced; shared by every coalesced caller.
#[derive(Clone)]
pub(super) enum Fill {
    /// A complete answer every caller can serve.
    Complete(Arc<Answer>),
    /// The body was too large to buffer: only the leader can stream it; followers go alone.
    Streaming(Arc<Mutex<Option<Streamed>>>),
    /// Upstream failed (or the broker refused) and no stale entry may stand in.
    Failed(Arc<SendError>),
}

/// A buffered answer.
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `Miss`, `Revalidated` or `Stale`.
    pub outcome: Outcome,
    /// The entry it came from or went into, for `Age` and conditional checks.
    pub entry: Option<Arc<CachedResponse>>,
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
pub(super) struct Streamed {
    pub response: reqwest::Response,
    pub prefix: Vec<Bytes>,
}

/// Everything a fill needs, owned, so it can run in its own task.
pub(super) struct FillRequest {
    pub key: CacheKey,
    pub caller: Caller,
    pub path_and_query: String,
    pub path: String,
    /// The client's headers as they go upstream, without validators of the entry's own.
    pub headers: HeaderMap,
    /// The entry being revalidated, if any.
    pub prior: Option<Arc<CachedResponse>>,
    /// The negative-cache entry a 404/410 answer would be remembered under.
    pub negative: Option<Candidate>,
    /// Send no validators of ghgate's own (a retry after an ambiguous 304).
    pub plain: bool,
    /// When the request asked: an entry another replica fetched since answers it.
    pub asked_at: SystemTime,
}

impl Gateway {
    /// Phase 5: fills the key (or joins the fill under way) and answers from what it got.
    pub(super) async fn fill(
        self: &Arc<Self>,
        ctx: &RequestCtx,
        key: CacheKey,
        entry: Option<Arc<CachedResponse>>,
        negative: Option<Candidate>,
    ) -> (Response, Outcome) {
        let client_conditional = ctx.parts.headers.contains_key(IF_NONE_MATCH)
            || ctx.parts.headers.contains_key(IF_MODIFIED_SINCE);
        // A stale entry stale-if-error allows to serve: while GitHub is failing it answers at
        // once, and otherwise once GitHub has been slower than `cache.stale_if_slow`.
        let servable = entry.clone().filter(|e| e.within_stale_if_error(SystemTime::now()));
        if let Some(stale) = &servable {
            if self.breaker.serve_stale_now() {
                self.metrics.stale_if_slow.increment(1);
                return (self.entry_response(ctx, stale, SystemTime::now()), Outcome::Stale);
            }
        }
        let mut request = self.fill_request(key, ctx, entry);
        request.negative = negative;
        let (fill, role) = if request.prior.is_none() && client_conditional {
            // The client's own validators go upstream as they are: a 304 is free for it too,
            // but has no body to share, so this fetch is not coalesced.
            (Arc::clone(self).fill_once(request).await, Role::Leader)
        } else {
            let coalesce_key = coalesce_key(&request.key, &ctx.parts.headers);
            let me = Arc::clone(self);
            self.metrics.inflight_fills.set(self.fills.len() as f64);
            let (flight, role) = self.fills.join(coalesce_key, move || me.fill_once(request).boxed());
            let patience = self.settings.cache.stale_if_slow;
            let landed = match &servable {
                Some(stale) if !patience.is_zero() => match tokio::time::timeout(patience, flight).await {
                    Ok(landed) => landed,
                    Err(_) => {
                        // The fill goes on in its own task and refreshes the entry when GitHub
                        // answers. GitHub this slow counts as failing: a few such reads open
                        // the breaker, and the next reads do not wait at all.
                        if self.breaker.failed() {
                            self.metrics.breaker_open.set(1.0);
                            warn!(
                                "GitHub is not answering; stale entries are served at once until it answers again"
                            );
                        }
                        self.metrics.stale_if_slow.increment(1);
                        return (self.entry_response(ctx, stale, SystemTime::now()), Outcome::Stale);
                    }
                },
                _ => flight.await,
            };
            match landed {
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
                (self.answer_response(ctx, &answer), outcome)
            }
            Fill::Streaming(slot) => {
                let streamed = slot.lock().expect("stream slot poisoned").take();
                match streamed {
                    Some(streamed) if role == Role::Leader => {
                        (streamed_response(streamed, ctx.head), Outcome::Miss)
                    }
                    // A follower cannot share a stream: it fetches for itself.
                    _ => (self.pass_through(ctx, Body::empty()).await.0, Outcome::Miss),
                }
            }
            Fill::Failed(error) => (send_error_response(&error), Outcome::Miss),
        }
    }

    /// The owned request a fill of `key` runs with.
    pub(super) fn fill_request(
        &self,
        key: CacheKey,
        ctx: &RequestCtx,
        prior: Option<Arc<CachedResponse>>,
    ) -> FillRequest {
        let mut headers = upstream::request_headers(&ctx.parts.headers);
        headers.remove(CONTENT_LENGTH);
        headers.remove(http::header::CONTENT_TYPE);
        let clients_own = headers.contains_key(IF_NONE_MATCH) || headers.contains_key(IF_MODIFIED_SINCE);
        if prior.is_some() || !clients_own {
            // One key, one spelling upstream: GitHub's ETag covers the exact values. (A client's
            // own validators go with its own spelling, which GitHub computed them for.)
            let accept = github::canonical_accept(headers.get(ACCEPT));
            headers.insert(ACCEPT, accept);
            if let Some(canonical) = headers.get(AUTHORIZATION).and_then(identity::canonical_authorization) {
                headers.insert(AUTHORIZATION, canonical);
            }
        }
        if prior.is_some() {
            headers.remove(IF_NONE_MATCH);
            headers.remove(IF_MODIFIED_SINCE);
        }
        FillRequest {
            key,
            caller: ctx.caller().clone(),
            path_and_query: ctx.path_and_query().to_string(),
            path: ctx.path().to_string(),
            headers,
            prior,
            negative: None,
            plain: false,
            asked_at: SystemTime::now(),
        }
    }

    /// One fill, once across replicas: with a shared store, one replica fetches a key while
    /// the others wait for the entry it stores (see [`ReplicaLock`]).
    pub(super) async fn fill_once(self: Arc<Self>, request: FillRequest) -> Fill {
        if let Some(landed) = self.landed_since_look_up(&request) {
            return landed;
        }
        let Some(backend) = self.responses.backend().filter(|b| b.is_shared()).cloned() else {
            // No other replica can be fetching it: nothing to wait for.
            return self.fetch(request).await;
        };
        let lock = ReplicaLock {
            backend: Some(backend),
            key: format!("lock:{}", ResponseCache::backend_key(&request.key.key)),
            hold: self.settings.upstream.timeout + std::time::Duration::from_secs(2),
            wait: self.settings.store.lock_wait,
        };
        let metrics = Arc::clone(&self.metrics);
        lock.run(FillJob { gateway: self, request, seen: std::sync::Mutex::new(None) }, &metrics).await
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
            && !self.invalidation.is_marked_stale(&entry);
        usable.then(|| Fill::Complete(Arc::new(Answer::from_entry(entry, Outcome::Coalesced))))
    }

    /// The replica lock of the first fetch of `variant` (see [`ReplicaLock::lead_or_wait`]).
    fn pioneer_lock(&self, variant: &str) -> ReplicaLock {
        ReplicaLock {
            backend: self.responses.backend().cloned(),
            key: format!("lock:v:{}", hex::encode(crate::store::digest(variant.as_bytes()))),
            hold: self.settings.upstream.timeout + std::time::Duration::from_secs(2),
            wait: self.settings.upstream.timeout,
        }
    }

    /// The validators a fill offers: its own entry's, and — with computed validators on and
    /// the canary content — the bodies other partitions hold for the same variant. A request
    /// carrying the client's own validators offers nothing else.
    async fn conditional_for(&self, request: &FillRequest) -> Option<Conditional> {
        if request.plain {
            return None;
        }
        let mut conditional =
            Conditional::own(request.prior.clone(), self.settings.cache.computed_validators);
        if self.may_offer_siblings(request) {
            for holder in self.siblings.of(request.key.variant()).await {
                if holder.key == request.key.key {
                    continue;
                }
                // A store failure is a miss here too; the backend has counted and logged it.
                let Ok(Some(mut entry)) = self.responses.get(&holder.key).await else { continue };
                if crate::store::digest(&entry.body) != holder.digest {
                    // This replica's memory tier holds an older body under that key than the
                    // one another replica recorded: the shared store has the recorded one.
                    let Ok(Some(shared)) = self.responses.get_from_backend(&holder.key).await else {
                        continue;
                    };
                    entry = shared;
                }
                if entry.status == StatusCode::OK {
                    conditional.siblings.push(entry);
                }
            }
        }
        (!conditional.is_empty()).then_some(conditional)
    }

    /// Whether a fill may offer bodies other partitions hold: computed validators on, the
    /// canary content, and no validators of the client's own or a plain retry.
    fn may_offer_siblings(&self, request: &FillRequest) -> bool {
        let clients_own =
            request.headers.contains_key(IF_NONE_MATCH) || request.headers.contains_key(IF_MODIFIED_SINCE);
        self.settings.cache.computed_validators
            && !request.plain
            && !clients_own
            && self.etag_canary.trusted()
    }

    /// Fetches from upstream (conditionally when there is a prior entry, or bodies held for
    /// other partitions) and stores what may be stored. Runs in its own task; its result is
    /// shared by coalesced callers.
    async fn fetch(self: Arc<Self>, request: FillRequest) -> Fill {
        let prior = request.prior.clone();
        let url = match self.upstream.url_for(&request.path_and_query) {
            Ok(url) => url,
            Err(e) => return Fill::Failed(Arc::new(SendError::Upstream(UpstreamError::Unreachable(e)))),
        };
        // The first fetch of a variant goes ahead; fetches of it by other partitions meanwhile
        // wait for its body, to offer it (a free 304) instead of each paying at once.
        let _pioneering = match self.may_offer_siblings(&request) {
            true => {
                let here = self
                    .pioneers
                    .lead_or_wait(request.key.variant(), self.settings.upstream.timeout)
                    .await
                    .ok();
                // Then across replicas: one replica's fetch of the variant at a time goes
                // first; the others wait for its body to offer it.
                let across = match &here {
                    Some(_) => self.pioneer_lock(request.key.variant()).lead_or_wait().await,
                    None => None,
                };
                Some((here, across))
            }
            false => None,
        };
        let conditional = self.conditional_for(&request).await;
        let outgoing = Outgoing {
            method: Method::GET,
            url,
            headers: request.headers.clone(),
            body: SendBody::None,
            conditional: conditional.clone(),
            writes: false,
        };
        let prior_tag = prior.as_ref().and_then(|p| p.credential_tag);
        let (response, sent) = match self.send_upstream(&request.caller, outgoing, prior_tag).await {
            Ok(answer) => answer,
            Err(SendError::Upstream(error)) => {
                warn!(%error, path = %request.path, "upstream request failed");
                if self.breaker.failed() {
                    self.metrics.breaker_open.set(1.0);
                    warn!("GitHub is failing; stale entries are served at once until it answers again");
                }
                return stale_fallback(&prior)
                    .unwrap_or_else(|| Fill::Failed(Arc::new(SendError::Upstream(error))));
            }
            Err(refused) => return Fill::Failed(Arc::new(refused)),
        };
        if self.breaker.answered() {
            self.metrics.breaker_open.set(0.0);
            tracing::info!("GitHub answers again; stale entries are revalidated as usual");
        }
        let credential_tag = sent.credential_tag;
        let status = response.status();
        if status == StatusCode::OK
            && prior
                .as_ref()
                .is_some_and(|p| p.credential_tag.is_some() && p.credential_tag != credential_tag)
        {
            // After a rotation this one was paid (computed validators make it rare).
            self.metrics.app.rotation_refreshes.increment(1);
        }
        let mut response_headers = response.headers().clone();
        upstream::strip_hop_by_hop(&mut response_headers);
        policy::merge_vary(&mut response_headers);

        if status == StatusCode::NOT_MODIFIED {
            let Some(conditional) = conditional else {
                // The client's own validators matched: a bodiless 304 for it alone.
                return Fill::Complete(Arc::new(Answer {
                    status,
                    headers: response_headers,
                    body: Bytes::new(),
                    outcome: Outcome::Miss,
                    entry: None,
                }));
            };
            let Some(confirmed) = conditional.confirmed(&sent.offers, &response_headers) else {
                // GitHub confirmed one of several bodies without saying which: ask plainly.
                warn!(path = %request.path, "a 304 named none of the bodies offered; fetching in full");
                let plain = FillRequest { prior: None, plain: true, ..request };
                return Box::pin(Arc::clone(&self).fetch(plain)).await;
            };
            let adopted = !prior.as_ref().is_some_and(|p| Arc::ptr_eq(p, &confirmed));
            let base_headers = if adopted {
                self.metrics.shared_revalidations.increment(1);
                etag::without_credential_headers(&confirmed.headers)
            } else {
                confirmed.headers.clone()
            };
            // Only the 304's own headers need copying out of the connection's buffers.
            let merged = policy::merge_not_modified(&base_headers, &detach_headers(&response_headers));
            let refreshed = Stored::Refreshed { headers: merged.clone(), body: confirmed.body.clone() };
            let entry = match self.store(&request, confirmed.status, refreshed, credential_tag).await {
                Some(entry) => entry,
                None => Arc::new(CachedResponse {
                    headers: merged,
                    response_time: SystemTime::now(),
                    credential_tag,
                    ..(*confirmed).clone()
                }),
            };
            if entry.status == StatusCode::OK {
                let keep_for = entry.time_to_keep(SystemTime::now());
                self.siblings.record(request.key.variant(), &request.key.key, &entry.body, keep_for).await;
            }
            return Fill::Complete(Arc::new(Answer::from_entry(entry, Outcome::Revalidated)));
        }
        if status.is_server_error() {
            if let Some(stale) = stale_fallback(&prior) {
                warn!(status = status.as_u16(), path = %request.path, "upstream error; serving stale");
                return stale;
            }
        }

        let cap = self.settings.cache.max_body_bytes;
        if response.content_length().is_some_and(|len| len > cap) {
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
                    warn!(%error, path = %request.path, "upstream body failed; nothing cached");
                    return stale_fallback(&prior)
                        .unwrap_or_else(|| Fill::Failed(Arc::new(SendError::Upstream(error))));
                }
            }
        }
        let body = concat(chunks);
        let partition = &request.caller.partition;
        if status == StatusCode::FORBIDDEN && !response_headers.contains_key(http::header::RETRY_AFTER) {
            self.budgets.record_secondary_message(partition, status, &body);
        }
        if let Some(candidate) = &request.negative {
            if matches!(status.as_u16(), 404 | 410) {
                self.negative.consider(candidate, status, &response_headers, &body).await;
            }
        }
        if status == StatusCode::OK {
            self.check_etag_rule(&sent.basis, &body, response_headers.get(http::header::ETAG));
        }
        let fetched = Stored::Fetched { headers: &response_headers, body: &body };
        let entry = self.store(&request, status, fetched, credential_tag).await;
        if let Some(entry) = entry.as_ref().filter(|e| e.status == StatusCode::OK) {
            let keep_for = entry.time_to_keep(SystemTime::now());
            self.siblings.record(request.key.variant(), &request.key.key, &entry.body, keep_for).await;
        }
        if entry.is_none() && prior.is_some() {
            // A newer answer that may not be stored replaces the old one: forget it. (A
            // backend failure here is counted and logged by the backend.)
            let _ = self.responses.remove(&request.key.key).await;
        }
        Fill::Complete(Arc::new(Answer {
            status,
            headers: response_headers,
            body,
            outcome: Outcome::Miss,
            entry,
        }))
    }
}

impl Gateway {
    /// The canary of GitHub's ETag rule: counts whether it held for this answer, and says so
    /// when the verdict changes (computed validators stop or resume crossing partitions).
    fn check_etag_rule(&self, basis: &etag::EtagBasis, body: &[u8], etag: Option<&http::HeaderValue>) {
        let Some((matched, verdict)) = self.etag_canary.observe(basis, body, etag) else { return };
        self.metrics.etag_algorithm.get(matched).increment(1);
        match verdict {
            Verdict::Distrusted => {
                self.metrics.etag_rule_trusted.set(0.0);
                warn!(
                    "GitHub's ETags no longer match SHA-256 over Accept, Authorization, Cookie and body; \
                     computed validators stop crossing credentials until they do again"
                );
            }
            Verdict::Trusted => {
                self.metrics.etag_rule_trusted.set(1.0);
                tracing::info!("GitHub's ETags match the known rule again; computed validators resume");
            }
            Verdict::Unchanged => {}
        }
    }
}

/// One fill, done by one replica at a time: waiting replicas take the entry it stores.
struct FillJob {
    gateway: Arc<Gateway>,
    request: FillRequest,
    /// The newest shared entry newer than the prior that `check` last saw (`None`: it never
    /// looked), so `work` does not read it again.
    seen: std::sync::Mutex<Option<Option<Arc<CachedResponse>>>>,
}

impl FillJob {
    /// The shared store's entry when it is newer than the request's prior (and fits its
    /// `Vary`): an answer, or at least the newest validators.
    async fn newer_shared(&self) -> Option<Arc<CachedResponse>> {
        let entry = self.gateway.responses.get_from_backend(&self.request.key.key).await.ok().flatten()?;
        let prior_time = self.request.prior.as_ref().map(|p| p.response_time);
        let newer = prior_time.is_none_or(|t| entry.response_time > t);
        (newer && entry.vary_matches(&self.request.headers)).then_some(entry)
    }
}

impl ReplicaWork for FillJob {
    type Output = Fill;

    /// An entry another replica stored that answers this request: newer than its prior, and
    /// fresh or fetched since the request asked (a fill it waited for). Checked while another
    /// replica holds the lock, and once more on taking it (double-checked: what this
    /// replica's memory tier held may be older than what the others stored meanwhile).
    async fn check(&self) -> Option<Fill> {
        let newer = self.newer_shared().await;
        *self.seen.lock().expect("fill job lock poisoned") = Some(newer.clone());
        let entry = newer?;
        let current = entry.is_fresh(SystemTime::now()) || entry.response_time >= self.request.asked_at;
        let answers = current && !self.gateway.invalidation.is_marked_stale(&entry);
        answers.then(|| Fill::Complete(Arc::new(Answer::from_entry(entry, Outcome::Coalesced))))
    }

    /// Fetches, revalidating the newest entry any replica stored: a stale entry in the shared
    /// store newer than this replica's prior carries the validators GitHub will recognise.
    async fn work(mut self) -> Fill {
        if !self.request.plain {
            let seen = self.seen.lock().expect("fill job lock poisoned").take();
            let newer = match seen {
                Some(seen) => seen,
                None => self.newer_shared().await,
            };
            if let Some(newer) = newer {
                self.request.prior = Some(newer);
            }
        }
        self.gateway.fetch(self.request).await
    }
}

/// The prior entry as the answer, when upstream failed and the entry's stale-if-error window
/// allows it.
fn stale_fallback(prior: &Option<Arc<CachedResponse>>) -> Option<Fill> {
    let now = SystemTime::now();
    prior
        .as_ref()
        .filter(|p| p.within_stale_if_error(now))
        .map(|p| Fill::Complete(Arc::new(Answer::from_entry(Arc::clone(p), Outcome::Stale))))
}

/// The key concurrent fetches share: the cache key plus the values of headers that `Vary`
/// may select on but the key does not include.
pub(super) fn coalesce_key(key: &CacheKey, headers: &HeaderMap) -> String {
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
