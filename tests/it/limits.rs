//! Rate-limit governance end to end: the fake GitHub counts budgets down to zero, answers
//! secondary limits three ways, and records when each identity's requests arrive.

use crate::support;

use std::time::{Duration, Instant};

use support::{FakeGitHub, Resource, outcome, start_gateway};

async fn fake_with(paths: &[&str]) -> FakeGitHub {
    let fake = FakeGitHub::start().await;
    for p in paths {
        fake.put(p, Resource::json(format!(r#"{{"path":"{p}"}}"#)));
    }
    fake
}

#[tokio::test]
async fn after_a_secondary_limit_no_request_of_that_identity_goes_upstream_until_retry_after() {
    let fake = fake_with(&["/repos/o/a", "/repos/o/b", "/repos/o/c"]).await;
    fake.set_max_age(1);
    let gw = start_gateway(&fake.url(), |_| {}).await;
    assert_eq!(outcome(&gw.get("/repos/o/a", Some("a")).await), "MISS");
    fake.secondary_next("retry-after:2");
    let limited = gw.get("/repos/o/b", Some("a")).await;
    assert_eq!(limited.status(), 403);
    let blocked_at = Instant::now();

    // Cached reads keep working: fresh is a HIT, stale is served STALE instead of revalidated.
    assert_eq!(outcome(&gw.get("/repos/o/a", Some("a")).await), "HIT");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = gw.get("/repos/o/a", Some("a")).await;
    assert_eq!((stale.status().as_u16(), outcome(&stale)), (200, "STALE".to_string()));
    // Everything else is answered locally, with retry-after.
    let local = gw.get("/repos/o/c", Some("a")).await;
    assert_eq!(local.status(), 403);
    assert_eq!(outcome(&local), "NEGATIVE");
    let retry: u64 = local.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert!(local.text().await.unwrap().contains("secondary rate limit"));
    let post = gw
        .client
        .post(format!("{}/repos/o/c/issues", gw.url))
        .header("authorization", "token a")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 403);
    // Another identity is not held back.
    assert_eq!(gw.get("/repos/o/c", Some("b")).await.status(), 200);

    let during: Vec<_> = fake
        .request_times("a")
        .into_iter()
        .filter(|t| *t > blocked_at && *t < blocked_at + Duration::from_millis(1900))
        .collect();
    assert!(during.is_empty(), "{} requests of the held-back identity reached GitHub", during.len());

    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(blocked_at.elapsed())).await;
    assert_eq!(gw.get("/repos/o/c", Some("a")).await.status(), 200, "released after retry-after");
}

#[tokio::test]
async fn a_429_without_retry_after_holds_the_identity_for_the_configured_wait() {
    let fake = fake_with(&["/repos/o/a"]).await;
    let gw = start_gateway(&fake.url(), |s| s.limits.secondary_limit_wait = Duration::from_secs(1)).await;
    fake.secondary_next("429");
    assert_eq!(gw.get("/repos/o/a", Some("a")).await.status(), 429);
    let local = gw.get("/repos/o/a", Some("a")).await;
    assert_eq!((local.status().as_u16(), outcome(&local)), (429, "NEGATIVE".to_string()));
    assert!(local.headers().contains_key("retry-after"));
    assert_eq!(fake.requests_for("/repos/o/a"), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gw.get("/repos/o/a", Some("a")).await.status(), 200);
}

#[tokio::test]
async fn a_403_with_no_remaining_budget_stops_the_identity_until_reset() {
    let fake = fake_with(&["/repos/o/a", "/repos/o/b"]).await;
    let gw = start_gateway(&fake.url(), |_| {}).await;
    fake.secondary_next("remaining-0");
    assert_eq!(gw.get("/repos/o/a", Some("a")).await.status(), 403);
    let local = gw.get("/repos/o/b", Some("a")).await;
    assert_eq!((local.status().as_u16(), outcome(&local)), (403, "NEGATIVE".to_string()));
    assert_eq!(local.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(fake.requests_for("/repos/o/b"), 0);
}

#[tokio::test]
async fn an_exhausted_budget_is_answered_locally_in_githubs_shape() {
    let fake = fake_with(&["/repos/o/a", "/repos/o/b", "/repos/o/c", "/repos/o/d"]).await;
    fake.set_limit(3);
    let gw = start_gateway(&fake.url(), |s| s.limits.reserve_percent = 0.0).await;
    for p in ["/repos/o/a", "/repos/o/b", "/repos/o/c"] {
        assert_eq!(gw.get(p, Some("a")).await.status(), 200);
    }
    let local = gw.get("/repos/o/d", Some("a")).await;
    assert_eq!((local.status().as_u16(), outcome(&local)), (403, "NEGATIVE".to_string()));
    assert_eq!(local.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(local.headers()["x-ratelimit-limit"], "3");
    let retry: u64 = local.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 3000, "until the window resets: {retry}");
    let body: serde_json::Value = serde_json::from_str(&local.text().await.unwrap()).unwrap();
    assert!(body["message"].as_str().unwrap().contains("rate limit exceeded"));
    assert!(body["documentation_url"].as_str().unwrap().contains("rate-limits"));
    assert_eq!(fake.requests_for("/repos/o/d"), 0, "no upstream call");
    assert_eq!(gw.metric("ghgate_ratelimit_local_answers_total").await, 1.0);
}

#[tokio::test]
async fn below_the_reserve_stale_entries_are_served_instead_of_spending() {
    let fake = fake_with(&["/repos/o/a", "/repos/o/b", "/repos/o/c", "/repos/o/d"]).await;
    fake.set_max_age(1);
    fake.set_limit(10);
    let gw = start_gateway(&fake.url(), |s| s.limits.reserve_percent = 50.0).await;
    gw.get("/repos/o/a", Some("a")).await;
    for p in ["/repos/o/b", "/repos/o/c", "/repos/o/d"] {
        gw.get(p, Some("a")).await;
    }
    // 4 of 10 used: 6 left, above the reserve of 5.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(outcome(&gw.get("/repos/o/a", Some("a")).await), "REVALIDATED");
    let spend = gw
        .client
        .post(format!("{}/repos/o/x", gw.url))
        .header("authorization", "token a")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(spend.status().is_success());
    // 5 used: 5 left, at the reserve: reads of stale entries do not spend.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = fake.requests_for("/repos/o/b");
    let r = gw.get("/repos/o/b", Some("a")).await;
    assert_eq!((r.status().as_u16(), outcome(&r)), (200, "STALE".to_string()));
    assert_eq!(fake.requests_for("/repos/o/b"), before);
    assert!(gw.metric("ghgate_ratelimit_reserve_stale_total").await >= 1.0);
    // Reads without an entry still go upstream.
    fake.put("/repos/o/new", Resource::json("{}"));
    assert_eq!(outcome(&gw.get("/repos/o/new", Some("a")).await), "MISS");
}

#[tokio::test]
async fn each_protection_can_be_switched_off() {
    let fake = fake_with(&["/repos/o/a", "/repos/o/b"]).await;
    fake.set_limit(1);
    let gw = start_gateway(&fake.url(), |s| {
        s.limits.protect_budget = false;
        s.limits.honor_secondary_limits = false;
    })
    .await;
    assert_eq!(gw.get("/repos/o/a", Some("a")).await.status(), 200);
    // Exhausted, but not protected: GitHub answers for itself.
    assert_eq!(gw.get("/repos/o/b", Some("a")).await.status(), 403);
    assert_eq!(fake.requests_for("/repos/o/b"), 1);
    fake.secondary_next("retry-after:30");
    gw.get("/repos/o/b", Some("c")).await;
    assert_eq!(gw.get("/repos/o/b", Some("c")).await.status(), 200, "not held back");
}

#[tokio::test]
async fn the_ledger_lists_every_identity_without_credentials() {
    let fake = fake_with(&["/repos/o/a"]).await;
    let gw = start_gateway(&fake.url(), |_| {}).await;
    gw.get("/repos/o/a", Some("ghp_secret_one")).await;
    gw.get("/repos/o/a", Some("ghp_secret_two")).await;
    let json = gw.admin_json("/ratelimits").await;
    assert!(!json.to_string().contains("ghp_secret"), "{json}");
    let lines = json["identities"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["resource"], "core");
    assert_eq!(lines[0]["remaining"], 4999);
    assert!(lines[0]["identity"].as_str().unwrap().starts_with("c-"));
    // Metrics count identities per state, never list them.
    let m = gw.metrics().await;
    assert_eq!(
        support::metric_value(&m, "ghgate_ratelimit_identities{resource=\"core\",state=\"ok\"}"),
        2.0,
        "{m}"
    );
    assert!(!m.contains("c-"), "no identity in metric labels");
}

#[tokio::test]
async fn mutating_requests_of_one_identity_are_spaced_apart() {
    let fake = fake_with(&[]).await;
    let gw = start_gateway(&fake.url(), |s| s.limits.write_spacing = Duration::from_secs(1)).await;
    let post = |n: u32| {
        gw.client
            .post(format!("{}/repos/o/r/issues", gw.url))
            .header("authorization", "token w")
            .body(format!("{{\"n\":{n}}}"))
            .send()
    };
    let (a, b) = tokio::join!(post(1), post(2));
    assert!(a.unwrap().status().is_success() && b.unwrap().status().is_success());
    let times = fake.request_times("w");
    assert_eq!(times.len(), 2);
    let gap = times[1].duration_since(times[0]);
    assert!(gap >= Duration::from_millis(990), "writes {gap:?} apart");
    // Reads are not spaced.
    let started = Instant::now();
    gw.get("/repos/o/r", Some("w")).await;
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn an_identity_over_its_concurrency_cap_queues_and_a_full_queue_gets_a_503() {
    let fake = fake_with(&["/repos/o/a", "/repos/o/b", "/repos/o/c"]).await;
    fake.set_delay(Duration::from_millis(400));
    let gw = start_gateway(&fake.url(), |s| {
        s.limits.max_concurrent_per_identity = 1;
        s.limits.max_queued_per_identity = 1;
    })
    .await;
    let (a, b, c) = tokio::join!(
        gw.get("/repos/o/a", Some("q")),
        gw.get("/repos/o/b", Some("q")),
        gw.get("/repos/o/c", Some("q"))
    );
    let mut statuses = vec![a.status().as_u16(), b.status().as_u16(), c.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503]);
    assert_eq!(fake.requests(), 2);
    assert!(gw.metric("ghgate_upstream_queue_overflows_total").await >= 1.0);
}

#[tokio::test]
async fn the_inbound_limiter_keys_on_forwarded_clients_only_behind_trusted_proxies() {
    let fake = fake_with(&["/zen"]).await;
    let limited = |trusted: bool| {
        move |s: &mut ghgate::config::Settings| {
            s.inbound.requests_per_second = 1;
            s.inbound.burst = 1;
            if trusted {
                s.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
            }
        }
    };
    let get_as = |gw: &support::TestGateway, forwarded_for: &str| {
        gw.client.get(format!("{}/zen", gw.url)).header("x-forwarded-for", forwarded_for.to_string()).send()
    };
    let behind_proxy = start_gateway(&fake.url(), limited(true)).await;
    assert_eq!(get_as(&behind_proxy, "203.0.113.1").await.unwrap().status(), 200);
    let second = get_as(&behind_proxy, "203.0.113.1").await.unwrap();
    assert_eq!(second.status(), 429);
    assert!(second.headers().contains_key("retry-after"));
    assert_eq!(
        get_as(&behind_proxy, "203.0.113.2").await.unwrap().status(),
        200,
        "another client has its own bucket"
    );

    // From an untrusted peer the header is ignored: forging it does not buy a new bucket.
    let direct = start_gateway(&fake.url(), limited(false)).await;
    assert_eq!(get_as(&direct, "203.0.113.1").await.unwrap().status(), 200);
    assert_eq!(get_as(&direct, "203.0.113.99").await.unwrap().status(), 429);

    // Switched off, nobody is limited.
    let off = start_gateway(&fake.url(), |s| {
        limited(false)(s);
        s.inbound.limit_enabled = false;
    })
    .await;
    for _ in 0..5 {
        assert_eq!(get_as(&off, "203.0.113.1").await.unwrap().status(), 200);
    }
}

#[tokio::test]
async fn gateway_errors_and_429s_carry_cors_headers_and_preflights_are_answered() {
    let fake = fake_with(&["/zen"]).await;
    let gw = start_gateway(&fake.url(), |s| {
        s.cors.allowed_origins = vec!["https://app.example.com".into()];
        s.inbound.requests_per_second = 1;
        s.inbound.burst = 1;
        s.apps.clear();
    })
    .await;
    let from_app = |method: reqwest::Method, path: &str| {
        gw.client.request(method, format!("{}{path}", gw.url)).header("origin", "https://app.example.com")
    };
    let ok = from_app(reqwest::Method::GET, "/zen").send().await.unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example.com");
    assert!(ok.headers()["access-control-expose-headers"].to_str().unwrap().contains("x-ghgate-cache"));
    let limited = from_app(reqwest::Method::GET, "/zen").send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["access-control-allow-origin"], "https://app.example.com");
    // A 401 made by the gateway (an unknown client key) carries them too.
    let unauthorized = from_app(reqwest::Method::GET, "/zen")
        .header("authorization", "Bearer ghgate_unknown_client_key_000000")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(unauthorized.headers()["access-control-allow-origin"], "https://app.example.com");
    // Preflights are answered by the gateway, not sent upstream.
    let preflight = from_app(reqwest::Method::OPTIONS, "/repos/o/r/issues")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .header("authorization", "token other-client")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-headers"], "authorization, content-type");
    assert!(preflight.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    // Other origins get no CORS headers.
    let other = gw
        .client
        .get(format!("{}/zen", gw.url))
        .header("origin", "https://evil.example")
        .header("authorization", "token x")
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    assert_eq!(fake.log().iter().filter(|(m, _, _)| m == "OPTIONS").count(), 0);
}

#[tokio::test]
async fn replicas_on_redis_share_holds_and_the_ledger() {
    let redis = support::RedisServer::start();
    let fake = fake_with(&["/repos/o/a", "/repos/o/b"]).await;
    let url = redis.url();
    let shared = move |s: &mut ghgate::config::Settings| {
        s.store.backend = ghgate::config::StoreBackend::Redis;
        s.store.redis_url = Some(url.clone());
    };
    let a = start_gateway(&fake.url(), &shared).await;
    let b = start_gateway(&fake.url(), &shared).await;
    fake.secondary_next("retry-after:5");
    assert_eq!(a.get("/repos/o/a", Some("s")).await.status(), 403);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let on_b = b.get("/repos/o/b", Some("s")).await;
    assert_eq!((on_b.status().as_u16(), outcome(&on_b)), (403, "NEGATIVE".to_string()), "B holds back too");
    assert_eq!(fake.requests_for("/repos/o/b"), 0);

    assert_eq!(a.get("/repos/o/b", Some("other")).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let json = b.admin_json("/ratelimits").await;
    let lines = json["identities"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "B lists what A learnt: {json}");
    assert!(lines.iter().any(|l| l["blocked_until"].is_u64()), "{json}");
}
