//! How a backend reports its failures — the one place they are counted and logged, so that a
//! store outage is visible (`ghgate_store_errors_total`, a warning) without a log line per
//! request: warnings are rate-limited to one per [`WARNING_INTERVAL`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use super::StoreError;
use crate::telemetry::Metrics;

/// At most one warning per backend this often.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// A backend's failure counter and rate-limited warning.
pub(crate) struct Failures {
    /// Where the backend keeps its data (a directory, a redacted URL), for the log.
    location: String,
    metrics: Arc<Metrics>,
    last_warning: Mutex<Option<Instant>>,
}

impl Failures {
    /// Reports for the backend at `location`.
    pub(crate) fn new(location: String, metrics: Arc<Metrics>) -> Failures {
        Failures { location, metrics, last_warning: Mutex::new(None) }
    }

    /// Counts a failed operation, warns (rate-limited) with `message`, and returns the error
    /// callers treat as a miss.
    pub(crate) fn failed(&self, message: &str, error: String) -> StoreError {
        self.metrics.store_errors.increment(1);
        self.warn(message, &error);
        StoreError(error)
    }

    /// Counts an entry that failed its checksum or could not be read, and drops a warning
    /// (rate-limited).
    pub(crate) fn corrupt(&self, message: &str, detail: &str) {
        self.metrics.store_corrupt.increment(1);
        self.warn(message, detail);
    }

    fn warn(&self, message: &str, error: &str) {
        let mut last = self.last_warning.lock().expect("warning clock poisoned");
        if last.is_none_or(|t| t.elapsed() > WARNING_INTERVAL) {
            *last = Some(Instant::now());
            warn!(store = %self.location, %error, "{message}");
        }
    }
}
