//! The broker's retry policy for a request sent with an installation token. GitHub does not
//! know a freshly minted token everywhere at once (lesson two of the design brief): a refusal
//! while the token settles is retried after a short pause, not shown to the client; a refusal
//! after that means the cached token is bad — it is evicted and the request tried once more
//! with a fresh one.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::{HeaderMap, StatusCode};
use tracing::warn;

use super::{AppAuth, Broker, InstallationToken, Rejection};
use crate::github::Refusal;

/// What to do after GitHub answered one try.
pub enum Next {
    /// Hand this answer to the client.
    Answer(reqwest::Response),
    /// Try again (with the token [`TokenRetry::token`] gives next).
    Retry,
}

/// The tries of one request sent as an app installation.
pub struct TokenRetry<'a> {
    broker: &'a Broker,
    auth: &'a AppAuth,
    reminted: bool,
}

impl<'a> TokenRetry<'a> {
    pub(super) fn new(broker: &'a Broker, auth: &'a AppAuth) -> Self {
        TokenRetry { broker, auth, reminted: false }
    }

    /// The token for the next try.
    pub async fn token(&self) -> Result<Arc<InstallationToken>, Rejection> {
        self.broker.token(self.auth).await
    }

    /// Judges GitHub's answer to a try with `token`. A body that cannot be sent again
    /// (`replayable` false) means the answer stands, whatever it is.
    pub async fn judge(
        &mut self,
        token: &InstallationToken,
        response: reqwest::Response,
        replayable: bool,
    ) -> Next {
        if !replayable {
            return Next::Answer(response);
        }
        let settling = self.broker.settling(token);
        let (response, refused) = token_refused(response, settling).await;
        if !refused {
            return Next::Answer(response);
        }
        let metrics = &self.broker.metrics;
        if settling {
            metrics.app.settle_retries.increment(1);
            tokio::time::sleep(self.broker.settings().settle_retry_interval).await;
            return Next::Retry;
        }
        if !self.reminted && self.broker.evict_rejected(self.auth, token).await {
            self.reminted = true;
            metrics.app.stale_token_retries.increment(1);
            warn!(
                app = self.auth.app.name(),
                installation = self.auth.installation,
                "GitHub rejected a cached token; retrying with a fresh one"
            );
            return Next::Retry;
        }
        Next::Answer(response)
    }
}

/// Whether GitHub refused the token itself (so a retry with the same token after it settles,
/// or with a fresh one, can succeed): any 401; a 403 only when it says "Bad credentials", or
/// while a new token is settling and the 403 is not a rate-limit or permissions answer. Small
/// 403 bodies are read to decide and put back.
async fn token_refused(response: reqwest::Response, settling: bool) -> (reqwest::Response, bool) {
    match response.status() {
        StatusCode::UNAUTHORIZED => (response, true),
        StatusCode::FORBIDDEN => {
            let status = response.status();
            let version = response.version();
            let headers = response.headers().clone();
            let body = match response.bytes().await {
                Ok(body) => body,
                // The body broke off: an empty 403 still tells the client it was refused.
                Err(_) => Bytes::new(),
            };
            let refused = match Refusal::of(&headers, &body) {
                Refusal::BadCredentials => true,
                Refusal::Other => settling,
                Refusal::RateLimited | Refusal::NotAccessible => false,
            };
            let mut rebuilt = http::Response::new(body);
            *rebuilt.status_mut() = status;
            *rebuilt.version_mut() = version;
            *rebuilt.headers_mut() = headers;
            (reqwest::Response::from(rebuilt), refused)
        }
        _ => (response, false),
    }
}

/// GitHub ties ETags to the token that fetched them: revalidating an entry fetched with an
/// earlier token (`prior_tag`) by its ETag would cost a full answer. GitHub Support's
/// workaround is to revalidate with `If-Modified-Since` alone when the entry has a
/// `Last-Modified`.
pub fn validators_for_token(headers: &mut HeaderMap, prior_tag: Option<u64>, token: &InstallationToken) {
    let rotated = prior_tag.is_some_and(|tag| tag != token.tag);
    if rotated && headers.contains_key(IF_MODIFIED_SINCE) {
        headers.remove(IF_NONE_MATCH);
    }
}
