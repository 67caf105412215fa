//! GraphQL through the gateway: the fake GitHub's `/graphql` charges points to the `graphql`
//! resource and numbers its answers, so each test can tell what reached GitHub, what it cost,
//! and which answer a client got.

use crate::support;

use std::time::Duration;

use ghgate::config::{GraphqlRule, Settings};
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use support::redis_server::Shared;
use support::{FakeGitHub, TestGateway, outcome, start_gateway};

use crate::on_both;

const REPO_QUERY: &str = "query Repo($owner: String!, $name: String!) {
  repository(owner: $owner, name: $name) { pullRequests(first: 10) { nodes { number } } }
}";

/// A rule caching queries that ask only for `repository`, for `ttl`.
fn repository_rule(ttl: Duration) -> impl FnOnce(&mut Settings) {
    move |s: &mut Settings| {
        s.graphql.rules.push(GraphqlRule {
            operation: None,
            fields: Some(vec!["repository".into()]),
            ttl,
            stale_if_error: Some(Duration::from_secs(60)),
        })
    }
}

/// `POST /graphql` with `body` as `token`.
async fn post(gw: &TestGateway, token: &str, body: String) -> reqwest::Response {
    gw.client
        .post(format!("{}/graphql", gw.url))
        .header("authorization", format!("bearer {token}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The repository query for `owner/name`.
fn repo_query(owner: &str, name: &str) -> String {
    serde_json::json!({"query": REPO_QUERY, "variables": {"owner": owner, "name": name}}).to_string()
}

/// A mutation that names no repository (only a node ID), as most mutations do.
const ADD_STAR: &str =
    r#"{"query": "mutation { addStar(input: {starrableId: \"R_1\"}) { clientMutationId } }"}"#;

/// A REST write (`{}` as the body) through `gw` as `token`; whether GitHub accepted it.
async fn rest_write(gw: &TestGateway, method: reqwest::Method, path: &str, token: &str) -> bool {
    let r = gw
        .client
        .request(method, format!("{}{path}", gw.url))
        .header("authorization", format!("token {token}"));
    r.body("{}").send().await.unwrap().status().is_success()
}

/// A query for `owner/name` as `token`: (outcome, the fake's serial number of the answer).
async fn ask(gw: &TestGateway, token: &str, owner: &str, name: &str) -> (String, u64) {
    let r = post(gw, token, repo_query(owner, name)).await;
    assert_eq!(r.status(), 200);
    let outcome = outcome(&r);
    let json = json_of(r).await;
    (outcome, json["data"]["serial"].as_u64().unwrap_or_else(|| panic!("no serial in {json}")))
}

/// An answer's body as JSON.
async fn json_of(r: reqwest::Response) -> serde_json::Value {
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn queries_pass_through_by_default_and_their_points_are_in_the_ledger() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let (first, serial_one) = ask(&gw, "t", "o", "a").await;
    let r = post(&gw, "t", repo_query("o", "a")).await;
    assert_eq!(outcome(&r), "BYPASS");
    assert_eq!(r.headers()["x-ratelimit-resource"], "graphql");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "4998");
    assert_eq!((first.as_str(), serial_one), ("BYPASS", 1));
    assert_eq!(fake.points(), 2, "nothing is cached without a rule");
    let ledger = gw.admin_json("/ratelimits").await;
    let line = ledger["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["resource"] == "graphql")
        .unwrap_or_else(|| panic!("no graphql line in {ledger}"))
        .clone();
    assert_eq!(line["remaining"], 4998);
    assert_eq!(gw.metric("ghgate_graphql_requests_total{kind=\"query\"}").await, 2.0);
}

#[tokio::test]
async fn bad_input_is_answered_locally_in_githubs_shape_without_spending_a_point() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |s| s.graphql.max_body_bytes = 1024).await;
    let cases = [
        ("not json".to_string(), 400, "Problems parsing JSON"),
        (r#"{"variables":{}}"#.to_string(), 400, "A query attribute must be specified"),
        (serde_json::json!({"query": "{ viewer { login }"}).to_string(), 400, "Parse error"),
        (serde_json::json!({"query": "query A { a } query B { b }"}).to_string(), 400, "operation name"),
        (
            serde_json::json!({"query": format!("{{ a(x: \"{}\") }}", "x".repeat(2000))}).to_string(),
            413,
            "1024",
        ),
    ];
    for (body, status, message) in cases {
        let r = post(&gw, "t", body.clone()).await;
        assert_eq!(r.status(), status, "{body:.60}");
        assert_eq!(outcome(&r), "BYPASS");
        let json = json_of(r).await;
        assert!(json["message"].as_str().unwrap().contains(message), "{json}");
        assert_eq!(json["documentation_url"], "https://docs.github.com/graphql");
        assert_eq!(json["errors"][0]["message"], json["message"], "GraphQL clients see it too");
    }
    // A body sent in chunks, without a length, is cut off at the cap as well.
    let chunks =
        futures::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 200]))));
    let chunked = gw
        .client
        .post(format!("{}/graphql", gw.url))
        .header("authorization", "bearer t")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status(), 413);
    assert_eq!(fake.graphql_requests(), 0, "nothing reached GitHub");
    assert_eq!(fake.points(), 0);
    assert_eq!(gw.metric("ghgate_graphql_requests_total{kind=\"refused\"}").await, 6.0);
}

#[tokio::test]
async fn identical_queries_in_flight_at_once_share_one_upstream_request() {
    let fake = FakeGitHub::start().await;
    fake.set_delay(Duration::from_millis(300));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let asks = (0..20).map(|_| ask(&gw, "t", "o", "a"));
    let answers = futures::future::join_all(asks).await;
    assert_eq!(fake.graphql_requests(), 1, "20 identical queries, one upstream request");
    assert!(answers.iter().all(|(_, serial)| *serial == answers[0].1), "all got the one answer");
    let coalesced = answers.iter().filter(|(o, _)| o == "COALESCED").count();
    assert_eq!(coalesced, 19);

    // Other variables, another credential, or another header that picks the answer: another
    // request each.
    let other_variables = ask(&gw, "t", "o", "b");
    let other_token = ask(&gw, "u", "o", "a");
    let with_features = gw
        .client
        .post(format!("{}/graphql", gw.url))
        .header("authorization", "bearer t")
        .header("graphql-features", "issue_types")
        .body(repo_query("o", "a"))
        .send();
    let (_, _, featured) = tokio::join!(other_variables, other_token, with_features);
    assert_eq!(featured.unwrap().status(), 200);
    assert_eq!(fake.graphql_requests(), 4);
}

#[tokio::test]
async fn mutations_are_never_coalesced() {
    let fake = FakeGitHub::start().await;
    fake.set_delay(Duration::from_millis(200));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let sends = (0..5).map(|_| post(&gw, "t", ADD_STAR.into()));
    let answers = futures::future::join_all(sends).await;
    assert!(answers.iter().all(|r| r.status() == 200 && outcome(r) == "BYPASS"));
    assert_eq!(fake.graphql_requests(), 5, "every mutation reaches GitHub");
    assert_eq!(gw.metric("ghgate_graphql_requests_total{kind=\"mutation\"}").await, 5.0);
}

#[tokio::test]
async fn a_rule_caches_a_querys_answer_per_partition_for_its_ttl() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), repository_rule(Duration::from_secs(1))).await;
    let (first, serial) = ask(&gw, "t", "o", "a").await;
    assert_eq!(first, "MISS");
    let again = post(&gw, "t", repo_query("o", "a")).await;
    assert_eq!(outcome(&again), "HIT");
    assert_eq!(again.headers()["x-ratelimit-resource"], "graphql");
    assert_eq!(json_of(again).await["data"]["serial"], serial);
    // Whitespace and variable order do not make another query.
    let reordered = serde_json::json!({
        "query": format!("# the same\n{}", REPO_QUERY.replace('\n', " ")),
        "variables": {"name": "a", "owner": "o"},
    });
    assert_eq!(outcome(&post(&gw, "t", reordered.to_string()).await), "HIT");
    // Another credential never gets this partition's answer.
    let (other, other_serial) = ask(&gw, "u", "o", "a").await;
    assert_eq!(other, "MISS");
    assert_ne!(other_serial, serial);
    assert_eq!(fake.points(), 2);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (expired, newer) = ask(&gw, "t", "o", "a").await;
    assert_eq!(expired, "MISS");
    assert!(newer > serial);
    // A query the rule does not cover (it asks for more than `repository`) is not cached.
    let wider =
        serde_json::json!({"query": "{ viewer { login } repository(owner: \"o\", name: \"a\") { id } }"});
    assert_eq!(outcome(&post(&gw, "t", wider.to_string()).await), "BYPASS");
    assert_eq!(outcome(&post(&gw, "t", wider.to_string()).await), "BYPASS");
}

#[tokio::test]
async fn a_rule_names_an_operation_as_gh_sends_it() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |s| {
        s.graphql.rules.push(GraphqlRule {
            operation: Some("PullRequestList".into()),
            fields: None,
            ttl: Duration::from_secs(10),
            stale_if_error: None,
        })
    })
    .await;
    let named = serde_json::json!({"query": "query PullRequestList { viewer { login } }"}).to_string();
    assert_eq!(outcome(&post(&gw, "t", named.clone()).await), "MISS");
    assert_eq!(outcome(&post(&gw, "t", named).await), "HIT");
    let other = serde_json::json!({"query": "query IssueList { viewer { login } }"}).to_string();
    assert_eq!(outcome(&post(&gw, "t", other.clone()).await), "BYPASS");
    assert_eq!(outcome(&post(&gw, "t", other).await), "BYPASS");
    assert_eq!(fake.graphql_requests(), 3);
}

#[tokio::test]
async fn answers_with_errors_are_not_cached() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), repository_rule(Duration::from_secs(10))).await;
    fake.graphql_errors_next(1);
    let r = post(&gw, "t", repo_query("o", "gone")).await;
    assert_eq!(outcome(&r), "MISS");
    assert!(r.text().await.unwrap().contains("Could not resolve"));
    let (second, _) = ask(&gw, "t", "o", "gone").await;
    assert_eq!(second, "MISS", "the error answer was not kept");
    assert_eq!(ask(&gw, "t", "o", "gone").await.0, "HIT");
    assert_eq!(fake.graphql_requests(), 2);
}

#[tokio::test]
async fn a_stale_answer_is_served_when_github_fails_within_stale_if_error() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), repository_rule(Duration::from_millis(500))).await;
    let (_, serial) = ask(&gw, "t", "o", "a").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    fake.fail_next(1, 502);
    let (stale, stale_serial) = ask(&gw, "t", "o", "a").await;
    assert_eq!((stale.as_str(), stale_serial), ("STALE", serial));
    // Without an entry, GitHub's failure is the answer.
    fake.fail_next(1, 502);
    let failed = post(&gw, "t", repo_query("o", "b")).await;
    assert_eq!(failed.status(), 502);
}

#[tokio::test]
async fn the_graphql_budget_is_guarded_like_core() {
    let fake = FakeGitHub::start().await;
    fake.put("/repos/o/a", support::Resource::json(r#"{"id":1}"#));
    fake.set_limit(20);
    let gw = start_gateway(&fake.url(), repository_rule(Duration::from_millis(200))).await;
    fake.set_graphql_cost(10);
    let (_, serial) = ask(&gw, "t", "o", "a").await;
    fake.set_graphql_cost(9);
    ask(&gw, "t", "o", "b").await;
    // 1 of 20 points left: the reserve (5 %). A stale answer is served rather than spending it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (reserve, reserve_serial) = ask(&gw, "t", "o", "a").await;
    assert_eq!((reserve.as_str(), reserve_serial), ("STALE", serial));
    assert_eq!(fake.graphql_requests(), 2);
    assert_eq!(gw.metric("ghgate_ratelimit_reserve_stale_total").await, 1.0);
    // The core budget is another resource: REST reads go on.
    let rest = gw.get("/repos/o/a", Some("t")).await;
    assert_eq!((rest.status().as_u16(), outcome(&rest)), (200, "MISS".to_string()));
    // A query with no answer to stand in spends the last point; at zero the next is refused
    // locally.
    fake.set_graphql_cost(1);
    assert_eq!(ask(&gw, "t", "o", "c").await.0, "MISS");
    let refused = post(&gw, "t", repo_query("o", "d")).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(outcome(&refused), "NEGATIVE");
    assert_eq!(refused.headers()["x-ratelimit-resource"], "graphql");
    assert!(refused.text().await.unwrap().contains("rate limit"));
    assert_eq!(fake.graphql_requests(), 3, "the refused query did not reach GitHub");
}

#[tokio::test]
async fn after_a_secondary_limit_the_identitys_queries_wait_locally() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |_| {}).await;
    fake.secondary_next("retry-after:30");
    let limited = post(&gw, "t", repo_query("o", "a")).await;
    assert_eq!(limited.status(), 403);
    let held = post(&gw, "t", repo_query("o", "b")).await;
    assert_eq!((held.status().as_u16(), outcome(&held)), (403, "NEGATIVE".to_string()));
    assert!(held.headers().contains_key("retry-after"));
    assert_eq!(fake.requests_for("/graphql"), 1, "the held query did not reach GitHub");
}

#[tokio::test]
async fn a_write_makes_the_writers_cached_answers_about_its_repository_stale() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), repository_rule(Duration::from_secs(60))).await;
    for (token, name) in [("t", "a"), ("t", "b"), ("u", "a")] {
        assert_eq!(ask(&gw, token, "o", name).await.0, "MISS");
    }
    // A REST write by t to o/a.
    assert!(rest_write(&gw, reqwest::Method::PATCH, "/repos/O/a/issues/1", "t").await);
    assert_eq!(ask(&gw, "t", "o", "a").await.0, "MISS", "t wrote to o/a");
    assert_eq!(ask(&gw, "t", "o", "b").await.0, "HIT", "o/b was not written");
    assert_eq!(ask(&gw, "u", "o", "a").await.0, "HIT", "u did not write");

    // A mutation that names no repository: all of t's GraphQL answers.
    assert_eq!(post(&gw, "t", ADD_STAR.into()).await.status(), 200);
    assert_eq!(ask(&gw, "t", "o", "a").await.0, "MISS");
    assert_eq!(ask(&gw, "t", "o", "b").await.0, "MISS");
    assert_eq!(ask(&gw, "u", "o", "a").await.0, "HIT");
    // A query whose reach the gateway cannot tell (a variable it was not given) goes stale on
    // any write of its partition.
    let unknown =
        serde_json::json!({"query": "query($n: String) { repository(owner: \"x\", name: $n) { id } }"});
    assert_eq!(outcome(&post(&gw, "u", unknown.to_string()).await), "MISS");
    assert_eq!(outcome(&post(&gw, "u", unknown.to_string()).await), "HIT");
    assert!(rest_write(&gw, reqwest::Method::POST, "/repos/z/z/issues", "u").await);
    assert_eq!(outcome(&post(&gw, "u", unknown.to_string()).await), "MISS");
    assert_eq!(ask(&gw, "u", "o", "a").await.0, "HIT", "u's answer about o/a stands");
    assert_eq!(gw.metric("ghgate_graphql_invalidations_total{cause=\"write\"}").await, 3.0);
}

#[tokio::test]
async fn a_webhook_for_a_repository_makes_every_partitions_answers_about_it_stale() {
    const SECRET: &str = "graphql-webhook-secret";
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |s| {
        repository_rule(Duration::from_secs(60))(s);
        s.webhooks.secrets = vec![SECRET.into()];
    })
    .await;
    for (token, name) in [("t", "hello"), ("u", "hello"), ("t", "other")] {
        assert_eq!(ask(&gw, token, "octo", name).await.0, "MISS");
    }
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "repository": {"name": "hello", "full_name": "octo/hello", "owner": {"login": "octo"}},
    })
    .to_string();
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let delivered = gw
        .client
        .post(format!("{}/_ghgate/webhook", gw.url))
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-1")
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 202);
    // Applied in the background, at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ask(&gw, "t", "octo", "hello").await.0, "MISS");
    assert_eq!(ask(&gw, "u", "octo", "hello").await.0, "MISS");
    assert_eq!(ask(&gw, "t", "octo", "other").await.0, "HIT");
}

#[tokio::test]
async fn admin_purges_reach_cached_graphql_answers() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), repository_rule(Duration::from_secs(60))).await;
    let purge = |q: &'static str| gw.client.post(format!("{}/purge?{q}", gw.admin_url)).send();
    for name in ["a", "b"] {
        ask(&gw, "t", "o", name).await;
    }
    assert_eq!(purge("owner=o&repo=a").await.unwrap().status(), 200);
    assert_eq!(ask(&gw, "t", "o", "a").await.0, "MISS");
    assert_eq!(ask(&gw, "t", "o", "b").await.0, "HIT");
    assert_eq!(purge("path=/graphql").await.unwrap().status(), 200);
    assert_eq!(ask(&gw, "t", "o", "a").await.0, "MISS");
    assert_eq!(ask(&gw, "t", "o", "b").await.0, "MISS");
}

#[tokio::test]
async fn with_graphql_off_requests_pass_through_untouched() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |s| s.graphql.enabled = false).await;
    let r = post(&gw, "t", "not json".into()).await;
    assert_eq!(r.status(), 400, "GitHub's own answer");
    assert_eq!(outcome(&r), "BYPASS");
    assert_eq!(fake.graphql_requests(), 1);
}

// Two replicas sharing Redis (one server, and a three-master cluster) behave as one node.

async fn two_replicas(fake: &FakeGitHub, shared: &Shared) -> (TestGateway, TestGateway) {
    let settings = |s: &mut Settings| {
        shared.apply(s);
        repository_rule(Duration::from_secs(60))(s);
    };
    (start_gateway(&fake.url(), settings).await, start_gateway(&fake.url(), settings).await)
}

on_both!(a_graphql_answer_cached_through_one_replica_is_served_by_the_other);
async fn a_graphql_answer_cached_through_one_replica_is_served_by_the_other(shared: &Shared) {
    let fake = FakeGitHub::start().await;
    let (a, b) = two_replicas(&fake, shared).await;
    let (first, serial) = ask(&a, "t", "o", "a").await;
    assert_eq!(first, "MISS");
    assert_eq!(ask(&b, "t", "o", "a").await, ("HIT".to_string(), serial));
    assert_eq!(ask(&b, "u", "o", "a").await.0, "MISS", "another partition, on any replica");
    assert_eq!(fake.points(), 2);
}

on_both!(writes_through_one_replica_make_the_others_cached_graphql_answers_stale);
async fn writes_through_one_replica_make_the_others_cached_graphql_answers_stale(shared: &Shared) {
    let fake = FakeGitHub::start().await;
    let (a, b) = two_replicas(&fake, shared).await;
    ask(&a, "t", "o", "a").await;
    ask(&a, "t", "o", "b").await;
    assert_eq!(ask(&b, "t", "o", "a").await.0, "HIT", "B holds A's answer in its memory tier now");
    assert!(rest_write(&b, reqwest::Method::PATCH, "/repos/o/a", "t").await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ask(&a, "t", "o", "a").await.0, "MISS", "A follows B's mark");
    assert_eq!(ask(&a, "t", "o", "b").await.0, "HIT");

    ask(&b, "t", "o", "b").await;
    assert_eq!(post(&a, "t", ADD_STAR.into()).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ask(&b, "t", "o", "b").await.0, "MISS", "B follows A's mutation");
}

on_both!(identical_cached_queries_through_two_replicas_at_once_cost_one_request);
async fn identical_cached_queries_through_two_replicas_at_once_cost_one_request(shared: &Shared) {
    let fake = FakeGitHub::start().await;
    fake.set_delay(Duration::from_millis(300));
    let (a, b) = two_replicas(&fake, shared).await;
    let asks = (0..20).map(|i| ask(if i % 2 == 0 { &a } else { &b }, "t", "o", "a"));
    let answers = futures::future::join_all(asks).await;
    assert_eq!(fake.graphql_requests(), 1, "one replica asked; the other waited for its answer");
    assert!(answers.iter().all(|(_, serial)| *serial == answers[0].1));
}
