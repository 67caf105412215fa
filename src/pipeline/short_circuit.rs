//! Phase 4, short-circuit: answers that need no upstream request, on both tracks. A futile
//! request the negative cache remembers gets its remembered answer; an identity whose budget
//! is below the reserve, or that is held back after a secondary limit, gets a stale entry when
//! one exists — and, when it may not go upstream at all, a local 403/429 in GitHub's shape.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::response::Response;
use http::Method;

use super::finish::build_response;
use super::send::ClientBody;
use super::{Gateway, RequestCtx};
use crate::cache::{CacheKey, CachedResponse, Outcome};
use crate::inbound::declared_length;
use crate::limits::{self, Admission, Budgets};
use crate::negative::{Candidate, Remembered};

/// Request and answer bodies up to this size are read whole when a negative rule needs them.
pub(super) const NEGATIVE_BODY_MAX: u64 = 64 * 1024;

impl Gateway {
    /// Phase 4: the remembered answer for `negative`, or the budget's verdict (with `stale`
    /// standing in where the budget says not to spend); `None` to go upstream.
    pub(super) async fn short_circuit(
        &self,
        ctx: &RequestCtx,
        negative: Option<&Candidate>,
        stale: Option<&Arc<CachedResponse>>,
    ) -> Option<(Response, Outcome)> {
        if let Some(candidate) = negative {
            if let Some(remembered) = self.negative.lookup(candidate).await {
                return Some((self.negative_response(ctx, candidate, &remembered), Outcome::Negative));
            }
        }
        let partition = &ctx.caller().partition;
        let resource = Budgets::resource_of_path(ctx.path());
        self.budgets.refresh(partition, resource).await;
        let admission = self.budgets.admit(partition, resource);
        if matches!(admission, Admission::Go) {
            return None;
        }
        if let Some(entry) = stale {
            self.metrics.reserve_stale.increment(1);
            return Some((self.entry_response(ctx, entry, SystemTime::now()), Outcome::Stale));
        }
        match admission {
            Admission::Stop { until, status, message, limit } => {
                self.metrics.local_limit_answers.increment(1);
                Some((limits::stop_response(until, status, &message, limit.as_deref()), Outcome::Negative))
            }
            Admission::Go | Admission::Reserve => None,
        }
    }

    /// The negative-cache entry a cacheable read's 404/410 is remembered under, if a rule
    /// covers it (per credential partition unless the rule says otherwise).
    pub(super) fn negative_candidate_for_read(&self, ctx: &RequestCtx, key: &CacheKey) -> Option<Candidate> {
        let rule = self.negative.rule_for(&Method::GET, ctx.path(), true)?;
        self.negative.candidate(rule, ctx.path(), None, ctx.caller().partition.as_str(), &key.key)
    }

    /// The negative-cache entry of a request on the pass-through track, if a rule covers it.
    /// A rule keyed on body fields needs the body: a small declared one is read here and
    /// returned, to be sent upstream as it was; anything else is not checked.
    pub(super) async fn negative_candidate_for_write(
        &self,
        ctx: &RequestCtx,
        body: Body,
    ) -> Result<(Option<Candidate>, ClientBody), Response> {
        let Some(rule) = self.negative.rule_for(&ctx.parts.method, ctx.path(), false) else {
            return Ok((None, ClientBody::Unread(body)));
        };
        let partition = ctx.caller().partition.as_str();
        if !self.negative.needs_body(rule) {
            let candidate = self.negative.candidate(rule, ctx.path(), None, partition, "");
            return Ok((candidate, ClientBody::Unread(body)));
        }
        if declared_length(&ctx.parts.headers).is_none_or(|len| len > NEGATIVE_BODY_MAX) {
            return Ok((None, ClientBody::Unread(body)));
        }
        let bytes = axum::body::to_bytes(body, NEGATIVE_BODY_MAX as usize).await.map_err(|e| {
            let message = format!("could not read the request body: {e}");
            crate::github::error_response(http::StatusCode::BAD_REQUEST, &message)
        })?;
        let candidate = self.negative.candidate(rule, ctx.path(), Some(&bytes), partition, "");
        Ok((candidate, ClientBody::Read(bytes)))
    }

    /// A remembered futile answer, with the latest rate-limit values.
    fn negative_response(
        &self,
        ctx: &RequestCtx,
        candidate: &Candidate,
        remembered: &Remembered,
    ) -> Response {
        let (status, mut headers, body) = self.negative.answer(candidate, remembered);
        if let Some(limit) = self.budgets.latest(&ctx.caller().partition, "core") {
            limit.apply(&mut headers);
        }
        build_response(status, headers, if ctx.head { Body::empty() } else { Body::from(body) })
    }
}
