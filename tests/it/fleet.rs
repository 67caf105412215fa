//! Fleet-wide free revalidation: bodies one credential fetched are offered to GitHub by
//! computed ETag when another credential asks (see `cache::etag`). The fake computes ETags as
//! GitHub does, so every figure here is what GitHub would charge.

use crate::support;

use std::time::Duration;

use ghgate::config::{Settings, StoreBackend};
use support::app::{add_app, client, fake_with_app};
use support::{FakeGitHub, RedisServer, Resource, TestGateway, outcome, start_gateway};

const REPO: &str = "/repos/octo/hello";
const REPO_JSON: &str = r#"{"id":1,"full_name":"octo/hello"}"#;

async fn get_as(
    gw: &TestGateway,
    path: &str,
    authorization: &str,
    accept: Option<&str>,
) -> reqwest::Response {
    let mut r = gw.client.get(format!("{}{path}", gw.url)).header("authorization", authorization);
    if let Some(accept) = accept {
        r = r.header("accept", accept);
    }
    r.send().await.unwrap()
}

/// The `If-None-Match` of the last upstream request for `path`.
fn last_if_none_match(fake: &FakeGitHub, path: &str) -> Option<String> {
    let (_, _, headers) = fake.log().into_iter().rev().find(|(_, p, _)| p == path).unwrap();
    headers.get("if-none-match").map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn every_spelling_of_one_credential_revalidates_for_free() {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let reads = [
        ("token tok-a", None),
        ("Bearer tok-a", None),
        ("token tok-a", None),
        ("token tok-a", Some("application/vnd.github.v3+json")),
        ("BEARER   tok-a", Some("*/*")),
    ];
    let mut outcomes = Vec::new();
    for (i, (authorization, accept)) in reads.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
        let r = get_as(&gw, REPO, authorization, *accept).await;
        assert_eq!(r.status(), 200);
        outcomes.push(outcome(&r));
        assert_eq!(r.text().await.unwrap(), REPO_JSON);
    }
    assert_eq!(fake.charged(), 1, "one unit for five reads in five spellings: {outcomes:?}");
    assert_eq!(outcomes[1..], ["REVALIDATED"; 4], "{outcomes:?}");
    // Upstream saw one spelling: the one the key stands for.
    for (_, path, headers) in fake.log() {
        if path == REPO {
            assert_eq!(headers.get("authorization").unwrap(), "Bearer tok-a");
            assert_eq!(headers.get("accept").unwrap(), "application/vnd.github+json");
        }
    }
}

#[tokio::test]
async fn a_second_credential_gets_a_held_body_confirmed_for_free() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    assert_eq!(outcome(&gw.get(REPO, Some("tok-a")).await), "MISS");
    let b = gw.get(REPO, Some("tok-b")).await;
    assert_eq!(outcome(&b), "REVALIDATED", "GitHub confirmed tok-b's ETag of tok-a's body");
    assert_eq!(b.headers().get("x-ratelimit-remaining").unwrap(), "5000", "tok-b's own rate-limit headers");
    assert_eq!(b.text().await.unwrap(), REPO_JSON);
    assert_eq!(fake.charged(), 1, "the fleet paid once");
    // The body is now tok-b's own entry.
    assert_eq!(outcome(&gw.get(REPO, Some("tok-b")).await), "HIT");
    // And a third credential, anonymous included, is offered the same body.
    assert_eq!(outcome(&gw.get(REPO, Some("tok-c")).await), "REVALIDATED");
    assert_eq!(outcome(&gw.get(REPO, None).await), "REVALIDATED");
    assert_eq!(fake.charged(), 1);
    let m = gw.metrics().await;
    assert_eq!(support::metric_value(&m, "ghgate_shared_revalidations_total"), 3.0);
    assert!(support::metric_value(&m, "ghgate_etag_algorithm_total{result=\"match\"}") >= 1.0);
    assert_eq!(support::metric_value(&m, "ghgate_etag_algorithm_total{result=\"mismatch\"}"), 0.0);
    assert_eq!(support::metric_value(&m, "ghgate_etag_algorithm_trusted"), 1.0);
}

#[tokio::test]
async fn a_private_body_reaches_only_credentials_github_lets_read_it() {
    let fake = FakeGitHub::start().await;
    let secret = "/repos/octo/secret";
    fake.put(secret, Resource::json(r#"{"private":true}"#).private_to(&["tok-a", "tok-c"]));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    assert_eq!(gw.get(secret, Some("tok-a")).await.status(), 200);
    for expected in ["MISS", "NEGATIVE"] {
        let b = gw.get(secret, Some("tok-b")).await;
        assert_eq!(b.status(), 404, "tok-b gets GitHub's answer to tok-b");
        assert_eq!(outcome(&b), expected, "upstream, then tok-b's own remembered 404");
        assert!(!b.text().await.unwrap().contains("private"));
        assert!(last_if_none_match(&fake, secret).is_some(), "the held body was offered, and refused");
    }
    let anonymous = gw.get(secret, None).await;
    assert_eq!(anonymous.status(), 404);
    assert_eq!(outcome(&anonymous), "MISS");
    assert_eq!(fake.requests_for(secret), 3, "tok-a, tok-b and anonymous each asked GitHub");
    // A credential GitHub lets read it gets the held body confirmed.
    let c = gw.get(secret, Some("tok-c")).await;
    assert_eq!(outcome(&c), "REVALIDATED");
    assert_eq!(c.text().await.unwrap(), r#"{"private":true}"#);
}

#[tokio::test]
async fn a_wrong_guess_costs_what_no_guess_costs() {
    let mut charged = Vec::new();
    for computed in [true, false] {
        let fake = FakeGitHub::start().await;
        fake.put(
            REPO,
            Resource::json(REPO_JSON).body_for("tok-b", r#"{"id":1,"permissions":{"admin":true}}"#),
        );
        let gw = start_gateway(&fake.url(), |s| s.cache.computed_validators = computed).await;
        assert_eq!(gw.get(REPO, Some("tok-a")).await.text().await.unwrap(), REPO_JSON);
        let b = gw.get(REPO, Some("tok-b")).await;
        assert_eq!(outcome(&b), "MISS");
        assert_eq!(b.text().await.unwrap(), r#"{"id":1,"permissions":{"admin":true}}"#, "tok-b's own body");
        assert_eq!(last_if_none_match(&fake, REPO).is_some(), computed, "a guess was made only when on");
        charged.push(fake.charged());
    }
    assert_eq!(charged, [2, 2], "with and without the guess");
}

#[tokio::test]
async fn switched_off_each_credential_pays_for_its_first_read() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(REPO_JSON));
    let gw = start_gateway(&fake.url(), |s| s.cache.computed_validators = false).await;
    assert_eq!(outcome(&gw.get(REPO, Some("tok-a")).await), "MISS");
    assert_eq!(outcome(&gw.get(REPO, Some("tok-b")).await), "MISS");
    assert_eq!(fake.charged(), 2);
    assert_eq!(last_if_none_match(&fake, REPO), None);
}

#[tokio::test]
async fn when_github_changes_its_etags_the_canary_stops_the_guessing() {
    let fake = FakeGitHub::start().await;
    fake.set_opaque_etags(true);
    for i in 0..25 {
        fake.put(&format!("/repos/octo/r{i}"), Resource::json(format!(r#"{{"i":{i}}}"#)));
    }
    let gw = start_gateway(&fake.url(), |_| {}).await;
    for i in 0..25 {
        assert_eq!(gw.get(&format!("/repos/octo/r{i}"), Some("tok-a")).await.status(), 200);
    }
    let m = gw.metrics().await;
    assert_eq!(support::metric_value(&m, "ghgate_etag_algorithm_total{result=\"mismatch\"}"), 25.0);
    assert_eq!(support::metric_value(&m, "ghgate_etag_algorithm_trusted"), 0.0);
    // Another credential's read is not offered tok-a's body any more.
    assert_eq!(outcome(&gw.get("/repos/octo/r0", Some("tok-b")).await), "MISS");
    assert_eq!(last_if_none_match(&fake, "/repos/octo/r0"), None);
    // Its own entry still revalidates with its own stored ETag.
    fake.set_max_age(0);
    fake.put("/repos/octo/own", Resource::json("{}"));
    gw.get("/repos/octo/own", Some("tok-b")).await;
    assert_eq!(outcome(&gw.get("/repos/octo/own", Some("tok-b")).await), "REVALIDATED");
}

#[tokio::test]
async fn after_a_token_rotation_entries_without_last_modified_revalidate_for_free() {
    const KEY: &str = "ghgate_runner_key_0123456789abcdef";
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.set_max_age(1);
    let mut resource = Resource::json("{}");
    resource.send_last_modified = false;
    fake.put(REPO, resource);
    fake.set_token_lifetime(Duration::from_millis(300_000 + 1_200));
    let with_app = |s: &mut Settings| {
        add_app(s);
        s.clients.push(client("runner", KEY, &[]));
    };
    let gw = start_gateway(&fake.url(), with_app).await;
    let bearer = format!("Bearer {KEY}");
    assert_eq!(outcome(&get_as(&gw, REPO, &bearer, None).await), "MISS");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let charged = fake.charged();
    let r = get_as(&gw, REPO, &bearer, None).await;
    assert_eq!(fake.mints(), 2, "the token was rotated");
    assert_eq!(outcome(&r), "REVALIDATED", "the new token's ETag was computed");
    assert_eq!(fake.charged(), charged, "the revalidation was free");
    assert_eq!(gw.metric("ghgate_app_rotation_refreshes_total").await, 0.0);
}

#[tokio::test]
async fn replicas_sharing_redis_offer_each_others_bodies() {
    let redis = RedisServer::start();
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(REPO_JSON));
    let url = redis.url();
    let shared = move |s: &mut Settings| {
        s.store.backend = StoreBackend::Redis;
        s.store.redis_url = Some(url.clone());
    };
    let (a, b) = (start_gateway(&fake.url(), &shared).await, start_gateway(&fake.url(), &shared).await);
    assert_eq!(outcome(&a.get(REPO, Some("tok-a")).await), "MISS");
    let r = b.get(REPO, Some("tok-b")).await;
    assert_eq!(outcome(&r), "REVALIDATED", "replica b offered the body replica a fetched");
    assert_eq!(r.text().await.unwrap(), REPO_JSON);
    assert_eq!(fake.charged(), 1);
}

#[tokio::test]
async fn redis_holds_one_copy_of_a_body_many_partitions_read() {
    let redis = RedisServer::start();
    let fake = FakeGitHub::start().await;
    let big = format!(r#"{{"id":1,"description":"{}"}}"#, "x".repeat(4_000));
    fake.put(REPO, Resource::json(big.clone()));
    let url = redis.url();
    let shared = move |s: &mut Settings| {
        s.store.backend = StoreBackend::Redis;
        s.store.redis_url = Some(url.clone());
    };
    let (a, b) = (start_gateway(&fake.url(), &shared).await, start_gateway(&fake.url(), &shared).await);
    for t in 0..10 {
        let gw = if t % 2 == 0 { &a } else { &b };
        assert_eq!(gw.get(REPO, Some(&format!("tok-{t}"))).await.text().await.unwrap(), big);
    }
    let keys = redis.cli(&["KEYS", "*"]);
    let count = |prefix: &str| keys.lines().filter(|k| k.starts_with(prefix)).count();
    assert_eq!(count("ghgate:r:"), 10, "a record per partition: {keys}");
    assert_eq!(count("ghgate:b:"), 1, "one body: {keys}");
    let counter = keys.lines().find(|k| k.starts_with("ghgate:n:")).expect("a reference count");
    assert_eq!(redis.cli(&["GET", counter]).trim(), "10");
    let ttl: i64 = redis.cli(&["PTTL", counter]).trim().parse().unwrap();
    assert!(ttl > 0, "the count is bounded by a TTL");
    // A third replica, started later, reads the records and the shared body.
    let c = start_gateway(&fake.url(), &shared).await;
    let r = c.get(REPO, Some("tok-3")).await;
    assert_eq!(outcome(&r), "HIT");
    assert_eq!(r.text().await.unwrap(), big);
}

#[tokio::test]
async fn twenty_credentials_reading_at_once_pay_once() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(REPO_JSON));
    fake.set_delay(Duration::from_millis(200));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let mut tasks = Vec::new();
    for t in 0..20 {
        let (client, url) = (gw.client.clone(), format!("{}{REPO}", gw.url));
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).header("authorization", format!("token tok-{t}")).send().await.unwrap();
            (outcome(&r), r.text().await.unwrap())
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        let (o, body) = task.await.unwrap();
        assert_eq!(body, REPO_JSON);
        outcomes.push(o);
    }
    // The first fetch goes ahead; the others wait for its body and offer it.
    assert_eq!(fake.charged(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| *o == "REVALIDATED").count(), 19, "{outcomes:?}");
    assert_eq!(fake.requests_for(REPO), 20, "every credential asked GitHub itself");
}
