//! Sending one request upstream, shared by fills and pass-throughs: the identity's turn
//! (`limits::Lanes`), the credential (the client's own, or an installation token with the
//! broker's retry policy), and accounting (metrics and the rate-limit ledger).

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use super::{Caller, Gateway, UpstreamAuth};
use crate::app_auth::{self, Next, Rejection};
use crate::cache::etag::{Conditional, EtagBasis, Offer};
use crate::identity::Partition;
use crate::upstream::UpstreamError;

/// A client's request body as the pipeline holds it.
pub(super) enum ClientBody {
    /// Not read yet (streamed upstream as it arrives).
    Unread(Body),
    /// Read whole already (a negative rule needed it).
    Read(Bytes),
}

/// A request body for upstream: none, buffered (can be sent again), or streamed (once).
pub(super) enum SendBody {
    None,
    Buffered(Bytes),
    Stream(Body),
}

impl SendBody {
    /// The body for one try, and whether another try could send it again.
    fn take(&mut self) -> (Option<reqwest::Body>, bool) {
        match std::mem::replace(self, SendBody::None) {
            SendBody::None => (None, true),
            SendBody::Buffered(bytes) => {
                *self = SendBody::Buffered(bytes.clone());
                (Some(reqwest::Body::from(bytes)), true)
            }
            SendBody::Stream(body) => (Some(reqwest::Body::wrap_stream(body.into_data_stream())), false),
        }
    }
}

/// One request for upstream, before the credential is attached.
pub(super) struct Outgoing {
    pub method: Method,
    pub url: url::Url,
    pub headers: HeaderMap,
    pub body: SendBody,
    /// The validators of a conditional fill, set once the credential is known (GitHub's
    /// ETags depend on it).
    pub conditional: Option<Conditional>,
    /// Whether it changes something upstream, so it waits for the identity's write spacing
    /// (an unsafe method — except a GraphQL query, which is a read sent with `POST`).
    pub writes: bool,
}

/// What was sent with the request GitHub answered.
pub(super) struct Sent {
    /// Fingerprint of the installation token used, if any.
    pub credential_tag: Option<u64>,
    /// The header values GitHub's ETag covers, as sent.
    pub basis: EtagBasis,
    /// The computed ETags offered in `If-None-Match`.
    pub offers: Vec<Offer>,
}

/// Why there is no upstream answer: GitHub failed, or the broker refused first.
pub(super) enum SendError {
    Upstream(UpstreamError),
    Broker(Rejection),
}

impl Gateway {
    /// Sends one request upstream with the caller's credential, counting the answer and
    /// recording its rate-limit headers. For an app identity the broker's retry policy runs
    /// (see [`app_auth::TokenRetry`]); `prior_tag` is the token fingerprint of the entry being
    /// revalidated, if any.
    pub(super) async fn send_upstream(
        &self,
        caller: &Caller,
        request: Outgoing,
        prior_tag: Option<u64>,
    ) -> Result<(reqwest::Response, Sent), SendError> {
        let Outgoing { method, url, headers, mut body, conditional, writes } = request;
        // Politeness: this identity's turn (held until the answer's headers arrive).
        let _turn = match self.lanes.enter(&caller.partition, writes).await {
            Ok(turn) => turn,
            Err(_) => {
                self.metrics.queue_overflows.increment(1);
                return Err(SendError::Broker(Rejection::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ghgate: too many requests of this identity are already waiting for GitHub; retry shortly",
                )));
            }
        };
        let UpstreamAuth::App(auth) = &caller.auth else {
            if let Some(authorization) = headers.get(http::header::AUTHORIZATION) {
                self.budgets.label(&caller.partition, || crate::identity::fingerprint(authorization));
            }
            let mut headers = headers;
            let (basis, offers) = with_validators(&mut headers, conditional.as_ref());
            let (body, _) = body.take();
            let result = self.upstream.send(method, url, headers, body).await;
            let response = self.account(&caller.partition, result)?;
            self.inbound.record_credential(&caller.partition, response.status());
            return Ok((response, Sent { credential_tag: None, basis, offers }));
        };
        self.budgets.label(&caller.partition, || {
            format!("app {} installation {}", auth.app.name(), auth.installation)
        });
        let mut retry = self.broker.retry(auth);
        loop {
            let token = retry.token().await.map_err(SendError::Broker)?;
            let mut headers = headers.clone();
            headers.insert(http::header::AUTHORIZATION, token.authorization());
            let (basis, offers) = with_validators(&mut headers, conditional.as_ref());
            if !conditional.as_ref().is_some_and(|c| c.compute) {
                app_auth::validators_for_token(&mut headers, prior_tag, &token);
            }
            let (send_body, replayable) = body.take();
            let result = self.upstream.send(method.clone(), url.clone(), headers, send_body).await;
            let response = self.account(&caller.partition, result)?;
            match retry.judge(&token, response, replayable).await {
                Next::Answer(response) => {
                    return Ok((response, Sent { credential_tag: Some(token.tag), basis, offers }));
                }
                Next::Retry => continue,
            }
        }
    }

    /// Counts an upstream answer (or failure) and records its rate-limit headers.
    fn account(
        &self,
        partition: &Partition,
        result: Result<(reqwest::Response, Duration), UpstreamError>,
    ) -> Result<reqwest::Response, SendError> {
        match result {
            Ok((response, took)) => {
                self.metrics.upstream_answer(Some(response.status()), took);
                self.budgets.record(partition, response.status(), response.headers());
                Ok(response)
            }
            Err(error) => {
                self.metrics.upstream_answer(None, Duration::ZERO);
                Err(SendError::Upstream(error))
            }
        }
    }
}

/// Sets a conditional fill's validators on a request whose credential is final, and returns
/// what GitHub's ETag of the answer will be computed over, with the ETags offered.
fn with_validators(headers: &mut HeaderMap, conditional: Option<&Conditional>) -> (EtagBasis, Vec<Offer>) {
    let basis = EtagBasis::of(headers);
    let offers = conditional.map(|c| c.apply(&basis, headers)).unwrap_or_default();
    (basis, offers)
}

/// Whether a method may change something upstream (RFC 9110 §9.2.1).
pub(super) fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}
