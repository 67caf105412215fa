//! What ghgate knows about GitHub itself: its error shape, its rate-limit headers and its
//! media types. Kept in one place so the pipeline reads as HTTP, not as GitHub trivia.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Where gateway-made errors point for more help.
pub const DOCUMENTATION_URL: &str = "https://docs.github.com/rest";

/// The media type GitHub answers with when a client asks for nothing in particular.
pub const DEFAULT_MEDIA_TYPE: &str = "application/vnd.github+json";

/// The REST API version GitHub assumes when a client does not send `X-GitHub-Api-Version`.
pub const DEFAULT_API_VERSION: &str = "2022-11-28";

/// The header clients use to pick an API version; answers differ by version.
pub const API_VERSION_HEADER: HeaderName = HeaderName::from_static("x-github-api-version");

/// Rate-limit headers, in the order GitHub sends them.
pub const RATE_LIMIT_HEADERS: [HeaderName; 5] = [
    HeaderName::from_static("x-ratelimit-limit"),
    HeaderName::from_static("x-ratelimit-remaining"),
    HeaderName::from_static("x-ratelimit-reset"),
    HeaderName::from_static("x-ratelimit-used"),
    HeaderName::from_static("x-ratelimit-resource"),
];

/// Builds an answer in GitHub's error shape, so clients' error handling keeps working when
/// the gateway (not GitHub) is the one saying no.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "message": message, "documentation_url": DOCUMENTATION_URL });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    response
}

/// Reduces an `Accept` header to the form that decides which representation GitHub sends:
/// every spelling of "default JSON" becomes the empty string; anything else is lowercased
/// with spaces removed.
///
/// Octokit sends `application/vnd.github.v3+json`, octocrab nothing, `gh` an empty value and
/// PyGithub `*/*`; all of them get the same answer and should share one cache entry.
pub fn normalize_accept(accept: Option<&HeaderValue>) -> String {
    let Some(value) = accept.and_then(|v| v.to_str().ok()) else { return String::new() };
    let compact: String =
        value.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    let is_default = |t: &str| {
        matches!(
            t,
            "" | "*/*"
                | "application/json"
                | "application/vnd.github+json"
                | "application/vnd.github.v3+json"
                | "application/vnd.github.json"
                | "application/vnd.github.v3"
        )
    };
    if compact.split(',').all(is_default) { String::new() } else { compact }
}

/// The rate-limit state GitHub reported for one credential and resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// `x-ratelimit-limit`
    pub limit: u64,
    /// `x-ratelimit-remaining`
    pub remaining: u64,
    /// `x-ratelimit-used`
    pub used: u64,
    /// `x-ratelimit-reset`, epoch seconds.
    pub reset: u64,
    /// `x-ratelimit-resource` (`core`, `search`, ...).
    pub resource: String,
}

impl RateLimit {
    /// Reads the headers of an upstream answer; `None` when GitHub sent none.
    pub fn from_headers(headers: &HeaderMap) -> Option<RateLimit> {
        let num = |i: usize| -> Option<u64> {
            headers.get(&RATE_LIMIT_HEADERS[i])?.to_str().ok()?.trim().parse().ok()
        };
        let limit = num(0)?;
        let remaining = num(1)?;
        let reset = num(2).unwrap_or(0);
        let used = num(3).unwrap_or(limit.saturating_sub(remaining));
        let resource =
            headers.get(&RATE_LIMIT_HEADERS[4]).and_then(|v| v.to_str().ok()).unwrap_or("core").to_string();
        Some(RateLimit { limit, remaining, used, reset, resource })
    }

    /// Writes these values over whatever rate-limit headers `headers` carries.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let numbers = [self.limit, self.remaining, self.reset, self.used];
        for (name, value) in RATE_LIMIT_HEADERS.iter().zip(numbers) {
            headers.insert(name.clone(), HeaderValue::from(value));
        }
        if let Ok(v) = HeaderValue::from_str(&self.resource) {
            headers.insert(RATE_LIMIT_HEADERS[4].clone(), v);
        }
    }

    /// Whether this snapshot is for a window that has already reset.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        self.reset != 0 && self.reset < now
    }
}

/// The rate-limit resource an answer was charged to, from its headers (`core` if unsaid).
pub fn resource_of(headers: &HeaderMap) -> &str {
    headers.get(&RATE_LIMIT_HEADERS[4]).and_then(|v| v.to_str().ok()).unwrap_or("core")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn every_spelling_of_default_json_is_one_key() {
        assert_eq!(normalize_accept(None), "");
        assert_eq!(normalize_accept(Some(&hv(""))), "");
        assert_eq!(normalize_accept(Some(&hv("*/*"))), "");
        assert_eq!(normalize_accept(Some(&hv("application/vnd.github.v3+json"))), "");
        assert_eq!(normalize_accept(Some(&hv("application/vnd.github+json"))), "");
        assert_eq!(normalize_accept(Some(&hv("application/json, */*"))), "");
    }

    #[test]
    fn other_media_types_stay_apart() {
        let raw = normalize_accept(Some(&hv("application/vnd.github.raw")));
        let diff = normalize_accept(Some(&hv("application/vnd.github.v3.diff")));
        assert_eq!(raw, "application/vnd.github.raw");
        assert_ne!(raw, diff);
        assert_eq!(normalize_accept(Some(&hv("Application/VND.github.RAW"))), raw);
    }

    #[test]
    fn rate_limit_headers_round_trip() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", hv("5000"));
        h.insert("x-ratelimit-remaining", hv("4990"));
        h.insert("x-ratelimit-reset", hv("1700000000"));
        let rl = RateLimit::from_headers(&h).unwrap();
        assert_eq!((rl.used, rl.resource.as_str()), (10, "core"));
        let mut out = HeaderMap::new();
        rl.apply(&mut out);
        assert_eq!(out["x-ratelimit-remaining"], "4990");
        assert_eq!(out["x-ratelimit-used"], "10");
        assert!(RateLimit::from_headers(&HeaderMap::new()).is_none());
    }
}
