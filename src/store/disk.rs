//! The embedded default: fjall (an LSM-tree with a checksummed journal, crash-safe) under
//! `store.data_dir/cache`, large values in blob files (key-value separation).
//!
//! fjall has no size bound or expiry of its own, so an in-memory index (a `moka` cache of key
//! → size and expiry, weighted by size) decides what to keep: when it evicts or expires a key,
//! its listener deletes the key from disk. The index is rebuilt by one scan on start-up. A
//! value whose frame checksum does not match is deleted and reported as a miss.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions};
use futures::FutureExt;
use futures::future::BoxFuture;
use moka::notification::RemovalCause;
use tracing::warn;

use super::failures::Failures;
use super::{Health, Store, StoreError, codec};
use crate::telemetry::Metrics;

#[derive(Clone)]
struct Meta {
    size: u32,
    expires_at: SystemTime,
}

struct ByExpiry;

impl moka::Expiry<String, Meta> for ByExpiry {
    fn expire_after_create(&self, _: &String, meta: &Meta, _: Instant) -> Option<Duration> {
        Some(meta.expires_at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
    }
    fn expire_after_update(
        &self,
        k: &String,
        meta: &Meta,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(k, meta, at)
    }
}

/// The disk backend.
pub struct DiskStore {
    db: Database,
    data: Keyspace,
    index: moka::sync::Cache<String, Meta>,
    max_bytes: u64,
    dir: PathBuf,
    failing: AtomicBool,
    failures: Failures,
    /// Serialises counter additions.
    counters: tokio::sync::Mutex<()>,
}

impl DiskStore {
    /// Opens (or creates) the store in `dir`, bounded to about `max_bytes`, and rebuilds the
    /// index from what is on disk, dropping expired entries.
    pub fn open(dir: &Path, max_bytes: u64, metrics: Arc<Metrics>) -> Result<DiskStore, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let memory = FjallMemory::for_max_bytes(max_bytes);
        let db = match memory.apply(Database::builder(dir)).open() {
            Ok(db) => db,
            Err(first) => {
                // A cache is disposable: a store that cannot be recovered (a damaged journal
                // after a crash or a bad disk) is moved aside and started afresh, rather than
                // keeping the gateway down. Only the latest damaged copy is kept.
                let aside = dir.with_extension("damaged");
                let _ = std::fs::remove_dir_all(&aside);
                std::fs::rename(dir, &aside).map_err(|e| format!("{first}; moving it aside failed: {e}"))?;
                metrics.store_corrupt.increment(1);
                warn!(
                    dir = %dir.display(),
                    moved_to = %aside.display(),
                    error = %first,
                    "the disk store could not be recovered; starting with an empty one"
                );
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                memory
                    .apply(Database::builder(dir))
                    .open()
                    .map_err(|e| format!("{first}; a fresh store failed too: {e}"))?
            }
        };
        let data = db
            .keyspace("cache", || {
                KeyspaceCreateOptions::default()
                    .with_kv_separation(Some(KvSeparationOptions::default()))
                    .max_memtable_size(memory.memtable)
            })
            .map_err(|e| e.to_string())?;
        let on_disk = data.clone();
        let index = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, m: &Meta| m.size.saturating_add(k.len() as u32))
            .expire_after(ByExpiry)
            .eviction_listener(move |key: Arc<String>, _: Meta, cause: RemovalCause| {
                // A replaced key holds its new value on disk already.
                if cause != RemovalCause::Replaced {
                    let _ = on_disk.remove(key.as_bytes());
                }
            })
            .build();
        let store = DiskStore {
            db,
            data,
            index,
            max_bytes,
            dir: dir.to_path_buf(),
            failing: AtomicBool::new(false),
            failures: Failures::new(dir.display().to_string(), metrics),
            counters: tokio::sync::Mutex::new(()),
        };
        store.warm_start()?;
        Ok(store)
    }

    /// Rebuilds the index from disk: one sequential scan of keys and value headers.
    fn warm_start(&self) -> Result<(), String> {
        let now = SystemTime::now();
        let mut expired = Vec::new();
        for item in self.data.iter() {
            let (key, value) = item.into_inner().map_err(|e| e.to_string())?;
            let Ok(key_text) = std::str::from_utf8(&key) else {
                expired.push(key.to_vec());
                continue;
            };
            match codec::frame_expiry(&value) {
                Some(expires_at) if expires_at > now => {
                    let size = u32::try_from(value.len()).unwrap_or(u32::MAX);
                    self.index.insert(key_text.to_string(), Meta { size, expires_at });
                }
                _ => expired.push(key.to_vec()),
            }
        }
        for key in expired {
            let _ = self.data.remove(key);
        }
        self.index.run_pending_tasks();
        Ok(())
    }

    fn failed(&self, what: &str, error: String) -> StoreError {
        self.failing.store(true, Ordering::Relaxed);
        self.failures.failed(&format!("disk store {what} failed; serving from memory"), error)
    }
}

impl Store for DiskStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        async move {
            if !self.index.contains_key(key) {
                return Ok(None);
            }
            let value = match self.data.get(key.as_bytes()) {
                Ok(Some(v)) => v,
                Ok(None) => {
                    self.index.invalidate(key);
                    return Ok(None);
                }
                Err(e) => {
                    // A checksum or read error for this key: drop it and answer a miss.
                    self.failures.corrupt("dropped an unreadable disk entry", &e.to_string());
                    self.index.invalidate(key);
                    let _ = self.data.remove(key.as_bytes());
                    return Ok(None);
                }
            };
            if codec::unframe(&value).is_err() {
                self.failures.corrupt("dropped a corrupted disk entry", key);
                self.index.invalidate(key);
                let _ = self.data.remove(key.as_bytes());
                return Ok(None);
            }
            Ok(Some(Bytes::copy_from_slice(&value)))
        }
        .boxed()
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let size = u32::try_from(value.len()).unwrap_or(u32::MAX);
            if u64::from(size) > self.max_bytes {
                return Ok(());
            }
            if let Err(e) = self.data.insert(key.as_bytes(), value.as_ref()) {
                return Err(self.failed("write", e.to_string()));
            }
            self.failing.store(false, Ordering::Relaxed);
            self.index.insert(key.to_string(), Meta { size, expires_at: SystemTime::now() + ttl });
            Ok(())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            self.index.invalidate(key);
            self.data.remove(key.as_bytes()).map_err(|e| self.failed("delete", e.to_string()))
        }
        .boxed()
    }

    fn add<'a>(&'a self, key: &'a str, delta: i64, ttl: Duration) -> BoxFuture<'a, Result<i64, StoreError>> {
        super::add_locally(self, &self.counters, key, delta, ttl).boxed()
    }

    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move { Ok(self.index.iter().map(|(k, _)| (*k).clone()).filter(|k| k.starts_with(prefix)).collect()) }
            .boxed()
    }

    fn health(&self) -> Health {
        if self.failing.load(Ordering::Relaxed) {
            Health::Degraded(format!("disk store in {} is failing; serving from memory", self.dir.display()))
        } else {
            Health::Ok
        }
    }

    fn maintain(&self) -> BoxFuture<'_, ()> {
        async move {
            self.index.run_pending_tasks();
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        let db = self.db.clone();
        async move {
            let synced = tokio::task::spawn_blocking(move || db.persist(fjall::PersistMode::SyncAll)).await;
            if !matches!(synced, Ok(Ok(()))) {
                warn!("could not flush the disk store's journal on shutdown");
            }
        }
        .boxed()
    }

    fn size_bytes(&self) -> u64 {
        self.index.weighted_size()
    }

    fn entry_count(&self) -> u64 {
        self.index.entry_count()
    }

    fn location(&self) -> String {
        format!("disk {} (max {})", self.dir.display(), crate::config::human_size(self.max_bytes))
    }
}

/// The memory fjall itself may use, scaled to the store's size so that `cache.max_bytes`
/// also bounds it: fjall's defaults (a 64 MiB memtable per keyspace, a 32 MiB block cache)
/// would otherwise add ~100 MiB to RSS under write-heavy loads, whatever the store's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FjallMemory {
    /// Largest memtable (writes held in memory before they are flushed to a segment).
    memtable: u64,
    /// Block cache for reads.
    block_cache: u64,
}

impl FjallMemory {
    /// A sixteenth of the store each, between 4 MiB and fjall's defaults.
    fn for_max_bytes(max_bytes: u64) -> FjallMemory {
        let share = (max_bytes / 16).clamp(4 << 20, 64 << 20);
        FjallMemory { memtable: share, block_cache: share.min(32 << 20) }
    }

    fn apply(self, builder: fjall::DatabaseBuilder<Database>) -> fjall::DatabaseBuilder<Database> {
        builder.cache_size(self.block_cache)
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        // Flush the journal so a clean stop loses nothing.
        let _ = self.db.persist(fjall::PersistMode::SyncAll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Metrics;

    fn framed(text: &str, ttl: Duration) -> Bytes {
        codec::frame(text.as_bytes(), SystemTime::now() + ttl)
    }

    #[tokio::test]
    async fn values_survive_a_reopen_and_expired_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = DiskStore::open(dir.path(), 1 << 20, Metrics::new()).unwrap();
            store
                .put("keep", framed("kept", Duration::from_secs(60)), Duration::from_secs(60))
                .await
                .unwrap();
            store
                .put("short", framed("gone", Duration::from_millis(10)), Duration::from_millis(10))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let store = DiskStore::open(dir.path(), 1 << 20, Metrics::new()).unwrap();
        let kept = store.get("keep").await.unwrap().unwrap();
        assert_eq!(codec::unframe(&kept).unwrap().1, b"kept");
        assert!(store.get("short").await.unwrap().is_none());
        assert_eq!(store.entry_count(), 1);
    }

    #[tokio::test]
    async fn stays_within_its_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 50_000, Metrics::new()).unwrap();
        let value = framed(&"x".repeat(1000), Duration::from_secs(60));
        for i in 0..500 {
            store.put(&format!("k{i}"), value.clone(), Duration::from_secs(60)).await.unwrap();
        }
        store.maintain().await;
        assert!(store.size_bytes() <= 50_000, "{}", store.size_bytes());
        let on_disk = store.data.iter().count();
        assert!(on_disk < 100, "evicted keys are deleted from disk too ({on_disk} left)");
    }

    #[tokio::test]
    async fn a_corrupted_value_is_dropped_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let store = DiskStore::open(dir.path(), 1 << 20, Arc::clone(&metrics)).unwrap();
        let mut damaged = framed("payload", Duration::from_secs(60)).to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        store.data.insert("bad", damaged).unwrap();
        store
            .index
            .insert("bad".into(), Meta { size: 10, expires_at: SystemTime::now() + Duration::from_secs(60) });
        assert!(store.get("bad").await.unwrap().is_none());
        assert!(store.data.get("bad").unwrap().is_none(), "deleted from disk");
    }
}
