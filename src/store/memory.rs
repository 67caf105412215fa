//! The in-process backend: a `moka` cache bounded in bytes, each entry expiring when its
//! answer is no longer worth revalidating.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use moka::Expiry;

use super::{Store, StoreError};
use crate::cache::CachedResponse;

#[derive(Clone)]
struct Stored {
    entry: Arc<CachedResponse>,
    ttl: Duration,
}

struct ByTtl;

impl Expiry<String, Stored> for ByTtl {
    fn expire_after_create(&self, _: &String, value: &Stored, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &Stored,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Bounded in-memory store; lost on restart.
pub struct MemoryStore {
    cache: moka::future::Cache<String, Stored>,
    max_bytes: u64,
}

impl MemoryStore {
    /// A store that holds at most about `max_bytes`, evicting the least useful entries.
    pub fn new(max_bytes: u64) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, value: &Stored| {
                u32::try_from(key.len() + value.entry.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(ByTtl)
            .build();
        Self { cache, max_bytes }
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Arc<CachedResponse>>, StoreError>> {
        async move { Ok(self.cache.get(key).await.map(|s| s.entry)) }.boxed()
    }

    fn put(
        &self,
        key: String,
        entry: Arc<CachedResponse>,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.cache.insert(key, Stored { entry, ttl }).await;
            Ok(())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            self.cache.invalidate(key).await;
            Ok(())
        }
        .boxed()
    }

    fn maintain(&self) -> BoxFuture<'_, ()> {
        self.cache.run_pending_tasks().boxed()
    }

    fn size_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn location(&self) -> String {
        format!("memory (max {} bytes)", self.max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Freshness;
    use bytes::Bytes;
    use std::time::SystemTime;

    fn entry(body_len: usize) -> Arc<CachedResponse> {
        Arc::new(CachedResponse {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: Bytes::from(vec![b'x'; body_len]),
            response_time: SystemTime::now(),
            initial_age: Duration::ZERO,
            freshness: Freshness {
                fresh_for: Duration::from_secs(60),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                keep_stale_for: Duration::from_secs(60),
            },
            vary: vec![],
            path_key: "/x".into(),
            credential_tag: None,
        })
    }

    #[tokio::test]
    async fn stays_within_its_byte_bound() {
        let store = MemoryStore::new(100_000);
        for i in 0..200 {
            store.put(format!("k{i}"), entry(10_000), Duration::from_secs(60)).await.unwrap();
        }
        store.cache.run_pending_tasks().await;
        assert!(store.size_bytes() <= 100_000, "{} bytes held", store.size_bytes());
        assert!(store.entry_count() < 200);
    }

    #[tokio::test]
    async fn entries_expire_after_their_ttl_and_can_be_removed() {
        let store = MemoryStore::new(1 << 20);
        store.put("a".into(), entry(1), Duration::from_millis(50)).await.unwrap();
        store.put("b".into(), entry(1), Duration::from_secs(60)).await.unwrap();
        assert!(store.get("a").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(store.get("a").await.unwrap().is_none());
        store.remove("b").await.unwrap();
        assert!(store.get("b").await.unwrap().is_none());
    }
}
