//! Bodies stored once in the backend: an answer record (`r:…`) names its body by digest, and
//! the body lives under `b:<digest>` with a count of the records naming it under
//! `n:<digest>`, so N partitions holding one body cost about one body on disk or in Redis.
//!
//! The count is kept as records come and go through this process ([`SharedBodies::hold`],
//! [`SharedBodies::release`]); when it reaches zero the body is deleted. Records that expire
//! or are evicted by the backend do not count down, so every body and count also carries a
//! TTL past the longest record that named it: a missed release costs bytes until then, never
//! a wrong answer (a record whose body is gone reads as a miss). On disk the counts survive
//! restarts with the rest of the store; in Redis they are bounded by their TTLs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{Store, StoreError, codec};

/// Bodies at least this long are stored apart; smaller ones stay inline (a key of their own
/// would cost more than the bytes).
pub(crate) const SHARED_BODY_MIN: usize = 1024;

/// Extra time a body and its count are kept past the record that last named them, so that
/// refreshes of long-lived entries rewrite them rarely.
const MARGIN: Duration = Duration::from_secs(3600);

/// Bodies this process has written recently, with the expiry written (bounded by count).
const REMEMBERED: usize = 100_000;

/// The backend's shared bodies, as this process writes and reads them.
pub(crate) struct SharedBodies {
    written: quick_cache::sync::Cache<[u8; 16], SystemTime>,
}

impl Default for SharedBodies {
    fn default() -> Self {
        SharedBodies { written: quick_cache::sync::Cache::new(REMEMBERED) }
    }
}

fn count_key(digest: &[u8; 16]) -> String {
    format!("n:{}", hex::encode(digest))
}

impl SharedBodies {
    /// Makes sure `body` is stored until at least `ttl` from now, and counts one more record
    /// naming it (`new_record`: false when the record already named this body).
    pub(crate) async fn hold(
        &self,
        backend: &Arc<dyn Store>,
        digest: &[u8; 16],
        body: &Bytes,
        ttl: Duration,
        new_record: bool,
    ) -> Result<(), StoreError> {
        let wanted = SystemTime::now() + ttl;
        let keep = ttl + MARGIN;
        let known = self.written.get(digest);
        if known.is_none_or(|until| until < wanted) {
            backend.put_expiring(&codec::body_key(digest), body, keep).await?;
            self.written.insert(*digest, SystemTime::now() + keep);
            // Keep the count as long as the body.
            backend.add(&count_key(digest), i64::from(new_record), keep).await?;
        } else if new_record {
            backend.add(&count_key(digest), 1, keep).await?;
        }
        Ok(())
    }

    /// Counts one record fewer naming the body; the last one deletes it.
    pub(crate) async fn release(
        &self,
        backend: &Arc<dyn Store>,
        digest: &[u8; 16],
    ) -> Result<(), StoreError> {
        let left = backend.add(&count_key(digest), -1, Duration::ZERO).await?;
        if left <= 0 {
            self.written.remove(digest);
            backend.remove(&codec::body_key(digest)).await?;
            backend.remove(&count_key(digest)).await?;
        }
        Ok(())
    }

    /// The body named `digest`, if it is stored, whole and what its name says.
    pub(crate) async fn read(
        &self,
        backend: &Arc<dyn Store>,
        digest: &[u8; 16],
        len: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let Some(live) = backend.get_live(&codec::body_key(digest)).await? else { return Ok(None) };
        let body = live.payload;
        Ok((body.len() as u64 == len && super::digest(&body) == *digest).then_some(body))
    }
}
