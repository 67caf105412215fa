//! The embedded default: fjall (an LSM-tree with a checksummed journal, crash-safe) under
//! `store.data_dir/cache`, large values in blob files (key-value separation).
//!
//! fjall has no size bound or expiry of its own, so an in-memory index (a `moka` cache of key
//! → size and expiry, weighted by size) decides what to keep: when it evicts or expires a key,
//! its listener deletes the key from disk. The index is rebuilt by one scan on start-up. A
//! value whose frame checksum does not match is deleted and reported as a miss.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions};
use futures::FutureExt;
use futures::future::BoxFuture;
use moka::notification::RemovalCause;
use tracing::{info, warn};

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

/// The open fjall database and its one keyspace, replaced whole when the store is reopened.
struct Fjall {
    db: Database,
    data: Keyspace,
}

/// The handle every operation goes through: `None` while a reopen is under way (operations
/// then answer a miss or fail at once; they never wait for it).
type Slot = Arc<RwLock<Option<Fjall>>>;

/// The disk backend.
pub struct DiskStore {
    fjall: Slot,
    index: moka::sync::Cache<String, Meta>,
    max_bytes: u64,
    memory: FjallMemory,
    dir: PathBuf,
    failing: AtomicBool,
    /// Reopen attempts while failing (a full disk poisons fjall for good: only a reopen
    /// recovers it once space is freed).
    recovery: Mutex<Recovery>,
    failures: Failures,
    metrics: Arc<Metrics>,
    /// Serialises counter additions.
    counters: tokio::sync::Mutex<()>,
}

/// Where recovery stands while the store is failing.
#[derive(Debug, Default)]
struct Recovery {
    /// Attempts since the store last worked.
    attempts: u32,
    /// No attempt before this.
    next_at: Option<Instant>,
    /// An attempt is under way.
    running: bool,
    /// When the store last worked again. A disk that fills again soon after keeps the
    /// backoff it had (a reopen can free a little space, then fail again).
    recovered_at: Option<Instant>,
}

/// A store that worked this long since its last recovery starts its backoff afresh.
const STEADY: Duration = Duration::from_secs(300);

/// Waits between reopen attempts: 5 s, doubling, at most a minute.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << attempts.saturating_sub(1).min(4)).min(60))
}

/// The key a recovery probe writes: not a cache key (those never start with NUL).
const PROBE_KEY: &[u8] = b"\0probe";

impl DiskStore {
    /// Opens (or creates) the store in `dir`, bounded to about `max_bytes`, and rebuilds the
    /// index from what is on disk, dropping expired entries.
    pub fn open(dir: &Path, max_bytes: u64, metrics: Arc<Metrics>) -> Result<DiskStore, String> {
        let memory = FjallMemory::for_max_bytes(max_bytes);
        let (fjall, _) = open_fjall(dir, memory, &metrics)?;
        let slot: Slot = Arc::new(RwLock::new(Some(fjall)));
        let on_disk = Arc::clone(&slot);
        let index = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, m: &Meta| m.size.saturating_add(k.len() as u32))
            .expire_after(ByExpiry)
            .eviction_listener(move |key: Arc<String>, _: Meta, cause: RemovalCause| {
                // A replaced key holds its new value on disk already. During a reopen the
                // delete is skipped: the key expires on disk by its frame's expiry.
                if cause != RemovalCause::Replaced {
                    if let Ok(slot) = on_disk.try_read() {
                        if let Some(fjall) = slot.as_ref() {
                            let _ = fjall.data.remove(key.as_bytes());
                        }
                    }
                }
            })
            .build();
        let store = DiskStore {
            fjall: slot,
            index,
            max_bytes,
            memory,
            dir: dir.to_path_buf(),
            failing: AtomicBool::new(false),
            recovery: Mutex::new(Recovery::default()),
            failures: Failures::new(dir.display().to_string(), Arc::clone(&metrics)),
            metrics,
            counters: tokio::sync::Mutex::new(()),
        };
        store.warm_start()?;
        Ok(store)
    }

    /// Runs `op` on the open keyspace; `None` while a reopen is under way.
    fn with_data<T>(&self, op: impl FnOnce(&Keyspace) -> T) -> Option<T> {
        let slot = self.fjall.try_read().ok()?;
        slot.as_ref().map(|fjall| op(&fjall.data))
    }

    /// Rebuilds the index from disk: one sequential scan of keys and value headers.
    fn warm_start(&self) -> Result<(), String> {
        let now = SystemTime::now();
        let mut expired = Vec::new();
        let slot = self.fjall.read().map_err(|e| e.to_string())?;
        let Some(fjall) = slot.as_ref() else { return Ok(()) };
        for item in fjall.data.iter() {
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
            let _ = fjall.data.remove(key);
        }
        self.index.run_pending_tasks();
        Ok(())
    }

    fn failed(&self, what: &str, error: String) -> StoreError {
        self.failing.store(true, Ordering::Relaxed);
        self.failures.failed(&format!("disk store {what} failed; serving from memory"), error)
    }

    /// A write through the journal: whether the store takes writes again.
    fn probe(&self) -> Result<(), String> {
        match self.with_data(|data| data.insert(PROBE_KEY, [0u8; 4096])) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the store is being reopened".into()),
        }
    }

    /// While failing, and when the backoff allows: a probe write, and if that fails too, a
    /// reopen of the database on the same files (fjall refuses every write after one failed
    /// journal write, so a disk that filled and was freed needs it). Runs from upkeep.
    async fn recover_if_due(&self) {
        if !self.failing.load(Ordering::Relaxed) {
            return;
        }
        let attempt = {
            let mut recovery = self.recovery.lock().expect("recovery state poisoned");
            if recovery.running || recovery.next_at.is_some_and(|at| Instant::now() < at) {
                return;
            }
            if recovery.recovered_at.is_some_and(|at| at.elapsed() > STEADY) {
                recovery.attempts = 0;
            }
            recovery.running = true;
            recovery.attempts += 1;
            recovery.attempts
        };
        let recovered = match self.probe() {
            Ok(()) => Ok(false),
            Err(_) => {
                let (slot, dir, memory, metrics) =
                    (Arc::clone(&self.fjall), self.dir.clone(), self.memory, Arc::clone(&self.metrics));
                tokio::task::spawn_blocking(move || reopen(&slot, &dir, memory, &metrics))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
                    // Opening needs no space; writing does: the store works once a write does.
                    .and_then(|started_afresh| self.probe().map(|()| started_afresh))
            }
        };
        let mut recovery = self.recovery.lock().expect("recovery state poisoned");
        recovery.running = false;
        match recovered {
            Ok(started_afresh) => {
                if started_afresh {
                    self.index.invalidate_all();
                }
                let now = Instant::now();
                recovery.recovered_at = Some(now);
                recovery.next_at = Some(now + backoff(attempt));
                self.failing.store(false, Ordering::Relaxed);
                self.metrics.store_recoveries.increment(1);
                info!(dir = %self.dir.display(), attempt, "the disk store works again; storing answers on disk");
            }
            Err(error) => {
                let wait = backoff(attempt);
                recovery.next_at = Some(Instant::now() + wait);
                warn!(
                    dir = %self.dir.display(),
                    attempt,
                    next_in = ?wait,
                    %error,
                    "the disk store could not be reopened; still serving from memory"
                );
            }
        }
    }
}

/// Whether an open failed because of the disk (full, read-only, not ours) or another
/// process, not because of what is in the files: moving those aside would lose the cache
/// for nothing.
fn is_the_disk(error: &fjall::Error) -> bool {
    use std::io::ErrorKind;
    match error {
        fjall::Error::Locked => true,
        fjall::Error::Io(e) => matches!(
            e.kind(),
            ErrorKind::StorageFull
                | ErrorKind::QuotaExceeded
                | ErrorKind::ReadOnlyFilesystem
                | ErrorKind::PermissionDenied
        ),
        _ => false,
    }
}

/// Opens the database in `dir`, and says whether it started afresh. Files fjall cannot read
/// are moved aside to `cache.damaged` and an empty store started; a failure of the disk (full,
/// read-only) is returned as is, for a later attempt.
fn open_fjall(dir: &Path, memory: FjallMemory, metrics: &Metrics) -> Result<(Fjall, bool), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut started_afresh = false;
    let db = match memory.apply(Database::builder(dir)).open() {
        Ok(db) => db,
        Err(first) if is_the_disk(&first) => return Err(first.to_string()),
        Err(first) => {
            // A store that cannot be recovered (a damaged journal after a crash or a bad
            // disk) is moved aside and started afresh, rather than keeping the gateway down.
            // Only the latest damaged copy is kept.
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
            started_afresh = true;
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
    Ok((Fjall { db, data }, started_afresh))
}

/// Closes the database in `slot` and opens it again on the same files. Ok(true) when the
/// files were damaged and an empty store was started instead.
fn reopen(
    slot: &RwLock<Option<Fjall>>,
    dir: &Path,
    memory: FjallMemory,
    metrics: &Metrics,
) -> Result<bool, String> {
    let mut slot = slot.write().map_err(|e| e.to_string())?;
    // The old handle holds fjall's lock file: it must be gone before the files are opened.
    drop(slot.take());
    let (fjall, started_afresh) = open_fjall(dir, memory, metrics)?;
    *slot = Some(fjall);
    Ok(started_afresh)
}

impl Store for DiskStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        async move {
            if !self.index.contains_key(key) {
                return Ok(None);
            }
            // While a reopen is under way: a miss.
            let Some(read) = self.with_data(|data| data.get(key.as_bytes())) else { return Ok(None) };
            let value = match read {
                Ok(Some(v)) => v,
                Ok(None) => {
                    self.index.invalidate(key);
                    return Ok(None);
                }
                Err(e) => {
                    // A checksum or read error for this key: drop it and answer a miss.
                    self.failures.corrupt("dropped an unreadable disk entry", &e.to_string());
                    self.index.invalidate(key);
                    self.with_data(|data| data.remove(key.as_bytes()));
                    return Ok(None);
                }
            };
            if codec::unframe(&value).is_err() {
                self.failures.corrupt("dropped a corrupted disk entry", key);
                self.index.invalidate(key);
                self.with_data(|data| data.remove(key.as_bytes()));
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
            match self.with_data(|data| data.insert(key.as_bytes(), value.as_ref())) {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(self.failed("write", e.to_string())),
                None => return Err(self.failed("write", "the store is being reopened".into())),
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
            match self.with_data(|data| data.remove(key.as_bytes())) {
                Some(result) => result.map_err(|e| self.failed("delete", e.to_string())),
                None => Err(self.failed("delete", "the store is being reopened".into())),
            }
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
            let attempts = self.recovery.lock().map_or(0, |r| r.attempts);
            Health::Degraded(format!(
                "disk store in {} is failing; serving from memory; reopen attempts so far: {attempts}",
                self.dir.display()
            ))
        } else {
            Health::Ok
        }
    }

    fn maintain(&self) -> BoxFuture<'_, ()> {
        async move {
            self.index.run_pending_tasks();
            self.recover_if_due().await;
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        let db = self.fjall.read().ok().and_then(|slot| slot.as_ref().map(|fjall| fjall.db.clone()));
        async move {
            let Some(db) = db else { return };
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
        if let Ok(slot) = self.fjall.read() {
            if let Some(fjall) = slot.as_ref() {
                let _ = fjall.db.persist(fjall::PersistMode::SyncAll);
            }
        }
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
        let on_disk = store.with_data(|data| data.iter().count()).unwrap();
        assert!(on_disk < 100, "evicted keys are deleted from disk too ({on_disk} left)");
    }

    #[test]
    fn a_full_or_read_only_disk_is_retried_while_damaged_files_are_moved_aside() {
        use std::io::{Error, ErrorKind};
        for kind in [ErrorKind::StorageFull, ErrorKind::ReadOnlyFilesystem, ErrorKind::PermissionDenied] {
            assert!(is_the_disk(&fjall::Error::Io(Error::from(kind))), "{kind:?}");
        }
        assert!(is_the_disk(&fjall::Error::Locked));
        assert!(!is_the_disk(&fjall::Error::Io(Error::from(ErrorKind::UnexpectedEof))));
        assert!(!is_the_disk(&fjall::Error::Unrecoverable));
    }

    #[test]
    fn reopen_attempts_back_off_to_a_minute() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60, 60, 60]);
    }

    #[tokio::test]
    async fn a_corrupted_value_is_dropped_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let store = DiskStore::open(dir.path(), 1 << 20, Arc::clone(&metrics)).unwrap();
        let mut damaged = framed("payload", Duration::from_secs(60)).to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        store.with_data(|data| data.insert("bad", damaged)).unwrap().unwrap();
        store
            .index
            .insert("bad".into(), Meta { size: 10, expires_at: SystemTime::now() + Duration::from_secs(60) });
        assert!(store.get("bad").await.unwrap().is_none());
        assert!(store.with_data(|data| data.get("bad")).unwrap().unwrap().is_none(), "deleted from disk");
    }
}
