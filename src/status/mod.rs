//! The status page on the admin listener: one self-contained HTML page (`GET /`) that polls
//! `GET /status.json` every few seconds and draws the hit ratio, units spent versus saved per
//! minute, budgets and recent events — no build step, no external assets.
//!
//! The page itself holds no data, so it is served without the admin token; the JSON behind it
//! is protected like the rest of the admin API, and the page asks for the token when needed.
//! Its inline script and style are allowed by hash in a strict Content-Security-Policy.

use std::sync::LazyLock;
use std::time::SystemTime;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::pipeline::Gateway;
use crate::store::Health;

const HTML: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// The assembled page and its Content-Security-Policy, built once.
static PAGE: LazyLock<(String, String)> = LazyLock::new(|| {
    let hash = |text: &str| base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()));
    let csp = format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; connect-src 'self'; \
         img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash(SCRIPT),
        hash(STYLE)
    );
    (HTML.replace("{{STYLE}}", STYLE).replace("{{SCRIPT}}", SCRIPT), csp)
});

/// `GET /`: the page.
pub fn page() -> Response {
    let (html, csp) = &*PAGE;
    let mut response = html.clone().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if let Ok(value) = HeaderValue::from_str(csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

/// `GET /status.json`: everything the page draws. Identities are partition ids, never
/// credentials; events name rules, repositories and paths only.
pub async fn data(gateway: &Gateway) -> serde_json::Value {
    let now = SystemTime::now();
    let epoch = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let responses = gateway.responses();
    responses.maintain().await;
    gateway.report_to_fleet().await;
    let activity = &gateway.metrics().activity;
    let totals = gateway.metrics().totals();
    let health = match responses.health() {
        Health::Ok => "ok".to_string(),
        Health::Degraded(reason) => format!("degraded ({reason})"),
    };
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": epoch(now),
        "uptime_seconds": activity.started().map_or(0, |s| now.duration_since(s).unwrap_or_default().as_secs()),
        "store": {
            "location": responses.location(),
            "health": health,
            "entries": responses.entry_count(),
            "bytes": responses.size_bytes(),
            "max_bytes": gateway.settings().cache.max_bytes,
        },
        "totals": {
            "answers": totals.answers,
            "local": totals.local,
            "spent": totals.spent,
            "saved": totals.saved,
        },
        "minutes": activity.last_minutes(now, 60, totals),
        "replica": gateway.fleet().replica().name,
        "fleet": gateway.fleet().view().await,
        "budgets": gateway.budgets().lines().await,
        "events": activity.recent_events(),
    })
}
