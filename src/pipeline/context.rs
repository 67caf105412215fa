//! What one request carries through the phases: built once in [`super::Gateway::handle`],
//! read by every phase after it.

use std::net::SocketAddr;
use std::time::Instant;

use http::Method;
use http::request::Parts;

use crate::app_auth::AppAuth;
use crate::cache::CacheKey;
use crate::identity::Partition;

/// One request on its way through the gateway.
pub(crate) struct RequestCtx {
    /// Method, target and headers (identify takes a client key out before anything else
    /// reads them).
    pub parts: Parts,
    /// The connection's peer (the client, or a proxy in front of it).
    pub peer: SocketAddr,
    /// The listener address the connection reached.
    pub local: SocketAddr,
    /// When the request arrived, for the access log and the latency histogram.
    pub started: Instant,
    /// `HEAD`: answers carry no body.
    pub head: bool,
    /// Who the request acts as; set by the identify phase.
    caller: Option<Caller>,
}

impl RequestCtx {
    /// The context of a request that just arrived.
    pub fn new(parts: Parts, peer: SocketAddr, local: SocketAddr) -> RequestCtx {
        let head = parts.method == Method::HEAD;
        RequestCtx { parts, peer, local, started: Instant::now(), head, caller: None }
    }

    /// The request path, without the query.
    pub fn path(&self) -> &str {
        self.parts.uri.path()
    }

    /// The request target as it goes upstream: path and query.
    pub fn path_and_query(&self) -> &str {
        self.parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    }

    /// Records who the request acts as (the identify phase).
    pub fn identified(&mut self, caller: Caller) {
        self.caller = Some(caller);
    }

    /// Who the request acts as. Every phase after identify may ask; before it there is none.
    pub fn caller(&self) -> &Caller {
        self.caller.as_ref().expect("phases after identify run only for identified requests")
    }

    /// The cache partition, once identified (the access log shows `-` before).
    pub fn partition(&self) -> Option<&Partition> {
        self.caller.as_ref().map(|c| &c.partition)
    }

    /// The cache key of this request in its caller's partition.
    pub fn cache_key(&self) -> CacheKey {
        CacheKey::new(&self.caller().partition, self.path_and_query(), &self.parts.headers)
    }
}

/// Who a request acts as upstream, and where its answers are cached.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// The cache partition.
    pub partition: Partition,
    /// The credential sent upstream.
    pub auth: UpstreamAuth,
}

/// The credential a request is sent upstream with.
#[derive(Clone, Debug)]
pub(crate) enum UpstreamAuth {
    /// Whatever the client sent (its own token, or nothing).
    Client,
    /// An installation token the broker mints for the app.
    App(AppAuth),
}
