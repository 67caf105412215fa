//! Phase 6, store: keep what the policy (`cache::policy`) allows, as an entry detached from
//! the connection's buffers, in the memory tier and the backend.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::Gateway;
use super::fill::FillRequest;
use crate::cache::CachedResponse;
use crate::cache::policy;
use crate::github;

/// An answer to store. Stored headers and bodies are copies detached from connection buffers;
/// each is copied once.
pub(super) enum Stored<'a> {
    /// Fetched just now: headers and body are copied here.
    Fetched { headers: &'a HeaderMap, body: &'a Bytes },
    /// A 304 refresh: the prior entry's headers merged with the 304's (both already detached)
    /// and the prior entry's body, shared.
    Refreshed { headers: HeaderMap, body: Bytes },
}

impl Stored<'_> {
    fn headers(&self) -> &HeaderMap {
        match self {
            Stored::Fetched { headers, .. } => headers,
            Stored::Refreshed { headers, .. } => headers,
        }
    }
}

impl Gateway {
    /// Phase 6: stores the answer to `request` if the policy allows, returning the entry.
    pub(super) async fn store(
        &self,
        request: &FillRequest,
        status: StatusCode,
        answer: Stored<'_>,
        credential_tag: Option<u64>,
    ) -> Option<Arc<CachedResponse>> {
        let now = SystemTime::now();
        let partition = &request.caller.partition;
        let verdict = self.policy.evaluate(
            partition,
            &request.path,
            &request.headers,
            status,
            answer.headers(),
            now,
        )?;
        let (headers, body, refreshed) = match answer {
            // Copies of exactly the body's size and of each header value: the chunk the body
            // came in may be a slice of a much larger read buffer, which would stay pinned for
            // the entry's whole life (and so would the header block's buffer).
            Stored::Fetched { headers, body } => {
                (detach_headers(headers), Bytes::copy_from_slice(body), false)
            }
            Stored::Refreshed { headers, body } => (headers, body, true),
        };
        let vary = policy::extra_vary_names(&headers)
            .into_iter()
            .map(|name| {
                let value = request.headers.get(&name).cloned();
                (name, value)
            })
            .collect();
        let key = &request.key;
        let entry = Arc::new(CachedResponse {
            status,
            headers,
            body,
            response_time: now,
            initial_age: verdict.initial_age,
            freshness: verdict.freshness,
            vary,
            path_key: key.path_key.clone(),
            credential_tag,
            body_urls: Default::default(),
        });
        self.metrics.cache_stores.increment(1);
        let ttl = entry.time_to_keep(now);
        let stored = if refreshed {
            self.responses.put_refreshed(key.key.clone(), Arc::clone(&entry), ttl).await
        } else {
            self.responses.put(key.key.clone(), Arc::clone(&entry), ttl).await
        };
        if let Err(e) = stored {
            // The memory tier has it; the backend's failure is counted and logged by the backend.
            tracing::debug!(error = %e, "cache entry kept in memory only");
        }
        Some(entry)
    }
}

/// Copies header values out of the connection's read buffer (hyper hands out slices of it),
/// so a stored entry pins only its own bytes; GitHub's usual names and values become static
/// ones ([`github::intern_header`]), which every hit then copies for free.
pub(super) fn detach_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        let (name, copy) = github::intern_header(name.clone(), copy);
        out.append(name, copy);
    }
    out
}
