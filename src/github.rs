//! What ghgate knows about GitHub itself: its error shape, its rate-limit headers and its
//! media types. Kept in one place so the pipeline reads as HTTP, not as GitHub trivia.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Where gateway-made errors point for more help.
pub(crate) const DOCUMENTATION_URL: &str = "https://docs.github.com/rest";

/// The media type GitHub answers with when a client asks for nothing in particular.
pub(crate) const DEFAULT_MEDIA_TYPE: &str = "application/vnd.github+json";

/// The REST API version GitHub assumes when a client does not send `X-GitHub-Api-Version`.
pub(crate) const DEFAULT_API_VERSION: &str = "2022-11-28";

/// The header clients use to pick an API version; answers differ by version.
pub(crate) const API_VERSION_HEADER: HeaderName = HeaderName::from_static("x-github-api-version");

/// Rate-limit headers, in the order GitHub sends them.
pub(crate) const RATE_LIMIT_HEADERS: [HeaderName; 5] = [
    HeaderName::from_static("x-ratelimit-limit"),
    HeaderName::from_static("x-ratelimit-remaining"),
    HeaderName::from_static("x-ratelimit-reset"),
    HeaderName::from_static("x-ratelimit-used"),
    HeaderName::from_static("x-ratelimit-resource"),
];

/// Builds an answer in GitHub's error shape, so clients' error handling keeps working when
/// the gateway (not GitHub) is the one saying no.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    error_response_with_errors(status, message, &[])
}

/// [`error_response`] with an `errors` list beside the message, as GitHub's validation
/// errors carry (omitted when empty).
pub(crate) fn error_response_with_errors(status: StatusCode, message: &str, errors: &[String]) -> Response {
    let mut body = serde_json::json!({ "message": message, "documentation_url": DOCUMENTATION_URL });
    if !errors.is_empty() {
        body["errors"] = serde_json::json!(errors);
    }
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

/// The `Accept` that goes upstream with a cacheable read: the normalised form the cache key
/// holds, with every spelling of default JSON sent as [`DEFAULT_MEDIA_TYPE`]. GitHub's ETag
/// covers the exact value, so one key must mean one spelling upstream.
pub(crate) fn canonical_accept(accept: Option<&HeaderValue>) -> HeaderValue {
    let normalized = normalize_accept(accept);
    if normalized.is_empty() {
        return HeaderValue::from_static(DEFAULT_MEDIA_TYPE);
    }
    HeaderValue::from_str(&normalized).unwrap_or(HeaderValue::from_static(DEFAULT_MEDIA_TYPE))
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

    /// Whether this snapshot is for a window that has already reset.
    pub(crate) fn is_expired(&self, now: SystemTime) -> bool {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        self.reset != 0 && self.reset < now
    }
}

/// GitHub's own header names. A name parsed off the wire is a reference-counted copy, and a
/// cached answer's headers are copied onto every hit; these names are swapped for static
/// ones when an answer is stored, so copying them costs nothing.
const GITHUB_HEADER_NAMES: [HeaderName; 16] = [
    HeaderName::from_static("x-github-media-type"),
    HeaderName::from_static("x-github-request-id"),
    HeaderName::from_static("x-github-api-version-selected"),
    HeaderName::from_static("x-oauth-scopes"),
    HeaderName::from_static("x-accepted-oauth-scopes"),
    HeaderName::from_static("x-oauth-client-id"),
    HeaderName::from_static("x-ratelimit-limit"),
    HeaderName::from_static("x-ratelimit-remaining"),
    HeaderName::from_static("x-ratelimit-reset"),
    HeaderName::from_static("x-ratelimit-used"),
    HeaderName::from_static("x-ratelimit-resource"),
    HeaderName::from_static("x-frame-options"),
    HeaderName::from_static("x-xss-protection"),
    HeaderName::from_static("x-github-sso"),
    HeaderName::from_static("github-authentication-token-expiration"),
    HeaderName::from_static("x-poll-interval"),
];

/// Header values GitHub sends unchanged on many answers (swapped for static ones like
/// [`GITHUB_HEADER_NAMES`]).
const GITHUB_HEADER_VALUES: [&str; 22] = [
    "application/json; charset=utf-8",
    "github.v3; format=json",
    "github.v3",
    "Accept, Authorization, Cookie, X-GitHub-OTP",
    "Accept-Encoding, Accept, X-Requested-With",
    "private, max-age=60, s-maxage=60",
    "public, max-age=60, s-maxage=60",
    "ETag, Link, Location, Retry-After, X-GitHub-OTP, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Used, X-RateLimit-Resource, X-RateLimit-Reset, X-OAuth-Scopes, X-Accepted-OAuth-Scopes, X-Poll-Interval, X-GitHub-Media-Type, X-GitHub-SSO, X-GitHub-Request-Id, Deprecation, Sunset",
    "*",
    "max-age=31536000; includeSubdomains; preload",
    "deny",
    "nosniff",
    "0",
    "strict-origin-when-cross-origin, origin-when-cross-origin",
    "default-src 'none'",
    "github.com",
    "2022-11-28",
    "core",
    "search",
    "5000",
    "repo",
    "",
];

/// The same header with a static name and value where GitHub's usual ones allow (see
/// [`GITHUB_HEADER_NAMES`]); anything else is returned as it came.
pub fn intern_header(name: HeaderName, value: HeaderValue) -> (HeaderName, HeaderValue) {
    let name = GITHUB_HEADER_NAMES.iter().find(|known| **known == name).cloned().unwrap_or(name);
    let value = match GITHUB_HEADER_VALUES.iter().find(|known| value.as_bytes() == known.as_bytes()) {
        Some(known) if !value.is_sensitive() => HeaderValue::from_static(known),
        _ => value,
    };
    (name, value)
}

/// A [`RateLimit`] with its header values rendered once. The ledger puts an identity's
/// latest values on every answer served from the cache; cloning a rendered value is a
/// reference-count increment where rendering it was an allocation.
#[derive(Debug)]
pub struct RenderedRateLimit {
    limit: RateLimit,
    values: [Option<HeaderValue>; 5],
}

impl From<RateLimit> for RenderedRateLimit {
    fn from(limit: RateLimit) -> Self {
        let values = [
            Some(HeaderValue::from(limit.limit)),
            Some(HeaderValue::from(limit.remaining)),
            Some(HeaderValue::from(limit.reset)),
            Some(HeaderValue::from(limit.used)),
            HeaderValue::from_str(&limit.resource).ok(),
        ];
        RenderedRateLimit { limit, values }
    }
}

impl RenderedRateLimit {
    /// Writes these values over whatever rate-limit headers `headers` carries.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in RATE_LIMIT_HEADERS.iter().zip(&self.values) {
            if let Some(value) = value {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// Equal when the values are: the rendered ones follow from them.
impl PartialEq for RenderedRateLimit {
    fn eq(&self, other: &Self) -> bool {
        self.limit == other.limit
    }
}

impl Eq for RenderedRateLimit {}

impl std::ops::Deref for RenderedRateLimit {
    type Target = RateLimit;
    fn deref(&self) -> &RateLimit {
        &self.limit
    }
}

/// What a 403 from GitHub says, as far as a proxy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// "Bad credentials": the token itself was refused.
    BadCredentials,
    /// A rate limit (`retry-after`, `x-ratelimit-remaining: 0`, or "rate limit" in the text).
    RateLimited,
    /// "Resource not accessible by integration": the token lacks a permission.
    NotAccessible,
    /// Anything else.
    Other,
}

impl Refusal {
    /// Reads a refusal from its headers and body.
    pub(crate) fn of(headers: &HeaderMap, body: &[u8]) -> Refusal {
        let text = String::from_utf8_lossy(body).to_ascii_lowercase();
        let rate_limited = headers.contains_key(http::header::RETRY_AFTER)
            || headers.get("x-ratelimit-remaining").is_some_and(|v| v == "0");
        if text.contains("bad credentials") {
            Refusal::BadCredentials
        } else if rate_limited || text.contains("rate limit") {
            Refusal::RateLimited
        } else if text.contains("not accessible") {
            Refusal::NotAccessible
        } else {
            Refusal::Other
        }
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
        assert!(RateLimit::from_headers(&HeaderMap::new()).is_none());
        let mut out = HeaderMap::new();
        out.insert("x-ratelimit-remaining", hv("1"));
        RenderedRateLimit::from(rl).apply(&mut out);
        let written: Vec<(&str, &str)> = out.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(
            written,
            [
                ("x-ratelimit-remaining", "4990"),
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-reset", "1700000000"),
                ("x-ratelimit-used", "10"),
                ("x-ratelimit-resource", "core"),
            ],
            "every value written once, over what was there"
        );

        let (name, value) =
            intern_header(HeaderName::from_bytes(b"X-GitHub-Media-Type").unwrap(), hv("github.v3"));
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-github-media-type", "github.v3"));
        let (name, value) = intern_header(HeaderName::from_static("x-custom"), hv("etc"));
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-custom", "etc"));
    }
}
