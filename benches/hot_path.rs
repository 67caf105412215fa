//! Microbenchmarks of the functions every cache hit runs: partition derivation, key
//! derivation, the freshness and conditional checks, and header rewriting. Each group
//! also times a baseline in the same run — cloning a GitHub answer's header map, which
//! every hit does anyway — so results can be quoted as ratios.
//!
//! `cargo bench --bench hot_path`

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use ghgate::cache::{CacheKey, CachedResponse, Freshness};
use ghgate::identity::Partitioner;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

fn github_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("cache-control", "private, max-age=60, s-maxage=60"),
        ("vary", "Accept, Authorization, Cookie, X-GitHub-OTP, Accept-Encoding, X-Requested-With"),
        ("etag", "W/\"5f2b8c7e9a1d3f4b6c8e0a2d4f6b8c0e\""),
        ("last-modified", "Tue, 15 Nov 2026 12:45:26 GMT"),
        ("content-type", "application/json; charset=utf-8"),
        ("x-github-media-type", "github.v3; format=json"),
        ("x-ratelimit-limit", "5000"),
        ("x-ratelimit-remaining", "4987"),
        ("x-ratelimit-reset", "1795000000"),
        ("x-ratelimit-used", "13"),
        ("x-ratelimit-resource", "core"),
        ("x-github-request-id", "C0DE:1234:5678AB:9ABCDE:65A0B1C2"),
        (
            "link",
            "<https://api.github.com/repositories/1/issues?page=2>; rel=\"next\", <https://api.github.com/repositories/1/issues?page=34>; rel=\"last\"",
        ),
        ("date", "Sun, 22 Nov 2026 18:00:00 GMT"),
    ] {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_static("token ghs_16C7e42F292c6912E7710c838347Ae178B4a"));
    h.insert("accept", HeaderValue::from_static("application/vnd.github.v3+json"));
    h.insert("user-agent", HeaderValue::from_static("octokit-rest.js/20.0.2"));
    h.insert("if-none-match", HeaderValue::from_static("W/\"5f2b8c7e9a1d3f4b6c8e0a2d4f6b8c0e\""));
    h
}

fn entry() -> CachedResponse {
    CachedResponse {
        status: StatusCode::OK,
        headers: github_headers(),
        body: Bytes::from(vec![b'x'; 6000]),
        response_time: SystemTime::now(),
        initial_age: Duration::ZERO,
        freshness: Freshness {
            fresh_for: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::from_secs(300),
            keep_stale_for: Duration::from_secs(86400),
        },
        vary: vec![
            (HeaderName::from_static("cookie"), None),
            (HeaderName::from_static("x-github-otp"), None),
        ],
        path_key: "/repositories/1/issues".into(),
        credential_tag: None,
        body_urls: Default::default(),
    }
}

fn hot_path(c: &mut Criterion) {
    let partitioner = Partitioner::new(b"bench-secret-0123456789abcdef");
    let req = request_headers();
    let res = github_headers();
    let e = entry();
    let mut group = c.benchmark_group("hit_path");
    group.bench_function("baseline: clone answer headers", |b| b.iter(|| black_box(res.clone())));
    group.bench_function("partition (HMAC-SHA256 of credential)", |b| {
        b.iter(|| black_box(partitioner.partition(black_box(&req))))
    });
    let partition = partitioner.partition(&req);
    group.bench_function("cache key", |b| {
        b.iter(|| {
            black_box(CacheKey::new(
                &partition,
                black_box("/repos/octo/hello/issues?page=2&per_page=100"),
                &req,
            ))
        })
    });
    group.bench_function("freshness + vary + conditional checks", |b| {
        b.iter(|| {
            let now = SystemTime::now();
            black_box(e.is_fresh(now) && e.vary_matches(&req) && e.satisfies_conditional(&req))
        })
    });
    group.bench_function("rewrite Link header", |b| {
        b.iter(|| {
            let mut h = res.clone();
            ghgate::rewrite::rewrite_headers(&mut h, "https://api.github.com", "http://127.0.0.1:8080");
            black_box(h)
        })
    });
    group.finish();

    // What a stored answer's headers cost to copy onto each hit: as parsed off the wire (names
    // and values reference-counted) against GitHub's usual ones interned as static values.
    let parsed: HeaderMap = res
        .iter()
        .map(|(k, v)| {
            (
                HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            )
        })
        .collect();
    let interned: HeaderMap =
        parsed.iter().map(|(k, v)| ghgate::github::intern_header(k.clone(), v.clone())).collect();
    let mut group = c.benchmark_group("stored_headers");
    group.bench_function("baseline: copy parsed headers", |b| b.iter(|| black_box(parsed.clone())));
    group.bench_function("copy interned headers", |b| b.iter(|| black_box(interned.clone())));
    group.finish();

    // A GraphQL body (gh pr list's query, 512 bytes): reading it whole (JSON, the document
    // parsed, operation, mentions, fingerprint) against parsing its JSON alone, and the
    // SHA-256 a remembered body costs instead (`graphql::Reader`).
    let body = serde_json::json!({
        "query": "query PullRequestList($owner: String!, $repo: String!, $limit: Int!, $endCursor: String, $state: [PullRequestState!] = OPEN) {
  repository(owner: $owner, name: $repo) {
    pullRequests(states: $state, first: $limit, after: $endCursor, orderBy: {field: CREATED_AT, direction: DESC}) {
      totalCount
      nodes { number title state url author { login } headRefName isDraft createdAt }
      pageInfo { hasNextPage endCursor }
    }
  }
}",
        "variables": {"owner": "org", "repo": "r0", "limit": 30},
    })
    .to_string()
    .into_bytes();
    let mut group = c.benchmark_group("graphql_body");
    group.bench_function("baseline: parse the JSON", |b| {
        b.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap()))
    });
    group.bench_function("graphql::read (parse, operation, fingerprint)", |b| {
        b.iter(|| black_box(ghgate::graphql::read(black_box(&body)).unwrap()))
    });
    group.bench_function("SHA-256 of the body (a remembered read)", |b| {
        b.iter(|| black_box(<sha2::Sha256 as sha2::Digest>::digest(black_box(&body))))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = hot_path
}
criterion_main!(benches);
