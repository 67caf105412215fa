//! When an answer may be stored and for how long: RFC 9111 through `http-cache-semantics`,
//! with the operator's per-path bounds and the RFC 5861 stale windows on top.
//!
//! Each credential partition is that credential's private cache, so GitHub's
//! `Cache-Control: private, max-age=60` is storable there; the anonymous partition is shared by
//! every anonymous client, so there the policy runs in shared mode and `private` is refused.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_cache_semantics::{CacheOptions, CachePolicy, RequestLike, ResponseLike};

use crate::config::{CacheSettings, FreshnessRule};
use crate::identity::Partition;

/// How long an entry is fresh and how long it may be served stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// From the response time, how long it is fresh.
    pub fresh_for: Duration,
    /// After that, how long it may be served while a background revalidation runs.
    pub stale_while_revalidate: Duration,
    /// After freshness, how long it may be served when upstream fails.
    pub stale_if_error: Duration,
    /// After freshness, how long it is kept (at least as long as both windows).
    pub keep_stale_for: Duration,
}

/// Statuses this cache stores. Not-found and gone answers are left to the negative cache,
/// which keeps them for a short, separately configured time.
const STORED_STATUSES: [u16; 6] = [200, 203, 204, 300, 301, 308];

/// Headers a 304 must not overwrite in the stored answer (RFC 9111 §3.2).
const KEPT_ON_REVALIDATION: [HeaderName; 4] = [
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_ENCODING,
    http::header::TRANSFER_ENCODING,
    http::header::CONTENT_RANGE,
];

/// Decides storability and freshness for answers.
#[derive(Debug, Clone)]
pub(crate) struct FreshnessPolicy {
    settings: CacheSettings,
}

/// The request as the policy sees it: only what selects the representation.
struct PolicyRequest<'a> {
    uri: &'a Uri,
    headers: &'a HeaderMap,
}

impl RequestLike for PolicyRequest<'_> {
    fn uri(&self) -> Uri {
        self.uri.clone()
    }
    fn is_same_uri(&self, other: &Uri) -> bool {
        self.uri == other
    }
    fn method(&self) -> &Method {
        &Method::GET
    }
    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

struct PolicyResponse<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
}

impl ResponseLike for PolicyResponse<'_> {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

/// The verdict on one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Freshness windows for the entry.
    pub freshness: Freshness,
    /// Age the answer had on arrival.
    pub initial_age: Duration,
}

impl FreshnessPolicy {
    /// A policy with the operator's cache settings.
    pub(crate) fn new(settings: CacheSettings) -> Self {
        Self { settings }
    }

    fn rule_for(&self, path: &str) -> Option<&FreshnessRule> {
        self.settings.rules.iter().find(|r| r.path.matches(path).is_some())
    }

    /// Whether an answer to a GET of `path` may be stored, and if so its freshness.
    ///
    /// `request_headers` must be the upstream request's headers (credentials included: the
    /// crate checks `Authorization` in shared mode); `response_headers` must already have
    /// their `Vary` lines merged.
    pub(crate) fn evaluate(
        &self,
        partition: &Partition,
        path: &str,
        request_headers: &HeaderMap,
        status: StatusCode,
        response_headers: &HeaderMap,
        response_time: SystemTime,
    ) -> Option<Verdict> {
        if !STORED_STATUSES.contains(&status.as_u16()) {
            return None;
        }
        let directives = Directives::parse(response_headers);
        if directives.vary_star {
            return None;
        }
        let shared = partition.is_anonymous();
        let uri: Uri = path.parse().ok()?;
        let opts = CacheOptions { shared, ..CacheOptions::default() };
        let policy = CachePolicy::new_options(
            &PolicyRequest { uri: &uri, headers: request_headers },
            &PolicyResponse { status, headers: response_headers },
            response_time,
            opts,
        );
        if !policy.is_storable() {
            return None;
        }
        let rule = self.rule_for(path);
        let mut fresh_for = policy.time_to_live(response_time);
        let may_extend = !directives.no_cache;
        if let Some(min) = rule.and_then(|r| r.min_fresh).filter(|_| may_extend) {
            fresh_for = fresh_for.max(min);
        }
        if let Some(max) = rule.and_then(|r| r.max_fresh) {
            fresh_for = fresh_for.min(max);
        }
        let may_serve_stale =
            !(directives.must_revalidate || directives.no_cache || (shared && directives.proxy_revalidate));
        let window = |configured: Option<Duration>, global: Duration, from_response: Duration| {
            if may_serve_stale { configured.unwrap_or(global).max(from_response) } else { Duration::ZERO }
        };
        let stale_while_revalidate = window(
            rule.and_then(|r| r.stale_while_revalidate),
            self.settings.stale_while_revalidate,
            directives.stale_while_revalidate,
        );
        let stale_if_error = window(
            rule.and_then(|r| r.stale_if_error),
            self.settings.stale_if_error,
            directives.stale_if_error,
        );
        let keep_stale_for = self.settings.retain_stale.max(stale_while_revalidate).max(stale_if_error);
        Some(Verdict {
            freshness: Freshness { fresh_for, stale_while_revalidate, stale_if_error, keep_stale_for },
            initial_age: policy.age(response_time),
        })
    }
}

/// The response `Cache-Control` directives the crate leaves to us.
#[derive(Debug, Default)]
struct Directives {
    no_cache: bool,
    must_revalidate: bool,
    proxy_revalidate: bool,
    vary_star: bool,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
}

impl Directives {
    fn parse(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for directive in text.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let secs = || Duration::from_secs(arg.and_then(|a| a.parse().ok()).unwrap_or(0));
                match name.to_ascii_lowercase().as_str() {
                    "no-cache" => d.no_cache = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "stale-while-revalidate" => d.stale_while_revalidate = secs(),
                    "stale-if-error" => d.stale_if_error = secs(),
                    _ => {}
                }
            }
        }
        if headers
            .get_all(http::header::PRAGMA)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
            && !headers.contains_key(http::header::CACHE_CONTROL)
        {
            d.no_cache = true;
        }
        d.vary_star = headers
            .get_all(http::header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim() == "*");
        d
    }
}

/// Merges every `Vary` line into one. GitHub sends two, and a consumer that reads only the
/// last one (as `http-cache-semantics` and old nginx do) would forget `Authorization`.
pub(crate) fn merge_vary(headers: &mut HeaderMap) {
    let mut names: Vec<String> = Vec::new();
    for value in headers.get_all(http::header::VARY) {
        let Ok(text) = value.to_str() else { continue };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                names.push(name.to_string());
            }
        }
    }
    if names.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(&names.join(", ")) {
        headers.insert(http::header::VARY, value);
    }
}

/// The request header names that `Vary` selects on and that the key does not already cover.
pub(crate) fn extra_vary_names(response_headers: &HeaderMap) -> Vec<HeaderName> {
    const IN_KEY: [&str; 4] = ["accept", "authorization", "accept-encoding", "x-github-api-version"];
    response_headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty() && !IN_KEY.contains(&n.as_str()))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect()
}

/// Applies a 304's headers to a stored answer (RFC 9111 §4.3.4): every header the 304 carries
/// replaces the stored one, except those that describe the body.
pub(crate) fn merge_not_modified(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    for name in not_modified.keys() {
        if KEPT_ON_REVALIDATION.contains(name) || name == http::header::VARY {
            continue;
        }
        merged.remove(name);
        for value in not_modified.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path_pattern::PathPattern;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn github_headers() -> HeaderMap {
        let mut h = headers(&[
            ("cache-control", "private, max-age=60, s-maxage=60"),
            ("vary", "Accept, Authorization, Cookie, X-GitHub-OTP"),
            ("vary", "Accept-Encoding, Accept, X-Requested-With"),
            ("etag", "W/\"abc\""),
            ("date", &httpdate::fmt_http_date(SystemTime::now())),
        ]);
        merge_vary(&mut h);
        h
    }

    fn private() -> Partition {
        crate::identity::Partitioner::new(b"k").partition(&headers(&[("authorization", "token x")]))
    }

    #[test]
    fn github_private_answers_are_stored_per_credential_only() {
        let policy = FreshnessPolicy::new(CacheSettings::default());
        let now = SystemTime::now();
        let req = headers(&[("authorization", "token x")]);
        let v = policy.evaluate(&private(), "/repos/o/r", &req, StatusCode::OK, &github_headers(), now);
        assert_eq!(v.unwrap().freshness.fresh_for.as_secs(), 60);
        let anon = policy.evaluate(
            &Partition::anonymous(),
            "/repos/o/r",
            &HeaderMap::new(),
            StatusCode::OK,
            &github_headers(),
            now,
        );
        assert!(anon.is_none(), "private answers must not enter the shared partition");
    }

    #[test]
    fn no_store_vary_star_and_404_are_not_stored() {
        let policy = FreshnessPolicy::new(CacheSettings::default());
        let now = SystemTime::now();
        let h = headers(&[("cache-control", "no-store")]);
        assert!(policy.evaluate(&private(), "/x", &HeaderMap::new(), StatusCode::OK, &h, now).is_none());
        let h = headers(&[("cache-control", "max-age=60"), ("vary", "*")]);
        assert!(policy.evaluate(&private(), "/x", &HeaderMap::new(), StatusCode::OK, &h, now).is_none());
        let h = headers(&[("cache-control", "max-age=60")]);
        assert!(
            policy.evaluate(&private(), "/x", &HeaderMap::new(), StatusCode::NOT_FOUND, &h, now).is_none()
        );
    }

    #[test]
    fn rules_bound_freshness_and_must_revalidate_forbids_stale() {
        let mut settings = CacheSettings::default();
        settings.rules.push(FreshnessRule {
            path: PathPattern::parse("/repos/*/*/contents/**").unwrap(),
            min_fresh: Some(Duration::from_secs(600)),
            max_fresh: None,
            stale_while_revalidate: Some(Duration::from_secs(30)),
            stale_if_error: None,
        });
        settings.rules.push(FreshnessRule {
            path: PathPattern::parse("/**").unwrap(),
            min_fresh: None,
            max_fresh: Some(Duration::from_secs(10)),
            stale_while_revalidate: None,
            stale_if_error: None,
        });
        let policy = FreshnessPolicy::new(settings);
        let now = SystemTime::now();
        let h = github_headers();
        let v = policy
            .evaluate(&private(), "/repos/o/r/contents/a.md", &HeaderMap::new(), StatusCode::OK, &h, now)
            .unwrap();
        assert_eq!(v.freshness.fresh_for.as_secs(), 600);
        assert_eq!(v.freshness.stale_while_revalidate.as_secs(), 30);
        let v = policy.evaluate(&private(), "/users/x", &HeaderMap::new(), StatusCode::OK, &h, now).unwrap();
        assert_eq!(v.freshness.fresh_for.as_secs(), 10);
        let h = headers(&[("cache-control", "max-age=60, must-revalidate")]);
        let v = policy.evaluate(&private(), "/users/x", &HeaderMap::new(), StatusCode::OK, &h, now).unwrap();
        assert_eq!(v.freshness.stale_if_error, Duration::ZERO);
        let h = headers(&[("cache-control", "no-cache")]);
        let v = policy
            .evaluate(&private(), "/repos/o/r/contents/a.md", &HeaderMap::new(), StatusCode::OK, &h, now)
            .unwrap();
        assert_eq!(v.freshness.fresh_for, Duration::ZERO, "min_fresh never overrides no-cache");
    }

    #[test]
    fn both_vary_lines_survive_merging() {
        let h = github_headers();
        assert_eq!(h.get_all("vary").iter().count(), 1);
        let names = extra_vary_names(&h);
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["cookie", "x-github-otp", "x-requested-with"]);
        assert!(h["vary"].to_str().unwrap().contains("Authorization"));
    }

    #[test]
    fn a_304_updates_headers_but_not_the_body_description() {
        let stored = headers(&[("etag", "\"1\""), ("content-length", "10"), ("x-ratelimit-remaining", "10")]);
        let nm = headers(&[("etag", "\"1\""), ("content-length", "0"), ("x-ratelimit-remaining", "9")]);
        let merged = merge_not_modified(&stored, &nm);
        assert_eq!(merged["content-length"], "10");
        assert_eq!(merged["x-ratelimit-remaining"], "9");
    }
}
