//! Bodies held once in memory, whichever partitions' entries hold them.
//!
//! A fleet of credentials reading the same repositories stores one entry per partition, and
//! with computed validators (see `cache::etag`) those entries hold the same bytes. The memory
//! tier interns every body by its SHA-256: entries with equal bodies share one allocation, and
//! the pool counts each distinct live body once ([`BodyPool::bytes`]), so the memory tier's
//! bound covers entries' own bytes plus this count. A body is freed when the last entry
//! holding it goes (the pool keeps only a weak reference).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// The interning pool.
#[derive(Default)]
pub(crate) struct BodyPool {
    inner: Arc<PoolInner>,
}

#[derive(Default)]
struct PoolInner {
    live: Mutex<HashMap<[u8; 16], Weak<Held>>>,
    bytes: AtomicU64,
    count: AtomicU64,
}

/// One distinct body, alive while any entry holds it.
struct Held {
    data: Bytes,
    digest: [u8; 16],
    pool: Weak<PoolInner>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else { return };
        pool.bytes.fetch_sub(self.data.len() as u64, Ordering::Relaxed);
        pool.count.fetch_sub(1, Ordering::Relaxed);
        let mut live = pool.live.lock().expect("body pool poisoned");
        // Another body with this digest may have been interned since this one died.
        if live.get(&self.digest).is_some_and(|weak| weak.strong_count() == 0) {
            live.remove(&self.digest);
        }
    }
}

/// What a pooled `Bytes` owns: a share of one [`Held`] body.
struct Share(Arc<Held>);

impl AsRef<[u8]> for Share {
    fn as_ref(&self) -> &[u8] {
        &self.0.data
    }
}

impl BodyPool {
    /// The pooled copy of `body`: the one already held when an entry holds equal bytes,
    /// otherwise `body` itself, now pooled. Only pooled bodies may be kept by the memory tier
    /// (the pool's count is what bounds them).
    pub(crate) fn intern(&self, body: &Bytes) -> Bytes {
        self.intern_named(body, super::digest(body))
    }

    /// [`BodyPool::intern`] for a body whose [`super::digest`] the caller has already.
    pub(crate) fn intern_named(&self, body: &Bytes, digest: [u8; 16]) -> Bytes {
        let mut live = self.inner.live.lock().expect("body pool poisoned");
        let colliding = match live.get(&digest).and_then(Weak::upgrade) {
            Some(held) if held.data == *body => return Bytes::from_owner(Share(held)),
            other => other,
        };
        let held = Arc::new(Held { data: body.clone(), digest, pool: Arc::downgrade(&self.inner) });
        self.inner.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        live.insert(digest, Arc::downgrade(&held));
        drop(live);
        // Dropped outside the lock: it may be the last holder, whose drop takes the lock.
        drop(colliding);
        Bytes::from_owner(Share(held))
    }

    /// Bytes of the distinct bodies alive now.
    pub(crate) fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// Distinct bodies alive now.
    #[cfg(test)]
    fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_bodies_share_one_allocation_until_the_last_holder_goes() {
        let pool = BodyPool::default();
        let a = pool.intern(&Bytes::from(vec![7u8; 1000]));
        let b = pool.intern(&Bytes::from(vec![7u8; 1000]));
        assert_eq!(a.as_ptr(), b.as_ptr(), "one allocation");
        assert_eq!((pool.bytes(), pool.count()), (1000, 1));
        let c = pool.intern(&Bytes::from_static(b"other"));
        assert_eq!((pool.bytes(), pool.count()), (1005, 2));
        drop(a);
        assert_eq!(pool.bytes(), 1005, "b still holds it");
        drop(b);
        assert_eq!((pool.bytes(), pool.count()), (5, 1), "freed with its last holder");
        let again = pool.intern(&Bytes::from(vec![7u8; 1000]));
        assert_eq!(again.len(), 1000);
        assert_eq!(pool.bytes(), 1005);
        drop((c, again));
        assert_eq!((pool.bytes(), pool.count()), (0, 0));
        assert!(pool.inner.live.lock().unwrap().is_empty());
    }
}
