//! Invalidation: what makes a stored answer stale before its freshness runs out, and what lets
//! it stay fresh longer.
//!
//! Marks are "stale since" times, by path key (a write through the gateway, RFC 9111 §4.4, or
//! an admin purge of a path) or by scope (`repo:o/r`, `owner:o`: a webhook, or an admin purge
//! of a repository or owner). An entry fetched before a mark on its path, repository or owner
//! is stale; a hit costs one map look-up, and none until the first mark. With a shared store,
//! every mark is announced on the replicas' event log before the write's answer leaves, and
//! every replica follows the log (a blocking read: a mark arrives within milliseconds, and a
//! replica that starts, or lost Redis for a while, catches up on what the log still holds).
//! Repositories that sent a webhook recently are *covered*: any change would have marked them,
//! so their entries may stay fresh for `webhooks.covered_freshness`.
//!
//! Webhook deliveries arrive here (`receive_webhook`: configured, size, signature) and their
//! effects are applied here (`apply_webhook`). Not: deciding freshness from headers (in
//! `cache`), or what a delivery's payload means (in `webhook`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use tracing::warn;

use crate::app_auth::Broker;
use crate::cache::CachedResponse;
use crate::config::{Settings, WebhookSettings};
use crate::github;
use crate::graphql::{Mentions, Scope};
use crate::inbound::declared_length;
use crate::negative::{self, NegativeCache};
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::webhook::{self, Delivery, Effect};

/// How far another replica's clock may be behind this one's: a mark it announces counts from
/// this much later, so an entry fetched here just before its write (by this clock) is not
/// mistaken for one fetched after. The cost: an entry fetched within this window after a
/// write is revalidated once more (usually a free 304).
const CLOCK_SKEW: Duration = Duration::from_millis(10);

/// How long delivery ids are remembered, so a captured delivery cannot be replayed.
const DELIVERY_MEMORY: Duration = Duration::from_secs(3600);

/// The 202 a delivery gets (also a replayed one: there is nothing for its sender to retry).
pub(crate) fn accepted() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::ACCEPTED;
    response
}

/// The staleness marks and webhook coverage of one gateway.
pub struct Invalidation {
    /// When an unsafe request, a purge or a webhook last changed a path key or scope.
    marks: moka::sync::Cache<String, SystemTime>,
    /// Set by the first staleness mark; until then hits skip the mark look-ups.
    any_marks: AtomicBool,
    /// Whether `[[graphql.rules]]` cache anything: only then do writes and webhooks leave
    /// the marks GraphQL answers are checked against (`gql:…`).
    graphql_cached: bool,
    /// Repositories (`owner/repo`) that sent a webhook delivery recently: their changes
    /// would invalidate, so their entries may stay fresh longer.
    covered: moka::sync::Cache<String, SystemTime>,
    covered_freshness: Duration,
    /// The webhook receiver's size cap and timeouts.
    webhooks: WebhookSettings,
    /// The webhook secrets in force (swapped by a reload).
    webhook_secrets: arc_swap::ArcSwap<Vec<String>>,
    /// Delivery ids seen in the last hour (bounded).
    deliveries: moka::sync::Cache<String, ()>,
    /// Turns to read a delivery's body (`webhooks.max_concurrent`).
    webhook_reads: tokio::sync::Semaphore,
    /// The store other replicas share, when there is one: marks are announced there too.
    shared: Option<Arc<dyn Store>>,
    /// This process among the replicas, so it skips its own announcements.
    replica: String,
    /// Whether following the event log failed last time (to log the change once).
    following_failed: AtomicBool,
    /// The upstream base, to recognise a write's `Location` as one of its paths.
    upstream_base: String,
    negative: Arc<NegativeCache>,
    metrics: Arc<Metrics>,
}

impl Invalidation {
    /// No marks yet; `backend` is used only when other replicas share it, where `replica`
    /// names this process in its announcements; `graphql` says whether (and how long) GraphQL
    /// answers are cached, which decides the GraphQL marks and how long marks are kept.
    pub fn new(
        settings: &Settings,
        backend: Option<Arc<dyn Store>>,
        replica: &str,
        graphql: &crate::graphql::Rules,
        negative: Arc<NegativeCache>,
        metrics: Arc<Metrics>,
    ) -> Invalidation {
        warn_of_short_secrets(&settings.webhooks.secrets);
        // A mark must outlive every entry it could make stale.
        let marks_kept = settings.cache.retain_stale.max(graphql.longest_kept()).max(Duration::from_secs(60));
        Invalidation {
            marks: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(marks_kept).build(),
            any_marks: AtomicBool::new(false),
            graphql_cached: graphql.any(),
            covered: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.webhooks.coverage_window.max(Duration::from_secs(1)))
                .build(),
            covered_freshness: settings.webhooks.covered_freshness,
            webhooks: settings.webhooks.clone(),
            webhook_secrets: arc_swap::ArcSwap::from_pointee(settings.webhooks.secrets.clone()),
            deliveries: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(DELIVERY_MEMORY)
                .build(),
            webhook_reads: tokio::sync::Semaphore::new(settings.webhooks.max_concurrent),
            shared: backend.filter(|b| b.is_shared()),
            replica: replica.to_string(),
            following_failed: AtomicBool::new(false),
            upstream_base: crate::rewrite::base_of(&settings.upstream.url),
            negative,
            metrics,
        }
    }

    /// A reload: deliveries from now on are checked against `secrets`.
    pub fn set_webhook_secrets(&self, secrets: &[String]) {
        warn_of_short_secrets(secrets);
        self.webhook_secrets.store(Arc::new(secrets.to_vec()));
    }

    /// Whether something changed an entry after it was fetched: a write to its path, or a
    /// webhook (or purge) about its repository or owner.
    pub fn is_marked_stale(&self, entry: &CachedResponse) -> bool {
        // Until the first mark, nothing can be stale by one (and hits skip the look-ups).
        if !self.any_marks.load(Ordering::Acquire) {
            return false;
        }
        let after = |key: &str| self.marks.get(key).is_some_and(|t| t >= entry.response_time);
        if after(&entry.path_key) {
            return true;
        }
        match webhook::tags_of(&entry.path_key) {
            (Some(owner), repo) => {
                after(&format!("owner:{owner}")) || repo.is_some_and(|r| after(&format!("repo:{owner}/{r}")))
            }
            _ => false,
        }
    }

    /// Whether an entry is fresh because its repository has webhook coverage (see
    /// `webhooks.covered_freshness`): any change would have marked it stale.
    pub fn fresh_by_webhook_coverage(&self, entry: &CachedResponse, now: SystemTime) -> bool {
        let extra = self.covered_freshness;
        if extra.is_zero() || entry.freshness.fresh_for.is_zero() {
            return false;
        }
        let (Some(owner), Some(repo)) = webhook::tags_of(&entry.path_key) else { return false };
        now < entry.response_time + extra && self.covered.contains_key(&format!("{owner}/{repo}"))
    }

    /// RFC 9111 §4.4: a successful unsafe request makes the stored answers for its target
    /// (and its `Location`) stale, in every partition — on every replica before it returns.
    /// The GraphQL answers `partition` holds about the repository (or owner) of the path
    /// become stale too; all of them when the path names neither.
    pub async fn after_write(&self, partition: &str, path: &str, response_headers: &HeaderMap) {
        let now = SystemTime::now();
        let path_key = crate::cache::key::path_key(path);
        if self.graphql_cached {
            let mentions = match webhook::tags_of(&path_key) {
                (Some(owner), Some(name)) => {
                    Mentions::Known([Scope::Repo { owner: owner.into(), name: name.into() }].into())
                }
                (Some(owner), None) => Mentions::Known([Scope::Owner(owner.into())].into()),
                _ => Mentions::Unknown,
            };
            self.graphql_written(partition, &mentions).await;
        }
        self.mark_everywhere(path_key, now).await;
        self.metrics.invalidations.increment(1);
        self.metrics
            .activity
            .event("invalidation", format!("write {}", path.split('?').next().unwrap_or(path)));
        let location = response_headers.get(http::header::LOCATION).and_then(|v| v.to_str().ok());
        if let Some(rest) = location.and_then(|l| l.strip_prefix(self.upstream_base.as_str())) {
            if rest.starts_with('/') {
                self.mark_everywhere(crate::cache::key::path_key(rest), now).await;
            }
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
                self.mark_everywhere(crate::cache::key::path_key(path), SystemTime::now()).await
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

    /// `POST /_ghgate/webhook`: checks that the receiver is configured, the size and the
    /// signature; a refusal is GitHub-shaped, counted and (for a bad signature) logged.
    /// `None`: a replayed delivery, to be accepted with nothing applied.
    pub async fn receive_webhook(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Option<Delivery>, Response> {
        let settings = &self.webhooks;
        let metrics = &self.metrics;
        let secrets = self.webhook_secrets.load_full();
        if secrets.is_empty() {
            return Err(github::error_response(
                StatusCode::NOT_FOUND,
                "ghgate: the webhook receiver is not configured (webhooks.secrets)",
            ));
        }
        let cap = settings.max_body_bytes;
        let too_large = || {
            metrics.webhook("too_large").increment(1);
            github::error_response(StatusCode::PAYLOAD_TOO_LARGE, "ghgate: webhook delivery too large")
        };
        if declared_length(headers).is_some_and(|len| len > cap) {
            return Err(too_large());
        }
        // Bodies are read a few at a time and within `read_timeout`: an unsigned body is held
        // only until it is complete, so memory is bounded by `max_concurrent` ×
        // `max_body_bytes` and a trickled body cannot be held for minutes.
        let deadline = tokio::time::Instant::now() + settings.read_timeout;
        let too_slow = || {
            metrics.webhook("too_slow").increment(1);
            github::error_response(StatusCode::REQUEST_TIMEOUT, "ghgate: webhook delivery body too slow")
        };
        let Ok(Ok(_turn)) = tokio::time::timeout_at(deadline, self.webhook_reads.acquire()).await else {
            return Err(too_slow());
        };
        let payload = match tokio::time::timeout_at(deadline, axum::body::to_bytes(body, cap as usize)).await
        {
            Ok(Ok(payload)) => payload,
            Ok(Err(_)) => return Err(too_large()),
            Err(_) => return Err(too_slow()),
        };
        if !webhook::verify(&secrets, &payload, headers.get("x-hub-signature-256")) {
            metrics.webhook("bad_signature").increment(1);
            warn!("refused a webhook delivery with a missing or bad signature");
            return Err(github::error_response(
                StatusCode::UNAUTHORIZED,
                "ghgate: missing or bad X-Hub-Signature-256",
            ));
        }
        if let Some(id) = headers.get("x-github-delivery").and_then(|v| v.to_str().ok()) {
            if self.seen_before(id).await {
                // Its effects were applied when it first came: a replay changes nothing.
                metrics.webhook("replayed").increment(1);
                return Ok(None);
            }
        }
        metrics.webhook("accepted").increment(1);
        // The event name is shown on the status page: keep it short and plain.
        let event: String = headers
            .get("x-github-event")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        Ok(Some(Delivery { event, payload }))
    }

    /// Whether a delivery with this `X-GitHub-Delivery` id came in the last hour — here, or
    /// (with a shared store) at any replica: the id is claimed with the store's lock, which
    /// only one replica gets.
    async fn seen_before(&self, id: &str) -> bool {
        let id: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(64).collect();
        if id.is_empty() {
            return false;
        }
        let mut first_here = false;
        self.deliveries.entry(id.clone()).or_insert_with(|| {
            first_here = true;
        });
        if !first_here {
            return true;
        }
        match &self.shared {
            Some(shared) => matches!(shared.try_lock(&format!("wh:{id}"), DELIVERY_MEMORY).await, Ok(None)),
            None => false,
        }
    }

    /// Applies one effect of a webhook delivery of `event`: a repository's or owner's entries
    /// become stale (and their remembered 404s and "not installed" are cleared); an
    /// installation change makes the broker forget its tokens and look-ups.
    pub async fn apply_webhook(&self, event: &str, effect: Effect, broker: &Broker) {
        self.metrics.invalidations.increment(1);
        let what = match &effect {
            Effect::Repo { owner, repo } => format!("webhook {event}: repo {owner}/{repo}"),
            Effect::Owner(owner) => format!("webhook {event}: owner {owner}"),
            Effect::Installation { id, .. } => format!("webhook {event}: installation {id}"),
        };
        self.metrics.activity.event("invalidation", what);
        match effect {
            Effect::Repo { owner, repo } => {
                self.covered.insert(format!("{owner}/{repo}"), SystemTime::now());
                self.mark_stale(format!("repo:{owner}/{repo}")).await;
                let _ = self.negative.clear(Some(negative::NOT_FOUND), Some(&owner), Some(&repo)).await;
            }
            Effect::Owner(owner) => {
                self.mark_stale(format!("owner:{owner}")).await;
                let _ = self.negative.clear(Some(negative::NOT_FOUND), Some(&owner), None).await;
                let _ = self.negative.clear(Some(negative::APP_NOT_INSTALLED), Some(&owner), None).await;
            }
            Effect::Installation { id, account } => broker.forget_installation(id, account.as_deref()).await,
        }
    }

    /// Follows the replicas' event log once (waiting up to about a second for an event) and
    /// applies the marks other replicas announced after `cursor`; `None` starts from the
    /// oldest the log holds. A failure is logged once and returned, for the caller to retry.
    pub async fn follow_marks(&self, cursor: &mut Option<String>) -> Result<(), ()> {
        let Some(shared) = &self.shared else {
            std::future::pending::<()>().await;
            return Ok(());
        };
        let followed = match shared.follow(cursor.as_deref()).await {
            Ok(followed) => followed,
            Err(e) => {
                if !self.following_failed.swap(true, Ordering::Relaxed) {
                    warn!(error = %e, "cannot follow other replicas' invalidations; retrying every second");
                }
                return Err(());
            }
        };
        if self.following_failed.swap(false, Ordering::Relaxed) {
            tracing::info!("following other replicas' invalidations again");
        }
        *cursor = followed.cursor;
        for event in followed.events {
            let Some((replica, at, key)) = parse_announcement(&event) else { continue };
            if replica == self.replica || self.marks.get(key).is_some_and(|t| t >= at) {
                continue;
            }
            self.metrics.replica_marks.increment(1);
            // Marks made while this replica runs show on its status page too.
            if self.metrics.activity.started().is_some_and(|started| at > started) {
                let what = key.replacen(':', " ", 1);
                self.metrics.activity.event("invalidation", format!("from another replica: {what}"));
            }
            self.mark(key.to_string(), at);
        }
        Ok(())
    }

    /// Marks a scope (`repo:o/r`, `owner:o`) stale now, everywhere. Cached GraphQL answers
    /// about it, about its owner's repositories as a list, or about what the gateway cannot
    /// tell become stale too.
    async fn mark_stale(&self, scope: String) {
        let now = SystemTime::now();
        if self.graphql_cached {
            if let Some((owner, _)) = scope.strip_prefix("repo:").and_then(|r| r.split_once('/')) {
                self.mark_everywhere(format!("gql:owner-any:{owner}"), now).await;
            }
            self.mark_everywhere("gql:any".to_string(), now).await;
            self.metrics.graphql_invalidation("repository").increment(1);
        }
        self.mark_everywhere(scope, now).await;
    }

    /// Whether a cached GraphQL answer of `partition` about `mentions`, fetched (asked) at
    /// `fetched`, was made stale since: by a write of that partition touching what it
    /// mentions (any write, when it mentions what the gateway cannot tell), or by a webhook
    /// or purge of a repository or owner it mentions (any, when it cannot tell).
    pub fn graphql_is_stale(&self, partition: &str, mentions: &Mentions, fetched: SystemTime) -> bool {
        if !self.any_marks.load(Ordering::Acquire) {
            return false;
        }
        let after = |key: &str| self.marks.get(key).is_some_and(|t| t >= fetched);
        if after(&format!("gql:{partition}:all")) {
            return true;
        }
        match mentions {
            Mentions::Unknown => after(&format!("gql:{partition}:any")) || after("gql:any"),
            Mentions::Known(scopes) => scopes.iter().any(|scope| match scope {
                Scope::Repo { owner, name } => {
                    after(&format!("repo:{owner}/{name}"))
                        || after(&format!("owner:{owner}"))
                        || after(&format!("gql:{partition}:repo:{owner}/{name}"))
                }
                Scope::Owner(owner) => {
                    after(&format!("owner:{owner}"))
                        || after(&format!("gql:owner-any:{owner}"))
                        || after(&format!("gql:{partition}:owner:{owner}"))
                }
            }),
        }
    }

    /// A write by `partition` (a REST write, or a GraphQL mutation) touching `mentions`: its
    /// cached GraphQL answers about them become stale, on every replica before the write's
    /// answer leaves — all of them when the write's reach is unknown.
    pub async fn graphql_written(&self, partition: &str, mentions: &Mentions) {
        if !self.graphql_cached {
            return;
        }
        let now = SystemTime::now();
        self.metrics.graphql_invalidation("write").increment(1);
        let Mentions::Known(scopes) = mentions else {
            self.mark_everywhere(format!("gql:{partition}:all"), now).await;
            return;
        };
        for scope in scopes {
            match scope {
                Scope::Repo { owner, name } => {
                    self.mark_everywhere(format!("gql:{partition}:repo:{owner}/{name}"), now).await;
                    self.mark_everywhere(format!("gql:{partition}:owner:{owner}"), now).await;
                }
                Scope::Owner(owner) => {
                    self.mark_everywhere(format!("gql:{partition}:owner:{owner}"), now).await
                }
            }
        }
        self.mark_everywhere(format!("gql:{partition}:any"), now).await;
    }

    /// Marks a path key or a scope stale since `at` here and — with a shared store — announces
    /// it to every replica (they apply it on receipt, see [`Invalidation::follow_marks`]).
    async fn mark_everywhere(&self, key: String, at: SystemTime) {
        if let Some(shared) = &self.shared {
            // Microseconds: on one host a read and the next write can be less than a
            // millisecond apart, and a mark truncated to before the read would miss it.
            let micros = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
            let announcement = format!("{} {micros} {key}", self.replica);
            // A failure is counted and logged by the store; this replica still has the mark.
            let _ = shared.announce(announcement.as_bytes()).await;
        }
        self.mark(key, at);
    }

    /// Records a staleness mark for a path key or a scope.
    fn mark(&self, key: String, at: SystemTime) {
        self.any_marks.store(true, Ordering::Release);
        self.marks.insert(key, at);
    }
}

fn warn_of_short_secrets(secrets: &[String]) {
    if secrets.iter().any(|secret| secret.len() < 16) {
        warn!("a webhook secret is shorter than 16 bytes: deliveries signed with it are easy to forge");
    }
}

/// `<replica> <micros> <key>` → its parts, the time moved later by [`CLOCK_SKEW`] (another
/// host's clock may run behind this one's).
fn parse_announcement(event: &[u8]) -> Option<(&str, SystemTime, &str)> {
    let text = std::str::from_utf8(event).ok()?;
    let mut parts = text.splitn(3, ' ');
    let replica = parts.next()?;
    let micros: u64 = parts.next()?.parse().ok()?;
    let key = parts.next().filter(|k| !k.is_empty())?;
    Some((replica, UNIX_EPOCH + Duration::from_micros(micros) + CLOCK_SKEW, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_mark_is_never_earlier_than_the_write() {
        // A write 0.9 ms into a millisecond, right after a read in the same millisecond.
        let at = UNIX_EPOCH + Duration::from_nanos(1_800_000_000_123_900_000);
        let micros = at.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        let event = format!("abc {micros} /repos/o/r");
        let (replica, parsed, key) = parse_announcement(event.as_bytes()).unwrap();
        assert_eq!((replica, key), ("abc", "/repos/o/r"));
        // Precision kept (a mark truncated to the millisecond would start before the read),
        // then moved later by the skew allowance.
        assert_eq!(parsed, at + CLOCK_SKEW);
    }

    #[test]
    fn malformed_announcements_are_ignored() {
        for event in ["", "abc", "abc notanumber /x", "abc 12", "abc 12 "] {
            assert!(parse_announcement(event.as_bytes()).is_none(), "{event:?}");
        }
    }
}
