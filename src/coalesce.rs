//! Coalescing: concurrent requests for one key share one piece of upstream work.
//!
//! The leader's work runs in a spawned task whose output is shared (`futures::Shared`), so a
//! client that disconnects does not cancel the fill for everyone else, and followers receive
//! the leader's error as well as its success. The task removes its own key when done, so a
//! cancelled leader can never leave a key stuck.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// Whether a caller started the work or joined it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started the work.
    Leader,
    /// Joined work already under way.
    Follower,
}

/// The work panicked; nobody gets its output.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("coalesced work panicked")]
pub struct Panicked;

type Flight<T> = Shared<BoxFuture<'static, Result<T, Panicked>>>;

/// In-flight work, keyed.
pub struct Coalescer<K, T: Clone> {
    inflight: Arc<Mutex<HashMap<K, Flight<T>>>>,
}

impl<K, T: Clone> Default for Coalescer<K, T> {
    fn default() -> Self {
        Self { inflight: Arc::new(Mutex::new(HashMap::new())) }
    }
}

impl<K, T> Coalescer<K, T>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// Joins the work under `key`, or starts it with `work` when none is under way.
    ///
    /// The returned future may be dropped: the work goes on and its result reaches whoever
    /// else joined.
    pub fn join<F>(&self, key: K, work: F) -> (Flight<T>, Role)
    where
        F: FnOnce() -> BoxFuture<'static, T>,
    {
        let mut inflight = self.inflight.lock().expect("coalescer lock poisoned");
        if let Some(flight) = inflight.get(&key) {
            return (flight.clone(), Role::Follower);
        }
        let map = Arc::clone(&self.inflight);
        let task_key = key.clone();
        let fut = work();
        let handle = tokio::spawn(async move {
            let out = fut.await;
            map.lock().expect("coalescer lock poisoned").remove(&task_key);
            out
        });
        let inflight_map = Arc::clone(&self.inflight);
        let panic_key = key.clone();
        let flight = async move {
            handle.await.map_err(|_| {
                // The task died before removing its key; do it here.
                inflight_map.lock().expect("coalescer lock poisoned").remove(&panic_key);
                Panicked
            })
        }
        .boxed()
        .shared();
        inflight.insert(key, flight.clone());
        (flight, Role::Leader)
    }

    /// How many pieces of work are under way.
    pub fn len(&self) -> usize {
        self.inflight.lock().expect("coalescer lock poisoned").len()
    }
}

/// Work under way per key that others do not share but wait for: the first fetch of a
/// variant, whose body later fetches of the same variant by other partitions can offer
/// GitHub by computed ETag (see `cache::etag`) instead of each paying for it at once.
#[derive(Default)]
pub struct Pioneers {
    under_way: Mutex<HashMap<String, tokio::sync::watch::Receiver<()>>>,
}

/// Held by the pioneer of a key while its work runs; dropping it (done, failed or cancelled)
/// releases every waiter.
pub struct Pioneering<'a> {
    pioneers: &'a Pioneers,
    key: String,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Pioneering<'_> {
    fn drop(&mut self) {
        self.pioneers.under_way.lock().expect("pioneers lock poisoned").remove(&self.key);
    }
}

impl Pioneers {
    /// Becomes the pioneer of `key` (`Ok`, hold the guard while working), or waits up to
    /// `patience` for the one under way to finish (`Err(())` afterwards, pioneer or not).
    pub async fn lead_or_wait(&self, key: &str, patience: std::time::Duration) -> Result<Pioneering<'_>, ()> {
        let waiting = {
            let mut under_way = self.under_way.lock().expect("pioneers lock poisoned");
            match under_way.get(key) {
                Some(receiver) => receiver.clone(),
                None => {
                    let (done, receiver) = tokio::sync::watch::channel(());
                    under_way.insert(key.to_string(), receiver);
                    return Ok(Pioneering { pioneers: self, key: key.to_string(), _done: done });
                }
            }
        };
        let mut waiting = waiting;
        // The sender is dropped when the pioneer finishes: `changed` then returns an error.
        let _ = tokio::time::timeout(patience, async { while waiting.changed().await.is_ok() {} }).await;
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let c: Arc<Coalescer<String, usize>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut joins = Vec::new();
        let mut leaders = 0;
        for _ in 0..50 {
            let runs = Arc::clone(&runs);
            let (flight, role) = c.join("k".into(), move || {
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    runs.fetch_add(1, Ordering::SeqCst) + 41
                }
                .boxed()
            });
            leaders += usize::from(role == Role::Leader);
            joins.push(flight);
        }
        for j in joins {
            assert_eq!(j.await.unwrap(), 41);
        }
        assert_eq!((runs.load(Ordering::SeqCst), leaders), (1, 1));
        assert_eq!(c.len(), 0);
    }

    #[tokio::test]
    async fn a_dropped_leader_does_not_cancel_the_work() {
        let c: Arc<Coalescer<String, u8>> = Arc::default();
        let (leader, _) = c.join("k".into(), || {
            async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                7
            }
            .boxed()
        });
        let (follower, role) = c.join("k".into(), || async { 0 }.boxed());
        drop(leader);
        assert_eq!(role, Role::Follower);
        assert_eq!(follower.await.unwrap(), 7);
    }

    #[tokio::test]
    async fn followers_of_a_pioneer_wait_until_it_is_done() {
        let pioneers = Arc::new(Pioneers::default());
        let guard = pioneers.lead_or_wait("v", Duration::from_secs(5)).await.unwrap();
        let waiter = {
            let pioneers = Arc::clone(&pioneers);
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                assert!(pioneers.lead_or_wait("v", Duration::from_secs(5)).await.is_err());
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(guard);
        let waited = waiter.await.unwrap();
        assert!(waited >= Duration::from_millis(90) && waited < Duration::from_secs(2), "{waited:?}");
        // Done: the next one leads again.
        assert!(pioneers.lead_or_wait("v", Duration::from_secs(5)).await.is_ok());
        // Impatient waiters stop waiting.
        let _guard = pioneers.lead_or_wait("w", Duration::from_secs(5)).await.unwrap();
        let started = std::time::Instant::now();
        assert!(pioneers.lead_or_wait("w", Duration::from_millis(50)).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_panic_reaches_every_caller_and_frees_the_key() {
        let c: Arc<Coalescer<String, u8>> = Arc::default();
        let (a, _) = c.join("k".into(), || async { panic!("boom") }.boxed());
        let (b, _) = c.join("k".into(), || async { 0 }.boxed());
        assert!(a.await.is_err());
        assert!(b.await.is_err());
        assert_eq!(c.len(), 0);
    }
}
