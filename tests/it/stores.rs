//! Shared and persistent state: the embedded disk store across restarts, and replicas sharing
//! a real `redis-server` (started by the test on a free port).

use crate::support;

use std::time::Duration;

use crate::on_both;
use ghgate::config::{Settings, StoreBackend};
use support::app::{add_app, client, fake_with_app};
use support::redis_server::Shared;
use support::{FakeGitHub, RedisServer, Resource, TestGateway, outcome, start_gateway, start_gateway_in};

const REPO: &str = "/repos/octo/hello";
const KEY: &str = "ghgate_store_test_key_0123456789";

fn with_redis(redis: &RedisServer) -> impl Fn(&mut Settings) + use<> {
    let url = redis.url();
    move |s: &mut Settings| {
        s.store.backend = StoreBackend::Redis;
        s.store.redis_url = Some(url.clone());
        s.store.redis_timeout = Duration::from_millis(200);
    }
}

fn with_app(s: &mut Settings) {
    add_app(s);
    s.clients.push(client("runner", KEY, &[]));
}

/// Two gateways sharing `shared` (one Redis or a cluster), both brokering the test app.
async fn two_app_replicas(upstream: &str, shared: &Shared) -> (TestGateway, TestGateway) {
    let both = |s: &mut Settings| {
        shared.apply(s);
        with_app(s);
    };
    (start_gateway(upstream, both).await, start_gateway(upstream, both).await)
}

async fn get_with_key(gw: &TestGateway, path: &str) -> reqwest::Response {
    support::app::get_with_key(gw, path, KEY).await
}

#[tokio::test]
async fn a_gateway_restarted_on_its_data_directory_answers_without_a_paid_request() {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    fake.put(REPO, Resource::json(r#"{"id":1}"#));
    fake.put("/users/octo", Resource::json(r#"{"login":"octo"}"#));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    assert_eq!(outcome(&gw.get(REPO, Some("t")).await), "MISS");
    assert_eq!(outcome(&gw.get("/users/octo", Some("t")).await), "MISS");
    let dir = gw.stop().await;
    assert_eq!(fake.charged(), 2);

    // Fresh after the restart: a HIT. Stale: a free REVALIDATED, never a paid MISS.
    let gw = start_gateway_in(dir, &fake.url(), |_| {}).await;
    let r = gw.get(REPO, Some("t")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(outcome(&r), "HIT");
    assert_eq!(r.text().await.unwrap(), r#"{"id":1}"#);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = gw.get("/users/octo", Some("t")).await;
    assert_eq!(outcome(&r), "REVALIDATED");
    assert_eq!(fake.charged(), 2, "no paid request after the restart");
}

#[tokio::test]
async fn a_corrupted_disk_entry_is_dropped_and_refetched() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(r#"{"id":1}"#));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    gw.get(REPO, Some("t")).await;
    let dir = gw.stop().await;

    // Flip bytes in every file of the store that holds the body.
    let mut damaged = 0;
    for entry in walk(&dir.path().join("cache")) {
        let mut bytes = std::fs::read(&entry).unwrap();
        if let Some(pos) = bytes.windows(8).position(|w| w == br#"{"id":1}"#) {
            bytes[pos + 6] = b'9';
            std::fs::write(&entry, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "found the stored body on disk");
    let gw = start_gateway_in(dir, &fake.url(), |_| {}).await;
    let r = gw.get(REPO, Some("t")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(outcome(&r), "MISS");
    assert_eq!(r.text().await.unwrap(), r#"{"id":1}"#, "never the damaged body");
    assert_eq!(fake.requests_for(REPO), 2, "refetched");
    assert!(gw.metric("ghgate_store_corrupt_entries_total").await >= 1.0);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

on_both!(two_replicas_on_one_redis_mint_one_token_and_fetch_once);
async fn two_replicas_on_one_redis_mint_one_token_and_fetch_once(shared: &Shared) {
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.put(REPO, Resource::json(r#"{"id":1}"#));
    fake.set_delay(Duration::from_millis(100));
    let (a, b) = two_app_replicas(&fake.url(), shared).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let url = format!("{}{REPO}", if i % 2 == 0 { &a.url } else { &b.url });
        let client = a.client.clone();
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).header("authorization", format!("Bearer {KEY}")).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, r#"{"id":1}"#);
    }
    assert_eq!(fake.mints(), 1, "one token for both replicas");
    assert_eq!(fake.lookups(), 1, "one installation look-up for both replicas");
    assert_eq!(fake.requests_for(REPO), 1, "one upstream fetch for both replicas");

    // Tokens are sealed in Redis: no key or value shows one in clear, and every key expires.
    let keys = shared.keys();
    assert!(keys.iter().any(|k| k.starts_with("ghgate:t:ci-bot:7")), "{keys:?}");
    for key in &keys {
        let value = shared.cli_for_key(key, &["GET", key]);
        assert!(!value.contains("ghs_"), "{key} holds a token in clear");
        let ttl: i64 = shared.cli_for_key(key, &["PTTL", key]).trim().parse().unwrap();
        assert!(ttl > 0, "{key} has no TTL");
    }
}

on_both!(replicas_share_not_installed_answers);
async fn replicas_share_not_installed_answers(shared: &Shared) {
    let fake = fake_with_app().await;
    let (a, b) = two_app_replicas(&fake.url(), shared).await;
    assert_eq!(get_with_key(&a, "/orgs/nobody").await.status(), 404);
    assert_eq!(get_with_key(&b, "/orgs/nobody").await.status(), 404);
    assert_eq!(fake.lookups(), 1, "the second replica knew from Redis");
}

#[tokio::test]
async fn stopping_redis_loses_no_request_and_sharing_resumes_when_it_returns() {
    let mut redis = RedisServer::start();
    let fake = FakeGitHub::start().await;
    for i in 0..20 {
        fake.put(&format!("/repos/octo/r{i}"), Resource::json(format!(r#"{{"n":{i}}}"#)));
    }
    let shared = with_redis(&redis);
    let a = start_gateway(&fake.url(), &shared).await;
    let b = start_gateway(&fake.url(), &shared).await;
    assert_eq!(a.get("/repos/octo/r0", Some("t")).await.status(), 200);

    redis.stop();
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = gw.get(&format!("/repos/octo/r{i}"), Some("t")).await;
        assert_eq!(r.status(), 200, "request {i} during the outage");
        assert_eq!(r.text().await.unwrap(), format!(r#"{{"n":{i}}}"#));
    }
    let ready = a.admin_json("/readyz").await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert!(a.metric("ghgate_store_errors_total").await > 0.0);
    assert_eq!(a.metric("ghgate_store_degraded").await, 1.0);

    redis.restart();
    // The same replicas use Redis again, without a restart: what A stores, B finds.
    let mut shared_again = false;
    for attempt in 0..50 {
        let path = format!("/repos/octo/after{attempt}");
        fake.put(&path, Resource::json("{}"));
        a.get(&path, Some("t")).await;
        if b.get(&path, Some("t")).await.headers()["x-ghgate-cache"] == "HIT" {
            shared_again = true;
            assert_eq!(fake.requests_for(&path), 1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shared_again, "sharing resumed after Redis came back");
    let ready = a.admin_json("/readyz").await;
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn a_bad_redis_url_fails_check_config_and_a_missing_one_is_named() {
    let mut s = Settings::default();
    s.store.backend = StoreBackend::Redis;
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("store.redis_url"), "{err}");
    s.store.redis_url = Some("http://not-redis".into());
    assert!(s.validate().unwrap_err().to_string().contains("store.redis_url"));
}

on_both!(replicas_look_up_each_owner_once_whichever_repositories_they_are_asked_for);
async fn replicas_look_up_each_owner_once_whichever_repositories_they_are_asked_for(shared: &Shared) {
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.install("acme", 8);
    for path in ["/repos/octo/a", "/repos/octo/b", "/repos/acme/a", "/repos/acme/b"] {
        fake.put(path, Resource::json(r#"{"id":1}"#));
    }
    fake.set_delay(Duration::from_millis(150));
    let (a, b) = two_app_replicas(&fake.url(), shared).await;
    let mut tasks = Vec::new();
    for (gw, path) in
        [(&a, "/repos/octo/a"), (&b, "/repos/octo/b"), (&a, "/repos/acme/a"), (&b, "/repos/acme/b")]
    {
        let (client, url) = (gw.client.clone(), format!("{}{path}", gw.url));
        tasks.push(tokio::spawn(async move {
            client.get(url).header("authorization", format!("Bearer {KEY}")).send().await.unwrap().status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(fake.lookups(), 2, "one look-up per owner across both replicas");
}
