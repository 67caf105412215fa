//! Phase 7, finish: the common end of every answer, and the builders of answers from stored
//! entries, fills and streams.

use std::time::SystemTime;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http::header::{AGE, CONTENT_LENGTH};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tracing::debug;

use super::fill::{Answer, Streamed};
use super::send::SendError;
use super::{Gateway, RequestCtx};
use crate::cache::{BodyUrls, CachedResponse, Outcome};
use crate::github;
use crate::identity::Partition;
use crate::rewrite;
use crate::upstream::{self, UpstreamError};

/// The header that tells clients how their answer came about.
pub const CACHE_STATUS_HEADER: HeaderName = HeaderName::from_static("x-ghgate-cache");

impl Gateway {
    /// Phase 7: upstream URLs in `Link` / `Location` become the gateway's, `x-ghgate-cache`
    /// and CORS headers are added, the answer is counted and logged.
    pub(super) fn finish(&self, ctx: &RequestCtx, mut response: Response, outcome: Outcome) -> Response {
        let parts = &ctx.parts;
        // The public base is worked out only for answers that carry a URL to rewrite.
        let headers = response.headers();
        if headers.contains_key(http::header::LINK) || headers.contains_key(http::header::LOCATION) {
            let public_base = self.public_base(ctx);
            rewrite::rewrite_headers(response.headers_mut(), &self.upstream_base, &public_base);
        }
        response.headers_mut().insert(CACHE_STATUS_HEADER, HeaderValue::from_static(outcome.as_str()));
        self.inbound.apply_cors(&parts.headers, response.headers_mut());
        let took = ctx.started.elapsed();
        self.metrics.answered(outcome, took);
        debug!(
            target: "ghgate::access",
            method = %parts.method,
            path = parts.uri.path(),
            status = response.status().as_u16(),
            cache = outcome.as_str(),
            partition = ctx.partition().map(Partition::as_str).unwrap_or("-"),
            micros = took.as_micros() as u64,
        );
        response
    }

    /// The base URL this client reached the gateway at, which upstream URLs are rewritten to.
    /// When none can be worked out (no usable `Host`), the listener's own address stands in:
    /// a client is never handed the upstream's URL.
    fn public_base(&self, ctx: &RequestCtx) -> String {
        let parts = &ctx.parts;
        rewrite::public_base(
            self.public_url.as_deref(),
            &parts.headers,
            &parts.uri,
            ctx.peer.ip(),
            &self.settings.server.trusted_proxies,
        )
        .unwrap_or_else(|| format!("http://{}", ctx.local))
    }

    /// The body a client gets: GitHub's bytes, with upstream URLs that start JSON strings
    /// pointing at the gateway (`server.rewrite_body_urls`; `Content-Length` follows). `urls`
    /// is a stored entry's: where they are, and the body rewritten for the first public base
    /// (pooled like bodies, so partitions share it and the memory tier's bound counts it);
    /// without it the body is searched and spliced now. Empty for HEAD, with the length a GET
    /// would get.
    pub(super) fn client_body(
        &self,
        ctx: &RequestCtx,
        body: &Bytes,
        urls: Option<&BodyUrls>,
        headers: &mut HeaderMap,
    ) -> Body {
        let as_is = |head: bool| if head { Body::empty() } else { Body::from(body.clone()) };
        if !self.settings.server.rewrite_body_urls {
            return as_is(ctx.head);
        }
        // Only JSON bodies are searched; for a stored entry that is decided once, with its
        // offsets (a hit does no header parsing for it).
        let find = || match rewrite::is_json(headers) {
            true => rewrite::body_url_offsets(body, &self.upstream_base),
            false => Vec::new(),
        };
        let found;
        let offsets = match urls {
            Some(urls) => urls.get_or_find(find),
            None => {
                found = find();
                &found[..]
            }
        };
        if offsets.is_empty() {
            return as_is(ctx.head);
        }
        let public_base = self.public_base(ctx);
        let base_len = self.upstream_base.len();
        let len = rewrite::spliced_len(body.len(), offsets.len(), base_len, &public_base);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        if ctx.head {
            return Body::empty();
        }
        let splice = || self.responses.intern(&rewrite::splice_body(body, offsets, base_len, &public_base));
        match urls {
            Some(urls) => Body::from(urls.rewritten_for(&public_base, splice)),
            None => Body::from(rewrite::splice_body(body, offsets, base_len, &public_base)),
        }
    }

    /// The answer a stored entry gives this request: headers with `Age` and the latest
    /// rate-limit values, a 304 when the client's validators match, no body for HEAD.
    pub(super) fn entry_response(
        &self,
        ctx: &RequestCtx,
        entry: &CachedResponse,
        now: SystemTime,
    ) -> Response {
        let mut headers = entry.headers.clone();
        headers.insert(AGE, entry.age_header(now));
        self.apply_rate_limit(&ctx.caller().partition, &mut headers);
        if entry.satisfies_conditional(&ctx.parts.headers) {
            return not_modified(headers);
        }
        let body = self.client_body(ctx, &entry.body, Some(&entry.body_urls), &mut headers);
        build_response(entry.status, headers, body)
    }

    /// The answer a fill gives this request (through its entry when it has one).
    pub(super) fn answer_response(&self, ctx: &RequestCtx, answer: &Answer) -> Response {
        if let Some(entry) = &answer.entry {
            return self.entry_response(ctx, entry, SystemTime::now());
        }
        let mut headers = answer.headers.clone();
        self.apply_rate_limit(&ctx.caller().partition, &mut headers);
        if answer.status == StatusCode::NOT_MODIFIED {
            return not_modified(headers);
        }
        let body = self.client_body(ctx, &answer.body, None, &mut headers);
        build_response(answer.status, headers, body)
    }

    /// The latest rate-limit values known for this partition replace the stored ones.
    pub(super) fn apply_rate_limit(&self, partition: &Partition, headers: &mut HeaderMap) {
        if let Some(limit) = self.budgets.latest(partition, github::resource_of(headers)) {
            limit.apply(headers);
        }
    }
}

/// An answer with these parts.
pub(super) fn build_response(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A 304 with a stored answer's headers (no body, so no length or type).
fn not_modified(mut headers: HeaderMap) -> Response {
    headers.remove(CONTENT_LENGTH);
    headers.remove(http::header::CONTENT_TYPE);
    build_response(StatusCode::NOT_MODIFIED, headers, Body::empty())
}

/// An upstream answer streamed to the client, after what was read of it already.
pub(super) fn streamed_response(streamed: Streamed, head: bool) -> Response {
    let Streamed { response, prefix } = streamed;
    let status = response.status();
    let mut headers = response.headers().clone();
    upstream::strip_hop_by_hop(&mut headers);
    if head {
        return build_response(status, headers, Body::empty());
    }
    let prefix = futures::stream::iter(prefix.into_iter().map(Ok::<Bytes, reqwest::Error>));
    let body = Body::from_stream(prefix.chain(response.bytes_stream()));
    build_response(status, headers, body)
}

/// The client's answer when there is no upstream answer: 504 for a timeout, 502 otherwise, or
/// the broker's refusal.
pub(super) fn send_error_response(error: &SendError) -> Response {
    match error {
        SendError::Upstream(error) => {
            let status = match error {
                UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            github::error_response(status, &format!("ghgate: {error}"))
        }
        SendError::Broker(rejection) => github::error_response(rejection.status, &rejection.message),
    }
}
