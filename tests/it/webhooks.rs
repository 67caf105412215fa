//! Webhook-driven freshness: signed deliveries in GitHub's payload shapes (tests/data/webhooks)
//! mark exactly the entries they concern stale, and installation events drop tokens.

use crate::support;

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use support::app::{add_app, client, fake_with_app, get_with_key};
use support::{FakeGitHub, Resource, TestGateway, outcome, start_gateway};

const SECRET: &str = "webhook-secret-for-tests";

fn payload(name: &str) -> Vec<u8> {
    std::fs::read(support::app::data(&format!("webhooks/{name}.json"))).unwrap()
}

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(
    gw: &TestGateway,
    event: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> reqwest::Response {
    let mut r = gw
        .client
        .post(format!("{}/_ghgate/webhook", gw.url))
        .header("x-github-event", event)
        .header("content-type", "application/json");
    if let Some(s) = signature {
        r = r.header("x-hub-signature-256", s);
    }
    r.body(body).send().await.unwrap()
}

fn with_webhooks(s: &mut ghgate::config::Settings) {
    s.webhooks.secrets = vec!["an-older-secret".into(), SECRET.into()];
    s.webhooks.max_body_bytes = 64 * 1024;
}

#[tokio::test]
async fn a_signed_push_marks_its_repository_stale_and_nothing_else() {
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json(r#"{"v":1}"#));
    fake.put("/repos/octo/hello/branches", Resource::json("[]"));
    fake.put("/repos/octo/other", Resource::json(r#"{"other":1}"#));
    let gw = start_gateway(&fake.url(), with_webhooks).await;
    for p in ["/repos/octo/hello", "/repos/octo/hello/branches", "/repos/octo/other"] {
        assert_eq!(outcome(&gw.get(p, Some("t")).await), "MISS");
        assert_eq!(outcome(&gw.get(p, Some("t")).await), "HIT");
    }
    let body = payload("push");
    let r = deliver(&gw, "push", body.clone(), Some(signature(SECRET, &body))).await;
    assert_eq!(r.status(), 202);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Unchanged data: revalidated for free. Changed data: refetched.
    assert_eq!(outcome(&gw.get("/repos/octo/hello/branches", Some("t")).await), "REVALIDATED");
    fake.change("/repos/octo/hello", r#"{"v":2}"#);
    let changed = gw.get("/repos/octo/hello", Some("t")).await;
    assert_eq!(outcome(&changed), "MISS");
    assert_eq!(changed.text().await.unwrap(), r#"{"v":2}"#);
    assert_eq!(outcome(&gw.get("/repos/octo/other", Some("t")).await), "HIT", "another repository stays");
    assert_eq!(gw.metric("ghgate_webhooks_total{result=\"accepted\"}").await, 1.0);
    // The status page lists the invalidation with its event.
    let status = gw.admin_json("/status.json").await;
    assert_eq!(status["events"][0]["what"], "webhook push: repo octo/hello", "{status}");
}

#[tokio::test]
async fn bad_missing_or_oversized_deliveries_are_refused_without_touching_the_cache() {
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), with_webhooks).await;
    gw.get("/repos/octo/hello", Some("t")).await;
    let body = payload("push");
    assert_eq!(deliver(&gw, "push", body.clone(), Some(signature("wrong", &body))).await.status(), 401);
    assert_eq!(deliver(&gw, "push", body.clone(), None).await.status(), 401);
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    assert_eq!(deliver(&gw, "push", tampered, Some(signature(SECRET, &body))).await.status(), 401);
    let huge = vec![b' '; 100 * 1024];
    assert_eq!(deliver(&gw, "push", huge.clone(), Some(signature(SECRET, &huge))).await.status(), 413);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(outcome(&gw.get("/repos/octo/hello", Some("t")).await), "HIT");
    // The older secret still verifies during a rotation.
    assert_eq!(
        deliver(&gw, "ping", payload("ping"), Some(signature("an-older-secret", &payload("ping"))))
            .await
            .status(),
        202
    );
    assert_eq!(gw.metric("ghgate_webhooks_total{result=\"bad_signature\"}").await, 3.0);
}

#[tokio::test]
async fn without_secrets_the_receiver_is_off() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let body = payload("push");
    assert_eq!(deliver(&gw, "push", body.clone(), Some(signature(SECRET, &body))).await.status(), 404);
    assert_eq!(fake.requests(), 0, "never forwarded to GitHub");
}

#[tokio::test]
async fn an_installation_deleted_event_drops_its_token_and_look_up() {
    const KEY: &str = "ghgate_webhook_test_key_000000000";
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), |s| {
        with_webhooks(s);
        add_app(s);
        s.clients.push(client("runner", KEY, &[]));
        s.cache.enabled = false;
    })
    .await;
    assert_eq!(get_with_key(&gw, "/repos/octo/hello", KEY).await.status(), 200);
    assert_eq!((fake.mints(), fake.lookups()), (1, 1));
    let body = payload("installation_deleted");
    assert_eq!(
        deliver(&gw, "installation", body.clone(), Some(signature(SECRET, &body))).await.status(),
        202
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Reinstalled under the same id: the next request looks it up and mints afresh.
    assert_eq!(get_with_key(&gw, "/repos/octo/hello", KEY).await.status(), 200);
    assert_eq!((fake.mints(), fake.lookups()), (2, 2));
}

#[tokio::test]
async fn repositories_with_webhook_coverage_stay_fresh_longer_until_a_delivery_says_otherwise() {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    fake.put("/repos/octo/hello", Resource::json("{}"));
    fake.put("/repos/octo/other", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), |s| {
        with_webhooks(s);
        s.webhooks.covered_freshness = Duration::from_secs(600);
    })
    .await;
    let body = payload("push");
    assert_eq!(deliver(&gw, "push", body.clone(), Some(signature(SECRET, &body))).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.get("/repos/octo/hello", Some("t")).await;
    gw.get("/repos/octo/other", Some("t")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(outcome(&gw.get("/repos/octo/hello", Some("t")).await), "HIT", "covered: still fresh");
    assert_eq!(outcome(&gw.get("/repos/octo/other", Some("t")).await), "REVALIDATED", "not covered");
    assert_eq!(deliver(&gw, "push", body.clone(), Some(signature(SECRET, &body))).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(outcome(&gw.get("/repos/octo/hello", Some("t")).await), "REVALIDATED", "a delivery ends it");
}

#[tokio::test]
async fn with_two_replicas_on_redis_both_drop_the_entry() {
    let redis = support::RedisServer::start();
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let (a, b) = two_replicas(&fake, &redis).await;
    gw_warm(&a).await;
    gw_warm(&b).await;
    let body = payload("push");
    assert_eq!(deliver(&a, "push", body.clone(), Some(signature(SECRET, &body))).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(outcome(&a.get("/repos/octo/hello", Some("t")).await), "REVALIDATED");
    let requests = fake.requests_for("/repos/octo/hello");
    // B saw A's delivery: not a hit of its own copy, but the copy A has just revalidated
    // (in Redis), without asking GitHub again.
    assert_eq!(outcome(&b.get("/repos/octo/hello", Some("t")).await), "COALESCED", "B saw A's delivery");
    assert_eq!(fake.requests_for("/repos/octo/hello"), requests);
    // B's status page lists the invalidation it picked up.
    let status = b.admin_json("/status.json").await;
    assert!(
        status["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["what"] == "from another replica: repo octo/hello"),
        "{status}"
    );
}

/// Two gateways with the webhook receiver on, sharing `redis`.
async fn two_replicas(fake: &FakeGitHub, redis: &support::RedisServer) -> (TestGateway, TestGateway) {
    let url = redis.url();
    let shared = move |s: &mut ghgate::config::Settings| {
        with_webhooks(s);
        s.store.backend = ghgate::config::StoreBackend::Redis;
        s.store.redis_url = Some(url.clone());
    };
    (start_gateway(&fake.url(), &shared).await, start_gateway(&fake.url(), &shared).await)
}

async fn gw_warm(gw: &TestGateway) {
    gw.get("/repos/octo/hello", Some("t")).await;
    assert_eq!(outcome(&gw.get("/repos/octo/hello", Some("t")).await), "HIT");
}

/// Delivers `push` with a delivery id, as GitHub sends it.
async fn deliver_with_id(gw: &TestGateway, id: &str) -> reqwest::Response {
    let body = payload("push");
    gw.client
        .post(format!("{}/_ghgate/webhook", gw.url))
        .header("x-github-event", "push")
        .header("x-github-delivery", id)
        .header("x-hub-signature-256", signature(SECRET, &body))
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_replayed_delivery_changes_nothing_here_or_on_another_replica() {
    let redis = support::RedisServer::start();
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let (a, b) = two_replicas(&fake, &redis).await;
    assert_eq!(deliver_with_id(&a, "72d3162e-cc78-11e3-81ab-4c9367dc0958").await.status(), 202);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    // Both replicas have marked the repository; entries fetched from now on are fresh.
    gw_warm(&a).await;
    gw_warm(&b).await;
    // The same delivery again, captured and replayed at either replica: no new mark.
    assert_eq!(deliver_with_id(&a, "72d3162e-cc78-11e3-81ab-4c9367dc0958").await.status(), 202);
    assert_eq!(deliver_with_id(&b, "72d3162e-cc78-11e3-81ab-4c9367dc0958").await.status(), 202);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(outcome(&a.get("/repos/octo/hello", Some("t")).await), "HIT", "a replay marks nothing stale");
    assert_eq!(outcome(&b.get("/repos/octo/hello", Some("t")).await), "HIT", "nor on the other replica");
    assert_eq!(a.metric("ghgate_webhooks_total{result=\"replayed\"}").await, 1.0);
    assert_eq!(b.metric("ghgate_webhooks_total{result=\"replayed\"}").await, 1.0);
    // A new delivery still works.
    assert_eq!(deliver_with_id(&b, "9a0b1c2d-0000-11e3-81ab-4c9367dc0958").await.status(), 202);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(outcome(&a.get("/repos/octo/hello", Some("t")).await), "REVALIDATED");
}

#[tokio::test]
async fn a_replayed_delivery_changes_nothing_on_one_node() {
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), with_webhooks).await;
    assert_eq!(deliver_with_id(&gw, "d-1").await.status(), 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw_warm(&gw).await;
    assert_eq!(deliver_with_id(&gw, "d-1").await.status(), 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(outcome(&gw.get("/repos/octo/hello", Some("t")).await), "HIT");
    assert_eq!(gw.metric("ghgate_webhooks_total{result=\"replayed\"}").await, 1.0);
}

#[test]
fn an_empty_webhook_secret_is_refused_naming_its_key() {
    let error =
        ghgate::config::Settings::from_toml_str("[webhooks]\nsecrets = [\"long-enough-secret\", \"\"]")
            .unwrap_err()
            .to_string();
    assert!(error.contains("webhooks.secrets[1]") && error.contains("empty"), "{error}");
}

#[tokio::test]
async fn a_trickled_delivery_is_cut_off_and_deliveries_count_against_the_limiter() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |s| {
        with_webhooks(s);
        s.webhooks.read_timeout = Duration::from_secs(1);
        s.inbound.limit_enabled = true;
        s.inbound.requests_per_second = 1;
        s.inbound.burst = 3;
    })
    .await;
    // A body sent a byte every 200 ms: 408 after read_timeout, not held for minutes.
    let mut stream = tokio::net::TcpStream::connect(gw.running.proxy_addr).await.unwrap();
    let head = "POST /_ghgate/webhook HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\nX-Hub-Signature-256: sha256=00\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let trickle = async {
        loop {
            if stream.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if started.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1500), trickle).await;
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(gw.metric("ghgate_webhooks_total{result=\"too_slow\"}").await, 1.0);
    // Unsigned deliveries from one address run into its bucket like any request.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(deliver(&gw, "push", payload("push"), None).await.status().as_u16());
    }
    assert!(statuses.contains(&429), "the limiter answered some of them: {statuses:?}");
}
