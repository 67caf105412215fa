//! The request path. Every proxied request walks the same phases, in this order, in
//! [`Gateway::handle`] — each a function over the request's [`RequestCtx`], each able to
//! end the walk with an answer:
//!
//! 1. **admit** ([`crate::inbound::Inbound::admit`]): the webhook route, malformed requests,
//!    the body cap, CORS preflights, the inbound limiter;
//! 2. **identify** (`identify`): the credential partition, or the app installation a client
//!    key stands for;
//! 3. **look up** (`look_up`, cacheable reads only): a fresh entry answers at once;
//! 4. **short-circuit** (`short_circuit`, both tracks): a remembered futile answer, or the
//!    identity's budget (a stale entry rather than the last units; a local 403 at zero);
//! 5. **fill** (`fill`): one upstream request per key — coalesced, conditional when an entry
//!    exists, once across replicas — or, for everything that is not a cacheable read, the
//!    request forwarded as it is (`pass_through`);
//! 6. **store** (`store`): keep what the policy allows;
//! 7. **finish** (`finish`): rewrite links, `x-ghgate-cache`, CORS, the access log and metrics.
//!
//! Sending upstream (`send`) — the identity's turn, the broker's token retries, accounting —
//! is shared by fills and pass-throughs. This module knows the order of things; the rules
//! live elsewhere: HTTP caching in `cache`, storage in `store`, budgets in `limits`,
//! futile requests in `negative`, invalidation in `invalidation`, GitHub trivia in `github`.

mod context;
mod fill;
mod finish;
mod graphql;
mod look_up;
mod pass_through;
mod send;
mod short_circuit;
mod storing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::response::Response;

pub(crate) use context::{Caller, RequestCtx, UpstreamAuth};

use crate::app_auth::{Broker, Identity, Rejection};
use crate::breaker::Breaker;
use crate::cache::Outcome;
use crate::cache::etag::Canary;
use crate::cache::policy::FreshnessPolicy;
use crate::coalesce::{Coalescer, Pioneers};
use crate::config::Settings;
use crate::fleet::{Fleet, Replica};
use crate::github;
use crate::identity::{Partition, Partitioner};
use crate::inbound::{Admitted, Inbound};
use crate::invalidation::Invalidation;
use crate::limits::{Budgets, Lanes};
use crate::negative::NegativeCache;
use crate::rewrite;
use crate::store::{self, ResponseCache, Siblings, Stores};
use crate::telemetry::Metrics;
use crate::upstream::Upstream;
use fill::Fill;
use look_up::LookUp;

/// The shared state of one gateway: settings, stores, upstream clients, and each concern's
/// state. One per process (or per test), shared by every connection.
pub struct Gateway {
    /// The settings as started. Keys that reload are read from `applied` or their owners.
    settings: Arc<Settings>,
    /// The settings last applied (start-up, or the latest reload).
    applied: arc_swap::ArcSwap<Settings>,
    inbound: Inbound,
    partitioner: Partitioner,
    broker: Broker,
    policy: FreshnessPolicy,
    responses: ResponseCache,
    /// Which partitions hold bodies of each variant, for computed validators.
    siblings: Siblings,
    /// Whether GitHub's ETags still follow the rule computed validators rely on.
    etag_canary: Canary,
    invalidation: Invalidation,
    negative: Arc<NegativeCache>,
    /// The rate-limit ledger per identity and resource, and the holds after secondary limits.
    budgets: Budgets,
    /// Per-identity concurrency and write spacing upstream.
    lanes: Lanes,
    fills: Coalescer<String, Fill>,
    /// `[[graphql.rules]]`: which GraphQL queries may be cached, and for how long.
    graphql_rules: crate::graphql::Rules,
    /// GraphQL bodies parsed recently (polling clients resend the same bytes).
    graphql_reader: crate::graphql::Reader,
    /// Upstream GraphQL requests under way, which identical queries join.
    graphql_fills: Coalescer<String, graphql::GraphqlFlight>,
    /// The first fetch of each variant under way, which other partitions' fetches wait for.
    pioneers: Pioneers,
    /// Whether GitHub is failing, so stale entries are served at once.
    breaker: Breaker,
    /// This replica's report to the fleet view, and the view.
    fleet: Fleet,
    upstream: Upstream,
    /// The upstream base URL as it appears in `Link` / `Location`, and the configured public
    /// base that replaces it.
    upstream_base: String,
    public_url: Option<String>,
    metrics: Arc<Metrics>,
    /// Set on a stop signal: `/readyz` answers 503 and every HTTP/1 answer says
    /// `Connection: close`, so clients leave before the listener closes.
    stopping: AtomicBool,
}

impl Gateway {
    /// Assembles a gateway from checked settings, its stores and the partition secret.
    pub fn new(
        settings: Arc<Settings>,
        stores: Stores,
        secret: &[u8],
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Gateway>, String> {
        let upstream = Upstream::new(&settings.upstream, settings.server.worker_count())?;
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
            store::Sealer::new(secret),
            Arc::clone(&negative),
            Arc::clone(&metrics),
        )?;
        let replica = Replica::new();
        let graphql_rules =
            crate::graphql::Rules::new(&settings.graphql.rules, settings.cache.stale_if_error);
        let invalidation = Invalidation::new(
            &settings,
            stores.backend.clone(),
            &replica.id,
            &graphql_rules,
            Arc::clone(&negative),
            Arc::clone(&metrics),
        );
        let public_url =
            settings.server.public_url.as_ref().map(|u| u.as_str().trim_end_matches('/').to_string());
        metrics.store_max_bytes.set(settings.cache.max_bytes as f64);
        metrics.etag_rule_trusted.set(1.0);
        Ok(Arc::new(Gateway {
            inbound: Inbound::new(&settings, Arc::clone(&metrics)),
            partitioner: Partitioner::new(secret),
            broker,
            policy: FreshnessPolicy::new(settings.cache.clone()),
            invalidation,
            negative,
            budgets: Budgets::new(settings.limits.clone(), stores.backend.clone()),
            lanes: Lanes::new(&settings.limits),
            fills: Coalescer::default(),
            graphql_rules,
            graphql_fills: Coalescer::default(),
            graphql_reader: crate::graphql::Reader::new(10_000),
            pioneers: Pioneers::default(),
            breaker: Breaker::default(),
            upstream,
            upstream_base: rewrite::base_of(&settings.upstream.url),
            public_url,
            siblings: Siblings::new(stores.backend.clone()),
            fleet: Fleet::new(replica, stores.backend.clone()),
            etag_canary: Canary::default(),
            responses: stores.responses,
            metrics,
            applied: arc_swap::ArcSwap::new(Arc::clone(&settings)),
            settings,
            stopping: AtomicBool::new(false),
        }))
    }

    /// Handles one proxied request, start to finish: the phases, in order. `peer` is the
    /// connection's remote address, `local` the listener address it reached.
    pub async fn handle(
        self: Arc<Self>,
        request: http::Request<Body>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Response {
        let (parts, body) = request.into_parts();
        let mut ctx = RequestCtx::new(parts, peer, local);
        let (response, outcome) = self.walk(&mut ctx, body).await;
        let mut response = self.finish(&ctx, response, outcome);
        // HTTP/2 has no `Connection` header; its connections get GOAWAY when the listener
        // closes.
        if self.stopping.load(Ordering::Relaxed) && ctx.parts.version < http::Version::HTTP_2 {
            response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        response
    }

    /// Starts stopping: `/readyz` turns 503 and keep-alive connections are closed after their
    /// next answer, while requests are still accepted and served.
    pub fn begin_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether a stop signal has been received.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Phases 1–6; each may end the walk with an answer.
    async fn walk(self: &Arc<Self>, ctx: &mut RequestCtx, body: Body) -> (Response, Outcome) {
        let credential = match self.inbound.admit(&mut ctx.parts, ctx.peer, &self.partitioner) {
            Admitted::Proceed(credential) => credential,
            Admitted::Webhook => return (self.receive_webhook(ctx, body).await, Outcome::Bypass),
            Admitted::Answered(response) => return (response, Outcome::Bypass),
        };
        if let Err(rejection) = self.identify(ctx, credential).await {
            return (github::error_response(rejection.status, &rejection.message), Outcome::Bypass);
        }
        if let Some(refused) = self.inbound.refused_answer(&ctx.caller().partition) {
            return (refused, Outcome::Negative);
        }
        if self.is_graphql(&ctx.parts) {
            return self.graphql(ctx, body).await;
        }
        if !self.is_cacheable(&ctx.parts) {
            return self.pass_through(ctx, body).await;
        }
        let key = ctx.cache_key();
        let entry = match self.look_up(ctx, &key).await {
            LookUp::Answered(response, outcome) => return (response, outcome),
            LookUp::Miss(entry) => entry,
        };
        let negative = match &entry {
            Some(_) => None,
            None => self.negative_candidate_for_read(ctx, &key),
        };
        if let Some(answer) = self.short_circuit(ctx, negative.as_ref(), entry.as_ref()).await {
            return answer;
        }
        self.fill(ctx, key, entry, negative).await
    }

    /// Phase 2, identify: who the request acts as. A broker client's key is swapped for its
    /// app installation (the key itself never goes upstream); anything else keeps its
    /// credential, whose partition the admit phase may have derived already.
    async fn identify(&self, ctx: &mut RequestCtx, credential: Option<Partition>) -> Result<(), Rejection> {
        let caller = match self.broker.identify(&ctx.parts.headers, ctx.path())? {
            Identity::PassThrough => Caller {
                partition: credential.unwrap_or_else(|| self.partitioner.partition(&ctx.parts.headers)),
                auth: UpstreamAuth::Client,
            },
            Identity::App(request) => {
                let auth = self.broker.resolve(&request).await?;
                ctx.parts.headers.remove(http::header::AUTHORIZATION);
                ctx.parts.headers.remove(crate::app_auth::INSTALLATION_HEADER);
                Caller {
                    partition: Partition::from_safe_id(auth.partition_id()),
                    auth: UpstreamAuth::App(auth),
                }
            }
        };
        ctx.identified(caller);
        Ok(())
    }

    /// `POST /_ghgate/webhook`: checked, answered 202 at once, applied afterwards.
    async fn receive_webhook(self: &Arc<Self>, ctx: &RequestCtx, body: Body) -> Response {
        match self.invalidation.receive_webhook(&ctx.parts.headers, body).await {
            Ok(Some(delivery)) => {
                let me = Arc::clone(self);
                tokio::spawn(async move {
                    for effect in delivery.effects() {
                        me.invalidation.apply_webhook(&delivery.event, effect, &me.broker).await;
                    }
                });
            }
            // A replay: its effects were applied when it first came.
            Ok(None) => {}
            Err(refusal) => return refusal,
        }
        crate::invalidation::accepted()
    }

    /// The metrics this gateway records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The settings as started: every key that does not reload is in force as read here.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The settings last applied, for the keys a reload changes (the admin token, say).
    pub fn applied_settings(&self) -> Arc<Settings> {
        self.applied.load_full()
    }

    /// Applies a reload's keys ([`crate::config::RELOADABLE_KEYS`]) from `new`, which is
    /// checked and changes no other key. Cached answers, tokens and connections stay.
    pub fn apply_reload(&self, new: Settings) -> Result<(), String> {
        self.broker.reload_keys(&new)?;
        self.invalidation.set_webhook_secrets(&new.webhooks.secrets);
        self.applied.store(Arc::new(new));
        Ok(())
    }

    /// This replica's place in the fleet view.
    pub(crate) fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Publishes this replica's totals and last hour for the fleet view of every replica
    /// (upkeep calls it every few seconds; the admin views before reading the fleet's).
    pub(crate) async fn report_to_fleet(&self) {
        if !self.fleet.is_shared() {
            return;
        }
        let activity = &self.metrics.activity;
        let totals = self.metrics.totals();
        let minutes = activity.last_minutes(std::time::SystemTime::now(), 60, totals);
        self.fleet.publish(activity.started(), totals, minutes).await;
    }

    /// The admit phase's state (limiter, CORS).
    pub fn inbound(&self) -> &Inbound {
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

    /// Staleness marks, purges and webhook coverage.
    pub fn invalidation(&self) -> &Invalidation {
        &self.invalidation
    }
}
