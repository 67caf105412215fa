//! Phase 3, look up: for a cacheable read, the stored entry of its key — served at once when
//! fresh, served stale while one fill refreshes it in the background when the entry allows,
//! and otherwise handed on (as the prior entry a conditional request revalidates).

use std::sync::Arc;
use std::time::SystemTime;

use axum::response::Response;
use futures::FutureExt;
use http::header::{CACHE_CONTROL, PRAGMA};
use http::request::Parts;
use http::{HeaderMap, HeaderName, Method};

use super::fill::coalesce_key;
use super::{Gateway, RequestCtx};
use crate::cache::{CacheKey, CachedResponse, Outcome};

/// What the look-up found.
pub(super) enum LookUp {
    /// A fresh (or stale-while-revalidate) entry answered.
    Answered(Response, Outcome),
    /// Nothing usable as it is: the entry to revalidate, if any.
    Miss(Option<Arc<CachedResponse>>),
}

impl Gateway {
    /// Whether a request may be answered from the cache at all.
    pub(super) fn is_cacheable(&self, parts: &Parts) -> bool {
        let cache = &self.settings.cache;
        cache.enabled
            && (parts.method == Method::GET || parts.method == Method::HEAD)
            && !cache.bypass_paths.iter().any(|p| path_has_prefix(parts.uri.path(), p))
            && !parts.headers.contains_key(http::header::RANGE)
            && !directive_present(&parts.headers, CACHE_CONTROL, "no-store")
    }

    /// Phase 3: the entry of `key`, and whether it answers the request now.
    pub(super) async fn look_up(self: &Arc<Self>, ctx: &RequestCtx, key: &CacheKey) -> LookUp {
        let headers = &ctx.parts.headers;
        // A store failure is a miss; the backend has counted and logged it.
        let entry = self.responses.get(&key.key).await.ok().flatten().filter(|e| e.vary_matches(headers));
        let Some(entry) = entry else { return LookUp::Miss(None) };
        if self.invalidation.is_marked_stale(&entry) || client_wants_revalidation(headers) {
            return LookUp::Miss(Some(entry));
        }
        let now = SystemTime::now();
        if entry.is_fresh(now) || self.invalidation.fresh_by_webhook_coverage(&entry, now) {
            return LookUp::Answered(self.entry_response(ctx, &entry, now), Outcome::Hit);
        }
        if entry.within_stale_while_revalidate(now) {
            let request = self.fill_request(key.clone(), ctx, Some(Arc::clone(&entry)));
            let coalesce_key = coalesce_key(&request.key, headers);
            let me = Arc::clone(self);
            drop(self.fills.join(coalesce_key, move || me.fill_once(request).boxed()));
            return LookUp::Answered(self.entry_response(ctx, &entry, now), Outcome::Stale);
        }
        LookUp::Miss(Some(entry))
    }
}

/// Whether a path is under a `cache.bypass_paths` prefix (whole segments only).
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'))
}

/// Whether the request's `Cache-Control` (or `Pragma`) holds a directive.
fn directive_present(headers: &HeaderMap, name: HeaderName, directive: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().split('=').next().is_some_and(|n| n.trim().eq_ignore_ascii_case(directive)))
}

/// `no-cache`, `max-age=0` or `Pragma: no-cache` from a client means "revalidate" — which is
/// free upstream — not "bypass". Node adds them to every conditional request.
fn client_wants_revalidation(headers: &HeaderMap) -> bool {
    directive_present(headers, CACHE_CONTROL, "no-cache")
        || directive_present(headers, PRAGMA, "no-cache")
        || headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("max-age=0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn revalidation_requests_are_recognised() {
        let mut h = HeaderMap::new();
        assert!(!client_wants_revalidation(&h));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        assert!(client_wants_revalidation(&h));
        let mut h = HeaderMap::new();
        h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(client_wants_revalidation(&h));
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
        assert!(client_wants_revalidation(&h));
    }

    #[test]
    fn bypass_prefixes_match_whole_segments() {
        assert!(path_has_prefix("/rate_limit", "/rate_limit"));
        assert!(path_has_prefix("/graphql/x", "/graphql"));
        assert!(!path_has_prefix("/rate_limits", "/rate_limit"));
    }
}
