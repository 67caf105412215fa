//! End-to-end behaviour of the cache: the real gateway on a loopback port in front of the
//! fake GitHub, asserting through the fake's counters what each scenario cost.

use crate::support;

use std::time::Duration;

use support::{FakeGitHub, Resource, outcome, start_gateway};

const REPO: &str = "/repos/octo/hello";
const REPO_JSON: &str = r#"{"id":1,"full_name":"octo/hello"}"#;

#[tokio::test]
async fn thirty_reads_over_several_freshness_periods_cost_one_unit() {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let mut outcomes = Vec::new();
    for _ in 0..30 {
        let r = gw.get(REPO, Some("tok-a")).await;
        assert_eq!(r.status(), 200);
        outcomes.push(outcome(&r));
        assert_eq!(r.text().await.unwrap(), REPO_JSON);
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    // 30 reads × 120 ms ≈ 3.6 s: at least three freshness periods of 1 s.
    assert_eq!(fake.charged(), 1, "only the first read may cost a unit; outcomes: {outcomes:?}");
    assert!(fake.not_modified() >= 3, "stale entries are revalidated for free");
    assert_eq!(outcomes[0], "MISS");
    assert!(outcomes.iter().filter(|o| *o == "REVALIDATED").count() >= 3, "{outcomes:?}");
    assert!(outcomes.iter().filter(|o| *o == "HIT").count() >= 20, "{outcomes:?}");
    let m = gw.metrics().await;
    assert_eq!(support::metric_value(&m, "ghgate_ratelimit_units_spent_total"), 1.0);
    assert_eq!(support::metric_value(&m, "ghgate_ratelimit_units_saved_total"), 29.0);
}

#[tokio::test]
async fn token_b_never_sees_what_token_a_fetched() {
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/secret", Resource::json(r#"{"private":true}"#).private_to(&["tok-a"]));
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |_| {}).await;

    let a = gw.get("/repos/octo/secret", Some("tok-a")).await;
    assert_eq!(a.status(), 200);
    let a2 = gw.get("/repos/octo/secret", Some("tok-a")).await;
    assert_eq!(outcome(&a2), "HIT");

    let b = gw.get("/repos/octo/secret", Some("tok-b")).await;
    assert_eq!(b.status(), 404, "token B gets its own answer from GitHub");
    assert_eq!(outcome(&b), "MISS");
    let anon = gw.get("/repos/octo/secret", None).await;
    assert_eq!(anon.status(), 404, "anonymous callers get their own answer too");
    // The same credential spelt `Bearer` is the same partition.
    let bearer = gw
        .client
        .get(format!("{}/repos/octo/secret", gw.url))
        .header("authorization", "Bearer tok-a")
        .send()
        .await
        .unwrap();
    assert_eq!(outcome(&bearer), "HIT");
    assert_eq!(fake.requests_for("/repos/octo/secret"), 3);

    // Even a public resource goes upstream once per credential: GitHub confirms tok-a's body
    // for tok-b (free, with computed validators), it is never just handed over.
    gw.get(REPO, Some("tok-a")).await;
    let rb = gw.get(REPO, Some("tok-b")).await;
    assert_eq!(outcome(&rb), "REVALIDATED");
    assert_eq!(fake.requests_for(REPO), 2);
}

#[tokio::test]
async fn private_answers_are_never_stored_in_the_shared_anonymous_partition() {
    let fake = FakeGitHub::start().await;
    fake.put("/meta", Resource::json(r#"{"m":1}"#).cache_control("private, max-age=60"));
    fake.put("/zen", Resource::json(r#"{"z":1}"#));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    assert_eq!(outcome(&gw.get("/meta", None).await), "MISS");
    assert_eq!(outcome(&gw.get("/meta", None).await), "MISS");
    // Public answers are shared between anonymous callers.
    assert_eq!(outcome(&gw.get("/zen", None).await), "MISS");
    assert_eq!(outcome(&gw.get("/zen", None).await), "HIT");
}

#[tokio::test]
async fn fifty_concurrent_cold_reads_make_one_upstream_request() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(REPO_JSON));
    fake.set_delay(Duration::from_millis(300));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = gw.client.clone();
        let url = format!("{}{REPO}", gw.url);
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).header("authorization", "token tok-a").send().await.unwrap();
            let o = outcome(&r);
            (r.status(), o, r.text().await.unwrap())
        }));
    }
    let mut counts = std::collections::HashMap::new();
    for t in tasks {
        let (status, o, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, REPO_JSON);
        *counts.entry(o).or_insert(0) += 1;
    }
    assert_eq!(fake.requests(), 1, "outcomes: {counts:?}");
    assert_eq!(counts.get("MISS"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("COALESCED"), Some(&49), "{counts:?}");
}

#[tokio::test]
async fn stale_entry_is_served_when_upstream_fails_within_stale_if_error() {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |s| s.cache.stale_if_error = Duration::from_secs(2)).await;
    assert_eq!(gw.get(REPO, Some("t")).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    fake.fail_always(Some(502));
    let r = gw.get(REPO, Some("t")).await;
    assert_eq!((r.status().as_u16(), outcome(&r)), (200, "STALE".to_string()));
    assert_eq!(r.text().await.unwrap(), REPO_JSON);

    // Past the window the failure reaches the client, in GitHub's error shape.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = gw.get(REPO, Some("t")).await;
    assert_eq!(r.status(), 502);
    fake.fail_always(None);
}

#[tokio::test]
async fn an_unreachable_upstream_gives_a_github_shaped_502_or_the_stale_entry() {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    assert_eq!(gw.get(REPO, Some("t")).await.status(), 200);
    fake.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = gw.get(REPO, Some("t")).await;
    assert_eq!(outcome(&r), "STALE");
    assert_eq!(r.text().await.unwrap(), REPO_JSON);

    let r = gw.get("/repos/octo/never-fetched", Some("t")).await;
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(body["message"].as_str().unwrap().contains("upstream"), "{body}");
    assert!(body["documentation_url"].is_string());
}

#[tokio::test]
async fn a_slow_upstream_gives_a_504_within_the_timeout() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(REPO_JSON));
    fake.set_delay(Duration::from_secs(3));
    let gw = start_gateway(&fake.url(), |s| s.upstream.timeout = Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let r = gw.get(REPO, Some("t")).await;
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn no_store_answers_are_not_stored() {
    let fake = FakeGitHub::start().await;
    fake.put("/user", Resource::json(r#"{"login":"me"}"#).cache_control("private, no-store"));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    for _ in 0..3 {
        let r = gw.get("/user", Some("t")).await;
        assert_eq!(outcome(&r), "MISS");
    }
    assert_eq!(fake.requests_for("/user"), 3);
    // A client's own `no-store` bypasses the cache too.
    fake.put(REPO, Resource::json(REPO_JSON));
    for _ in 0..2 {
        let r = gw
            .client
            .get(format!("{}{REPO}", gw.url))
            .header("cache-control", "no-store")
            .send()
            .await
            .unwrap();
        assert_eq!(outcome(&r), "BYPASS");
    }
    assert_eq!(fake.requests_for(REPO), 2);
}

#[tokio::test]
async fn writes_and_graphql_always_go_upstream_and_invalidate_reads() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    assert_eq!(outcome(&gw.get(REPO, Some("t")).await), "MISS");
    // GitHub confirms t's body for `other` (computed validators): `other` has its own entry.
    assert_eq!(outcome(&gw.get(REPO, Some("other")).await), "REVALIDATED");
    assert_eq!(outcome(&gw.get(REPO, Some("t")).await), "HIT");

    for method in ["POST", "PATCH", "DELETE"] {
        for _ in 0..2 {
            let r = gw
                .client
                .request(method.parse().unwrap(), format!("{}{REPO}", gw.url))
                .header("authorization", "token t")
                .header("content-type", "application/json")
                .body(r#"{"name":"hello2"}"#)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{method}: {}", r.status());
            assert_eq!(outcome(&r), "BYPASS");
        }
    }
    // GraphQL is not cached without a `[[graphql.rules]]` rule: each query goes upstream.
    for _ in 0..2 {
        let graphql = gw
            .client
            .post(format!("{}/graphql", gw.url))
            .header("authorization", "token t")
            .body(r#"{"query":"{viewer{login}}"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(outcome(&graphql), "BYPASS");
        let answer: serde_json::Value = serde_json::from_str(&graphql.text().await.unwrap()).unwrap();
        assert_eq!(answer["data"]["query"], "{viewer{login}}", "request bodies pass through");
    }
    assert_eq!(fake.requests_for("/graphql"), 2);
    let writes = fake.log().iter().filter(|(m, p, _)| m != "GET" && p == REPO).count();
    assert_eq!(writes, 6);

    // The write changed the repository: cached reads, in every partition, are stale now.
    let r = gw.get(REPO, Some("t")).await;
    assert_ne!(outcome(&r), "HIT");
    let r2 = gw.get(REPO, Some("other")).await;
    assert_ne!(outcome(&r2), "HIT");
}

#[tokio::test]
async fn accept_variants_do_not_mix_and_client_spellings_share() {
    let fake = FakeGitHub::start().await;
    let pull = "/repos/octo/hello/pulls/1";
    fake.put(pull, Resource::json(r#"{"number":1}"#).variant("diff", "diff --git a/x b/x"));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let get = |accept: Option<&'static str>| {
        let mut r = gw.client.get(format!("{}{pull}", gw.url)).header("authorization", "token t");
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        async move { r.send().await.unwrap() }
    };
    let json = get(Some("application/vnd.github.v3+json")).await;
    assert_eq!(outcome(&json), "MISS");
    assert_eq!(json.text().await.unwrap(), r#"{"number":1}"#);
    let diff = get(Some("application/vnd.github.v3.diff")).await;
    assert_eq!(outcome(&diff), "MISS");
    assert_eq!(diff.text().await.unwrap(), "diff --git a/x b/x");
    // octocrab (no Accept), gh (empty Accept), PyGithub (*/*) all share the JSON entry.
    for accept in [None, Some(""), Some("*/*"), Some("application/vnd.github+json")] {
        let r = get(accept).await;
        assert_eq!(outcome(&r), "HIT", "accept {accept:?}");
        assert_eq!(r.text().await.unwrap(), r#"{"number":1}"#);
    }
    let diff = get(Some("application/vnd.github.v3.diff")).await;
    assert_eq!(outcome(&diff), "HIT");
    assert_eq!(diff.text().await.unwrap(), "diff --git a/x b/x");
    assert_eq!(fake.requests(), 2);
}

#[tokio::test]
async fn pagination_links_lead_back_through_the_gateway() {
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello/issues", Resource::json("[1,2,3]"));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let mut next = Some(format!("{}/repos/octo/hello/issues", gw.url));
    let mut pages = 0;
    while let Some(url) = next.take() {
        if pages == 4 {
            break;
        }
        assert!(url.starts_with(&gw.url), "link leaves the gateway: {url}");
        let r = gw.client.get(&url).header("authorization", "token t").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(!outcome(&r).is_empty());
        let link = r.headers().get("link").unwrap().to_str().unwrap().to_string();
        assert!(!link.contains(&fake.url()), "upstream URL leaked: {link}");
        next = link
            .split(',')
            .find(|l| l.contains("rel=\"next\""))
            .map(|l| l.trim().trim_start_matches('<').split('>').next().unwrap().to_string());
        pages += 1;
    }
    assert_eq!(pages, 4);
    let seen: Vec<String> = fake.log().into_iter().map(|(_, p, _)| p).collect();
    assert!(seen.contains(&"/repos/octo/hello/issues?page=4".to_string()), "{seen:?}");
}

#[tokio::test]
async fn enterprise_base_paths_are_kept_upstream_and_hidden_from_clients() {
    let fake = FakeGitHub::start_with_prefix("/api/v3").await;
    fake.put("/repos/octo/hello/issues", Resource::json("[]"));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let r = gw.get("/repos/octo/hello/issues", Some("t")).await;
    assert_eq!(r.status(), 200);
    let link = r.headers()["link"].to_str().unwrap();
    assert!(link.starts_with(&format!("<{}/repos/octo/hello/issues?page=2>", gw.url)), "{link}");
    // The configured public URL wins over the Host header.
    let gw2 =
        start_gateway(&fake.url(), |s| s.server.public_url = Some("https://gh.example.com".parse().unwrap()))
            .await;
    let r = gw2.get("/repos/octo/hello/issues", Some("t")).await;
    assert!(r.headers()["link"].to_str().unwrap().starts_with("<https://gh.example.com/repos/"));
}

#[tokio::test]
async fn a_client_conditional_request_that_matches_gets_a_304_from_the_cache() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let first = gw.get(REPO, Some("t")).await;
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let r = gw
        .client
        .get(format!("{}{REPO}", gw.url))
        .header("authorization", "token t")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(outcome(&r), "HIT");
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    let other = gw
        .client
        .get(format!("{}{REPO}", gw.url))
        .header("authorization", "token t")
        .header("if-none-match", "\"nope\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(fake.requests(), 1);
}

#[tokio::test]
async fn a_client_conditional_miss_goes_upstream_as_is_and_costs_nothing() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    // Learn the ETag GitHub gives this token, as a client with its own cache would have.
    let etag = support::client()
        .get(format!("{}{REPO}", fake.url()))
        .header("authorization", "token t")
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .to_str()
        .unwrap()
        .to_string();
    let charged = fake.charged();
    let r = gw
        .client
        .get(format!("{}{REPO}", gw.url))
        .header("authorization", "token t")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(fake.charged(), charged, "the client's free 304 stays free");
}

#[tokio::test]
async fn node_style_no_cache_revalidates_instead_of_bypassing() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    gw.get(REPO, Some("t")).await;
    let r = gw
        .client
        .get(format!("{}{REPO}", gw.url))
        .header("authorization", "token t")
        .header("cache-control", "no-cache")
        .header("pragma", "no-cache")
        .send()
        .await
        .unwrap();
    assert_eq!(outcome(&r), "REVALIDATED");
    assert_eq!(r.text().await.unwrap(), REPO_JSON);
    assert_eq!(fake.charged(), 1);
    assert_eq!(fake.not_modified(), 1);
}

#[tokio::test]
async fn a_changed_resource_is_refetched_on_revalidation() {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    gw.get(REPO, Some("t")).await;
    fake.change(REPO, r#"{"id":1,"full_name":"octo/hello","new":true}"#);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = gw.get(REPO, Some("t")).await;
    assert_eq!(outcome(&r), "MISS");
    assert!(r.text().await.unwrap().contains("new"));
    assert_eq!(outcome(&gw.get(REPO, Some("t")).await), "HIT");
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_in_the_background() {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |s| s.cache.stale_while_revalidate = Duration::from_secs(30)).await;
    gw.get(REPO, Some("t")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fake.set_delay(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let r = gw.get(REPO, Some("t")).await;
    assert_eq!(outcome(&r), "STALE");
    assert!(started.elapsed() < Duration::from_millis(400), "stale answer waited for upstream");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(fake.requests(), 2, "one background revalidation");
    assert_eq!(fake.not_modified(), 1);
    fake.set_delay(Duration::ZERO);
    assert_eq!(outcome(&gw.get(REPO, Some("t")).await), "HIT");
}

#[tokio::test]
async fn cached_answers_carry_the_latest_rate_limit_values() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(REPO_JSON));
    fake.put("/repos/octo/other", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let first = gw.get(REPO, Some("t")).await;
    assert_eq!(first.headers()["x-ratelimit-remaining"], "4999");
    gw.get("/repos/octo/other", Some("t")).await;
    let hit = gw.get(REPO, Some("t")).await;
    assert_eq!(outcome(&hit), "HIT");
    assert_eq!(hit.headers()["x-ratelimit-remaining"], "4998");
    assert_eq!(hit.headers()["x-ratelimit-used"], "2");
    assert!(hit.headers().contains_key("age"));
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry_without_a_body() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    gw.get(REPO, Some("t")).await;
    let r =
        gw.client.head(format!("{}{REPO}", gw.url)).header("authorization", "token t").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(outcome(&r), "HIT");
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    assert_eq!(fake.requests(), 1);
}

#[tokio::test]
async fn bodies_over_the_cap_stream_through_and_are_not_cached() {
    let fake = FakeGitHub::start().await;
    let big = format!("[{}]", vec!["\"0123456789abcdef\""; 4000].join(","));
    fake.put("/repos/octo/hello/contributors", Resource::json(big.clone()));
    let gw = start_gateway(&fake.url(), |s| s.cache.max_body_bytes = 16 * 1024).await;
    for _ in 0..2 {
        let r = gw.get("/repos/octo/hello/contributors", Some("t")).await;
        assert_eq!(outcome(&r), "MISS");
        assert_eq!(r.text().await.unwrap(), big);
    }
    assert_eq!(fake.requests(), 2);
}

#[tokio::test]
async fn rate_limit_endpoint_and_bypass_paths_are_never_cached() {
    let fake = FakeGitHub::start().await;
    fake.put("/rate_limit", Resource::json(r#"{"resources":{}}"#));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    for _ in 0..2 {
        assert_eq!(outcome(&gw.get("/rate_limit", Some("t")).await), "BYPASS");
    }
    assert_eq!(fake.requests(), 2);
}

#[tokio::test]
async fn with_the_cache_disabled_everything_passes_through() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |s| s.cache.enabled = false).await;
    for _ in 0..2 {
        let r = gw.get(REPO, Some("t")).await;
        assert_eq!((r.status().as_u16(), outcome(&r)), (200, "BYPASS".to_string()));
    }
    assert_eq!(fake.requests(), 2);
}

#[tokio::test]
async fn freshness_rules_extend_and_bound_freshness_per_path() {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    fake.put(REPO, Resource::json(REPO_JSON));
    fake.put("/users/octo", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), |s| {
        s.cache.rules.push(ghgate::config::FreshnessRule {
            path: ghgate::path_pattern::PathPattern::parse("/repos/{owner}/{repo}").unwrap(),
            min_fresh: Some(Duration::from_secs(60)),
            max_fresh: None,
            stale_while_revalidate: None,
            stale_if_error: None,
        });
    })
    .await;
    gw.get(REPO, Some("t")).await;
    gw.get("/users/octo", Some("t")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(outcome(&gw.get(REPO, Some("t")).await), "HIT", "min_fresh keeps it fresh");
    assert_eq!(outcome(&gw.get("/users/octo", Some("t")).await), "REVALIDATED");
}

#[tokio::test]
async fn redirects_are_passed_back_with_their_location_behind_the_gateway() {
    let fake = FakeGitHub::start().await;
    fake.redirect("/repos/octo/old-name", 301, "/repositories/42");
    fake.put("/repositories/42", Resource::json(r#"{"id":42}"#));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let r = gw.get("/repos/octo/old-name", Some("t")).await;
    assert_eq!(r.status(), 301, "not followed");
    assert_eq!(r.headers()["location"].to_str().unwrap(), format!("{}/repositories/42", gw.url));
    assert_eq!(fake.requests_for("/repositories/42"), 0);
}

#[tokio::test]
async fn requests_reach_upstream_with_their_method_path_query_and_body_but_no_hop_by_hop_headers() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let body = "x".repeat(3 * 1024 * 1024);
    let r = gw
        .client
        .put(format!("{}/repos/octo/hello/contents/big.txt?ref=main", gw.url))
        .header("authorization", "token t")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("x-custom", "kept")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().len(), body.len(), "a 3 MiB body made the round trip");
    let log = fake.log();
    let (method, path, headers) = log.last().unwrap();
    assert_eq!(method, "PUT");
    assert_eq!(path, "/repos/octo/hello/contents/big.txt?ref=main");
    assert_eq!(headers["x-custom"], "kept");
    assert!(headers.get("x-hop").is_none());
    assert_eq!(headers["authorization"], "token t");
}

#[tokio::test]
async fn upstream_errors_never_echo_the_query_string() {
    let fake = FakeGitHub::start().await;
    let url = fake.url();
    fake.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gw = start_gateway(&url, |_| {}).await;
    let r = gw.get("/applications/grant?client_secret=hunter2", None).await;
    assert_eq!(r.status(), 502);
    assert!(!r.text().await.unwrap().contains("hunter2"));
}

#[tokio::test]
async fn upstream_urls_in_json_bodies_point_at_the_gateway() {
    let fake = FakeGitHub::start().await;
    let base = fake.url();
    let json = format!(
        r#"{{"url":"{base}/repos/octo/hello","issues_url":"{base}/repos/octo/hello/issues{{/number}}","html_url":"https://github.com/octo/hello","description":"mirror of {base}/x"}}"#
    );
    fake.put(REPO, Resource::json(json.clone()));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let expected = json.replace(&format!("\"{base}/"), &format!("\"{}/", gw.url));
    assert_ne!(expected, json);
    assert!(expected.contains(r#""html_url":"https://github.com/octo/hello""#), "other hosts stay");
    assert!(expected.contains(&format!("mirror of {base}/x")), "URLs inside text stay");
    for (token, want) in [("tok-a", "MISS"), ("tok-a", "HIT"), ("tok-b", "REVALIDATED")] {
        let r = gw.get(REPO, Some(token)).await;
        assert_eq!(outcome(&r), want);
        let length: usize = r.headers()["content-length"].to_str().unwrap().parse().unwrap();
        let body = r.text().await.unwrap();
        assert_eq!(body, expected, "{want}");
        assert_eq!(length, body.len(), "Content-Length follows");
    }
    let head = gw
        .client
        .head(format!("{}{REPO}", gw.url))
        .header("authorization", "token tok-a")
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["content-length"].to_str().unwrap(), expected.len().to_string());
    // A pass-through JSON answer (a write) too.
    let echo = format!(r#"{{"url":"{base}/repos/octo/hello/issues/1"}}"#);
    let r = gw
        .client
        .post(format!("{}{REPO}/issues", gw.url))
        .header("authorization", "token tok-a")
        .body(echo)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), format!(r#"{{"url":"{}/repos/octo/hello/issues/1"}}"#, gw.url));

    // Switched off, clients get GitHub's bytes.
    let raw = start_gateway(&fake.url(), |s| s.server.rewrite_body_urls = false).await;
    assert_eq!(raw.get(REPO, Some("tok-a")).await.text().await.unwrap(), json);
}
