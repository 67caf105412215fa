//! Protecting the gateway from its own clients, without the mistakes of the fourth lesson:
//! the client address is read from forwarding headers only when the connection comes from a
//! trusted proxy; the limiter keys on the client's credential, else that address; and every
//! answer — errors and 429s included — carries the CORS headers a browser needs to show the
//! real error.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, HeaderValue, Method};
use ipnet::IpNet;

use crate::config::{CorsSettings, InboundSettings};

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

/// The inbound limiter (GCRA, keyed).
pub struct InboundLimiter {
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
    pub fn is_enabled(&self) -> bool {
        self.limiter.is_some()
    }

    /// `Err(wait)` when `key` is over its rate.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check_key(&key.to_string()).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets idle keys, so the key map stays bounded.
    pub fn retain_recent(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// CORS for browser clients.
pub struct Cors {
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
    pub fn is_preflight(&self, method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            && self.allowed(headers).is_some()
    }

    /// The answer to a preflight: every method, the requested headers, cached for 10 minutes.
    pub fn preflight(&self, request: &HeaderMap) -> axum::response::Response {
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
    pub fn apply(&self, request: &HeaderMap, response: &mut HeaderMap) {
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

    #[test]
    fn the_limiter_refuses_past_the_burst_and_says_how_long_to_wait() {
        let limiter = InboundLimiter::new(&InboundSettings {
            limit_enabled: true,
            requests_per_second: 1,
            burst: 2,
            cf_connecting_ip: false,
        });
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_ok());
        let wait = limiter.check("a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(limiter.check("b").is_ok(), "keys are separate");
    }
}
