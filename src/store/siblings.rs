//! Which partitions hold a body for one representation: for each variant (path, query,
//! normalised `Accept`, API version — a cache key without its partition), the keys of the
//! entries holding its most recent distinct bodies. A miss or revalidation in one partition
//! offers those bodies to GitHub by computed ETag (see [`crate::cache::etag`]).
//!
//! The index is a hint: a key it names may have been evicted or replaced since (the reader
//! then finds nothing, or another body, and offers what it finds). It lives in memory (bounded
//! by count) and, with a shared backend (Redis), under `s:<hash of the variant>` as well, so
//! replicas see each other's bodies. A disk store does not keep it: after a restart it fills
//! again as entries are fetched or revalidated. Writers race (read, merge, write); a lost
//! update costs one paid answer, never a wrong one.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Store;

/// Distinct bodies remembered per variant.
pub(crate) const KEPT_PER_VARIANT: usize = 3;

/// Variants remembered in memory (each holds at most [`KEPT_PER_VARIANT`] keys, ~300 bytes).
const MEMORY_VARIANTS: usize = 100_000;

/// One entry holding a body of a variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Holder {
    /// The full cache key of the entry.
    pub key: String,
    /// The first 16 bytes of the body's SHA-256: two holders with one digest hold one body.
    pub digest: [u8; 16],
}

/// The index: memory, plus the backend when there is one.
pub(crate) struct Siblings {
    memory: quick_cache::sync::Cache<String, Arc<[Holder]>>,
    backend: Option<Arc<dyn Store>>,
}

impl Siblings {
    /// An index in memory, mirrored into `backend` when other replicas share it.
    pub(crate) fn new(backend: Option<Arc<dyn Store>>) -> Siblings {
        let backend = backend.filter(|b| b.is_shared());
        Siblings { memory: quick_cache::sync::Cache::new(MEMORY_VARIANTS), backend }
    }

    fn backend_key(variant: &str) -> String {
        format!("s:{}", hex::encode(&Sha256::digest(variant.as_bytes())[..16]))
    }

    /// The holders of `variant`, most recent first. The shared backend is asked first (other
    /// replicas record there); memory answers without one, or when it fails.
    pub(crate) async fn of(&self, variant: &str) -> Vec<Holder> {
        let from_backend = match &self.backend {
            Some(backend) => self.read_backend(backend, variant).await,
            None => None,
        };
        match from_backend {
            Some(holders) => holders,
            None => self.memory.get(variant).map(|h| h.to_vec()).unwrap_or_default(),
        }
    }

    /// Records that `key` now holds `body` for `variant`, keeping the most recent holder of
    /// each of the [`KEPT_PER_VARIANT`] most recent distinct bodies. `keep_for` bounds how
    /// long the backend keeps the record.
    pub(crate) async fn record(&self, variant: &str, key: &str, body: &[u8], keep_for: Duration) {
        let holder = Holder { key: key.to_string(), digest: super::digest(body) };
        let known = self.of(variant).await;
        if known.first() == Some(&holder) {
            return;
        }
        let mut holders = vec![holder];
        for old in known {
            if holders.len() == KEPT_PER_VARIANT {
                break;
            }
            if old.key != holders[0].key && !holders.iter().any(|h| h.digest == old.digest) {
                holders.push(old);
            }
        }
        if let Some(backend) = &self.backend {
            let payload = postcard::to_stdvec(&holders).expect("encoding to memory cannot fail");
            // A failure leaves the memory copy; the backend counted and logged it.
            let _ = backend.put_expiring(&Self::backend_key(variant), &payload, keep_for).await;
        }
        self.memory.insert(variant.to_string(), holders.into());
    }

    async fn read_backend(&self, backend: &Arc<dyn Store>, variant: &str) -> Option<Vec<Holder>> {
        let live = backend.get_live(&Self::backend_key(variant)).await.ok()?;
        let Some(live) = live else { return Some(Vec::new()) };
        // An unreadable record is as good as none.
        Some(postcard::from_bytes(&live.payload).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_latest_holder_of_each_recent_distinct_body() {
        let index = Siblings::new(None);
        let keep = Duration::from_secs(60);
        index.record("v", "a", b"one", keep).await;
        index.record("v", "b", b"one", keep).await;
        index.record("v", "c", b"two", keep).await;
        index.record("v", "d", b"three", keep).await;
        index.record("v", "e", b"four", keep).await;
        let keys: Vec<String> = index.of("v").await.into_iter().map(|h| h.key).collect();
        assert_eq!(keys, ["e", "d", "c"], "three distinct bodies, most recent first");
        index.record("v", "c", b"four", keep).await;
        let keys: Vec<String> = index.of("v").await.into_iter().map(|h| h.key).collect();
        assert_eq!(keys, ["c", "d"], "one holder per body; c moved to the newest body");
        assert!(index.of("other").await.is_empty());
    }
}
