//! Where cached answers live. The pipeline knows only the [`Store`] trait; which backend sits
//! behind it is decided once, by [`from_settings`], from the configuration.

mod memory;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::cache::CachedResponse;
use crate::config::{StoreBackend, StoreSettings};

pub use memory::MemoryStore;

/// A failure of the store itself (not a miss). The pipeline treats it as a miss, counts it
/// and carries on: a store outage degrades to pass-through, never to an error for clients.
#[derive(Debug, thiserror::Error)]
#[error("store error: {0}")]
pub struct StoreError(pub String);

/// A key-value store for cached answers, bounded in size by its backend.
pub trait Store: Send + Sync + 'static {
    /// The entry under `key`, if present and not expired.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Arc<CachedResponse>>, StoreError>>;

    /// Stores `entry` under `key`, to be forgotten after `ttl`.
    fn put(
        &self,
        key: String,
        entry: Arc<CachedResponse>,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Forgets `key`.
    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Runs pending housekeeping (evictions, size accounting) so that the sizes below are
    /// current; called before metrics are rendered and every few seconds.
    fn maintain(&self) -> BoxFuture<'_, ()>;

    /// Bytes held now (approximate, as weighed by the backend).
    fn size_bytes(&self) -> u64;

    /// Entries held now.
    fn entry_count(&self) -> u64;

    /// The configured upper bound in bytes.
    fn max_bytes(&self) -> u64;

    /// A human description of where the data lives, for logs and the status page.
    fn location(&self) -> String;
}

/// Builds the configured backend.
pub fn from_settings(store: &StoreSettings, max_bytes: u64) -> Arc<dyn Store> {
    match store.backend {
        StoreBackend::Memory => Arc::new(MemoryStore::new(max_bytes)),
    }
}
