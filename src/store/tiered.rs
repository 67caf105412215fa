//! The response cache: an in-memory hot tier of decoded answers (so a hit costs a map look-up,
//! not a disk read or a Redis round trip) in front of the configured backend.
//!
//! The hot tier is a `quick_cache` map (S3-FIFO eviction, bounded by bytes). A read takes one
//! shard's read lock and bumps a counter: no queue of read events to drain, which mattered at
//! ~100k hits/s (moka's read bookkeeping was ~9% of CPU on a Zipf load). Expiry is checked on
//! read: an expired answer is dropped when asked for, and evicted like any other otherwise.
//!
//! Bodies are interned ([`BodyPool`]): entries of different partitions holding the same bytes
//! share one allocation. An entry's weight is its own bytes without the body; the pool counts
//! each distinct body once, and the map's capacity is the bound minus the pool's bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tracing::warn;

use super::bodies::BodyPool;
use super::shared_bodies::{SHARED_BODY_MIN, SharedBodies};
use super::{Health, Store, StoreError, codec};
use crate::cache::CachedResponse;
use crate::config::human_size;
use crate::telemetry::Metrics;

#[derive(Clone)]
struct Hot {
    entry: Arc<CachedResponse>,
    /// When the entry is no longer worth keeping (past every stale window).
    expires_at: Instant,
    /// When the backend's copy was last written (for [`ResponseCache::put_refreshed`]).
    persisted_at: SystemTime,
    /// The entry's weight in bytes, computed once (the weigher must be cheap and constant).
    weight: u64,
}

impl Hot {
    /// An entry whose body is pooled (the pool counts the body, so its weight leaves it out).
    fn new(key: &str, entry: Arc<CachedResponse>, ttl: Duration, persisted_at: SystemTime) -> Hot {
        let weight = (key.len() + entry.weight() - entry.body.len()) as u64;
        let expires_at = Instant::now().checked_add(ttl).unwrap_or_else(far_future);
        Hot { entry, expires_at, persisted_at, weight }
    }
}

/// An instant no entry reaches (for TTLs too long to add to now).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<String, Hot> for ByWeight {
    fn weight(&self, _key: &String, value: &Hot) -> u64 {
        value.weight
    }
}

/// How stale the backend's copy of an entry refreshed by a 304 may get before it is rewritten
/// (non-shared backends only). A 304 changes only times and a few headers; rewriting the whole
/// answer on every revalidation made a revalidation-heavy load write-bound.
pub(crate) const REFRESH_PERSIST_INTERVAL: Duration = Duration::from_secs(30);

/// Cached answers: hot tier plus optional backend.
pub(crate) struct ResponseCache {
    hot: quick_cache::sync::Cache<String, Hot, ByWeight>,
    hot_max_bytes: u64,
    /// The bodies the hot tier's entries hold, each once.
    bodies: BodyPool,
    /// The map's capacity as last set: the bound minus the pool's bytes, give or take 1/64.
    map_capacity: AtomicU64,
    /// Bodies stored once in the backend, named by the records.
    shared: SharedBodies,
    backend: Option<Arc<dyn Store>>,
    metrics: Arc<Metrics>,
}

impl ResponseCache {
    /// A cache whose hot tier holds about `hot_max_bytes`, in front of `backend`.
    pub(crate) fn new(hot_max_bytes: u64, backend: Option<Arc<dyn Store>>, metrics: Arc<Metrics>) -> Self {
        // Sized for answers of a few KiB each; the bound is the byte weight, not the count.
        let estimated_items = usize::try_from(hot_max_bytes / 4096).unwrap_or(usize::MAX).clamp(16, 1 << 20);
        let hot = quick_cache::sync::Cache::with_weighter(estimated_items, hot_max_bytes, ByWeight);
        Self {
            hot,
            hot_max_bytes,
            bodies: BodyPool::default(),
            map_capacity: AtomicU64::new(hot_max_bytes),
            shared: SharedBodies::default(),
            backend,
            metrics,
        }
    }

    /// The backend key of a cache key: hashed, so keys have one short length and carry no
    /// path or partition in clear.
    pub(crate) fn backend_key(key: &str) -> String {
        format!("r:{}", hex::encode(&Sha256::digest(key.as_bytes())[..16]))
    }

    /// The entry under `key`: from the hot tier, else from the backend (then kept hot).
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Arc<CachedResponse>>, StoreError> {
        if let Some(hot) = self.live_hot(key) {
            return Ok(Some(hot.entry));
        }
        self.get_from_backend(key).await
    }

    /// The entry under `key` if the memory tier has it (no backend read).
    pub(crate) fn get_hot(&self, key: &str) -> Option<Arc<CachedResponse>> {
        self.live_hot(key).map(|hot| hot.entry)
    }

    /// The hot tier's entry under `key`, unless it has expired (then it is dropped).
    fn live_hot(&self, key: &str) -> Option<Hot> {
        let hot = self.hot.get(key)?;
        if hot.expires_at <= Instant::now() {
            self.hot.remove(key);
            return None;
        }
        Some(hot)
    }

    /// The entry under `key` as the backend has it now, bypassing the hot tier (replicas use
    /// this to pick up what another replica fetched).
    pub(crate) async fn get_from_backend(
        &self,
        key: &str,
    ) -> Result<Option<Arc<CachedResponse>>, StoreError> {
        let Some(backend) = &self.backend else { return Ok(None) };
        let backend_key = Self::backend_key(key);
        let Some(bytes) = backend.get(&backend_key).await? else { return Ok(None) };
        match codec::decode_response(&bytes) {
            Ok(codec::Decoded { mut entry, shared_body }) => {
                let ttl = entry.time_to_keep(SystemTime::now());
                if ttl.is_zero() {
                    return Ok(None);
                }
                if let Some((digest, len)) = shared_body {
                    let Some(body) = self.shared.read(backend, &digest, len).await? else {
                        // The body is gone (evicted, expired, or damaged): the record is useless.
                        let _ = backend.remove(&backend_key).await;
                        return Ok(None);
                    };
                    entry.body = body;
                }
                entry.body = self.bodies.intern(&entry.body);
                let entry = Arc::new(entry);
                let persisted_at = entry.response_time;
                self.hot.insert(key.to_string(), Hot::new(key, Arc::clone(&entry), ttl, persisted_at));
                self.rebalance();
                Ok(Some(entry))
            }
            Err(e) => {
                self.metrics.store_corrupt.increment(1);
                warn!(error = %e, "dropped an unreadable cache entry");
                let _ = backend.remove(&backend_key).await;
                Ok(None)
            }
        }
    }

    /// Stores `entry` hot and in the backend. A backend failure is returned after the hot tier
    /// has the entry, so the answer is still cached locally.
    pub(crate) async fn put(
        &self,
        key: String,
        entry: Arc<CachedResponse>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let previous = self.backend.as_ref().and_then(|_| self.live_hot(&key)).map(|hot| hot.entry);
        let digest = super::digest(&entry.body);
        let entry = self.pooled_named(entry, digest);
        self.hot.insert(key.clone(), Hot::new(&key, Arc::clone(&entry), ttl, SystemTime::now()));
        self.rebalance();
        let Some(backend) = &self.backend else { return Ok(()) };
        let backend_key = Self::backend_key(&key);
        if entry.body.len() < SHARED_BODY_MIN {
            if let Some(old) = self.shared_digest_of(backend, &backend_key, previous).await {
                self.shared.release(backend, &old).await?;
            }
            return backend.put(&backend_key, codec::encode_response(&entry, None), ttl).await;
        }
        let old = self.shared_digest_of(backend, &backend_key, previous).await;
        self.shared.hold(backend, &digest, &entry.body, ttl, old != Some(digest)).await?;
        backend.put(&backend_key, codec::encode_response(&entry, Some(digest)), ttl).await?;
        match old {
            Some(old) if old != digest => self.shared.release(backend, &old).await,
            _ => Ok(()),
        }
    }

    /// The digest of the shared body the backend's record under `backend_key` names now: from
    /// the memory tier's copy of that entry when there is one, else from the record itself.
    async fn shared_digest_of(
        &self,
        backend: &Arc<dyn Store>,
        backend_key: &str,
        hot: Option<Arc<CachedResponse>>,
    ) -> Option<[u8; 16]> {
        if let Some(entry) = hot {
            return (entry.body.len() >= SHARED_BODY_MIN).then(|| super::digest(&entry.body));
        }
        let bytes = backend.get(backend_key).await.ok()??;
        codec::decode_response(&bytes).ok()?.shared_body.map(|(digest, _)| digest)
    }

    /// Stores an entry that a 304 refreshed. Its body is what the backend already holds, so
    /// with a backend of this process alone (disk) the backend's copy is rewritten only when it
    /// is older than [`REFRESH_PERSIST_INTERVAL`]; the memory tier always gets the new entry.
    /// After a restart the older copy just revalidates (free) sooner. A shared backend (Redis)
    /// is always written, so other replicas see the refresh.
    pub(crate) async fn put_refreshed(
        &self,
        key: String,
        entry: Arc<CachedResponse>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if self.backend.as_ref().is_some_and(|b| !b.is_shared()) {
            if let Some(hot) = self.live_hot(&key) {
                let age = SystemTime::now().duration_since(hot.persisted_at).unwrap_or_default();
                if age < REFRESH_PERSIST_INTERVAL {
                    let refreshed = Hot::new(&key, self.pooled(entry), ttl, hot.persisted_at);
                    self.hot.insert(key, refreshed);
                    self.rebalance();
                    return Ok(());
                }
            }
        }
        self.put(key, entry, ttl).await
    }

    /// `body` pooled: the copy already held when an entry holds equal bytes (for bodies the
    /// memory tier's entries keep beside their own, such as rewritten copies).
    pub(crate) fn intern(&self, body: &bytes::Bytes) -> bytes::Bytes {
        self.bodies.intern(body)
    }

    /// `entry` with its body pooled: the memory tier keeps only pooled bodies.
    fn pooled(&self, entry: Arc<CachedResponse>) -> Arc<CachedResponse> {
        let digest = super::digest(&entry.body);
        self.pooled_named(entry, digest)
    }

    /// [`ResponseCache::pooled`] for a body whose digest is known already.
    fn pooled_named(&self, entry: Arc<CachedResponse>, digest: [u8; 16]) -> Arc<CachedResponse> {
        let body = self.bodies.intern_named(&entry.body, digest);
        let mut owned = Arc::unwrap_or_clone(entry);
        owned.body = body;
        Arc::new(owned)
    }

    /// Keeps entries' own bytes plus the pooled bodies within the bound: the map may hold the
    /// bound minus the pool's bytes (reset when that moved by more than 1/64 of the bound, as
    /// resizing takes every shard's lock).
    fn rebalance(&self) {
        let target = self.hot_max_bytes.saturating_sub(self.bodies.bytes()).max(1);
        let set = self.map_capacity.load(Ordering::Relaxed);
        if set.abs_diff(target) > self.hot_max_bytes / 64 {
            self.map_capacity.store(target, Ordering::Relaxed);
            self.hot.set_capacity(target);
        }
    }

    /// Forgets `key` in both tiers (and its shared body, when it held the last reference).
    pub(crate) async fn remove(&self, key: &str) -> Result<(), StoreError> {
        let hot = self.hot.remove(key).map(|(_, hot)| hot.entry);
        let Some(backend) = &self.backend else { return Ok(()) };
        let backend_key = Self::backend_key(key);
        let shared = self.shared_digest_of(backend, &backend_key, hot).await;
        backend.remove(&backend_key).await?;
        match shared {
            Some(digest) => self.shared.release(backend, &digest).await,
            None => Ok(()),
        }
    }

    /// The backend, if there is one.
    pub(crate) fn backend(&self) -> Option<&Arc<dyn Store>> {
        self.backend.as_ref()
    }

    /// Makes the backend's writes durable (on shutdown).
    pub(crate) async fn flush(&self) {
        if let Some(backend) = &self.backend {
            backend.flush().await;
        }
    }

    /// Runs pending housekeeping (the hot tier needs none: it evicts as it inserts).
    pub(crate) async fn maintain(&self) {
        if let Some(backend) = &self.backend {
            backend.maintain().await;
        }
    }

    /// Bytes held: by the backend when it counts them, else by the hot tier.
    pub(crate) fn size_bytes(&self) -> u64 {
        match &self.backend {
            Some(b) if b.size_bytes() > 0 || b.entry_count() > 0 => b.size_bytes(),
            _ => self.hot_bytes(),
        }
    }

    /// Entries held, counted like [`ResponseCache::size_bytes`].
    pub(crate) fn entry_count(&self) -> u64 {
        match &self.backend {
            Some(b) if b.size_bytes() > 0 || b.entry_count() > 0 => b.entry_count(),
            _ => self.hot.len() as u64,
        }
    }

    /// Bytes held by the hot tier: entries, and their bodies once each.
    pub(crate) fn hot_bytes(&self) -> u64 {
        self.hot.weight() + self.bodies.bytes()
    }

    /// Bytes of the distinct bodies the hot tier holds (what entries of many partitions with
    /// one body cost once).
    pub(crate) fn hot_body_bytes(&self) -> u64 {
        self.bodies.bytes()
    }

    /// The backend's health (the memory backend is always healthy).
    pub(crate) fn health(&self) -> Health {
        self.backend.as_ref().map_or(Health::Ok, |b| b.health())
    }

    /// Where answers live.
    pub(crate) fn location(&self) -> String {
        match &self.backend {
            Some(b) => format!("{} with a {} memory tier", b.location(), human_size(self.hot_max_bytes)),
            None => format!("memory (max {})", human_size(self.hot_max_bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Freshness;
    use crate::store::MemoryStore;

    fn entry_at(response_time: SystemTime) -> Arc<CachedResponse> {
        Arc::new(CachedResponse {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from_static(b"{}"),
            response_time,
            initial_age: Duration::ZERO,
            freshness: Freshness {
                fresh_for: Duration::ZERO,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                keep_stale_for: Duration::from_secs(3600),
            },
            vary: Vec::new(),
            path_key: "/repos/o/r".into(),
            credential_tag: None,
            body_urls: Default::default(),
        })
    }

    /// Now, at the millisecond precision the codec keeps.
    fn now_ms() -> SystemTime {
        let ms = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        std::time::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn entry_with_body(body: Vec<u8>) -> Arc<CachedResponse> {
        let mut entry = Arc::unwrap_or_clone(entry_at(SystemTime::now()));
        entry.body = bytes::Bytes::from(body);
        Arc::new(entry)
    }

    #[tokio::test]
    async fn entries_of_many_partitions_hold_one_copy_of_a_body() {
        let cache = ResponseCache::new(1 << 20, None, Metrics::new());
        let ttl = Duration::from_secs(60);
        for partition in 0..20 {
            cache
                .put(format!("c-{partition}\n/repos/o/r"), entry_with_body(vec![b'x'; 10_000]), ttl)
                .await
                .unwrap();
        }
        assert_eq!(cache.hot_body_bytes(), 10_000, "one copy for twenty entries");
        let first = cache.get("c-0\n/repos/o/r").await.unwrap().unwrap();
        let last = cache.get("c-19\n/repos/o/r").await.unwrap().unwrap();
        assert_eq!(first.body.as_ptr(), last.body.as_ptr());
        assert!(cache.hot_bytes() < 20 * 10_000 / 4, "entries without their bodies: {}", cache.hot_bytes());
        for partition in 0..20 {
            cache.remove(&format!("c-{partition}\n/repos/o/r")).await.unwrap();
        }
        drop((first, last));
        assert_eq!(cache.hot_body_bytes(), 0, "freed with the last entry holding it");
    }

    #[tokio::test]
    async fn distinct_bodies_stay_within_the_bound() {
        let bound = 1 << 20;
        let cache = ResponseCache::new(bound, None, Metrics::new());
        for n in 0..2_000u32 {
            let mut body = vec![b'y'; 4_000];
            body[..4].copy_from_slice(&n.to_be_bytes());
            cache.put(format!("k{n}"), entry_with_body(body), Duration::from_secs(60)).await.unwrap();
        }
        // 8 MB of distinct bodies offered to a 1 MiB tier: entries and bodies stay near the bound.
        assert!(cache.hot_bytes() <= bound + bound / 32, "{} > {bound}", cache.hot_bytes());
        assert!(cache.hot_body_bytes() > bound / 2, "the bodies are most of it");
    }

    async fn keys(backend: &Arc<dyn Store>, prefix: &str) -> usize {
        backend.keys_with_prefix(prefix).await.unwrap().len()
    }

    #[tokio::test]
    async fn the_backend_stores_one_body_for_many_partitions_and_frees_it_with_the_last() {
        let backend: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 24));
        let cache = ResponseCache::new(1 << 20, Some(Arc::clone(&backend)), Metrics::new());
        let ttl = Duration::from_secs(600);
        let body = vec![b'z'; 5_000];
        for p in 0..20 {
            cache.put(format!("c-{p}\n/repos/o/r"), entry_with_body(body.clone()), ttl).await.unwrap();
        }
        assert_eq!(keys(&backend, "b:").await, 1, "one body for twenty records");
        assert_eq!(keys(&backend, "r:").await, 20);
        let stored: u64 = backend.size_bytes();
        assert!(stored < 2 * 5_000 + 20 * 1_000, "records without their bodies: {stored} bytes");

        // Another replica (or this one after a restart) reads the records and the one body.
        let other = ResponseCache::new(1 << 20, Some(Arc::clone(&backend)), Metrics::new());
        let read = other.get("c-7\n/repos/o/r").await.unwrap().unwrap();
        assert_eq!(read.body.as_ref(), body.as_slice());

        // A record that changes body lets go of the old one; the last release deletes it.
        cache.put("c-0\n/repos/o/r".into(), entry_with_body(vec![b'w'; 5_000]), ttl).await.unwrap();
        assert_eq!(keys(&backend, "b:").await, 2);
        for p in 1..20 {
            cache.remove(&format!("c-{p}\n/repos/o/r")).await.unwrap();
        }
        assert_eq!(keys(&backend, "b:").await, 1, "the first body went with its last record");
        cache.remove("c-0\n/repos/o/r").await.unwrap();
        assert_eq!(keys(&backend, "b:").await + keys(&backend, "n:").await, 0, "nothing left");
        // Small bodies stay inline.
        cache.put("small".into(), entry_with_body(b"{}".to_vec()), ttl).await.unwrap();
        assert_eq!(keys(&backend, "b:").await, 0);
    }

    #[tokio::test]
    async fn a_record_whose_body_is_gone_reads_as_a_miss() {
        let backend: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 24));
        let cache = ResponseCache::new(1 << 20, Some(Arc::clone(&backend)), Metrics::new());
        cache.put("k".into(), entry_with_body(vec![b'q'; 4_000]), Duration::from_secs(600)).await.unwrap();
        for key in backend.keys_with_prefix("b:").await.unwrap() {
            backend.remove(&key).await.unwrap();
        }
        let other = ResponseCache::new(1 << 20, Some(Arc::clone(&backend)), Metrics::new());
        assert!(other.get("k").await.unwrap().is_none());
        assert_eq!(keys(&backend, "r:").await, 0, "the useless record is dropped");
    }

    #[tokio::test]
    async fn shared_bodies_and_their_counts_survive_a_restart_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(600);
        let body = vec![b'd'; 3_000];
        {
            let disk: Arc<dyn Store> =
                Arc::new(crate::store::DiskStore::open(dir.path(), 1 << 24, Metrics::new()).unwrap());
            let cache = ResponseCache::new(1 << 20, Some(disk), Metrics::new());
            for p in 0..3 {
                cache.put(format!("c-{p}"), entry_with_body(body.clone()), ttl).await.unwrap();
            }
        }
        let disk: Arc<dyn Store> =
            Arc::new(crate::store::DiskStore::open(dir.path(), 1 << 24, Metrics::new()).unwrap());
        let cache = ResponseCache::new(1 << 20, Some(Arc::clone(&disk)), Metrics::new());
        assert_eq!(cache.get("c-2").await.unwrap().unwrap().body.as_ref(), body.as_slice());
        cache.remove("c-0").await.unwrap();
        cache.remove("c-1").await.unwrap();
        assert_eq!(keys(&disk, "b:").await, 1, "one record still names it");
        cache.remove("c-2").await.unwrap();
        assert_eq!(keys(&disk, "b:").await, 0, "the count came through the restart");
    }

    #[tokio::test]
    async fn a_refresh_rewrites_the_backend_copy_only_when_it_has_aged() {
        let backend: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 20));
        let cache = ResponseCache::new(1 << 20, Some(backend), Metrics::new());
        let first = now_ms();
        let ttl = Duration::from_secs(3600);
        cache.put("k".into(), entry_at(first), ttl).await.unwrap();
        let refreshed = first + Duration::from_secs(1);
        cache.put_refreshed("k".into(), entry_at(refreshed), ttl).await.unwrap();
        assert_eq!(cache.get("k").await.unwrap().unwrap().response_time, refreshed, "memory tier refreshed");
        assert_eq!(
            cache.get_from_backend("k").await.unwrap().unwrap().response_time,
            first,
            "backend copy left alone within the interval"
        );

        // Once the backend's copy is older than the interval, a refresh writes it.
        let old = now_ms() - REFRESH_PERSIST_INTERVAL - Duration::from_secs(1);
        cache.put("k".into(), entry_at(old), ttl).await.unwrap();
        cache.hot.insert("k".into(), Hot::new("k", entry_at(old), ttl, old));
        let now = now_ms();
        cache.put_refreshed("k".into(), entry_at(now), ttl).await.unwrap();
        assert_eq!(cache.get_from_backend("k").await.unwrap().unwrap().response_time, now);
    }
}
