//! A cached answer and the clock arithmetic that decides how it may be used.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::policy::Freshness;

/// One stored upstream answer, with everything needed to serve it, to judge its age and to
/// revalidate it.
#[derive(Debug, Clone)]
pub struct CachedResponse {
    /// Upstream status.
    pub status: StatusCode,
    /// Upstream headers without hop-by-hop headers, `Vary` merged into one line.
    pub headers: HeaderMap,
    /// The complete body.
    pub body: Bytes,
    /// When the answer (or its last 304) was received.
    pub response_time: SystemTime,
    /// Age the answer already had when received (from `Age` / `Date`).
    pub initial_age: Duration,
    /// Freshness and stale windows, decided at store time.
    pub freshness: Freshness,
    /// The request header values named by `Vary` (beyond those in the key), as sent when
    /// the entry was fetched; a request with other values does not match.
    pub vary: Vec<(HeaderName, Option<HeaderValue>)>,
    /// The invalidation key of the entry's path.
    pub path_key: String,
    /// Fingerprint of the installation token that fetched it (app identities only): GitHub
    /// ties ETags to tokens, so after a rotation the entry is revalidated by date instead.
    pub credential_tag: Option<u64>,
    /// Where the body's upstream URLs start, found on first need (see `rewrite`).
    pub body_urls: BodyUrls,
}

/// The upstream URLs in a body, found once per entry, and the body rewritten for the first
/// public base that asked: every later hit from that base shares the rewritten bytes, hits
/// from another base splice their own.
#[derive(Debug, Clone, Default)]
pub struct BodyUrls {
    offsets: std::sync::OnceLock<std::sync::Arc<[u32]>>,
    rewritten: std::sync::OnceLock<(Box<str>, Bytes)>,
}

impl BodyUrls {
    /// The offsets, found with `find` the first time.
    pub(crate) fn get_or_find(&self, find: impl FnOnce() -> Vec<u32>) -> &[u32] {
        self.offsets.get_or_init(|| find().into())
    }

    /// The body rewritten for `public_base`, made with `make` unless it was made for that base
    /// already (only the first base's copy is kept).
    pub(crate) fn rewritten_for(&self, public_base: &str, make: impl FnOnce() -> Bytes) -> Bytes {
        if let Some((base, body)) = self.rewritten.get() {
            if **base == *public_base {
                return body.clone();
            }
            return make();
        }
        let body = make();
        let _ = self.rewritten.set((public_base.into(), body.clone()));
        body
    }
}

impl CachedResponse {
    /// When it stops being fresh.
    pub(crate) fn fresh_until(&self) -> SystemTime {
        self.response_time + self.freshness.fresh_for
    }

    /// Fresh: may be served without asking upstream.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.fresh_until()
    }

    /// Stale but inside `stale-while-revalidate`: serve it and revalidate in the background.
    pub(crate) fn within_stale_while_revalidate(&self, now: SystemTime) -> bool {
        now < self.fresh_until() + self.freshness.stale_while_revalidate
    }

    /// Stale but inside `stale-if-error`: serve it when upstream fails.
    pub(crate) fn within_stale_if_error(&self, now: SystemTime) -> bool {
        now < self.fresh_until() + self.freshness.stale_if_error
    }

    /// When the store may forget it: the longest of the stale windows and the retention for
    /// revalidation.
    pub(crate) fn expires_at(&self) -> SystemTime {
        self.fresh_until() + self.freshness.keep_stale_for
    }

    /// How long from `now` the store should keep it.
    pub(crate) fn time_to_keep(&self, now: SystemTime) -> Duration {
        self.expires_at().duration_since(now).unwrap_or(Duration::ZERO)
    }

    /// The `Age` to send with it at `now`.
    pub(crate) fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.response_time).unwrap_or(Duration::ZERO)
    }

    /// The `Age` header of an answer served from this entry now.
    pub(crate) fn age_header(&self, now: SystemTime) -> HeaderValue {
        age_header(self.age(now).as_secs())
    }

    /// The strong or weak entity tag, if upstream sent one.
    pub(crate) fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(http::header::ETAG)
    }

    /// `Last-Modified`, if upstream sent it.
    pub(crate) fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(http::header::LAST_MODIFIED)
    }

    /// Whether a request's header values match the ones this entry was fetched with.
    pub fn vary_matches(&self, request: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, value)| request.get(name) == value.as_ref())
    }

    /// Approximate bytes held, for the store's size bound: the body, each header with its
    /// share of the header map and its own allocations (~160 bytes), and the struct, `Arc`
    /// and store bookkeeping (~800 bytes). Calibrated against RSS growth with 10,000 and
    /// 20,000 GitHub-shaped entries (`bench/hit_path.sh`).
    pub(crate) fn weight(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 160).sum();
        let vary: usize =
            self.vary.iter().map(|(k, v)| k.as_str().len() + v.as_ref().map_or(0, |v| v.len()) + 64).sum();
        self.body.len() + headers + vary + self.path_key.len() + 800
    }

    /// Whether a client's own conditional headers are satisfied by this entry, so the client
    /// can be answered 304 (RFC 9110 §13.2.2: `If-None-Match` wins over `If-Modified-Since`).
    pub fn satisfies_conditional(&self, request: &HeaderMap) -> bool {
        if let Some(inm) = request.get(http::header::IF_NONE_MATCH) {
            let Some(etag) = self.etag().and_then(|e| e.to_str().ok()) else { return false };
            let Ok(inm) = inm.to_str() else { return false };
            return inm.split(',').map(str::trim).any(|tag| tag == "*" || weak_eq(tag, etag));
        }
        if let Some(ims) = request.get(http::header::IF_MODIFIED_SINCE) {
            let parse = |v: &HeaderValue| v.to_str().ok().and_then(|s| httpdate::parse_http_date(s).ok());
            if let (Some(since), Some(modified)) = (parse(ims), self.last_modified().and_then(parse)) {
                return modified <= since;
            }
        }
        false
    }
}

/// Weak comparison of entity tags (RFC 9110 §8.8.3.2): `W/"x"` equals `"x"`.
pub(crate) fn weak_eq(a: &str, b: &str) -> bool {
    a.trim_start_matches("W/") == b.trim_start_matches("W/")
}

/// An `Age` value. Ages up to an hour (nearly every hit: GitHub's answers are fresh for 60 s)
/// come from a table rendered once, whose values are static: copying one onto an answer
/// neither allocates nor touches a shared reference count.
pub(crate) fn age_header(secs: u64) -> HeaderValue {
    const RENDERED: u64 = 3600;
    static AGES: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
        (0..=RENDERED).map(|s| HeaderValue::from_static(Box::leak(s.to_string().into_boxed_str()))).collect()
    });
    match usize::try_from(secs).ok().and_then(|i| AGES.get(i)) {
        Some(value) => value.clone(),
        None => HeaderValue::from(secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_values_read_the_same_from_the_table_and_beyond_it() {
        for secs in [0u64, 1, 59, 60, 3599, 3600, 3601, 86_400] {
            assert_eq!(age_header(secs), secs.to_string().as_str(), "{secs}");
        }
    }

    fn entry(headers: &[(&str, &str)]) -> CachedResponse {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        CachedResponse {
            status: StatusCode::OK,
            headers: h,
            body: Bytes::from_static(b"{}"),
            response_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
            initial_age: Duration::from_secs(2),
            freshness: Freshness {
                fresh_for: Duration::from_secs(60),
                stale_while_revalidate: Duration::from_secs(10),
                stale_if_error: Duration::from_secs(100),
                keep_stale_for: Duration::from_secs(3600),
            },
            vary: vec![],
            path_key: "/x".into(),
            credential_tag: None,
            body_urls: BodyUrls::default(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_rewritten_body_is_kept_for_the_first_public_base_only() {
        let urls = BodyUrls::default();
        let first = urls.rewritten_for("http://a", || Bytes::from(vec![1u8; 10]));
        let again = urls.rewritten_for("http://a", || unreachable!("kept"));
        assert_eq!(first.as_ptr(), again.as_ptr());
        let mut made = false;
        let other = urls.rewritten_for("http://b", || {
            made = true;
            Bytes::from_static(b"b")
        });
        assert!(made && other == "b");
        assert_eq!(urls.rewritten_for("http://a", || unreachable!()).as_ptr(), first.as_ptr());
    }

    #[test]
    fn windows_follow_the_clock() {
        let e = entry(&[]);
        assert!(e.is_fresh(at(1059)));
        assert!(!e.is_fresh(at(1060)));
        assert!(e.within_stale_while_revalidate(at(1069)));
        assert!(!e.within_stale_while_revalidate(at(1070)));
        assert!(e.within_stale_if_error(at(1159)));
        assert!(!e.within_stale_if_error(at(1160)));
        assert_eq!(e.age(at(1010)), Duration::from_secs(12));
        assert_eq!(e.time_to_keep(at(1060)), Duration::from_secs(3600));
    }

    #[test]
    fn conditional_requests_compare_weakly_and_prefer_etags() {
        let e = entry(&[("etag", "W/\"abc\""), ("last-modified", "Tue, 15 Nov 1994 12:45:26 GMT")]);
        assert!(e.satisfies_conditional(&req(&[("if-none-match", "\"abc\"")])));
        assert!(e.satisfies_conditional(&req(&[("if-none-match", "\"zzz\", W/\"abc\"")])));
        assert!(!e.satisfies_conditional(&req(&[("if-none-match", "\"zzz\"")])));
        // If-None-Match present and not matching: If-Modified-Since is ignored.
        assert!(!e.satisfies_conditional(&req(&[
            ("if-none-match", "\"zzz\""),
            ("if-modified-since", "Tue, 15 Nov 1994 12:45:26 GMT")
        ])));
        assert!(e.satisfies_conditional(&req(&[("if-modified-since", "Wed, 16 Nov 1994 12:45:26 GMT")])));
        assert!(!e.satisfies_conditional(&req(&[("if-modified-since", "Mon, 14 Nov 1994 12:45:26 GMT")])));
        assert!(!e.satisfies_conditional(&HeaderMap::new()));
    }
}
