//! Where state lives. Everything above this module knows two things: the [`Store`] trait — a
//! byte key-value store with expiry and short cross-process locks, implemented by the disk
//! ([`DiskStore`]) and Redis ([`RedisStore`]) backends — and [`ResponseCache`], the in-memory
//! hot tier of decoded answers in front of whichever backend the settings chose
//! ([`from_settings`]). With the `memory` backend the hot tier is all there is.

mod bodies;
mod codec;
mod disk;
mod failures;
mod memory;
mod redis;
mod sealed;
mod shared_bodies;
mod siblings;
mod tiered;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;

pub use codec::frame;
pub(crate) use codec::unframe;
pub use disk::DiskStore;
pub use memory::MemoryStore;
pub(crate) use redis::RedisStore;
pub(crate) use sealed::Sealer;
pub(crate) use siblings::Siblings;
pub(crate) use tiered::ResponseCache;

use crate::config::{Settings, StoreBackend};
use crate::telemetry::Metrics;

/// A failure of the store itself (not a miss). Callers treat it as a miss, count it and carry
/// on: a store outage degrades to pass-through, never to an error for clients.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store error: {0}")]
pub struct StoreError(pub String);

/// How long the replicas' event log is kept after its last event.
pub const EVENT_LOG_TTL: Duration = Duration::from_secs(3600);

/// About how many events the replicas' event log keeps.
pub const EVENT_LOG_LENGTH: usize = 10_000;

/// What [`Store::follow`] brought: events in the order they were announced, and where to go on.
#[derive(Debug, Default)]
pub struct Followed {
    /// The events' payloads.
    pub events: Vec<bytes::Bytes>,
    /// The cursor to pass next (`None` while the log is empty).
    pub cursor: Option<String>,
}

/// Whether the store works right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Every recent operation succeeded.
    Ok,
    /// Recent operations failed; requests are served without it.
    Degraded(String),
}

/// A byte key-value store with per-key expiry, bounded by its backend, plus short locks that
/// let replicas sharing it agree on who does a piece of upstream work.
///
/// Keys are plain strings chosen by the caller (namespaced: `r:` answers, `t:` tokens, `i:`
/// installation look-ups); values are opaque frames (see [`frame`]).
pub trait Store: Send + Sync + 'static {
    /// The value under `key`, if present and not expired.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<bytes::Bytes>, StoreError>>;

    /// Stores `value` under `key`, to be forgotten after `ttl`.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: bytes::Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Forgets `key`.
    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Adds `delta` to the counter `key` (an absent or expired counter is 0), keeps it for at
    /// least `ttl` from now (an expiry further out stays), and returns the new value. Replicas sharing the store share the
    /// counter; within one process, additions to one counter do not interleave.
    fn add<'a>(&'a self, key: &'a str, delta: i64, ttl: Duration) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// Every live key that starts with `prefix` (for clearing; not for the request path).
    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Takes the lock `key` for at most `ttl`: `Some(fence)` when taken, `None` when someone
    /// else holds it. By default (backends no other process can see) every lock is granted:
    /// inside one process the coalescer already ensures one worker per key.
    fn try_lock<'a>(
        &'a self,
        _key: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async { Ok(Some(0)) })
    }

    /// Releases a lock taken with `fence` (a lock that expired and was taken by another
    /// holder is left alone).
    fn unlock<'a>(&'a self, _key: &'a str, _fence: u64) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether other processes see the same data (replicas sharing Redis).
    fn is_shared(&self) -> bool {
        false
    }

    /// Appends `event` to the log every replica sharing the store follows (kept for
    /// [`EVENT_LOG_TTL`], the last [`EVENT_LOG_LENGTH`] or so). Backends nobody else sees keep
    /// nothing: there is no one to tell.
    fn announce<'a>(&'a self, _event: &'a [u8]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// The events announced after `cursor` (`None`: every event the log still holds), waiting
    /// up to about a second for one to come; with the cursor to pass next. Backends nobody else
    /// sees never have any.
    fn follow<'a>(&'a self, cursor: Option<&'a str>) -> BoxFuture<'a, Result<Followed, StoreError>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(Followed { events: Vec::new(), cursor: cursor.map(str::to_string) })
        })
    }

    /// Whether the store works right now.
    fn health(&self) -> Health;

    /// Runs pending housekeeping so that the sizes below are current.
    fn maintain(&self) -> BoxFuture<'_, ()>;

    /// Makes every write so far durable (called on shutdown). Backends that are durable on
    /// each write, or not at all, keep the default.
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Bytes held now (approximate), when the backend knows.
    fn size_bytes(&self) -> u64;

    /// Entries held now (approximate), when the backend knows.
    fn entry_count(&self) -> u64;

    /// A description of where the data lives, for logs and the status page.
    fn location(&self) -> String;
}

/// The state backends of a gateway: the response cache (hot tier + backend) and, for other
/// kinds of state, the backend itself.
pub(crate) struct Stores {
    /// Cached answers.
    pub responses: ResponseCache,
    /// The backend (`None` with the memory backend).
    pub backend: Option<Arc<dyn Store>>,
    /// Where small state (negative entries) lives: the backend, or a bounded memory store.
    pub state: Arc<dyn Store>,
}

/// Opens the configured backend. A disk store that cannot be opened is an error naming
/// `store.data_dir`; Redis is connected lazily (a Redis that is down at start-up means a
/// degraded start, not a failed one).
pub(crate) fn from_settings(settings: &Settings, metrics: Arc<Metrics>) -> Result<Stores, String> {
    let store = &settings.store;
    let (backend, hot_bytes): (Option<Arc<dyn Store>>, u64) = match store.backend {
        StoreBackend::Memory => (None, settings.cache.max_bytes),
        StoreBackend::Disk => {
            let dir = store.data_dir.join("cache");
            let disk =
                DiskStore::open(&dir, settings.cache.max_bytes, Arc::clone(&metrics)).map_err(|e| {
                    format!("store.data_dir: cannot open the disk store in {}: {e}", dir.display())
                })?;
            (Some(Arc::new(disk)), store.hot_max_bytes.min(settings.cache.max_bytes))
        }
        StoreBackend::Redis => {
            let redis = RedisStore::connect(store, Arc::clone(&metrics))
                .map_err(|e| format!("store.redis_url: {e}"))?;
            (Some(Arc::new(redis)), store.hot_max_bytes)
        }
    };
    let state: Arc<dyn Store> = match &backend {
        Some(b) => Arc::clone(b),
        None => Arc::new(MemoryStore::new(64 * 1024 * 1024)),
    };
    Ok(Stores { responses: ResponseCache::new(hot_bytes, backend.clone(), metrics), backend, state })
}

/// The name of a body by content: the first 16 bytes of its SHA-256. The memory tier's pool,
/// the backends' shared bodies and the siblings index all name bodies this way.
pub(crate) fn digest(body: &[u8]) -> [u8; 16] {
    use sha2::Digest;
    let full = sha2::Sha256::digest(body);
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&full[..16]);
    digest
}

/// A value read back with [`Store::get_live`](trait.Store.html#method.get_live): its payload,
/// checked, and when it stops counting.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    /// When the writer said the value stops counting.
    pub expires_at: SystemTime,
    /// The payload, as written.
    pub payload: Bytes,
}

/// [`Store::add`] for a backend no other process sees: read, add and write the counter (a
/// framed big-endian `i64`) while holding `lock`.
async fn add_locally(
    store: &dyn Store,
    lock: &tokio::sync::Mutex<()>,
    key: &str,
    delta: i64,
    ttl: Duration,
) -> Result<i64, StoreError> {
    let _held = lock.lock().await;
    let now = SystemTime::now();
    let (current, keep) = match store.get_live(key).await? {
        Some(live) => {
            let value = live.payload.as_ref().try_into().map(i64::from_be_bytes).unwrap_or(0);
            (value, ttl.max(live.expires_at.duration_since(now).unwrap_or_default()))
        }
        None => (0, ttl),
    };
    let value = current + delta;
    store.put_expiring(key, &value.to_be_bytes(), keep).await?;
    Ok(value)
}

impl dyn Store {
    /// Stores `payload` under `key` for `ttl`, framed with its expiry and a checksum (see
    /// [`frame`]): every small value (tokens, look-ups, negative entries, marks, ledger lines)
    /// goes through here, so no caller frames by hand.
    pub(crate) async fn put_expiring(
        &self,
        key: &str,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.put(key, frame(payload, SystemTime::now() + ttl), ttl).await
    }

    /// The payload under `key` when it is there, intact and not past its expiry; a damaged or
    /// expired value reads as absent. Store failures are errors (the backend has counted and
    /// logged them).
    pub(crate) async fn get_live(&self, key: &str) -> Result<Option<Live>, StoreError> {
        let Some(framed) = self.get(key).await? else { return Ok(None) };
        let Ok((expires_at, payload)) = unframe(&framed) else { return Ok(None) };
        if expires_at <= SystemTime::now() {
            return Ok(None);
        }
        let start = framed.len() - payload.len();
        Ok(Some(Live { expires_at, payload: framed.slice(start..) }))
    }
}

/// A piece of upstream work that replicas sharing a store should do once: one replica does
/// it while the others look, now and then, for the result it stores.
pub(crate) trait ReplicaWork: Send {
    /// What the work produces (and waiting replicas find).
    type Output: Send;

    /// What another replica stored for this work, if it is there yet.
    fn check(&self) -> impl Future<Output = Option<Self::Output>> + Send;

    /// Does the work (storing its result where [`ReplicaWork::check`] looks).
    fn work(self) -> impl Future<Output = Self::Output> + Send;
}

/// A lock in a shared store under which one replica at a time does a [`ReplicaWork`].
pub(crate) struct ReplicaLock {
    /// The store the replicas share (`None`, or one nobody else sees: the work just runs).
    pub backend: Option<Arc<dyn Store>>,
    /// The lock's key (`lock:<what the work is for>`).
    pub key: String,
    /// How long the lock is held at most (the work's own deadline plus a margin).
    pub hold: Duration,
    /// How long a replica waits for another's result before doing the work itself.
    pub wait: Duration,
}

impl ReplicaLock {
    /// Does `job` here once this replica holds the lock; while another holds it, polls
    /// [`ReplicaWork::check`] every 25 ms, takes over if the lock is released without a
    /// result, and goes alone after `wait`. A store that no other replica shares, or that
    /// fails, means "go alone": inside one process the coalescer already lets one request work.
    pub(crate) async fn run<J: ReplicaWork>(&self, job: J, metrics: &Metrics) -> J::Output {
        let Some(backend) = self.backend.as_ref().filter(|b| b.is_shared()) else {
            return job.work().await;
        };
        let fence = match backend.try_lock(&self.key, self.hold).await {
            Ok(Some(fence)) => {
                // Double-checked: another replica may have finished this work between this
                // replica's own look and its taking the lock.
                if let Some(found) = job.check().await {
                    let _ = backend.unlock(&self.key, fence).await;
                    return found;
                }
                fence
            }
            Err(_) => return job.work().await,
            Ok(None) => match self.wait_for_other(backend, &job, metrics).await {
                Waited::Found(found) => return found,
                Waited::GoAlone => return job.work().await,
                Waited::Locked(fence) => {
                    // The holder may have stored its result and let go between this replica's
                    // last look and its taking the lock: look once more before working.
                    if let Some(found) = job.check().await {
                        let _ = backend.unlock(&self.key, fence).await;
                        return found;
                    }
                    fence
                }
            },
        };
        let result = job.work().await;
        let _ = backend.unlock(&self.key, fence).await;
        result
    }

    /// Polls for another replica's result while it holds the lock.
    async fn wait_for_other<J: ReplicaWork>(
        &self,
        backend: &Arc<dyn Store>,
        job: &J,
        metrics: &Metrics,
    ) -> Waited<J::Output> {
        metrics.lock_waits.increment(1);
        let deadline = std::time::Instant::now() + self.wait;
        let mut polls = 0u32;
        loop {
            tokio::time::sleep(Duration::from_millis(25)).await;
            if let Some(found) = job.check().await {
                return Waited::Found(found);
            }
            polls += 1;
            if polls % 4 == 0 {
                match backend.try_lock(&self.key, self.hold).await {
                    Ok(Some(fence)) => return Waited::Locked(fence),
                    Ok(None) => {}
                    Err(_) => return Waited::GoAlone,
                }
            }
            if std::time::Instant::now() >= deadline {
                metrics.lock_timeouts.increment(1);
                return Waited::GoAlone;
            }
        }
    }
}

impl ReplicaLock {
    /// For work other replicas wait for but do not share (the first fetch of a variant, see
    /// `coalesce::Pioneers`): takes the lock and returns a [`Lease`] to hold while working, or,
    /// while another replica holds it, waits until it lets go (or `wait` runs out) and returns
    /// `None`. A store no other replica sees, or that fails, means "go ahead" (`None`).
    pub(crate) async fn lead_or_wait(&self) -> Option<Lease> {
        let backend = self.backend.as_ref().filter(|b| b.is_shared())?;
        match backend.try_lock(&self.key, self.hold).await {
            Ok(Some(fence)) => Some(Lease { backend: Arc::clone(backend), key: self.key.clone(), fence }),
            Ok(None) => {
                let deadline = std::time::Instant::now() + self.wait;
                while std::time::Instant::now() < deadline {
                    // Short polls: the holder's work is one upstream request, often a few ms.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if !matches!(backend.get(&self.key).await, Ok(Some(_))) {
                        break;
                    }
                }
                None
            }
            Err(_) => None,
        }
    }
}

/// A replica lock held while its work runs; let go (in the background) when dropped.
pub(crate) struct Lease {
    backend: Arc<dyn Store>,
    key: String,
    fence: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (backend, key, fence) = (Arc::clone(&self.backend), std::mem::take(&mut self.key), self.fence);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = backend.unlock(&key, fence).await;
            });
        }
    }
}

/// How waiting for another replica ended.
enum Waited<T> {
    /// It stored the result.
    Found(T),
    /// It let go of the lock without one: this replica holds it now.
    Locked(u64),
    /// The store failed or the wait ran out.
    GoAlone,
}
