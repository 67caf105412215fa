//! Protecting the gateway from its own clients, without the mistakes of the fourth lesson:
//! the client address is read from forwarding headers only when the connection comes from a
//! trusted proxy; the limiter keys on the client's credential, else that address; and every
//! answer — errors and 429s included — carries the CORS headers a browser needs to show the
//! real error.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use ipnet::IpNet;
use tracing::warn;

use crate::config::{CorsSettings, InboundSettings, Settings};
use crate::github;
use crate::identity::{Partition, Partitioner};
use crate::telemetry::Metrics;

/// The client's address: the peer, or — when the peer is a trusted proxy — the nearest
/// untrusted address in `X-Forwarded-For` / `Forwarded` (walked from the right, so a client
/// cannot forge its way past the proxy), or `CF-Connecting-IP` when enabled.
pub fn client_address(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    cf_connecting_ip: bool,
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer_ip = peer.ip();
    if !is_trusted(&peer_ip) {
        return peer_ip;
    }
    if cf_connecting_ip {
        if let Some(ip) =
            headers.get("cf-connecting-ip").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
        {
            return ip;
        }
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()) {
        chain.extend(value.split(',').filter_map(|part| part.trim().parse::<IpAddr>().ok()));
    }
    if chain.is_empty() {
        for value in headers.get_all("forwarded").iter().filter_map(|v| v.to_str().ok()) {
            for element in value.split(',') {
                for pair in element.split(';') {
                    let Some((k, v)) = pair.split_once('=') else { continue };
                    if k.trim().eq_ignore_ascii_case("for") {
                        let v = v.trim().trim_matches('"');
                        let v = v.strip_prefix('[').and_then(|v| v.split(']').next()).unwrap_or(v);
                        let v =
                            if v.matches(':').count() == 1 { v.split(':').next().unwrap_or(v) } else { v };
                        if let Ok(ip) = v.parse() {
                            chain.push(ip);
                        }
                    }
                }
            }
        }
    }
    chain.iter().rev().find(|ip| !is_trusted(ip)).copied().unwrap_or(peer_ip)
}

/// The admit phase's verdict on a request.
pub(crate) enum Admitted {
    /// Go on; the credential's partition when the limiter already derived it (identify
    /// reuses it).
    Proceed(Option<Partition>),
    /// A webhook delivery for the gateway itself.
    Webhook,
    /// Refused here, with this answer (malformed, too large, over the limit) — or a CORS
    /// preflight, answered here.
    Answered(Response),
}

/// Everything between a client and the request path: request hygiene, the body cap, CORS and
/// the limiter.
pub(crate) struct Inbound {
    limiter: InboundLimiter,
    /// Credentials GitHub answered with something other than 401 lately: only these are
    /// limited on their own; any other credential also counts against its client's address
    /// (so `token junk$RANDOM` on every request cannot escape the limiter).
    accepted: quick_cache::sync::Cache<Partition, ()>,
    /// Credentials GitHub just refused with 401 (for `inbound.refused_credential_ttl`).
    refused: Option<moka::sync::Cache<Partition, ()>>,
    /// Set by the first refusal; until then requests skip the look-up.
    any_refused: AtomicBool,
    cors: Cors,
    trusted_proxies: Vec<IpNet>,
    cf_connecting_ip: bool,
    max_body_bytes: u64,
    metrics: Arc<Metrics>,
}

impl Inbound {
    /// From the settings.
    pub fn new(settings: &Settings, metrics: Arc<Metrics>) -> Inbound {
        let ttl = settings.inbound.refused_credential_ttl;
        Inbound {
            limiter: InboundLimiter::new(&settings.inbound),
            // Read on every request with a credential while the limiter is on: quick_cache's
            // read is a shard read lock (moka's bookkeeping per read cost ~9% on the hit path
            // when the memory tier used it). Bounded by count; a 401 removes an entry.
            accepted: quick_cache::sync::Cache::new(100_000),
            refused: (!ttl.is_zero())
                .then(|| moka::sync::Cache::builder().max_capacity(100_000).time_to_live(ttl).build()),
            any_refused: AtomicBool::new(false),
            cors: Cors::new(&settings.cors),
            trusted_proxies: settings.server.trusted_proxies.clone(),
            cf_connecting_ip: settings.inbound.cf_connecting_ip,
            max_body_bytes: settings.server.max_body_bytes,
            metrics,
        }
    }

    /// Phase 1, admit: requests a proxy must not forward (400); bodies declared over
    /// `server.max_body_bytes` (413); CORS preflights; the limiter (429); then the webhook
    /// route. Every refusal is counted and logged.
    pub(crate) fn admit(&self, parts: &mut Parts, peer: SocketAddr, partitioner: &Partitioner) -> Admitted {
        if let Err(message) =
            check_request(parts).and_then(|()| drop_connection_nominated(&mut parts.headers))
        {
            self.metrics.bad_requests.increment(1);
            warn!(%peer, method = %parts.method, %message, "refused malformed request");
            return Admitted::Answered(github::error_response(StatusCode::BAD_REQUEST, &message));
        }
        if declared_length(&parts.headers).is_some_and(|len| len > self.max_body_bytes) {
            self.metrics.bad_requests.increment(1);
            warn!(%peer, method = %parts.method, path = parts.uri.path(), "refused a request body over server.max_body_bytes");
            return Admitted::Answered(body_too_large(self.max_body_bytes));
        }
        if self.cors.is_preflight(&parts.method, &parts.headers) {
            return Admitted::Answered(self.cors.preflight(&parts.headers));
        }
        let webhook = parts.uri.path() == crate::webhook::PATH && parts.method == Method::POST;
        if !self.limiter.is_enabled() {
            return if webhook { Admitted::Webhook } else { Admitted::Proceed(None) };
        }
        // The limiter keys on the client's credential, else its real address. The
        // credential's partition is kept for identification, which needs it too.
        let address = || {
            let address = client_address(peer, &parts.headers, &self.trusted_proxies, self.cf_connecting_ip);
            format!("a:{address}")
        };
        let (partition, checked) = if parts.headers.contains_key(http::header::AUTHORIZATION) {
            let partition = partitioner.partition(&parts.headers);
            let own = self.limiter.check(&format!("k:{partition}"));
            // A credential GitHub has not accepted yet also spends its address's budget. (A
            // client key never reaches GitHub: the broker checks it here.)
            let forwarded = parts
                .headers
                .get(http::header::AUTHORIZATION)
                .is_none_or(|v| crate::app_auth::presented_key(v.as_bytes()).is_none());
            let checked = match own {
                Ok(()) if forwarded && self.accepted.get(&partition).is_none() => {
                    self.limiter.check(&address())
                }
                other => other,
            };
            (Some(partition), checked)
        } else {
            (None, self.limiter.check(&address()))
        };
        if let Err(wait) = checked {
            self.metrics.inbound_limited.increment(1);
            let mut response = github::error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "ghgate: too many requests from this client; slow down and retry after the time given",
            );
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            return Admitted::Answered(response);
        }
        // Deliveries are unauthenticated until their body is read: they count against their
        // client's bucket like any other request.
        if webhook { Admitted::Webhook } else { Admitted::Proceed(partition) }
    }

    /// What GitHub said of a client's own credential (`partition`): a 401 is remembered for
    /// `inbound.refused_credential_ttl`; anything else makes it a credential GitHub accepts.
    pub(crate) fn record_credential(&self, partition: &Partition, status: StatusCode) {
        // Nothing reads either memory when the limiter and the refusal memory are off.
        if partition.is_anonymous() || (!self.limiter.is_enabled() && self.refused.is_none()) {
            return;
        }
        if status == StatusCode::UNAUTHORIZED {
            if let Some(refused) = &self.refused {
                self.any_refused.store(true, Ordering::Release);
                refused.insert(partition.clone(), ());
            }
            self.accepted.remove(partition);
        } else if self.accepted.get(partition).is_none() {
            self.accepted.insert(partition.clone(), ());
        }
    }

    /// The local 401 for a credential GitHub refused a moment ago, if it did.
    pub(crate) fn refused_answer(&self, partition: &Partition) -> Option<Response> {
        let refused = self.refused.as_ref()?;
        if !self.any_refused.load(Ordering::Acquire) || !refused.contains_key(partition) {
            return None;
        }
        self.metrics.refused_credentials.increment(1);
        Some(github::error_response(StatusCode::UNAUTHORIZED, "Bad credentials"))
    }

    /// Adds the CORS headers to any answer (see [`Cors::apply`]).
    pub(crate) fn apply_cors(&self, request: &HeaderMap, response: &mut HeaderMap) {
        self.cors.apply(request, response);
    }

    /// Forgets idle limiter keys, so the key map stays bounded (called by the upkeep task).
    pub(crate) fn retain_recent(&self) {
        self.limiter.retain_recent();
    }
}

/// Headers that decide how a request is cached, who it acts as, or where its client is: a
/// `Connection` that names one of them is refused, because the header would be dropped on the
/// way upstream while the cache key (or the partition, or the limiter) was worked out with it.
const NOT_HOP_BY_HOP: [&str; 17] = [
    "authorization",
    "accept",
    "x-github-api-version",
    "if-none-match",
    "if-modified-since",
    "cache-control",
    "pragma",
    "range",
    "cookie",
    "x-github-otp",
    "x-requested-with",
    "x-ghgate-installation",
    "host",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "cf-connecting-ip",
];

/// Removes the headers a `Connection` header nominates (hop-by-hop for this hop only), so that
/// everything after admit — the cache key, the partition, the upstream request — sees the
/// same headers; refuses a nomination of a header that takes part in any of them.
pub fn drop_connection_nominated(headers: &mut HeaderMap) -> Result<(), String> {
    if !headers.contains_key(http::header::CONNECTION) {
        return Ok(());
    }
    let mut nominated = Vec::new();
    for value in headers.get_all(http::header::CONNECTION) {
        let Ok(value) = value.to_str() else {
            return Err("the Connection header must be ASCII".into());
        };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if NOT_HOP_BY_HOP.iter().any(|k| k.eq_ignore_ascii_case(name)) {
                return Err(format!(
                    "ghgate: Connection must not name {name}: that header decides how the request is cached or who it acts as"
                ));
            }
            if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                nominated.push(name);
            }
        }
    }
    for name in nominated {
        headers.remove(name);
    }
    Ok(())
}

/// Refuses requests a proxy must not forward.
pub fn check_request(parts: &Parts) -> Result<(), String> {
    if parts.method == Method::CONNECT {
        return Err("CONNECT is not supported: ghgate is a reverse proxy for the GitHub API".into());
    }
    if parts.version <= Version::HTTP_11 && parts.uri.scheme().is_some() {
        return Err("absolute-form request targets are not accepted; send the path only".into());
    }
    let path = parts.uri.path();
    if !path.starts_with('/') {
        return Err("the request path must start with '/'".into());
    }
    if let Some(host) = parts.headers.get(http::header::HOST) {
        check_host(host)?;
    }
    check_path(path)
}

/// A `Host` must be a plain authority (a host and an optional valid port): it becomes the base
/// of the links handed back to the client.
fn check_host(host: &HeaderValue) -> Result<(), String> {
    // The usual `name[:port]` is checked without allocating (this runs on every request).
    let bytes = host.as_bytes();
    let (name, port) = match bytes.iter().rposition(|b| *b == b':') {
        Some(colon) => (&bytes[..colon], Some(&bytes[colon + 1..])),
        None => (bytes, None),
    };
    let plain_name =
        !name.is_empty() && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-');
    let plain_port = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p).is_ok_and(|p| p.parse::<u16>().is_ok())
    });
    if plain_name && plain_port {
        return Ok(());
    }
    let invalid = || "the Host header must be a host name or address with an optional port".to_string();
    let text = host.to_str().map_err(|_| invalid())?.trim();
    let authority: http::uri::Authority = text.parse().map_err(|_| invalid())?;
    // `port_u16` is None both without a port and with one that is not a u16.
    let after_host = text.rfind(']').map_or(text, |end| &text[end..]);
    let port_ok = !after_host.contains(':') || authority.port_u16().is_some();
    if text.is_empty() || text.contains('@') || !port_ok {
        return Err(invalid());
    }
    Ok(())
}

/// `.` or `..`, each dot possibly written `%2e` / `%2E` (checked without allocating: this
/// runs on every request).
fn is_dot_segment(segment: &[u8]) -> bool {
    let mut rest = segment;
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2].eq_ignore_ascii_case(&b'e')
        {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// Refuses dot segments (also percent-encoded): appended to an enterprise base such as
/// `/api/v3`, `..` would climb out of it. Front ends may decode `%2F` before resolving, so
/// the path is checked as written and once percent-decoded (`..%2F..%2F_admin` has dot
/// segments once decoded).
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    check_segments(path.as_bytes())?;
    if path.contains('%') {
        check_segments(&percent_decoded(path.as_bytes()))?;
    }
    Ok(())
}

fn check_segments(path: &[u8]) -> Result<(), String> {
    for segment in path.split(|b| *b == b'/') {
        if is_dot_segment(segment) {
            return Err("dot segments ('.' or '..') are not allowed in request paths".into());
        }
        if segment.contains(&b'\\') || contains_ignore_ascii_case(segment, b"%5c") {
            return Err("backslashes are not allowed in request paths".into());
        }
    }
    Ok(())
}

/// `path` with every `%XX` decoded once (an invalid escape stays as written).
fn percent_decoded(path: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' && i + 2 < path.len() {
            if let (Some(hi), Some(lo)) = (hex(path[i + 1]), hex(path[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(path[i]);
        i += 1;
    }
    out
}

/// The length a request or answer declares, when it declares one.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The 413 for a request body over `server.max_body_bytes`.
pub(crate) fn body_too_large(max: u64) -> Response {
    github::error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("ghgate: request body larger than server.max_body_bytes ({max} bytes)"),
    )
}

/// The inbound limiter (GCRA, keyed).
pub(crate) struct InboundLimiter {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl InboundLimiter {
    /// A limiter with the configured rate and burst per client (none when switched off).
    pub fn new(settings: &InboundSettings) -> InboundLimiter {
        let limiter = settings.limit_enabled.then(|| {
            let rate = NonZeroU32::new(settings.requests_per_second.max(1)).expect("at least 1");
            let burst = NonZeroU32::new(settings.burst.max(1)).expect("at least 1");
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        InboundLimiter { limiter, clock: DefaultClock::default() }
    }

    /// Whether the limiter is on (callers skip building keys when it is not).
    pub(crate) fn is_enabled(&self) -> bool {
        self.limiter.is_some()
    }

    /// `Err(wait)` when `key` is over its rate.
    pub(crate) fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check_key(&key.to_string()).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets idle keys, so the key map stays bounded.
    pub(crate) fn retain_recent(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// CORS for browser clients.
pub(crate) struct Cors {
    origins: Vec<String>,
    any: bool,
}

/// Headers a browser may read from answers.
const EXPOSED: &str = "x-ghgate-cache, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-used, x-ratelimit-reset, x-ratelimit-resource, retry-after, link, etag, last-modified, location, x-github-request-id";

impl Cors {
    /// From the settings; no allowed origins means CORS is off.
    pub fn new(settings: &CorsSettings) -> Cors {
        let any = settings.allowed_origins.iter().any(|o| o == "*");
        Cors {
            origins: settings.allowed_origins.iter().map(|o| o.trim_end_matches('/').to_string()).collect(),
            any,
        }
    }

    fn allowed<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = headers.get(http::header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        (self.any || self.origins.iter().any(|o| o == text)).then_some(origin)
    }

    /// Whether a request is a CORS preflight from an allowed origin.
    pub(crate) fn is_preflight(&self, method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            && self.allowed(headers).is_some()
    }

    /// The answer to a preflight: every method, the requested headers, cached for 10 minutes.
    pub(crate) fn preflight(&self, request: &HeaderMap) -> axum::response::Response {
        let mut response = axum::response::Response::new(axum::body::Body::empty());
        *response.status_mut() = http::StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        h.insert(
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        if let Some(requested) = request.get(http::header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(http::header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
        }
        h.insert(http::header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        response
    }

    /// Adds the CORS headers to any answer (errors and 429s included) for an allowed origin.
    pub(crate) fn apply(&self, request: &HeaderMap, response: &mut HeaderMap) {
        let Some(origin) = self.allowed(request) else { return };
        response.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        response.insert(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED));
        response.append(http::header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        m
    }

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let forged = h(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.3")]);
        // Walked from the right: 10.0.0.3 is a trusted hop, 203.0.113.9 is the client; the
        // client-supplied 1.1.1.1 on the left is ignored.
        assert_eq!(client_address(proxy, &forged, &trusted, false), "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(
            client_address(stranger, &forged, &trusted, false),
            stranger.ip(),
            "untrusted peers cannot forge"
        );
        let fwd = h(&[("forwarded", "for=192.0.2.60;proto=https, for=\"[2001:db8::1]:4711\"")]);
        assert_eq!(client_address(proxy, &fwd, &trusted, false), "2001:db8::1".parse::<IpAddr>().unwrap());
        let cf = h(&[("cf-connecting-ip", "192.0.2.1"), ("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_address(proxy, &cf, &trusted, true), "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(client_address(proxy, &cf, &trusted, false), "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    fn parts(method: &str, uri: &str) -> Parts {
        http::Request::builder().method(method).uri(uri).body(()).unwrap().into_parts().0
    }

    #[test]
    fn dot_segments_and_connect_are_refused() {
        assert!(check_request(&parts("GET", "/repos/o/r")).is_ok());
        assert!(check_request(&parts("GET", "/repos/../admin")).is_err());
        assert!(check_request(&parts("GET", "/repos/%2E%2e/admin")).is_err());
        assert!(check_request(&parts("GET", "/a/%5c/b")).is_err());
        assert!(check_request(&parts("CONNECT", "example.com:443")).is_err());
        assert!(check_request(&parts("GET", "http://evil.example/x")).is_err());
        for dots in [".", "..", "%2e", "%2E%2e", ".%2e", "%2e."] {
            assert!(check_path(&format!("/a/{dots}/b")).is_err(), "{dots}");
            assert!(check_path(&format!("/a/{dots}")).is_err(), "{dots} at the end");
        }
        for fine in ["...", ".a", "a.", "%2e%2e%2e", "%2", "v1.2", "%2ex", ""] {
            assert!(check_path(&format!("/a/{fine}/b")).is_ok(), "{fine}");
        }
        assert!(check_path("/a/%5C").is_err() && check_path("/a/b\\c").is_err());
        // Encoded slashes around dot segments: dot segments once a front end decodes them.
        for sneaky in ["/repos/x/..%2F..%2F_admin", "/a/%2e%2e%2fb", "/a/%2E%2E%2F", "/a/b%2F.%2Fc"] {
            assert!(check_path(sneaky).is_err(), "{sneaky}");
        }
        for fine in ["/repos/o/r/contents/dir%2Ffile.md", "/search/code?q=a%2Fb", "/a/%zz", "/a/%2"] {
            assert!(check_path(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn hosts_are_plain_authorities() {
        for fine in ["api.example", "127.0.0.1:8080", "[::1]:9000", "gw.example:443"] {
            assert!(check_host(&HeaderValue::from_static(fine)).is_ok(), "{fine}");
        }
        for bad in ["user@evil.example", "evil.example/x?", "gw.example:70000", "", "a b", "evil.example?x"] {
            assert!(check_host(&HeaderValue::from_str(bad).unwrap()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_limiter_refuses_past_the_burst_and_says_how_long_to_wait() {
        let limiter = InboundLimiter::new(&InboundSettings {
            limit_enabled: true,
            requests_per_second: 1,
            burst: 2,
            cf_connecting_ip: false,
            refused_credential_ttl: Duration::ZERO,
        });
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_ok());
        let wait = limiter.check("a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(limiter.check("b").is_ok(), "keys are separate");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::cache::CacheKey;
    use proptest::prelude::*;

    /// Header names a hostile client might play with: keyed ones, hop-by-hop ones, others.
    const NAMES: [&str; 12] = [
        "accept",
        "authorization",
        "x-github-api-version",
        "cookie",
        "te",
        "upgrade",
        "keep-alive",
        "x-trace",
        "x-other",
        "accept-encoding",
        "host",
        "if-none-match",
    ];

    fn headers_strategy() -> impl Strategy<Value = HeaderMap> {
        let value = prop_oneof![
            Just("application/vnd.github.raw".to_string()),
            Just("application/vnd.github+json".to_string()),
            Just("token abc".to_string()),
            Just("Bearer abc".to_string()),
            Just("2022-11-28".to_string()),
            "[a-z0-9 ]{0,12}",
        ];
        let connection =
            prop::collection::vec(prop::sample::select(NAMES.to_vec()), 0..4).prop_map(|n| n.join(", "));
        (
            prop::collection::vec((prop::sample::select(NAMES.to_vec()), value), 0..8),
            prop::option::of(connection),
        )
            .prop_map(|(pairs, connection)| {
                let mut headers = HeaderMap::new();
                for (name, value) in pairs {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        headers.append(http::HeaderName::from_static(name), value);
                    }
                }
                if let Some(connection) = connection {
                    headers.insert(http::header::CONNECTION, HeaderValue::from_str(&connection).unwrap());
                }
                headers
            })
    }

    proptest! {
        /// Whatever headers a client sends, once admitted, the cache key and the partition are
        /// the ones the headers actually sent upstream give: nothing the client sent can key a
        /// request differently from what GitHub was asked.
        #[test]
        fn the_key_and_partition_follow_the_headers_sent_upstream(headers in headers_strategy(), path in "/[a-z0-9/]{1,20}") {
            let mut admitted = headers.clone();
            prop_assume!(drop_connection_nominated(&mut admitted).is_ok());
            let upstream = crate::upstream::request_headers(&admitted);
            let partitioner = Partitioner::new(b"property-secret");
            let (seen, sent) = (partitioner.partition(&admitted), partitioner.partition(&upstream));
            prop_assert_eq!(&seen, &sent);
            prop_assert_eq!(CacheKey::new(&seen, &path, &admitted), CacheKey::new(&sent, &path, &upstream));
        }
    }
}
