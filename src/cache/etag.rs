//! GitHub's ETag rule, and the validators it lets ghgate compute.
//!
//! GitHub's REST ETag is not opaque (observed and published by bored-engineer's
//! github-conditional-http-transport, Feb 2025; undocumented by GitHub): it is SHA-256 over the
//! request's `Accept`, `Authorization` and `Cookie` values, where present, each followed by `:`,
//! then the uncompressed body, in hex. So for a body ghgate holds, it can compute the ETag
//! GitHub would give any credential for the same bytes, and ask GitHub — with that credential —
//! whether they are still what it would send: a free 304 when they are, GitHub's own answer
//! (paid, as it would have been anyway) when they are not. GitHub authorises every such
//! request, so nothing is served that the asking credential could not read.
//!
//! The rule may change without notice; [`Canary`] checks it on every 200 and turns the
//! cross-credential use off while it stops holding.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, COOKIE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

use super::CachedResponse;
use super::entry::weak_eq;

/// The request header values GitHub's ETag covers, as one request sent them, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EtagBasis(Vec<HeaderValue>);

impl EtagBasis {
    /// The `Accept`, `Authorization` and `Cookie` values of a request about to go upstream.
    pub(crate) fn of(headers: &HeaderMap) -> EtagBasis {
        let values = [ACCEPT, AUTHORIZATION, COOKIE].iter().flat_map(|name| headers.get_all(name)).cloned();
        EtagBasis(values.collect())
    }

    /// The ETag GitHub gives `body` for a request with these values: `"<hex>"`.
    pub(crate) fn etag_of(&self, body: &[u8]) -> String {
        let mut hasher = Sha256::new();
        for value in &self.0 {
            hasher.update(value.as_bytes());
            hasher.update(b":");
        }
        hasher.update(body);
        let mut tag = String::with_capacity(66);
        tag.push('"');
        tag.push_str(&hex::encode(hasher.finalize()));
        tag.push('"');
        tag
    }
}

/// A body a conditional request offers GitHub, by the ETag computed for it.
#[derive(Debug, Clone)]
pub(crate) struct Offer {
    /// The computed ETag, quoted.
    pub etag: String,
    /// Index into [`Conditional::candidates`].
    pub candidate: usize,
}

/// The validators of one conditional request: the entry being revalidated (this partition's
/// own), and bodies other partitions hold for the same representation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Conditional {
    /// This partition's entry, if any.
    pub own: Option<Arc<CachedResponse>>,
    /// Entries of other partitions for the same path, query, `Accept` and API version, most
    /// recent first; distinct bodies only.
    pub siblings: Vec<Arc<CachedResponse>>,
    /// Whether to compute ETags at all (off: the own entry's stored validators only).
    pub compute: bool,
}

impl Conditional {
    /// A request for this partition's own entry alone.
    pub(crate) fn own(own: Option<Arc<CachedResponse>>, compute: bool) -> Conditional {
        Conditional { own, siblings: Vec::new(), compute }
    }

    /// Every entry offered: the own one first.
    pub(crate) fn candidates(&self) -> impl Iterator<Item = &Arc<CachedResponse>> {
        self.own.iter().chain(self.siblings.iter())
    }

    /// The candidate at `index` (as numbered by [`Conditional::candidates`]).
    pub(crate) fn candidate(&self, index: usize) -> Option<&Arc<CachedResponse>> {
        self.candidates().nth(index)
    }

    /// Whether there is anything to offer.
    pub(crate) fn is_empty(&self) -> bool {
        self.own.is_none() && self.siblings.is_empty()
    }

    /// Sets `If-None-Match` (computed ETags of each distinct body for exactly the values in
    /// `basis`, plus the own entry's stored ETag) and `If-Modified-Since` (the own entry's
    /// `Last-Modified`) on a request about to go upstream. Returns what was offered.
    pub(crate) fn apply(&self, basis: &EtagBasis, headers: &mut HeaderMap) -> Vec<Offer> {
        let mut offers: Vec<Offer> = Vec::new();
        if self.compute {
            let mut seen: Vec<&Bytes> = Vec::new();
            for (candidate, entry) in self.candidates().enumerate() {
                if seen.iter().any(|body| **body == entry.body) {
                    continue;
                }
                seen.push(&entry.body);
                offers.push(Offer { etag: basis.etag_of(&entry.body), candidate });
            }
        }
        let mut tags: Vec<&str> = offers.iter().map(|o| o.etag.as_str()).collect();
        let stored = self.own.as_ref().and_then(|own| own.etag()).and_then(|e| e.to_str().ok());
        if let Some(stored) = stored {
            if !tags.iter().any(|t| weak_eq(t, stored)) {
                tags.push(stored);
            }
        }
        if !tags.is_empty() {
            if let Ok(value) = HeaderValue::from_str(&tags.join(", ")) {
                headers.insert(IF_NONE_MATCH, value);
            }
        }
        if let Some(modified) = self.own.as_ref().and_then(|own| own.last_modified()) {
            headers.insert(IF_MODIFIED_SINCE, modified.clone());
        }
        offers
    }

    /// Which candidate a 304 confirmed. The 304's `ETag` names it among the offers; a 304
    /// without one can only be trusted when nothing but the own entry was offered.
    pub(crate) fn confirmed(
        &self,
        offers: &[Offer],
        not_modified: &HeaderMap,
    ) -> Option<Arc<CachedResponse>> {
        let etag = not_modified.get(ETAG).and_then(|e| e.to_str().ok());
        if let Some(etag) = etag {
            if let Some(offer) = offers.iter().find(|o| weak_eq(&o.etag, etag)) {
                return self.candidate(offer.candidate).cloned();
            }
            let own_stored = self.own.as_ref().and_then(|own| own.etag()).and_then(|e| e.to_str().ok());
            if own_stored.is_some_and(|stored| weak_eq(stored, etag)) {
                return self.own.clone();
            }
        }
        let only_own = offers.iter().all(|o| o.candidate == 0) && self.siblings.is_empty();
        if only_own { self.own.clone() } else { None }
    }
}

/// Checks GitHub's ETag rule against real answers: every 200 with an ETag is compared with the
/// ETag computed from the request sent and the body received. While mismatches dominate the
/// recent window, computed ETags are not offered for other partitions' bodies (a wrong guess
/// costs nothing, but neither does it save anything, and it would hide a changed rule).
#[derive(Debug, Default)]
pub(crate) struct Canary {
    matches: AtomicU32,
    mismatches: AtomicU32,
    distrusted: AtomicBool,
}

/// Observations kept before the window is halved (so old answers fade).
const CANARY_WINDOW: u32 = 200;
/// Observations needed before the canary may distrust the rule.
const CANARY_MIN: u32 = 20;

/// What the canary concluded after one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The rule held (or did not, without changing the conclusion).
    Unchanged,
    /// Mismatches now dominate: computed ETags stop crossing partitions.
    Distrusted,
    /// Matches dominate again: they resume.
    Trusted,
}

impl Canary {
    /// Records whether GitHub's ETag for `body` matched the computed one. `None` when the
    /// answer had no ETag (nothing to learn).
    pub(crate) fn observe(
        &self,
        basis: &EtagBasis,
        body: &[u8],
        etag: Option<&HeaderValue>,
    ) -> Option<(bool, Verdict)> {
        let etag = etag?.to_str().ok()?;
        let matched = weak_eq(&basis.etag_of(body), etag);
        Some((matched, self.record(matched)))
    }

    /// Counts one observation and re-judges.
    pub(crate) fn record(&self, matched: bool) -> Verdict {
        let counter = if matched { &self.matches } else { &self.mismatches };
        counter.fetch_add(1, Ordering::Relaxed);
        let (good, bad) = (self.matches.load(Ordering::Relaxed), self.mismatches.load(Ordering::Relaxed));
        if good + bad > CANARY_WINDOW {
            self.matches.store(good / 2, Ordering::Relaxed);
            self.mismatches.store(bad / 2, Ordering::Relaxed);
        }
        let distrust = good + bad >= CANARY_MIN && bad > good;
        let was = self.distrusted.swap(distrust, Ordering::Relaxed);
        match (was, distrust) {
            (false, true) => Verdict::Distrusted,
            (true, false) => Verdict::Trusted,
            _ => Verdict::Unchanged,
        }
    }

    /// Whether computed ETags may be offered for other partitions' bodies.
    pub(crate) fn trusted(&self) -> bool {
        !self.distrusted.load(Ordering::Relaxed)
    }
}

/// Headers of a stored answer that belong to the credential that fetched it, not to the
/// resource: dropped before another partition adopts the body (its own 304 brings its own).
const CREDENTIAL_HEADERS: [&str; 11] = [
    "x-oauth-scopes",
    "x-oauth-client-id",
    "x-github-sso",
    "github-authentication-token-expiration",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-used",
    "x-ratelimit-resource",
    "x-github-request-id",
    "set-cookie",
];

/// A sibling entry's headers as a starting point for another partition's entry.
pub(crate) fn without_credential_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in CREDENTIAL_HEADERS {
        out.remove(name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn basis(pairs: &[(&str, &str)]) -> EtagBasis {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        EtagBasis::of(&h)
    }

    /// Vectors computed independently (`printf '...' | sha256sum`).
    #[test]
    fn etags_follow_githubs_rule() {
        assert_eq!(
            basis(&[]).etag_of(b""),
            "\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\""
        );
        // sha256("application/vnd.github+json:Bearer x:{}")
        assert_eq!(
            basis(&[
                ("authorization", "Bearer x"),
                ("accept", "application/vnd.github+json"),
                ("user-agent", "u")
            ])
            .etag_of(b"{}"),
            format!("\"{}\"", hex::encode(Sha256::digest(b"application/vnd.github+json:Bearer x:{}")))
        );
        assert_ne!(
            basis(&[("authorization", "token x")]).etag_of(b"{}"),
            basis(&[("authorization", "Bearer x")]).etag_of(b"{}")
        );
    }

    fn entry(body: &'static [u8], etag: Option<&'static str>) -> Arc<CachedResponse> {
        let mut headers = HeaderMap::new();
        if let Some(e) = etag {
            headers.insert(ETAG, HeaderValue::from_static(e));
        }
        Arc::new(CachedResponse {
            status: http::StatusCode::OK,
            headers,
            body: Bytes::from_static(body),
            response_time: SystemTime::now(),
            initial_age: Duration::ZERO,
            freshness: super::super::Freshness {
                fresh_for: Duration::ZERO,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                keep_stale_for: Duration::from_secs(60),
            },
            vary: Vec::new(),
            path_key: "/x".into(),
            credential_tag: None,
            body_urls: Default::default(),
        })
    }

    #[test]
    fn offers_one_etag_per_distinct_body_and_names_the_confirmed_one() {
        let own = entry(b"old", Some("W/\"stored\""));
        let sibling = entry(b"new", None);
        let same_as_sibling = entry(b"new", None);
        let c = Conditional { own: Some(own), siblings: vec![sibling, same_as_sibling], compute: true };
        let b = basis(&[("authorization", "Bearer t")]);
        let mut headers = HeaderMap::new();
        let offers = c.apply(&b, &mut headers);
        assert_eq!(offers.len(), 2, "the duplicate body is offered once");
        let inm = headers.get(IF_NONE_MATCH).unwrap().to_str().unwrap();
        assert!(
            inm.contains(&b.etag_of(b"old"))
                && inm.contains(&b.etag_of(b"new"))
                && inm.contains("W/\"stored\"")
        );

        let mut answer = HeaderMap::new();
        answer.insert(ETAG, HeaderValue::from_str(&format!("W/{}", b.etag_of(b"new"))).unwrap());
        assert_eq!(c.confirmed(&offers, &answer).unwrap().body, "new");
        // A 304 without an ETag, with bodies of other partitions offered: not trusted.
        assert!(c.confirmed(&offers, &HeaderMap::new()).is_none());
        // ... with the own entry alone: the own entry (as before computed validators).
        let alone = Conditional::own(c.own.clone(), true);
        let offers = alone.apply(&b, &mut HeaderMap::new());
        assert_eq!(alone.confirmed(&offers, &HeaderMap::new()).unwrap().body, "old");
    }

    #[test]
    fn switched_off_only_the_stored_validators_go() {
        let c = Conditional::own(Some(entry(b"old", Some("\"stored\""))), false);
        let mut headers = HeaderMap::new();
        assert!(c.apply(&basis(&[]), &mut headers).is_empty());
        assert_eq!(headers.get(IF_NONE_MATCH).unwrap(), "\"stored\"");
    }

    #[test]
    fn the_canary_distrusts_a_changed_rule_and_trusts_it_again() {
        let canary = Canary::default();
        for _ in 0..10 {
            assert_eq!(canary.record(true), Verdict::Unchanged);
        }
        let mut verdicts = Vec::new();
        for _ in 0..20 {
            verdicts.push(canary.record(false));
        }
        assert!(verdicts.contains(&Verdict::Distrusted));
        assert!(!canary.trusted());
        let mut verdicts = Vec::new();
        for _ in 0..40 {
            verdicts.push(canary.record(true));
        }
        assert!(verdicts.contains(&Verdict::Trusted));
        assert!(canary.trusted());
    }
}
