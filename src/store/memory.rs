//! A bounded in-memory byte store: the state backend when `store.backend = "memory"` (for
//! small state such as negative entries; answers live in the response cache's memory tier).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Health, Store, StoreError};

#[derive(Clone)]
struct Value {
    bytes: Bytes,
    ttl: Duration,
}

struct ByTtl;

impl moka::Expiry<String, Value> for ByTtl {
    fn expire_after_create(&self, _: &String, v: &Value, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(
        &self,
        _: &String,
        v: &Value,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// The memory backend.
pub struct MemoryStore {
    cache: moka::sync::Cache<String, Value>,
    max_bytes: u64,
    /// Serialises counter additions.
    counters: tokio::sync::Mutex<()>,
}

impl MemoryStore {
    /// A store holding at most about `max_bytes`.
    pub fn new(max_bytes: u64) -> MemoryStore {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Value| u32::try_from(k.len() + v.bytes.len() + 64).unwrap_or(u32::MAX))
            .expire_after(ByTtl)
            .build();
        MemoryStore { cache, max_bytes, counters: tokio::sync::Mutex::new(()) }
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        async move { Ok(self.cache.get(key).map(|v| v.bytes)) }.boxed()
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            self.cache.insert(key.to_string(), Value { bytes: value, ttl });
            Ok(())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            self.cache.invalidate(key);
            Ok(())
        }
        .boxed()
    }

    fn add<'a>(&'a self, key: &'a str, delta: i64, ttl: Duration) -> BoxFuture<'a, Result<i64, StoreError>> {
        super::add_locally(self, &self.counters, key, delta, ttl).boxed()
    }

    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move { Ok(self.cache.iter().map(|(k, _)| (*k).clone()).filter(|k| k.starts_with(prefix)).collect()) }
            .boxed()
    }

    fn health(&self) -> Health {
        Health::Ok
    }

    fn maintain(&self) -> BoxFuture<'_, ()> {
        async move { self.cache.run_pending_tasks() }.boxed()
    }

    fn size_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    fn location(&self) -> String {
        format!("memory (max {})", crate::config::human_size(self.max_bytes))
    }
}
