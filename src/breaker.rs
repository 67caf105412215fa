//! Whether GitHub is failing right now, so that stale entries are served at once instead of
//! each read waiting for an upstream that does not answer.
//!
//! A circuit breaker: [`FAILURES_TO_OPEN`] upstream failures (timeouts, refused or broken
//! connections, or reads that gave up waiting past `cache.stale_if_slow`) within
//! [`FAILURE_WINDOW`] open it for [`OPEN_FOR`]. While it is open, a read
//! with a servable stale entry gets that entry at once (`STALE`), except for one probe per
//! [`OPEN_FOR`] that goes upstream (half-open); any upstream answer closes it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Failures within [`FAILURE_WINDOW`] that open the breaker.
pub(crate) const FAILURES_TO_OPEN: usize = 3;
/// How far back failures count.
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// How long the breaker stays open, and how often it lets a probe through.
pub(crate) const OPEN_FOR: Duration = Duration::from_secs(5);

/// The breaker of one gateway.
pub(crate) struct Breaker {
    started: Instant,
    /// Recent failures, oldest first (at most [`FAILURES_TO_OPEN`]).
    failures: Mutex<Vec<Instant>>,
    /// Milliseconds since `started` until which it is open (0: closed).
    open_until: AtomicU64,
    /// Milliseconds since `started` at which the next probe may go.
    next_probe: AtomicU64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            started: Instant::now(),
            failures: Mutex::new(Vec::new()),
            open_until: AtomicU64::new(0),
            next_probe: AtomicU64::new(0),
        }
    }
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// GitHub did not answer (timeout, connection refused or broken), or not in time for a read
    /// that could be answered stale. Returns true when this failure opened the breaker.
    pub(crate) fn failed(&self) -> bool {
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("breaker poisoned");
        failures.retain(|at| now.duration_since(*at) < FAILURE_WINDOW);
        failures.push(now);
        if failures.len() > FAILURES_TO_OPEN {
            failures.remove(0);
        }
        if failures.len() < FAILURES_TO_OPEN {
            return false;
        }
        let until = self.now_ms() + OPEN_FOR.as_millis() as u64;
        let was = self.open_until.swap(until, Ordering::Relaxed);
        self.next_probe.store(until, Ordering::Relaxed);
        was <= self.now_ms()
    }

    /// GitHub answered (any status). Returns true when this closed the breaker.
    pub(crate) fn answered(&self) -> bool {
        if self.open_until.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.failures.lock().expect("breaker poisoned").clear();
        self.open_until.swap(0, Ordering::Relaxed) != 0
    }

    /// Whether a read with a servable stale entry should get it at once instead of going
    /// upstream: the breaker is open (or was, and no answer has closed it yet) and this read is
    /// not the probe.
    pub(crate) fn serve_stale_now(&self) -> bool {
        if self.open_until.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let now = self.now_ms();
        let probe_at = self.next_probe.load(Ordering::Relaxed);
        if now >= probe_at {
            let next = now + OPEN_FOR.as_millis() as u64;
            if self.next_probe.compare_exchange(probe_at, next, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                return false;
            }
        }
        true
    }

    /// Whether it is open now.
    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_lets_one_probe_through_and_closes_on_an_answer() {
        let breaker = Breaker::default();
        assert!(!breaker.serve_stale_now());
        assert!(!breaker.failed() && !breaker.failed());
        assert!(!breaker.serve_stale_now(), "two failures are not an outage");
        assert!(breaker.failed(), "the third opens it");
        assert!(breaker.is_open());
        assert!(breaker.serve_stale_now() && breaker.serve_stale_now(), "no probe before OPEN_FOR");
        // Once OPEN_FOR has passed, one read probes and the others still get stale answers.
        breaker.next_probe.store(0, Ordering::Relaxed);
        assert!(!breaker.serve_stale_now(), "the probe");
        assert!(breaker.serve_stale_now(), "the rest");
        assert!(breaker.answered(), "an answer closes it");
        assert!(!breaker.is_open() && !breaker.serve_stale_now());
        assert!(!breaker.failed(), "failures count again from zero");
    }
}
