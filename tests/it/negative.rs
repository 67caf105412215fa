//! Futile-request protection end to end: the fake GitHub enforces a small statuses limit with
//! GitHub's exact 422 bodies, and counts what every scenario cost.

use crate::support;

use std::time::Duration;

use ghgate::config::{NegativeAnswer, Settings, StoreBackend};
use support::{FakeGitHub, RedisServer, Resource, TestGateway, outcome, start_gateway};

const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";

async fn post_status(gw: &TestGateway, sha: &str, context: Option<&str>) -> reqwest::Response {
    let body = match context {
        Some(c) => format!(r#"{{"state":"success","context":"{c}"}}"#),
        None => r#"{"state":"success"}"#.to_string(),
    };
    gw.client
        .post(format!("{}/repos/octo/hello/statuses/{sha}", gw.url))
        .header("authorization", "token ci")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn status_posts(fake: &FakeGitHub) -> usize {
    fake.log().iter().filter(|(m, p, _)| m == "POST" && p.contains("/statuses/")).count()
}

#[tokio::test]
async fn six_posts_to_a_full_sha_and_context_cost_four_upstream_calls() {
    let fake = FakeGitHub::start().await;
    fake.set_statuses_limit(3, "string");
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = post_status(&gw, SHA, Some("ci/build")).await;
        seen.push((r.status().as_u16(), outcome(&r).leak() as &str));
    }
    assert_eq!(status_posts(&fake), 4, "{seen:?}");
    assert_eq!(&seen[..3], &[(201, "BYPASS"); 3]);
    assert_eq!(seen[3], (422, "BYPASS"));
    assert_eq!(&seen[4..], &[(422, "NEGATIVE"); 2]);
    // The replay is GitHub's answer, exactly.
    let replay = post_status(&gw, SHA, Some("ci/build")).await;
    assert_eq!(replay.headers()["content-type"], "application/json; charset=utf-8");
    let body: serde_json::Value = serde_json::from_str(&replay.text().await.unwrap()).unwrap();
    assert_eq!(body["message"], "Validation Failed");
    assert!(body["errors"].as_str().unwrap().contains("maximum number of statuses"));
    assert_eq!(gw.metric("ghgate_negative_hits_total{rule=\"statuses_limit\"}").await, 3.0);
    assert_eq!(gw.metric("ghgate_negative_stored_total{rule=\"statuses_limit\"}").await, 1.0);
    assert_eq!(gw.metric("ghgate_requests_total{outcome=\"negative\"}").await, 3.0);

    // Another context, another SHA, and the default context still go upstream.
    assert_eq!(post_status(&gw, SHA, Some("ci/lint")).await.status(), 201);
    assert_eq!(
        post_status(&gw, "0000000000000000000000000000000000000001", Some("ci/build")).await.status(),
        201
    );
    assert_eq!(post_status(&gw, SHA, None).await.status(), 201);
    assert_eq!(status_posts(&fake), 7);
}

#[tokio::test]
async fn the_older_list_shape_is_recognised() {
    let fake = FakeGitHub::start().await;
    fake.set_statuses_limit(1, "list");
    let gw = start_gateway(&fake.url(), |_| {}).await;
    for _ in 0..4 {
        post_status(&gw, SHA, Some("ci")).await;
    }
    assert_eq!(status_posts(&fake), 2);
}

#[tokio::test]
async fn a_reworded_422_is_not_remembered_and_raises_the_canary() {
    let fake = FakeGitHub::start().await;
    fake.set_statuses_limit(1, "reworded");
    let gw = start_gateway(&fake.url(), |_| {}).await;
    for _ in 0..4 {
        post_status(&gw, SHA, Some("ci")).await;
    }
    assert_eq!(status_posts(&fake), 4, "every post went upstream");
    assert_eq!(gw.metric("ghgate_negative_canary_total{rule=\"statuses_limit\"}").await, 3.0);
    assert_eq!(gw.metric("ghgate_negative_canaries_total").await, 3.0);
}

#[tokio::test]
async fn forbidden_and_not_found_answers_with_the_phrase_are_never_remembered() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let phrase_body = r#"{"message":"Validation Failed","errors":"This SHA and context has reached the maximum number of statuses."}"#;
    for status in [403, 404, 409] {
        fake.answer_next(status, phrase_body);
        assert_eq!(post_status(&gw, SHA, Some("ci")).await.status().as_u16(), status);
    }
    let r = post_status(&gw, SHA, Some("ci")).await;
    assert_eq!(r.status(), 201, "nothing was remembered");
    assert_eq!(status_posts(&fake), 4);
}

#[tokio::test]
async fn the_success_answer_can_replace_the_replay() {
    let fake = FakeGitHub::start().await;
    fake.set_statuses_limit(1, "string");
    let gw = start_gateway(&fake.url(), |s| s.negative.statuses_limit.answer = NegativeAnswer::Success).await;
    post_status(&gw, SHA, Some("ci")).await;
    assert_eq!(post_status(&gw, SHA, Some("ci")).await.status(), 422, "GitHub's own answer goes back first");
    let r = post_status(&gw, SHA, Some("ci")).await;
    assert_eq!((r.status().as_u16(), outcome(&r)), (201, "NEGATIVE".to_string()));
}

#[tokio::test]
async fn a_404_is_remembered_per_credential_and_expires() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |s| s.negative.not_found.ttl = Duration::from_secs(1)).await;
    assert_eq!(outcome(&gw.get("/repos/octo/missing", Some("a")).await), "MISS");
    let r = gw.get("/repos/octo/missing", Some("a")).await;
    assert_eq!((r.status().as_u16(), outcome(&r)), (404, "NEGATIVE".to_string()));
    assert!(r.text().await.unwrap().contains("Not Found"));
    // Another credential asks for itself.
    assert_eq!(outcome(&gw.get("/repos/octo/missing", Some("b")).await), "MISS");
    assert_eq!(fake.requests_for("/repos/octo/missing"), 2);
    // After the TTL, and once it exists, the next request sees it.
    fake.put("/repos/octo/missing", Resource::json("{}"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = gw.get("/repos/octo/missing", Some("a")).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn unauthorized_forbidden_and_server_errors_are_never_remembered_for_reads() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |_| {}).await;
    for status in [401, 403, 500, 502] {
        fake.fail_next(1, status);
        assert_eq!(gw.get("/repos/octo/flaky", Some("a")).await.status().as_u16(), status);
    }
    fake.put("/repos/octo/flaky", Resource::json("{}"));
    assert_eq!(gw.get("/repos/octo/flaky", Some("a")).await.status(), 200);
}

#[tokio::test]
async fn every_opt_out_flag_turns_its_rule_off() {
    for flag in ["all", "statuses_limit", "not_found"] {
        let fake = FakeGitHub::start().await;
        fake.set_statuses_limit(1, "string");
        let gw = start_gateway(&fake.url(), |s: &mut Settings| match flag {
            "all" => s.negative.enabled = false,
            "statuses_limit" => s.negative.statuses_limit.enabled = false,
            _ => s.negative.not_found.enabled = false,
        })
        .await;
        for _ in 0..3 {
            post_status(&gw, SHA, Some("ci")).await;
            gw.get("/repos/octo/missing", Some("a")).await;
        }
        let statuses_on = flag == "not_found";
        let not_found_on = flag == "statuses_limit";
        assert_eq!(status_posts(&fake), if statuses_on { 2 } else { 3 }, "{flag}");
        assert_eq!(fake.requests_for("/repos/octo/missing"), if not_found_on { 1 } else { 3 }, "{flag}");
    }
}

#[tokio::test]
async fn operator_rules_remember_what_they_describe() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |s| {
        s.negative.rules.push(ghgate::config::NegativeRuleSettings {
            name: "hook-tests".into(),
            enabled: true,
            method: "POST".into(),
            path: ghgate::path_pattern::PathPattern::parse("/repos/{owner}/{repo}/hooks/{id}/tests").unwrap(),
            status: vec![404],
            phrase: Some("hook not found".into()),
            key: vec!["owner".into(), "repo".into(), "id".into()],
            ttl: Duration::from_secs(60),
            per_credential: false,
        });
    })
    .await;
    // With a credential: a shared entry is replayed only to credentials that have shown
    // access to the repository (here, by getting the remembered answer from GitHub itself).
    let post = || {
        gw.client
            .post(format!("{}/repos/octo/hello/hooks/7/tests", gw.url))
            .header("authorization", "token maintainer")
            .body("")
            .send()
    };
    fake.answer_next(404, r#"{"message":"Hook not found"}"#);
    assert_eq!(post().await.unwrap().status(), 404);
    let r = post().await.unwrap();
    assert_eq!((r.status().as_u16(), outcome(&r)), (404, "NEGATIVE".to_string()));
    assert_eq!(fake.requests_for("/repos/octo/hello/hooks/7/tests"), 1);
}

#[tokio::test]
async fn replicas_on_redis_share_entries_and_a_cleared_entry_is_gone_on_both() {
    let redis = RedisServer::start();
    let fake = FakeGitHub::start().await;
    fake.set_statuses_limit(1, "string");
    let url = redis.url();
    let shared = move |s: &mut Settings| {
        s.store.backend = StoreBackend::Redis;
        s.store.redis_url = Some(url.clone());
    };
    let a = start_gateway(&fake.url(), &shared).await;
    let b = start_gateway(&fake.url(), &shared).await;
    post_status(&a, SHA, Some("ci")).await;
    assert_eq!(post_status(&a, SHA, Some("ci")).await.status(), 422);
    assert_eq!(outcome(&post_status(&b, SHA, Some("ci")).await), "NEGATIVE", "B knows what A learnt");
    assert_eq!(status_posts(&fake), 2);

    // Clear by repository on A's admin listener: gone for B too.
    let cleared: serde_json::Value = serde_json::from_str(
        &a.client
            .delete(format!("{}/negative?owner=octo&repo=hello", a.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(cleared["removed"], 1);
    assert_eq!(outcome(&post_status(&b, SHA, Some("ci")).await), "BYPASS");
    assert_eq!(outcome(&post_status(&a, SHA, Some("ci")).await), "NEGATIVE", "remembered again");
    assert_eq!(status_posts(&fake), 3);

    // Clear by rule and by owner work too.
    let by_rule =
        a.client.delete(format!("{}/negative?rule=statuses_limit", a.admin_url)).send().await.unwrap();
    assert_eq!(by_rule.status(), 200);
    assert_eq!(outcome(&post_status(&b, SHA, Some("ci")).await), "BYPASS");
    let by_owner = b.client.delete(format!("{}/negative?owner=octo", b.admin_url)).send().await.unwrap();
    assert_eq!(by_owner.status(), 200);
    assert_eq!(outcome(&post_status(&a, SHA, Some("ci")).await), "BYPASS");
}
