//! The response cache's rules: how a request becomes a key, what an entry holds, and when an
//! entry may be served. Storage lives in [`crate::store`]; the request path that uses these
//! rules lives in [`crate::pipeline`].

pub(crate) mod entry;
pub(crate) mod etag;
pub mod key;
pub(crate) mod policy;

pub use entry::{BodyUrls, CachedResponse};
pub use key::CacheKey;
pub use policy::Freshness;

/// How an answer came about; sent to clients as `x-ghgate-cache` and counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    /// Served from a fresh entry; upstream not asked.
    Hit,
    /// Fetched from upstream (and stored when storable).
    Miss,
    /// A stale entry revalidated upstream with a free 304.
    Revalidated,
    /// A stale entry served without a successful upstream answer.
    Stale,
    /// Shared the answer of a concurrent identical request.
    Coalesced,
    /// Answered from the negative cache.
    Negative,
    /// Not cacheable: passed through.
    Bypass,
}

impl Outcome {
    /// Every outcome, for pre-registering metrics.
    pub(crate) const ALL: [Outcome; 7] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Revalidated,
        Outcome::Stale,
        Outcome::Coalesced,
        Outcome::Negative,
        Outcome::Bypass,
    ];

    /// Whether the answer needed no paid upstream request (what the hit ratio counts).
    pub(crate) fn served_locally(self) -> bool {
        matches!(
            self,
            Outcome::Hit | Outcome::Revalidated | Outcome::Stale | Outcome::Coalesced | Outcome::Negative
        )
    }

    /// The `x-ghgate-cache` value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Revalidated => "REVALIDATED",
            Outcome::Stale => "STALE",
            Outcome::Coalesced => "COALESCED",
            Outcome::Negative => "NEGATIVE",
            Outcome::Bypass => "BYPASS",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A value per outcome, indexed without hashing (the hit path uses it).
#[derive(Debug, Clone)]
pub(crate) struct PerOutcome<T>([T; 7]);

impl<T> PerOutcome<T> {
    /// Builds one value per outcome.
    pub(crate) fn new(mut make: impl FnMut(Outcome) -> T) -> Self {
        PerOutcome(Outcome::ALL.map(&mut make))
    }

    /// The value of `outcome`.
    pub(crate) fn get(&self, outcome: Outcome) -> &T {
        &self.0[outcome.index()]
    }
}
