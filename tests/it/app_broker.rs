//! The GitHub App broker end to end: clients with gateway keys, the fake GitHub verifying
//! app JWTs, minting tokens that expire and lag, and counting mints and look-ups.

use crate::support;

use std::time::Duration;

use ghgate::config::Settings;
use support::app::{add_app, client, fake_with_app, get_with_key};
use support::{Resource, TestGateway, outcome, start_gateway};

const KEY: &str = "ghgate_runner_key_0123456789abcdef";
const KEY_OCTO_ONLY: &str = "ghgate_octo_only_key_0123456789ab";
const KEY_READ_ONLY: &str = "ghgate_read_only_key_0123456789ab";

fn with_app(s: &mut Settings) {
    add_app(s);
    s.clients.push(client("runner", KEY, &[]));
    s.clients.push(client("octo-only", KEY_OCTO_ONLY, &["octo"]));
    let mut read_only = client("read-only", KEY_READ_ONLY, &[]);
    read_only.permissions.insert("contents".into(), "read".into());
    s.clients.push(read_only);
}

async fn get(gw: &TestGateway, path: &str, key: &str) -> reqwest::Response {
    get_with_key(gw, path, key).await
}

#[tokio::test]
async fn two_hundred_concurrent_requests_for_three_owners_mint_three_tokens() {
    let fake = fake_with_app().await;
    for (i, owner) in ["alpha", "beta", "gamma"].iter().enumerate() {
        fake.install(owner, 100 + i as u64);
        for r in 0..5 {
            fake.put(&format!("/repos/{owner}/repo{r}"), Resource::json(format!(r#"{{"owner":"{owner}"}}"#)));
        }
    }
    fake.set_delay(Duration::from_millis(50));
    let gw = start_gateway(&fake.url(), with_app).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let owner = ["alpha", "beta", "gamma"][i % 3];
        let url = format!("{}/repos/{owner}/repo{}", gw.url, i % 5);
        let client = gw.client.clone();
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).header("authorization", format!("Bearer {KEY}")).send().await.unwrap();
            (r.status(), owner, r.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, owner, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(owner));
    }
    assert_eq!(fake.mints(), 3, "one token per installation");
    assert!(fake.lookups() <= 3, "{} look-ups", fake.lookups());
    assert_eq!(fake.jwt_refusals(), 0);
    // The client key never reaches GitHub; the installation token does.
    for (_, path, headers) in fake.log() {
        let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        assert!(!auth.contains("ghgate_"), "client key sent upstream on {path}");
        if path.starts_with("/repos/") && !path.ends_with("/installation") {
            assert!(auth.starts_with("token ghs_"), "{path}: {auth}");
        }
    }
    assert_eq!(gw.metric("ghgate_app_tokens_minted_total").await, 3.0);
}

#[tokio::test]
async fn no_client_sees_a_401_while_a_new_token_replicates() {
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.put("/repos/octo/hello", Resource::json("{}"));
    fake.set_replication_lag(Duration::from_secs(1));
    let gw = start_gateway(&fake.url(), with_app).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = gw.client.clone();
        let url = format!("{}/repos/octo/hello", gw.url);
        tasks.push(tokio::spawn(async move {
            client.get(url).header("authorization", format!("Bearer {KEY}")).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(fake.mints(), 1, "waiting out the lag is not a reason to mint again");
    assert!(fake.lagged_token_uses() >= 1, "the lag was really there");
    assert!(gw.metric("ghgate_app_settle_retries_total").await >= 1.0);
}

#[tokio::test]
async fn with_the_wait_strategy_a_new_token_is_not_used_before_it_settles() {
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.put("/repos/octo/hello", Resource::json("{}"));
    fake.set_replication_lag(Duration::from_millis(500));
    let gw = start_gateway(&fake.url(), |s| {
        with_app(s);
        s.broker.fresh_token_strategy = ghgate::config::FreshTokenStrategy::Wait;
        s.broker.settle_delay = Duration::from_millis(600);
    })
    .await;
    let started = std::time::Instant::now();
    assert_eq!(get(&gw, "/repos/octo/hello", KEY).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(fake.lagged_token_uses(), 0, "the token was never sent before it settled");
}

#[tokio::test]
async fn a_token_near_expiry_is_replaced_and_no_request_uses_an_expired_one() {
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.put("/repos/octo/hello", Resource::json("{}"));
    // Five minutes of buffer plus 2.5 s: the token is usable for 1.5 to 2.5 s (GitHub's
    // expires_at has whole seconds), then replaced.
    fake.set_token_lifetime(Duration::from_millis(300_000 + 2_500));
    let gw = start_gateway(&fake.url(), |s| {
        with_app(s);
        s.cache.enabled = false;
    })
    .await;
    for _ in 0..8 {
        assert_eq!(get(&gw, "/repos/octo/hello", KEY).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(fake.mints() >= 2, "the token was replaced before it expired ({} mints)", fake.mints());
    assert!(fake.mints() <= 4, "but not on every one of the 8 requests ({} mints)", fake.mints());
    assert_eq!(fake.expired_token_uses(), 0);
}

#[tokio::test]
async fn a_revoked_token_is_replaced_and_the_request_succeeds_after_one_retry() {
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), |s| {
        with_app(s);
        s.cache.enabled = false;
        s.broker.settle_delay = Duration::ZERO;
    })
    .await;
    assert_eq!(get(&gw, "/repos/octo/hello", KEY).await.status(), 200);
    fake.revoke_tokens();
    let r = get(&gw, "/repos/octo/hello", KEY).await;
    assert_eq!(r.status(), 200);
    assert_eq!(fake.mints(), 2);
    assert_eq!(gw.metric("ghgate_app_stale_token_retries_total").await, 1.0);

    // Revoked again at once: re-mints are rate-limited, so the 401 goes back as it is.
    fake.revoke_tokens();
    let r = get(&gw, "/repos/octo/hello", KEY).await;
    assert_eq!(r.status(), 401);
    assert_eq!(fake.mints(), 2, "no mint storm for a revoked app");
}

#[tokio::test]
async fn an_owner_without_the_app_gets_a_clear_404_that_is_remembered() {
    let fake = fake_with_app().await;
    let gw = start_gateway(&fake.url(), with_app).await;
    let r = get(&gw, "/repos/nobody/thing", KEY).await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("ci-bot") && message.contains("nobody"), "{message}");
    assert!(body["documentation_url"].is_string());
    let looked_up = fake.lookups();
    assert_eq!(get(&gw, "/repos/nobody/thing", KEY).await.status(), 404);
    assert_eq!(fake.lookups(), looked_up, "the second request did not ask GitHub again");
    assert_eq!(gw.metric("ghgate_app_installation_lookups_total{result=\"not_installed\"}").await, 1.0);
    assert_eq!(gw.metric("ghgate_negative_hits_total{rule=\"app_not_installed\"}").await, 1.0);

    // It is a negative entry like any other: clearing the owner makes the next request ask.
    fake.install("nobody", 11);
    fake.put("/repos/nobody/thing", Resource::json("{}"));
    let cleared = gw.client.delete(format!("{}/negative?owner=nobody", gw.admin_url)).send().await.unwrap();
    assert_eq!(cleared.text().await.unwrap(), r#"{"removed":1}"#);
    assert_eq!(get(&gw, "/repos/nobody/thing", KEY).await.status(), 200);
    assert_eq!(fake.lookups(), looked_up + 1);
}

#[tokio::test]
async fn forgetting_not_installed_can_be_switched_off() {
    let fake = fake_with_app().await;
    let gw = start_gateway(&fake.url(), |s| {
        with_app(s);
        s.broker.not_installed_ttl = Duration::ZERO;
    })
    .await;
    assert_eq!(get(&gw, "/orgs/nobody", KEY).await.status(), 404);
    assert_eq!(get(&gw, "/orgs/nobody", KEY).await.status(), 404);
    assert_eq!(fake.lookups(), 2);
    // Once installed, the very next request works.
    fake.install("nobody", 9);
    fake.put("/orgs/nobody", Resource::json("{}"));
    assert_eq!(get(&gw, "/orgs/nobody", KEY).await.status(), 200);
}

#[tokio::test]
async fn client_keys_are_checked_and_owners_restricted() {
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.install("acme", 8);
    fake.put("/repos/octo/hello", Resource::json("{}"));
    fake.put("/installation/repositories", Resource::json("[]"));
    let gw = start_gateway(&fake.url(), with_app).await;

    let unknown = get(&gw, "/repos/octo/hello", "ghgate_not_a_configured_key").await;
    assert_eq!(unknown.status(), 401);
    assert!(unknown.text().await.unwrap().contains("documentation_url"));
    assert_eq!(get(&gw, "/repos/octo/hello", KEY_OCTO_ONLY).await.status(), 200);
    let other = get(&gw, "/repos/acme/anything", KEY_OCTO_ONLY).await;
    assert_eq!(other.status(), 403);
    // A path without an owner needs the installation header.
    assert_eq!(get(&gw, "/installation/repositories", KEY).await.status(), 400);
    let r = gw
        .client
        .get(format!("{}/installation/repositories", gw.url))
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-ghgate-installation", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let by_id = gw
        .client
        .get(format!("{}/installation/repositories", gw.url))
        .header("authorization", format!("token {KEY}"))
        .header("x-ghgate-installation", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(by_id.status(), 200);
    // Plain GitHub tokens still pass through.
    assert_eq!(gw.get("/repos/octo/hello", Some("ghp_own_token")).await.status(), 200);
}

#[tokio::test]
async fn pass_through_can_be_switched_off() {
    let fake = fake_with_app().await;
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), |s| {
        with_app(s);
        s.broker.allow_pass_through = false;
    })
    .await;
    assert_eq!(gw.get("/repos/octo/hello", Some("ghp_own_token")).await.status(), 401);
    assert_eq!(gw.get("/repos/octo/hello", None).await.status(), 401);
    assert_eq!(fake.requests(), 0);
}

#[tokio::test]
async fn clients_of_one_installation_share_its_cache_and_never_another_installation() {
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.install("acme", 8);
    fake.put("/repos/octo/hello", Resource::json(r#"{"octo":1}"#));
    fake.put("/repos/acme/hello", Resource::json(r#"{"acme":1}"#));
    let gw = start_gateway(&fake.url(), with_app).await;
    assert_eq!(outcome(&get(&gw, "/repos/octo/hello", KEY).await), "MISS");
    assert_eq!(outcome(&get(&gw, "/repos/octo/hello", KEY_OCTO_ONLY).await), "HIT", "same installation");
    assert_eq!(outcome(&get(&gw, "/repos/acme/hello", KEY).await), "MISS");
    // A down-scoped client has its own token and its own partition: GitHub is asked (and
    // confirms the held body for its token).
    assert_eq!(outcome(&get(&gw, "/repos/octo/hello", KEY_READ_ONLY).await), "REVALIDATED");
    assert_eq!(fake.last_token_permissions(), Some(serde_json::json!({ "contents": "read" })));
    assert_eq!(fake.mints(), 3);
    // The ledger names installations as an operator knows them.
    let ledger = gw.admin_json("/ratelimits").await;
    let labels: Vec<&str> =
        ledger["identities"].as_array().unwrap().iter().filter_map(|l| l["label"].as_str()).collect();
    assert!(labels.contains(&"app ci-bot installation 7"), "{ledger}");
    assert!(labels.contains(&"app ci-bot installation 8"), "{ledger}");
}

#[tokio::test]
async fn without_computed_validators_entries_revalidate_by_date_after_a_rotation() {
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.set_max_age(1);
    fake.put("/repos/octo/hello", Resource::json("{}"));
    fake.set_token_lifetime(Duration::from_millis(300_000 + 1_200));
    // With computed validators (the default) the new token's ETag is computed instead: see
    // `fleet::after_a_token_rotation_entries_without_last_modified_revalidate_for_free`.
    let gw = start_gateway(&fake.url(), |s| {
        with_app(s);
        s.cache.computed_validators = false;
    })
    .await;
    assert_eq!(outcome(&get(&gw, "/repos/octo/hello", KEY).await), "MISS");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let charged = fake.charged();
    let r = get(&gw, "/repos/octo/hello", KEY).await;
    assert_eq!(fake.mints(), 2, "the token was rotated");
    assert_eq!(outcome(&r), "REVALIDATED", "If-Modified-Since works across tokens");
    assert_eq!(fake.charged(), charged, "the revalidation was free");
    let (_, _, headers) = fake.log().into_iter().rev().find(|(_, p, _)| p == "/repos/octo/hello").unwrap();
    assert!(headers.get("if-none-match").is_none(), "the old token's ETag was not sent");
    assert!(headers.get("if-modified-since").is_some());
}

#[tokio::test]
async fn writes_with_a_client_key_are_retried_with_their_body_after_a_revocation() {
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    let gw = start_gateway(&fake.url(), |s| {
        with_app(s);
        s.broker.settle_delay = Duration::ZERO;
    })
    .await;
    let post = || {
        gw.client
            .post(format!("{}/repos/octo/hello/issues", gw.url))
            .header("authorization", format!("Bearer {KEY}"))
            .body(r#"{"title":"hello"}"#)
            .send()
    };
    assert_eq!(post().await.unwrap().status(), 201);
    fake.revoke_tokens();
    let r = post().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.text().await.unwrap(), r#"{"title":"hello"}"#, "the body was sent again");
}

#[tokio::test]
async fn a_transient_403_from_a_new_token_is_retried_but_a_permissions_403_is_not() {
    let fake = fake_with_app().await;
    fake.install("octo", 7);
    fake.put("/repos/octo/hello", Resource::json("{}"));
    fake.set_replication_lag(Duration::from_millis(600));
    fake.set_lag_status(403);
    let gw = start_gateway(&fake.url(), |s| {
        with_app(s);
        s.broker.settle_delay = Duration::from_millis(900);
    })
    .await;
    assert_eq!(get(&gw, "/repos/octo/hello", KEY).await.status(), 200);
    assert!(fake.lagged_token_uses() >= 1);
    assert_eq!(fake.mints(), 1);
    // A settled token's 403 is GitHub's answer (permissions, SAML...): it goes back as is.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    fake.fail_next(1, 403);
    let r = get(&gw, "/repos/octo/other", KEY).await;
    assert_eq!(r.status(), 403);
    assert_eq!(fake.mints(), 1, "a permissions answer is no reason to mint");
}
