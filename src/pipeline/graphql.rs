//! The GraphQL track: `POST /graphql`, after identify. GraphQL answers carry no validator,
//! so there are no free 304s; what the gateway does instead:
//!
//! - **bad input** — a body over `graphql.max_body_bytes`, not JSON, or not a GraphQL
//!   document — is answered locally in GitHub's shape, without spending a point;
//! - **budget**: the short-circuit phase guards the `graphql` resource like `core` (a cached
//!   answer rather than the last points, a local 403 at zero, secondary limits held);
//! - **coalescing**: identical queries (partition, normalised document, operation name,
//!   variables, and the headers that pick GitHub's answer) in flight at once share one
//!   upstream request; mutations never do;
//! - **opt-in caching**: a query a `[[graphql.rules]]` rule names is answered from its
//!   partition's entry for the rule's `ttl`, and under `stale_if_error` when GitHub fails;
//!   answers with `errors` are not kept. Writes and webhooks make entries stale
//!   (`invalidation::graphql_is_stale`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http::request::Parts;
use http::{HeaderMap, HeaderName, Method, StatusCode};
use tracing::warn;

use super::finish::{build_response, send_error_response};
use super::send::{Outgoing, SendBody, SendError};
use super::storing::detach_headers;
use super::{Caller, Gateway, RequestCtx};
use crate::cache::policy::Freshness;
use crate::cache::{CachedResponse, Outcome};
use crate::coalesce::Role;
use crate::github;
use crate::graphql::{self, Caching, Kind, Mentions, Operation};
use crate::inbound::declared_length;
use crate::store::{ReplicaLock, ReplicaWork, ResponseCache};
use crate::upstream::{self, UpstreamError};

/// The headers besides the body that pick GitHub's GraphQL answer: they are part of the key.
const KEYED_HEADERS: [HeaderName; 3] = [
    github::API_VERSION_HEADER,
    HeaderName::from_static("graphql-features"),
    HeaderName::from_static("x-github-next-global-id"),
];

/// GitHub's answer to one GraphQL request, whole, as every coalesced request shares it.
#[derive(Debug)]
pub(super) struct GraphqlAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// Found in the shared store, stored by another replica's request for it.
    from_replica: bool,
}

/// What the requests sharing one upstream GraphQL request get.
pub(super) type GraphqlFlight = Arc<Result<GraphqlAnswer, SendError>>;

/// One upstream GraphQL request to make, with what is needed to store its answer.
struct GraphqlFill {
    caller: Caller,
    url: url::Url,
    headers: HeaderMap,
    body: Bytes,
    key: String,
    caching: Option<Caching>,
    /// What the query names, to tell whether another replica's stored answer still stands.
    mentions: Mentions,
}

impl Gateway {
    /// Whether a request takes the GraphQL track.
    pub(super) fn is_graphql(&self, parts: &Parts) -> bool {
        let settings = &self.settings;
        settings.graphql.enabled
            && settings.cache.enabled
            && parts.method == Method::POST
            && parts.uri.path() == "/graphql"
    }

    /// The GraphQL track, from reading the body to the answer.
    pub(super) async fn graphql(self: &Arc<Self>, ctx: &RequestCtx, body: Body) -> (Response, Outcome) {
        let mut url = self.upstream.graphql_url();
        url.set_query(ctx.parts.uri.query());
        let bytes = match self.read_graphql_body(ctx, body).await {
            Ok(bytes) => bytes,
            Err(refused) => return (refused, Outcome::Bypass),
        };
        let operation = match self.graphql_reader.read(&bytes) {
            Ok(operation) => operation,
            Err(refusal) => {
                self.metrics.graphql_requests.refused.increment(1);
                // Debug-formatted and cut short: the message may quote the client's document.
                let reason: String = refusal.message.chars().take(200).collect();
                warn!(status = refusal.status.as_u16(), reason = ?reason, "refused a GraphQL request locally");
                return (refusal_response(refusal.status, &refusal.message), Outcome::Bypass);
            }
        };
        if operation.kind != Kind::Query {
            return (self.graphql_write(ctx, bytes, url, &operation).await, Outcome::Bypass);
        }
        self.metrics.graphql_requests.query.increment(1);
        let key = graphql_key(ctx, &operation);
        let caching = self.graphql_rules.caching_for(&operation);
        let entry = match caching {
            Some(_) => self.graphql_entry(ctx, &key, &operation).await,
            None => None,
        };
        let now = SystemTime::now();
        if let Some((entry, true)) = &entry {
            if entry.is_fresh(now) {
                return (self.entry_response(ctx, entry, now), Outcome::Hit);
            }
        }
        let entry = entry.map(|(entry, _)| entry);
        if let Some(answer) = self.short_circuit(ctx, None, entry.as_ref()).await {
            return answer;
        }
        let fill = GraphqlFill {
            caller: ctx.caller().clone(),
            url,
            headers: upstream::request_headers(&ctx.parts.headers),
            body: bytes,
            key: key.clone(),
            caching,
            mentions: operation.mentions.clone(),
        };
        let me = Arc::clone(self);
        let (flight, role) = self.graphql_fills.join(key, move || me.graphql_fill(fill).boxed());
        let fetched = match role {
            Role::Follower => Outcome::Coalesced,
            Role::Leader if caching.is_some() => Outcome::Miss,
            Role::Leader => Outcome::Bypass,
        };
        let answer = flight.await;
        let stale = entry.as_ref().filter(|e| e.within_stale_if_error(SystemTime::now()));
        match (answer.as_deref(), stale) {
            (Ok(Ok(answer)), _) if !answer.status.is_server_error() => {
                let outcome = if answer.from_replica { Outcome::Coalesced } else { fetched };
                (self.graphql_response(ctx, answer), outcome)
            }
            // GitHub failed: the entry, where its stale-if-error window allows.
            (_, Some(entry)) => (self.entry_response(ctx, entry, SystemTime::now()), Outcome::Stale),
            (Ok(Ok(answer)), None) => (self.graphql_response(ctx, answer), fetched),
            (Ok(Err(error)), None) => (send_error_response(error), fetched),
            (Err(_), None) => {
                let message = "ghgate: GraphQL request failed";
                (github::error_response(StatusCode::BAD_GATEWAY, message), fetched)
            }
        }
    }

    /// The request body, whole, unless it is over `graphql.max_body_bytes` (413 locally).
    async fn read_graphql_body(&self, ctx: &RequestCtx, body: Body) -> Result<Bytes, Response> {
        let max = self.settings.graphql.max_body_bytes;
        let too_large = || {
            self.metrics.graphql_requests.refused.increment(1);
            warn!(max, "refused a GraphQL request body over graphql.max_body_bytes");
            let message =
                format!("GraphQL request bodies are limited to {max} bytes (graphql.max_body_bytes)");
            refusal_response(StatusCode::PAYLOAD_TOO_LARGE, &message)
        };
        if declared_length(&ctx.parts.headers).is_some_and(|len| len > max) {
            return Err(too_large());
        }
        let mut stream = body.into_data_stream();
        let mut read = bytes::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                let message = format!("could not read the request body: {e}");
                github::error_response(StatusCode::BAD_REQUEST, &message)
            })?;
            if (read.len() + chunk.len()) as u64 > max {
                return Err(too_large());
            }
            read.extend_from_slice(&chunk);
        }
        Ok(read.freeze())
    }

    /// The partition's stored answer under `key`, and whether it may still be served as it
    /// is (not made stale by a write or webhook since it was fetched).
    async fn graphql_entry(
        &self,
        ctx: &RequestCtx,
        key: &str,
        operation: &Operation,
    ) -> Option<(Arc<CachedResponse>, bool)> {
        // A store failure is a miss; the backend has counted and logged it.
        let entry = self.responses.get(key).await.ok().flatten()?;
        let stands = self.graphql_entry_stands(ctx.caller().partition.as_str(), &operation.mentions, &entry);
        Some((entry, stands))
    }

    /// Whether no write, webhook or purge made a partition's entry about `mentions` stale
    /// since it was fetched.
    fn graphql_entry_stands(&self, partition: &str, mentions: &Mentions, entry: &CachedResponse) -> bool {
        !self.invalidation.is_marked_stale(entry)
            && !self.invalidation.graphql_is_stale(partition, mentions, entry.response_time)
    }

    /// One upstream GraphQL request, shared by every identical query that joins it here —
    /// and, for a query a rule caches, with replicas sharing the store: one replica asks
    /// GitHub while the others wait for the answer it stores.
    async fn graphql_fill(self: Arc<Self>, fill: GraphqlFill) -> GraphqlFlight {
        let shared = self.responses.backend().filter(|b| b.is_shared()).cloned();
        let (Some(backend), Some(_)) = (shared, fill.caching) else {
            return self.graphql_fetch(fill).await;
        };
        let lock = ReplicaLock {
            backend: Some(backend),
            key: format!("lock:{}", ResponseCache::backend_key(&fill.key)),
            hold: self.settings.upstream.timeout + Duration::from_secs(2),
            wait: self.settings.store.lock_wait,
        };
        let metrics = Arc::clone(&self.metrics);
        lock.run(GraphqlJob { gateway: self, fill }, &metrics).await
    }

    /// Asks GitHub: sent, read whole, checked for a secondary limit, and stored when a rule
    /// allows.
    async fn graphql_fetch(&self, fill: GraphqlFill) -> GraphqlFlight {
        let GraphqlFill { caller, url, headers, body, key, caching, .. } = fill;
        // Entries count their age from when GitHub was asked: a write answered while this
        // request was under way makes its answer stale.
        let asked_at = SystemTime::now();
        let answer = match self.graphql_send(&caller, url, headers, body, false).await {
            Ok(answer) => answer,
            Err(error) => return Arc::new(Err(error)),
        };
        if let Some(caching) = caching {
            let storable = answer.status == StatusCode::OK
                && answer.body.len() as u64 <= self.settings.cache.max_body_bytes
                && !graphql::has_errors(&answer.body);
            if storable {
                self.store_graphql(key, &answer, caching, asked_at).await;
            }
        }
        Arc::new(Ok(answer))
    }

    /// Sends one GraphQL request with the caller's credential and reads the answer whole.
    async fn graphql_send(
        &self,
        caller: &Caller,
        url: url::Url,
        headers: HeaderMap,
        body: Bytes,
        writes: bool,
    ) -> Result<GraphqlAnswer, SendError> {
        let outgoing = Outgoing {
            method: Method::POST,
            url,
            headers,
            body: SendBody::Buffered(body),
            conditional: None,
            writes,
        };
        let (response, _) = self.send_upstream(caller, outgoing, None).await?;
        let status = response.status();
        let mut headers = response.headers().clone();
        upstream::strip_hop_by_hop(&mut headers);
        let body = response.bytes().await.map_err(|e| {
            SendError::Upstream(UpstreamError::BadBody(upstream::error_chain(&e.without_url())))
        })?;
        if status == StatusCode::FORBIDDEN && !headers.contains_key(http::header::RETRY_AFTER) {
            self.budgets.record_secondary_message(&caller.partition, status, &body);
        }
        Ok(GraphqlAnswer { status, headers, body, from_replica: false })
    }

    /// Keeps an answer for its rule's `ttl`, then `stale_if_error`.
    async fn store_graphql(
        &self,
        key: String,
        answer: &GraphqlAnswer,
        caching: Caching,
        asked_at: SystemTime,
    ) {
        let entry = Arc::new(CachedResponse {
            status: answer.status,
            headers: detach_headers(&answer.headers),
            body: Bytes::copy_from_slice(&answer.body),
            response_time: asked_at,
            initial_age: Duration::ZERO,
            freshness: Freshness {
                fresh_for: caching.ttl,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: caching.stale_if_error,
                keep_stale_for: caching.stale_if_error,
            },
            vary: Vec::new(),
            path_key: "/graphql".to_string(),
            credential_tag: None,
            body_urls: Default::default(),
        });
        self.metrics.cache_stores.increment(1);
        let ttl = entry.time_to_keep(SystemTime::now());
        if let Err(e) = self.responses.put(key, entry, ttl).await {
            // The memory tier has it; the backend's failure is counted and logged by the backend.
            tracing::debug!(error = %e, "GraphQL answer kept in memory only");
        }
    }

    /// A mutation (or subscription): sent on its own, never coalesced or cached. A mutation
    /// GitHub accepted makes the partition's cached answers about what it names stale.
    async fn graphql_write(
        &self,
        ctx: &RequestCtx,
        body: Bytes,
        url: url::Url,
        operation: &Operation,
    ) -> Response {
        let requests = &self.metrics.graphql_requests;
        let counter =
            if operation.kind == Kind::Mutation { &requests.mutation } else { &requests.subscription };
        counter.increment(1);
        let caller = ctx.caller();
        let headers = upstream::request_headers(&ctx.parts.headers);
        let answer =
            match self.graphql_send(caller, url, headers, body, operation.kind == Kind::Mutation).await {
                Ok(answer) => answer,
                Err(error) => return send_error_response(&error),
            };
        if operation.kind == Kind::Mutation && answer.status.is_success() {
            self.invalidation.graphql_written(caller.partition.as_str(), &operation.mentions).await;
        }
        self.graphql_response(ctx, &answer)
    }

    /// The answer a GraphQL fill gives this request, with the latest rate-limit values.
    fn graphql_response(&self, ctx: &RequestCtx, answer: &GraphqlAnswer) -> Response {
        let mut headers = answer.headers.clone();
        self.apply_rate_limit(&ctx.caller().partition, &mut headers);
        let body = self.client_body(ctx, &answer.body, None, &mut headers);
        build_response(answer.status, headers, body)
    }
}

/// A cached query's upstream request as replicas sharing a store do it: once.
struct GraphqlJob {
    gateway: Arc<Gateway>,
    fill: GraphqlFill,
}

impl ReplicaWork for GraphqlJob {
    type Output = GraphqlFlight;

    /// A fresh answer another replica stored meanwhile, unless a write or webhook made it
    /// stale since.
    async fn check(&self) -> Option<GraphqlFlight> {
        let gateway = &self.gateway;
        let entry = gateway.responses.get_from_backend(&self.fill.key).await.ok().flatten()?;
        let partition = self.fill.caller.partition.as_str();
        let stands = entry.is_fresh(SystemTime::now())
            && gateway.graphql_entry_stands(partition, &self.fill.mentions, &entry);
        stands.then(|| {
            let answer = GraphqlAnswer {
                status: entry.status,
                headers: entry.headers.clone(),
                body: entry.body.clone(),
                from_replica: true,
            };
            Arc::new(Ok(answer))
        })
    }

    async fn work(self) -> GraphqlFlight {
        self.gateway.graphql_fetch(self.fill).await
    }
}

/// The cache and coalescing key of a query: partition, the operation's fingerprint, and the
/// header values that pick GitHub's answer (each hostile header is in the key, never ignored).
fn graphql_key(ctx: &RequestCtx, operation: &Operation) -> String {
    let headers = &ctx.parts.headers;
    let mut key = format!("{}\n/graphql\n{}\n", ctx.caller().partition.as_str(), operation.fingerprint);
    key.push_str(&github::normalize_accept(headers.get(http::header::ACCEPT)));
    for name in KEYED_HEADERS {
        key.push('\n');
        for value in headers.get_all(&name) {
            key.push_str(&String::from_utf8_lossy(value.as_bytes()));
            key.push(',');
        }
    }
    key
}

/// A GraphQL request refused locally: GitHub's error shape (`message`, `documentation_url`),
/// with the message also in a GraphQL `errors` list so GraphQL clients show it.
fn refusal_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({
        "message": message,
        "documentation_url": graphql::DOCUMENTATION_URL,
        "errors": [{ "message": message }],
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    build_response(status, headers, Body::from(body.to_string()))
}
