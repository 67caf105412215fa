//! The pass-through track (phases 4–5 for everything that is not a cacheable read): the
//! request is forwarded as it is, bodies streamed both ways — unless the short-circuit phase
//! knows the answer already. A small futile answer is offered to the negative cache on the
//! way back, and a successful write invalidates what it changed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::response::Response;
use futures::StreamExt;
use http::header::CONTENT_LENGTH;
use http::{Method, StatusCode};
use tracing::warn;

use super::fill::Streamed;
use super::finish::{build_response, send_error_response, streamed_response};
use super::send::{ClientBody, Outgoing, SendBody, SendError, is_unsafe};
use super::short_circuit::NEGATIVE_BODY_MAX;
use super::{Gateway, RequestCtx, UpstreamAuth};
use crate::cache::Outcome;
use crate::github;
use crate::identity::Partition;
use crate::inbound::{body_too_large, declared_length};
use crate::negative::{Candidate, Verdict};
use crate::upstream;

/// Pass-through JSON answers up to this size are read whole to rewrite their body URLs;
/// larger ones stream through as they are.
const REWRITE_BUFFER_MAX: u64 = 1024 * 1024;

impl Gateway {
    /// The pass-through track, from the short-circuit phase to the streamed answer.
    pub(super) async fn pass_through(&self, ctx: &RequestCtx, body: Body) -> (Response, Outcome) {
        let url = match self.upstream.url_for(ctx.path_and_query()) {
            Ok(url) => url,
            Err(e) => return (github::error_response(StatusCode::BAD_REQUEST, &e), Outcome::Bypass),
        };
        let (candidate, body) = match self.negative_candidate_for_write(ctx, body).await {
            Ok(found) => found,
            Err(refused) => return (refused, Outcome::Bypass),
        };
        if let Some(answer) = self.short_circuit(ctx, candidate.as_ref(), None).await {
            return answer;
        }
        let partition = &ctx.caller().partition;
        let mut response = self.forward(ctx, body, url).await;
        if response.status() == StatusCode::FORBIDDEN
            && !response.headers().contains_key(http::header::RETRY_AFTER)
        {
            response = self.inspect_refusal(partition, response).await;
        }
        let Some(candidate) = candidate else { return (response, Outcome::Bypass) };
        (self.remember_if_futile(&candidate, response).await, Outcome::Bypass)
    }

    /// Sends a request upstream as it is and streams the answer back.
    async fn forward(&self, ctx: &RequestCtx, body: ClientBody, url: url::Url) -> Response {
        let parts = &ctx.parts;
        let caller = ctx.caller();
        let max_body = self.settings.server.max_body_bytes;
        let over_limit = Arc::new(AtomicBool::new(false));
        let has_body = parts.headers.contains_key(http::header::TRANSFER_ENCODING)
            || parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() != "0");
        let body = match (body, &caller.auth) {
            _ if !has_body => SendBody::None,
            (ClientBody::Read(bytes), _) => SendBody::Buffered(bytes),
            // A broker request may need a second try with a fresh token: keep small bodies.
            (ClientBody::Unread(body), UpstreamAuth::App(_))
                if declared_length(&parts.headers)
                    .is_some_and(|len| len <= self.broker.settings().retry_body_max_bytes) =>
            {
                match axum::body::to_bytes(body, usize::MAX).await {
                    Ok(bytes) => SendBody::Buffered(bytes),
                    Err(e) => {
                        let message = format!("could not read the request body: {e}");
                        return github::error_response(StatusCode::BAD_REQUEST, &message);
                    }
                }
            }
            (ClientBody::Unread(body), _) => SendBody::Stream(limit_body(body, max_body, &over_limit)),
        };
        let headers = upstream::request_headers(&parts.headers);
        let writes = is_unsafe(&parts.method);
        let outgoing =
            Outgoing { method: parts.method.clone(), url, headers, body, conditional: None, writes };
        let response = match self.send_upstream(caller, outgoing, None).await {
            Ok((response, _)) => response,
            Err(_) if over_limit.load(Ordering::Relaxed) => {
                // A chunked body crossed the limit: the upstream request was cut off with it.
                self.metrics.bad_requests.increment(1);
                warn!(method = %parts.method, path = parts.uri.path(), "cut off a request body over server.max_body_bytes");
                return body_too_large(max_body);
            }
            Err(error) => {
                if let SendError::Upstream(e) = &error {
                    warn!(error = %e, method = %parts.method, path = parts.uri.path(), "upstream request failed");
                }
                return send_error_response(&error);
            }
        };
        if is_unsafe(&parts.method) && (response.status().is_success() || response.status().is_redirection())
        {
            self.invalidation
                .after_write(caller.partition.as_str(), parts.uri.path(), response.headers())
                .await;
        }
        if is_unsafe(&parts.method) && response.status().is_success() {
            // Write access shown: shared negative entries of this repository (the statuses
            // limit) may be replayed to this credential.
            self.negative.note_access(caller.partition.as_str(), parts.uri.path()).await;
        }
        let head = parts.method == Method::HEAD;
        if self.settings.server.rewrite_body_urls
            && !head
            && crate::rewrite::is_json(response.headers())
            && response.content_length().is_some_and(|len| len <= REWRITE_BUFFER_MAX)
        {
            return self.with_body_urls_rewritten(ctx, response).await;
        }
        streamed_response(Streamed { response, prefix: Vec::new() }, head)
    }

    /// A small JSON answer read whole, so the upstream URLs in it can point at the gateway.
    async fn with_body_urls_rewritten(&self, ctx: &RequestCtx, response: reqwest::Response) -> Response {
        let status = response.status();
        let mut headers = response.headers().clone();
        upstream::strip_hop_by_hop(&mut headers);
        match response.bytes().await {
            Ok(body) => {
                let body = self.client_body(ctx, &body, None, &mut headers);
                build_response(status, headers, body)
            }
            Err(e) => {
                warn!(error = %upstream::error_chain(&e.without_url()), path = ctx.path(), "upstream body broke off");
                github::error_response(StatusCode::BAD_GATEWAY, "ghgate: upstream answer broke off")
            }
        }
    }

    /// Reads a small 403 to tell a secondary rate limit (held back) from a permissions answer,
    /// giving the client the same answer.
    async fn inspect_refusal(&self, partition: &Partition, response: Response) -> Response {
        if declared_length(response.headers()).is_none_or(|len| len > NEGATIVE_BODY_MAX) {
            return response;
        }
        let (parts, body) = response.into_parts();
        match axum::body::to_bytes(body, NEGATIVE_BODY_MAX as usize).await {
            Ok(bytes) => {
                self.budgets.record_secondary_message(partition, parts.status, &bytes);
                Response::from_parts(parts, Body::from(bytes))
            }
            Err(_) => github::error_response(StatusCode::BAD_GATEWAY, "ghgate: upstream answer broke off"),
        }
    }

    /// Offers a small answer to the negative cache, giving the client the same answer.
    async fn remember_if_futile(&self, candidate: &Candidate, response: Response) -> Response {
        let too_large = declared_length(response.headers()).is_none_or(|len| len > NEGATIVE_BODY_MAX);
        if response.status().is_success() || response.status().is_server_error() || too_large {
            return response;
        }
        let (parts, body) = response.into_parts();
        let bytes = match axum::body::to_bytes(body, NEGATIVE_BODY_MAX as usize).await {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(error = %e, "upstream body broke off");
                return github::error_response(StatusCode::BAD_GATEWAY, "ghgate: upstream answer broke off");
            }
        };
        if self.negative.consider(candidate, parts.status, &parts.headers, &bytes).await == Verdict::Canary {
            self.metrics.negative_canaries.increment(1);
        }
        Response::from_parts(parts, Body::from(bytes))
    }
}

/// A streamed request body that fails once more than `max` bytes have passed, setting
/// `over_limit` so the failed upstream request can be reported as the client's 413.
fn limit_body(body: Body, max: u64, over_limit: &Arc<AtomicBool>) -> Body {
    let over_limit = Arc::clone(over_limit);
    let mut passed: u64 = 0;
    Body::from_stream(body.into_data_stream().map(move |chunk| {
        let chunk = chunk?;
        passed = passed.saturating_add(chunk.len() as u64);
        if passed > max {
            over_limit.store(true, Ordering::Relaxed);
            return Err(axum::Error::new("request body larger than server.max_body_bytes"));
        }
        Ok(chunk)
    }))
}
