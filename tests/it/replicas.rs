//! Replicas sharing one Redis behave as one node: the same rate-limit units, the newest
//! validators, read-your-writes across replicas, freshness shared after a 304.

use crate::support;

use std::time::Duration;

use crate::on_both;
use support::redis_server::Shared;
use support::{FakeGitHub, Resource, TestGateway, outcome, start_gateway};

const REPO: &str = "/repos/octo/hello";

async fn two_replicas(fake: &FakeGitHub, shared: &Shared) -> (TestGateway, TestGateway) {
    (
        start_gateway(&fake.url(), |s| shared.apply(s)).await,
        start_gateway(&fake.url(), |s| shared.apply(s)).await,
    )
}

/// `PATCH REPO` through `gw` with `body`; the answer's status.
async fn patch(gw: &TestGateway, body: &str) -> u16 {
    let r = gw
        .client
        .patch(format!("{}{REPO}", gw.url))
        .header("authorization", "token t")
        .body(body.to_string());
    r.send().await.unwrap().status().as_u16()
}

on_both!(a_change_fetched_by_one_replica_is_not_bought_again_by_the_other);
async fn a_change_fetched_by_one_replica_is_not_bought_again_by_the_other(shared: &Shared) {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    fake.put(REPO, Resource::json(r#"{"v":1}"#));
    let (a, b) = two_replicas(&fake, shared).await;
    assert_eq!(outcome(&a.get(REPO, Some("t")).await), "MISS");
    // B finds A's entry in Redis and keeps it in its memory tier.
    assert_eq!(b.get(REPO, Some("t")).await.text().await.unwrap(), r#"{"v":1}"#);
    assert_eq!(fake.charged(), 1);

    fake.change(REPO, r#"{"v":2}"#);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let through_a = a.get(REPO, Some("t")).await;
    assert_eq!(through_a.text().await.unwrap(), r#"{"v":2}"#);
    assert_eq!(fake.charged(), 2, "A pays for the new body");

    // B's memory tier holds v1, stale; Redis holds A's v2, fresh. B must not pay again.
    let through_b = b.get(REPO, Some("t")).await;
    assert_ne!(outcome(&through_b), "MISS");
    assert_eq!(through_b.text().await.unwrap(), r#"{"v":2}"#);
    assert_eq!(fake.charged(), 2, "the change was bought once across both replicas");
}

on_both!(a_revalidation_by_one_replica_refreshes_the_entry_for_the_other);
async fn a_revalidation_by_one_replica_refreshes_the_entry_for_the_other(shared: &Shared) {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    fake.put(REPO, Resource::json(r#"{"v":1}"#));
    let (a, b) = two_replicas(&fake, shared).await;
    assert_eq!(outcome(&a.get(REPO, Some("t")).await), "MISS");
    b.get(REPO, Some("t")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    assert_eq!(outcome(&a.get(REPO, Some("t")).await), "REVALIDATED");
    let requests = fake.requests_for(REPO);
    // Within the refreshed max-age, B answers from the refreshed record without asking GitHub.
    let through_b = b.get(REPO, Some("t")).await;
    assert_eq!(through_b.status(), 200);
    assert_eq!(fake.requests_for(REPO), requests, "B did not revalidate what A just revalidated");
}

on_both!(a_conditional_request_carries_the_newest_validator_any_replica_holds);
async fn a_conditional_request_carries_the_newest_validator_any_replica_holds(shared: &Shared) {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    fake.put(REPO, Resource::json(r#"{"v":1}"#));
    let (a, b) = two_replicas(&fake, shared).await;
    a.get(REPO, Some("t")).await;
    b.get(REPO, Some("t")).await;
    fake.change(REPO, r#"{"v":2}"#);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.get(REPO, Some("t")).await; // A holds v2 now, in Redis too
    tokio::time::sleep(Duration::from_millis(1100)).await; // v2 is stale everywhere

    // B's memory tier still holds v1: its revalidation must offer v2's ETag, and get a 304.
    let not_modified = fake.not_modified();
    let through_b = b.get(REPO, Some("t")).await;
    assert_eq!(outcome(&through_b), "REVALIDATED");
    assert_eq!(through_b.text().await.unwrap(), r#"{"v":2}"#);
    assert_eq!(fake.not_modified(), not_modified + 1);
    assert_eq!(fake.charged(), 2, "v1 and v2 bought once each");
}

on_both!(a_write_through_one_replica_is_seen_through_the_other_50_ms_after_its_answer);
async fn a_write_through_one_replica_is_seen_through_the_other_50_ms_after_its_answer(shared: &Shared) {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(r#"{"v":1}"#)); // max-age 60
    let (a, b) = two_replicas(&fake, shared).await;
    assert_eq!(outcome(&b.get(REPO, Some("t")).await), "MISS");
    assert_eq!(outcome(&b.get(REPO, Some("t")).await), "HIT");

    for round in 2..5 {
        let body = format!(r#"{{"v":{round}}}"#);
        assert_eq!(patch(&a, &body).await, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let read = b.get(REPO, Some("t")).await;
        assert_ne!(outcome(&read), "HIT", "round {round}: B served the old body after A's write");
        assert_eq!(read.text().await.unwrap(), body, "round {round}");
    }
    assert!(b.metric("ghgate_replica_marks_received_total").await >= 3.0);
}

on_both!(a_replica_started_after_a_write_does_not_serve_what_it_made_stale);
async fn a_replica_started_after_a_write_does_not_serve_what_it_made_stale(shared: &Shared) {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(r#"{"v":1}"#));
    let a = start_gateway(&fake.url(), |s| shared.apply(s)).await;
    assert_eq!(outcome(&a.get(REPO, Some("t")).await), "MISS"); // in Redis, fresh for 60 s
    assert_eq!(patch(&a, r#"{"v":2}"#).await, 200);

    // B starts after the write: it catches up on the log before serving the entry A stored.
    let b = start_gateway(&fake.url(), |s| shared.apply(s)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let read = b.get(REPO, Some("t")).await;
    assert_eq!(read.text().await.unwrap(), r#"{"v":2}"#);
}

on_both!(a_body_one_replica_bought_is_revalidated_for_free_by_another_token_on_the_other);
async fn a_body_one_replica_bought_is_revalidated_for_free_by_another_token_on_the_other(shared: &Shared) {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(r#"{"v":1}"#));
    let (a, b) = two_replicas(&fake, shared).await;
    assert_eq!(outcome(&a.get(REPO, Some("t1")).await), "MISS");
    assert_eq!(fake.charged(), 1);
    // Another token through the other replica: GitHub's 304 to its own conditional request
    // (offering the body A holds) costs nothing.
    let through_b = b.get(REPO, Some("t2")).await;
    assert_eq!(through_b.text().await.unwrap(), r#"{"v":1}"#);
    assert_eq!(fake.charged(), 1, "one unit for the fleet across both replicas");
}

on_both!(many_tokens_reading_a_new_resource_through_two_replicas_pay_for_it_once);
async fn many_tokens_reading_a_new_resource_through_two_replicas_pay_for_it_once(shared: &Shared) {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(r#"{"v":1}"#));
    fake.set_delay(Duration::from_millis(100));
    let (a, b) = two_replicas(&fake, shared).await;
    let mut reads = Vec::new();
    for t in 0..10 {
        let gw = if t % 2 == 0 { &a } else { &b };
        let (client, url) = (gw.client.clone(), format!("{}{REPO}", gw.url));
        reads.push(tokio::spawn(async move {
            let r = client.get(url).header("authorization", format!("token fleet-{t}")).send().await.unwrap();
            r.text().await.unwrap()
        }));
    }
    for read in reads {
        assert_eq!(read.await.unwrap(), r#"{"v":1}"#);
    }
    assert_eq!(fake.charged(), 1, "the first fetch of the variant went first across replicas");
}

on_both!(a_body_recorded_by_another_replica_is_offered_even_when_this_one_holds_an_older_copy);
async fn a_body_recorded_by_another_replica_is_offered_even_when_this_one_holds_an_older_copy(
    shared: &Shared,
) {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    fake.put(REPO, Resource::json(r#"{"v":1}"#));
    let (a, b) = two_replicas(&fake, shared).await;
    a.get(REPO, Some("t1")).await;
    b.get(REPO, Some("t1")).await; // B's memory tier: t1's entry, v1
    fake.change(REPO, r#"{"v":2}"#);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(a.get(REPO, Some("t1")).await.text().await.unwrap(), r#"{"v":2}"#);
    assert_eq!(fake.charged(), 2);
    // t2 through B: the fleet's newest body is t1's v2 (in Redis), not B's v1 copy of it.
    let through_b = b.get(REPO, Some("t2")).await;
    assert_eq!(through_b.text().await.unwrap(), r#"{"v":2}"#);
    assert_eq!(fake.charged(), 2, "t2's request offered v2 and got a free 304");
}

on_both!(stats_and_status_show_the_fleet_beside_this_replica);
async fn stats_and_status_show_the_fleet_beside_this_replica(shared: &Shared) {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(r#"{"v":1}"#));
    let (a, b) = two_replicas(&fake, shared).await;
    for _ in 0..3 {
        a.get(REPO, Some("t")).await;
    }
    for _ in 0..5 {
        b.get(REPO, Some("t")).await;
    }
    // Each replica reports every 5 s and when its admin view is read: B's read brings its 5.
    b.admin_json("/stats").await;
    let stats = a.admin_json("/stats").await;
    let fleet = &stats["fleet"];
    assert_eq!(fleet["replicas"].as_array().unwrap().len(), 2, "{stats}");
    assert_eq!(fleet["answers"], 8, "{stats}");
    assert_eq!(stats["answers"]["hit"].as_u64().unwrap() + stats["answers"]["miss"].as_u64().unwrap(), 3);
    assert_eq!(fleet["units_spent"], 1, "one paid answer in the whole fleet: {stats}");
    let names: Vec<&str> =
        fleet["replicas"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&stats["replica"].as_str().unwrap()), "{names:?}");

    let status = a.admin_json("/status.json").await;
    assert_eq!(status["fleet"]["answers"], 8);
    let fleet_minutes: u64 =
        status["fleet"]["minutes"].as_array().unwrap().iter().map(|m| m["answers"].as_u64().unwrap()).sum();
    assert_eq!(fleet_minutes, 8, "the fleet's last hour sums both replicas");
}

#[tokio::test]
async fn one_node_shows_no_fleet() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |_| {}).await;
    assert!(gw.admin_json("/stats").await["fleet"].is_null());
    assert!(gw.admin_json("/status.json").await["fleet"].is_null());
}

on_both!(a_write_right_after_a_read_is_seen_through_the_other_replica);
async fn a_write_right_after_a_read_is_seen_through_the_other_replica(shared: &Shared) {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(r#"{"v":0}"#));
    let (a, b) = two_replicas(&fake, shared).await;
    b.get(REPO, Some("t")).await;
    // Writes sent the moment the other replica's read returns: on loopback, often within the
    // same millisecond as that read.
    for round in 1..=20 {
        let body = format!(r#"{{"v":{round}}}"#);
        assert_eq!(patch(&a, &body).await, 200);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            if b.get(REPO, Some("t")).await.text().await.unwrap() == body {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "round {round}: the write never showed through B");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
