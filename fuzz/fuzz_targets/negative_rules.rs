//! The negative-cache rule matcher: built-in rules plus an operator rule, fed arbitrary
//! methods, paths and bodies, and arbitrary 422/404 answers to classify. Input: a method byte,
//! then `path \n request body \n answer body`.
#![no_main]

use std::sync::{Arc, LazyLock};

use ghgate::config::{NegativeRuleSettings, NegativeSettings};
use ghgate::negative::NegativeCache;
use http::{HeaderMap, Method, StatusCode};
use libfuzzer_sys::fuzz_target;

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().unwrap());

static CACHE: LazyLock<NegativeCache> = LazyLock::new(|| {
    let mut settings = NegativeSettings::default();
    settings.rules.push(NegativeRuleSettings {
        name: "fuzz_rule".into(),
        enabled: true,
        method: "POST".into(),
        path: ghgate::path_pattern::PathPattern::parse("/repos/{owner}/{repo}/issues/{number}/labels")
            .unwrap(),
        status: vec![422],
        phrase: Some("already exists".into()),
        key: vec!["number".into(), "body.name=none".into()],
        ttl: std::time::Duration::from_secs(60),
        per_credential: true,
    });
    let store = Arc::new(ghgate::store::MemoryStore::new(1 << 20));
    NegativeCache::new(
        &settings,
        std::time::Duration::from_secs(60),
        store,
        &ghgate::telemetry::Metrics::new(),
    )
    .expect("the fuzz rule is valid")
});

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else { return };
    let method =
        [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE][m as usize % 5].clone();
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let Ok(path) = std::str::from_utf8(parts.next().unwrap_or_default()) else { return };
    let request_body = parts.next().unwrap_or_default();
    let answer_body = parts.next().unwrap_or_default();
    let cache = &*CACHE;
    let Some(rule) = cache.rule_for(&method, path, m % 2 == 0) else { return };
    let body = cache.needs_body(rule).then_some(request_body);
    let Some(candidate) = cache.candidate(rule, path, body, "p-fuzz", path) else { return };
    assert!(candidate.key.starts_with("n:"), "entries live under n:");
    let status = if m % 3 == 0 { StatusCode::NOT_FOUND } else { StatusCode::UNPROCESSABLE_ENTITY };
    RUNTIME.block_on(async {
        cache.consider(&candidate, status, &HeaderMap::new(), answer_body).await;
        if let Some(remembered) = cache.lookup(&candidate).await {
            let (status, _, _) = cache.answer(&candidate, &remembered);
            assert!(status.as_u16() >= 200);
        }
    });
});
