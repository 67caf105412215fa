//! Talking to GitHub: pooled HTTP clients (rustls, HTTP/2 when offered), one per proxy worker,
//! URL building under the configured base, and the header hygiene of a proxy.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use url::Url;

use crate::config::UpstreamSettings;

/// Why there is no upstream answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made, or it broke.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// No answer within the configured time.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The body broke off or was malformed.
    #[error("upstream answer broke off: {0}")]
    BadBody(String),
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those a
/// proxy must set itself.
const HOP_BY_HOP: [HeaderName; 9] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Removes hop-by-hop headers, including any that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
}

/// The headers to send upstream for a client's request: hop-by-hop headers, `Host` and
/// `Accept-Encoding` removed (bodies are cached and served as identity), a `User-Agent`
/// added when the client sent none (GitHub requires one).
pub fn request_headers(client: &HeaderMap) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(http::header::HOST);
    headers.remove(http::header::ACCEPT_ENCODING);
    headers.remove(HeaderName::from_static("forwarded"));
    headers.remove(HeaderName::from_static("x-forwarded-for"));
    headers.remove(HeaderName::from_static("x-forwarded-host"));
    headers.remove(HeaderName::from_static("x-forwarded-proto"));
    if headers.get(http::header::ACCEPT).is_some_and(|v| v.is_empty()) {
        headers.remove(http::header::ACCEPT);
    }
    if !headers.contains_key(http::header::USER_AGENT) {
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("ghgate/", env!("CARGO_PKG_VERSION"))),
        );
    }
    headers
}

thread_local! {
    /// The proxy worker this thread is, if it is one (see [`bind_thread_to_worker`]).
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks the current thread as proxy worker `index`, so its upstream requests use that
/// worker's own connection pool. Called once by each worker thread as it starts.
pub fn bind_thread_to_worker(index: usize) {
    WORKER.with(|w| w.set(Some(index)));
}

/// The client for GitHub, with its base URL and time limits.
///
/// Each proxy worker gets its own pooled client. A pooled connection's I/O task runs on the
/// runtime that opened it, so with one pool shared by every worker, a request on worker A that
/// checked out a connection opened by worker B crossed to B's thread and back (two cross-thread
/// wake-ups per upstream request). Threads that are not workers (admin, upkeep) share one.
#[derive(Clone, Debug)]
pub struct Upstream {
    shared: reqwest::Client,
    per_worker: Arc<[OnceLock<reqwest::Client>]>,
    connect_timeout: Duration,
    base: Url,
    timeout: Duration,
}

impl Upstream {
    /// Builds the pooled client, with room for `workers` per-worker clients (built on each
    /// worker's first request). Redirects are never followed: they go back to the client.
    pub fn new(settings: &UpstreamSettings, workers: usize) -> Result<Self, String> {
        let shared = build_client(settings.connect_timeout, settings.timeout)
            .map_err(|e| format!("upstream client: {e}"))?;
        Ok(Self {
            shared,
            per_worker: (0..workers).map(|_| OnceLock::new()).collect(),
            connect_timeout: settings.connect_timeout,
            base: settings.url.clone(),
            timeout: settings.timeout,
        })
    }

    /// The client of the current thread: its worker's own, or the shared one.
    fn client(&self) -> &reqwest::Client {
        let Some(slot) = WORKER.with(Cell::get).and_then(|index| self.per_worker.get(index)) else {
            return &self.shared;
        };
        slot.get_or_init(|| {
            // Built with the settings the shared client was built with, so it cannot fail
            // for them; should it fail anyway (resources), the shared pool still works.
            build_client(self.connect_timeout, self.timeout).unwrap_or_else(|_| self.shared.clone())
        })
    }

    /// The upstream URL of a request path and query: appended to the base, so a base of
    /// `https://ghe/api/v3` keeps its prefix. The path must already be checked (see
    /// [`crate::inbound::check_path`]).
    pub fn url_for(&self, path_and_query: &str) -> Result<Url, String> {
        let base = self.base.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path_and_query}")).map_err(|e| format!("bad request path: {e}"))
    }

    /// The upstream URL of GitHub's GraphQL endpoint: `{base}/graphql` on github.com, and
    /// `https://HOST/api/graphql` for a GitHub Enterprise Server base of `https://HOST/api/v3`
    /// (GHES serves GraphQL beside the REST prefix, not under it).
    pub fn graphql_url(&self) -> Url {
        let base = self.base.as_str().trim_end_matches('/');
        let url = match base.strip_suffix("/api/v3") {
            Some(host) => format!("{host}/api/graphql"),
            None => format!("{base}/graphql"),
        };
        Url::parse(&url).expect("the base URL with a plain path is a URL")
    }

    /// Sends a request and waits (at most the configured timeout) for the answer's headers.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<(reqwest::Response, Duration), UpstreamError> {
        let mut request = self.client().request(method, url).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        let started = Instant::now();
        match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
            Ok(Err(e)) if e.is_timeout() => Err(UpstreamError::Timeout(self.timeout)),
            // Without the URL: its query may carry a secret (`?client_secret=`).
            Ok(Err(e)) => Err(UpstreamError::Unreachable(error_chain(&e.without_url()))),
            Ok(Ok(response)) => Ok((response, started.elapsed())),
        }
    }
}

/// One pooled client: no redirects followed, Nagle off, idle connections kept for a minute.
fn build_client(connect_timeout: Duration, read_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .read_timeout(read_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
}

/// An error and its causes on one line (reqwest's top-level message alone says little).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enterprise_base_paths_are_kept() {
        let s = UpstreamSettings {
            url: Url::parse("https://ghe.example.com/api/v3/").unwrap(),
            ..Default::default()
        };
        let up = Upstream::new(&s, 2).unwrap();
        assert_eq!(
            up.url_for("/repos/o/r?page=2").unwrap().as_str(),
            "https://ghe.example.com/api/v3/repos/o/r?page=2"
        );
        assert_eq!(up.graphql_url().as_str(), "https://ghe.example.com/api/graphql");
        let dotcom = Upstream::new(&UpstreamSettings::default(), 1).unwrap();
        assert_eq!(dotcom.graphql_url().as_str(), "https://api.github.com/graphql");
    }

    #[test]
    fn each_worker_thread_gets_its_own_pool_and_other_threads_share_one() {
        let up = Upstream::new(&UpstreamSettings::default(), 2).unwrap();
        let shared: *const reqwest::Client = up.client();
        let on_worker = |index: usize| {
            std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        bind_thread_to_worker(index);
                        std::ptr::from_ref(up.client()) as usize
                    })
                    .join()
                    .unwrap()
            })
        };
        let (first, second) = (on_worker(0), on_worker(1));
        assert_ne!(first, shared as usize);
        assert_ne!(second, shared as usize);
        assert_ne!(first, second);
        // A worker keeps its client; an index beyond the configured workers shares.
        assert_eq!(on_worker(0), first);
        assert_eq!(on_worker(7), shared as usize);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("accept-encoding", HeaderValue::from_static("gzip"));
        h.insert("host", HeaderValue::from_static("gw"));
        h.insert("authorization", HeaderValue::from_static("token x"));
        let out = request_headers(&h);
        assert!(out.get("x-secret-hop").is_none() && out.get("connection").is_none());
        assert!(out.get("transfer-encoding").is_none() && out.get("accept-encoding").is_none());
        assert!(out.get("host").is_none());
        assert_eq!(out["authorization"], "token x");
        assert!(out.get("user-agent").is_some());
    }
}
