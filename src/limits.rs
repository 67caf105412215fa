//! Guarding every identity's budget: a ledger of the `x-ratelimit-*` values GitHub reports per
//! identity (credential partition or app installation) and resource, and the decisions taken
//! from it before a request goes upstream — spend freely, save the reserve (serve stale when
//! possible), or stop (budget exhausted, or blocked after a secondary limit) and answer
//! locally in GitHub's shape.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Serialize;

use crate::config::LimitsSettings;
use crate::github::{RateLimit, RenderedRateLimit};
use crate::identity::Partition;

/// Where GitHub documents its rate limits (used in the answers ghgate gives for them).
pub const RATE_LIMIT_DOCS: &str =
    "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api";

/// What to do with a request of an identity, given its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Go upstream.
    Go,
    /// Below the reserve: serve a stale entry if there is one, else go upstream.
    Reserve,
    /// Do not go upstream before `until`: serve a stale entry if there is one, else answer
    /// locally with `status` and `message`.
    Stop {
        /// When the identity may go upstream again.
        until: SystemTime,
        /// 403 or 429, as GitHub answered.
        status: StatusCode,
        /// GitHub's message.
        message: String,
        /// The ledger entry, for the `x-ratelimit-*` headers of the local answer.
        limit: Option<Arc<RenderedRateLimit>>,
    },
}

#[derive(Debug, Clone)]
struct Block {
    until: SystemTime,
    status: StatusCode,
}

/// The ledger and the blocks. With a shared store (Redis) both are written through to it, so
/// every replica sees an identity's budget and its holds.
pub struct Budgets {
    settings: LimitsSettings,
    shared: Option<std::sync::Arc<dyn crate::store::Store>>,
    ledger: Ledger,
    blocked: moka::sync::Cache<Partition, Block>,
    /// What an operator knows each identity by (see [`Budgets::label`]), per partition id.
    labels: quick_cache::sync::Cache<String, std::sync::Arc<str>>,
}

/// The latest rate-limit line per identity and resource. Read on every cache hit (the answer
/// carries the identity's current `x-ratelimit-*` values), so a look-up borrows its key and
/// allocates nothing, and the map is a quick_cache (a read lock and a counter) rather than a
/// moka cache (a read-event queue and a frequency sketch). Bounded by count; a line older
/// than [`LEDGER_TTL`] counts as absent (GitHub's windows are an hour).
struct Ledger {
    lines: quick_cache::sync::Cache<LedgerKey, Line>,
}

/// How many ledger lines are kept, and for how long.
const LEDGER_CAPACITY: usize = 100_000;
const LEDGER_TTL: Duration = Duration::from_secs(2 * 3600);

#[derive(Clone, PartialEq, Eq)]
struct LedgerKey {
    partition: Partition,
    resource: String,
}

/// A [`LedgerKey`] borrowed from a request: hashes and compares like the owned key.
struct LedgerKeyRef<'a> {
    partition: &'a str,
    resource: &'a str,
}

impl std::hash::Hash for LedgerKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.partition.as_str(), self.resource.as_str()).hash(state);
    }
}

impl std::hash::Hash for LedgerKeyRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.partition, self.resource).hash(state);
    }
}

impl quick_cache::Equivalent<LedgerKey> for LedgerKeyRef<'_> {
    fn equivalent(&self, key: &LedgerKey) -> bool {
        self.partition == key.partition.as_str() && self.resource == key.resource
    }
}

#[derive(Clone)]
struct Line {
    limit: Arc<RenderedRateLimit>,
    recorded: Instant,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger { lines: quick_cache::sync::Cache::new(LEDGER_CAPACITY) }
    }

    fn get(&self, partition: &Partition, resource: &str) -> Option<Arc<RenderedRateLimit>> {
        let key = LedgerKeyRef { partition: partition.as_str(), resource };
        let line = self.lines.get(&key)?;
        if line.recorded.elapsed() > LEDGER_TTL {
            self.lines.remove(&key);
            return None;
        }
        Some(line.limit)
    }

    fn insert(&self, partition: &Partition, limit: RateLimit) {
        let key = LedgerKey { partition: partition.clone(), resource: limit.resource.clone() };
        self.lines.insert(key, Line { limit: Arc::new(limit.into()), recorded: Instant::now() });
    }

    /// Every line still within [`LEDGER_TTL`].
    fn iter(&self) -> impl Iterator<Item = (LedgerKey, Arc<RenderedRateLimit>)> + '_ {
        self.lines
            .iter()
            .filter(|(_, line)| line.recorded.elapsed() <= LEDGER_TTL)
            .map(|(key, line)| (key, line.limit))
    }
}

/// One ledger line for `GET /ratelimits` (identities are partition ids, never credentials).
#[derive(Debug, Serialize)]
pub struct LedgerLine {
    /// The identity's partition id.
    pub identity: String,
    /// What an operator knows it by (`token sha256:1a2b3c4d`, `app ci-bot installation 7`), when
    /// this replica has sent its requests.
    pub label: Option<String>,
    /// The resource (`core`, `search`, ...).
    pub resource: String,
    /// `x-ratelimit-limit`
    pub limit: u64,
    /// `x-ratelimit-remaining`
    pub remaining: u64,
    /// `x-ratelimit-used`
    pub used: u64,
    /// `x-ratelimit-reset`, epoch seconds.
    pub reset: u64,
    /// Until when (epoch seconds) the identity is held back after a secondary limit.
    pub blocked_until: Option<u64>,
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl Budgets {
    /// An empty ledger.
    pub fn new(settings: LimitsSettings, store: Option<std::sync::Arc<dyn crate::store::Store>>) -> Budgets {
        Budgets {
            settings,
            shared: store.filter(|s| s.is_shared()),
            ledger: Ledger::new(),
            blocked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            labels: quick_cache::sync::Cache::new(LEDGER_CAPACITY),
        }
    }

    /// Remembers what an operator knows `partition` by — a token's fingerprint, an app
    /// installation and its clients — for the ledger and the status page. Called when a request
    /// goes upstream (every identity with a ledger line has sent one); kept in this process.
    pub(crate) fn label(&self, partition: &Partition, label: impl FnOnce() -> String) {
        if !self.labels.contains_key(partition.as_str()) {
            self.labels.insert(partition.as_str().to_string(), label().into());
        }
    }

    /// The resource a request path is charged to.
    pub fn resource_of_path(path: &str) -> &'static str {
        if path.starts_with("/search/") {
            "search"
        } else if path == "/graphql" {
            "graphql"
        } else {
            "core"
        }
    }

    /// Records what an upstream answer says about its identity's budget: the ledger line, and
    /// a block after a secondary limit (403/429 with `retry-after`, or a 429 without one).
    pub fn record(&self, partition: &Partition, status: StatusCode, headers: &HeaderMap) {
        if let Some(limit) = RateLimit::from_headers(headers) {
            self.share_line(partition, &limit);
            self.ledger.insert(partition, limit);
        }
        if !self.settings.honor_secondary_limits {
            return;
        }
        if status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            match retry_after {
                Some(secs) => self.block(partition, Duration::from_secs(secs), status),
                None if status == StatusCode::TOO_MANY_REQUESTS => {
                    self.block(partition, self.settings.secondary_limit_wait, status)
                }
                None => {}
            }
        }
    }

    /// Records a secondary limit recognised by its message (a 403 without `retry-after`).
    pub fn record_secondary_message(&self, partition: &Partition, status: StatusCode, body: &[u8]) {
        if !self.settings.honor_secondary_limits {
            return;
        }
        let text = String::from_utf8_lossy(body).to_ascii_lowercase();
        if text.contains("secondary rate limit") || text.contains("abuse detection") {
            self.block(partition, self.settings.secondary_limit_wait, status);
        }
    }

    fn block(&self, partition: &Partition, wait: Duration, status: StatusCode) {
        let until = SystemTime::now() + wait;
        let longer = self.blocked.get(partition).is_none_or(|b| b.until < until);
        if longer {
            tracing::warn!(identity = %partition, wait_secs = wait.as_secs(), "secondary rate limit: holding this identity back");
            self.blocked.insert(partition.clone(), Block { until, status });
            if let Some(store) = self.shared.clone() {
                let key = format!("b:{partition}");
                tokio::spawn(async move {
                    let _ = store.put_expiring(&key, &status.as_u16().to_be_bytes(), wait).await;
                });
            }
        }
    }

    /// Writes a ledger line through to the shared store (in the background: it never delays
    /// the answer), kept until shortly after the window resets.
    fn share_line(&self, partition: &Partition, limit: &RateLimit) {
        let Some(store) = self.shared.clone() else { return };
        let reset = UNIX_EPOCH + Duration::from_secs(limit.reset);
        let ttl = reset.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_secs(60);
        let key = format!("l:{partition}:{}", limit.resource);
        let payload =
            format!("{} {} {} {} {}", limit.limit, limit.remaining, limit.used, limit.reset, limit.resource);
        tokio::spawn(async move {
            let _ = store.put_expiring(&key, payload.as_bytes(), ttl).await;
        });
    }

    /// Brings in what other replicas learnt about an identity: its hold and its ledger line
    /// for `resource` (two reads, only for requests about to go upstream). Store failures
    /// are ignored: the local view stands.
    pub async fn refresh(&self, partition: &Partition, resource: &str) {
        let Some(store) = &self.shared else { return };
        if let Ok(Some(hold)) = store.get_live(&format!("b:{partition}")).await {
            let until = hold.expires_at;
            let status = <[u8; 2]>::try_from(&hold.payload[..])
                .map(u16::from_be_bytes)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok());
            if let Some(status) = status {
                if self.blocked.get(partition).is_none_or(|b| b.until < until) {
                    self.blocked.insert(partition.clone(), Block { until, status });
                }
            }
        }
        if let Ok(Some(shared)) = store.get_live(&format!("l:{partition}:{resource}")).await {
            if let Some(line) = parse_line(&shared.payload) {
                let newer = self
                    .ledger
                    .get(partition, resource)
                    .is_none_or(|l| (line.reset, line.used) > (l.reset, l.used));
                if newer {
                    self.ledger.insert(partition, line);
                }
            }
        }
    }

    /// The decision for an identity's next request to `resource`.
    pub fn admit(&self, partition: &Partition, resource: &str) -> Admission {
        let now = SystemTime::now();
        let limit = self.ledger.get(partition, resource);
        if let Some(block) = self.blocked.get(partition) {
            if block.until > now {
                return Admission::Stop {
                    until: block.until,
                    status: block.status,
                    message: "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. (answered by ghgate, which holds requests back until the limit lifts)".into(),
                    limit,
                };
            }
        }
        let Some(limit) = limit else { return Admission::Go };
        if !self.settings.protect_budget || limit.is_expired(now) || limit.limit == 0 {
            return Admission::Go;
        }
        if limit.remaining == 0 {
            return Admission::Stop {
                until: UNIX_EPOCH + Duration::from_secs(limit.reset),
                status: StatusCode::FORBIDDEN,
                message: format!(
                    "API rate limit exceeded for this identity ({} of {} used; resets at {}). (answered by ghgate without spending a request)",
                    limit.used, limit.limit, limit.reset
                ),
                limit: Some(limit),
            };
        }
        let reserve = (limit.limit as f64 * self.settings.reserve_percent / 100.0).ceil() as u64;
        if limit.remaining <= reserve { Admission::Reserve } else { Admission::Go }
    }

    /// The latest ledger line of an identity and resource.
    pub fn latest(&self, partition: &Partition, resource: &str) -> Option<Arc<RenderedRateLimit>> {
        self.ledger.get(partition, resource)
    }

    /// The whole ledger, for `GET /ratelimits` (with a shared store, every replica's).
    pub async fn lines(&self) -> Vec<LedgerLine> {
        if let Some(store) = &self.shared {
            if let Ok(keys) = store.keys_with_prefix("l:").await {
                for key in keys.into_iter().take(10_000) {
                    let Some((partition, resource)) = key.strip_prefix("l:").and_then(|k| k.rsplit_once(':'))
                    else {
                        continue;
                    };
                    let partition = Partition::from_safe_id(partition.to_string());
                    self.refresh(&partition, resource).await;
                }
            }
        }
        let now = SystemTime::now();
        let mut lines: Vec<LedgerLine> = self
            .ledger
            .iter()
            .map(|(key, l)| LedgerLine {
                identity: key.partition.to_string(),
                label: self.labels.get(key.partition.as_str()).map(|l| l.to_string()),
                resource: key.resource.clone(),
                limit: l.limit,
                remaining: l.remaining,
                used: l.used,
                reset: l.reset,
                blocked_until: self
                    .blocked
                    .get(&key.partition)
                    .filter(|b| b.until > now)
                    .map(|b| epoch(b.until)),
            })
            .collect();
        lines.sort_by(|a, b| (a.remaining, &a.identity).cmp(&(b.remaining, &b.identity)));
        lines
    }

    /// How many identities are in each state, per resource: `ok`, `reserve` (at or below the
    /// reserve) and `exhausted` — gauges with a bounded number of series, however many
    /// identities there are.
    pub fn census(&self) -> Vec<(String, &'static str, u64)> {
        let now = SystemTime::now();
        let mut counts: std::collections::BTreeMap<(String, &'static str), u64> = Default::default();
        for (_, l) in self.ledger.iter() {
            if l.is_expired(now) || l.limit == 0 {
                continue;
            }
            let reserve = (l.limit as f64 * self.settings.reserve_percent / 100.0).ceil() as u64;
            let state = if l.remaining == 0 {
                "exhausted"
            } else if l.remaining <= reserve {
                "reserve"
            } else {
                "ok"
            };
            *counts.entry((l.resource.clone(), state)).or_default() += 1;
        }
        counts.into_iter().map(|((r, s), n)| (r, s, n)).collect()
    }

    /// Identities currently held back after a secondary limit.
    pub fn blocked_count(&self) -> usize {
        let now = SystemTime::now();
        self.blocked.iter().filter(|(_, b)| b.until > now).count()
    }
}

fn parse_line(payload: &[u8]) -> Option<RateLimit> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split(' ');
    Some(RateLimit {
        limit: parts.next()?.parse().ok()?,
        remaining: parts.next()?.parse().ok()?,
        used: parts.next()?.parse().ok()?,
        reset: parts.next()?.parse().ok()?,
        resource: parts.next()?.to_string(),
    })
}

/// The local answer for [`Admission::Stop`]: GitHub's shape, `retry-after`, and the
/// `x-ratelimit-*` headers GitHub would send.
pub fn stop_response(
    until: SystemTime,
    status: StatusCode,
    message: &str,
    limit: Option<&RenderedRateLimit>,
) -> axum::response::Response {
    let mut response = crate::github::error_response(status, message);
    let body = serde_json::json!({ "message": message, "documentation_url": RATE_LIMIT_DOCS });
    *response.body_mut() = axum::body::Body::from(body.to_string());
    let wait = until.duration_since(SystemTime::now()).unwrap_or_default().as_secs().max(1);
    let headers = response.headers_mut();
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from(wait));
    if let Some(limit) = limit {
        limit.apply(headers);
    }
    response
}

/// Politeness per identity: at most so many requests upstream at once (others queue, up to a
/// bound), and mutating requests spaced apart, as GitHub asks of integrations.
pub struct Lanes {
    lanes: moka::sync::Cache<Partition, std::sync::Arc<Lane>>,
    max_concurrent: usize,
    max_queued: usize,
    spacing: Duration,
}

struct Lane {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
    /// When the next write may leave; held by the write in flight.
    next_write: std::sync::Arc<tokio::sync::Mutex<tokio::time::Instant>>,
}

/// An identity's turn upstream, held until the answer's headers arrive. A write's turn holds
/// the identity's write queue too: writes go one at a time, the next `spacing` after this
/// one's answer — spaced as GitHub sees them, not only as they leave.
#[must_use = "the turn lasts as long as it is held"]
pub struct Turn {
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    write: Option<(tokio::sync::OwnedMutexGuard<tokio::time::Instant>, Duration)>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some((next, spacing)) = &mut self.write {
            **next = tokio::time::Instant::now() + *spacing;
        }
    }
}

/// The identity's queue is full.
#[derive(Debug, Clone, Copy)]
pub struct QueueFull;

impl Lanes {
    /// Lanes with the configured bounds.
    pub fn new(settings: &LimitsSettings) -> Lanes {
        Lanes {
            lanes: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            max_concurrent: settings.max_concurrent_per_identity,
            max_queued: settings.max_queued_per_identity,
            spacing: settings.write_spacing,
        }
    }

    /// Waits for the identity's turn (see [`Turn`]).
    pub async fn enter(&self, partition: &Partition, mutating: bool) -> Result<Turn, QueueFull> {
        use std::sync::atomic::Ordering;
        let mut turn = Turn { _slot: None, write: None };
        if self.max_concurrent == 0 && (self.spacing.is_zero() || !mutating) {
            return Ok(turn);
        }
        let permits = self.max_concurrent.max(1);
        let lane = self.lanes.get_with(partition.clone(), || {
            std::sync::Arc::new(Lane {
                slots: std::sync::Arc::new(tokio::sync::Semaphore::new(permits)),
                waiting: std::sync::atomic::AtomicUsize::new(0),
                next_write: std::sync::Arc::new(tokio::sync::Mutex::new(tokio::time::Instant::now())),
            })
        });
        if mutating && !self.spacing.is_zero() {
            // Writes of one identity queue here in order; only writes ever wait on this lock.
            let next = std::sync::Arc::clone(&lane.next_write).lock_owned().await;
            tokio::time::sleep_until(*next).await;
            turn.write = Some((next, self.spacing));
        }
        if self.max_concurrent == 0 {
            return Ok(turn);
        }
        if let Ok(permit) = std::sync::Arc::clone(&lane.slots).try_acquire_owned() {
            turn._slot = Some(permit);
            return Ok(turn);
        }
        if lane.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_queued {
            lane.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(QueueFull);
        }
        let permit = std::sync::Arc::clone(&lane.slots).acquire_owned().await;
        lane.waiting.fetch_sub(1, Ordering::SeqCst);
        turn._slot = permit.ok();
        Ok(turn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(resource: &str, remaining: u64) -> RateLimit {
        RateLimit { limit: 5000, remaining, used: 5000 - remaining, reset: 1, resource: resource.into() }
    }

    #[test]
    fn a_borrowed_look_up_finds_exactly_its_identity_and_resource() {
        let ledger = Ledger::new();
        let alice = Partition::from_safe_id("c-alice".into());
        let bob = Partition::from_safe_id("c-bob".into());
        ledger.insert(&alice, line("core", 10));
        ledger.insert(&alice, line("search", 20));
        ledger.insert(&bob, line("core", 30));
        // Fresh strings, so only hashing and comparison can make them match.
        let again = Partition::from_safe_id(String::from("c-") + "alice");
        assert_eq!(ledger.get(&again, &String::from("core")).unwrap().remaining, 10);
        assert_eq!(ledger.get(&again, "search").unwrap().remaining, 20);
        assert_eq!(ledger.get(&bob, "core").unwrap().remaining, 30);
        assert!(ledger.get(&bob, "search").is_none());
        assert!(ledger.get(&Partition::from_safe_id("c-carol".into()), "core").is_none());
        assert_eq!(ledger.iter().count(), 3);
    }
}
