//! GraphQL through ghgate (issue 20), against the test suite's fake GitHub, whose `/graphql`
//! charges one point per query and answers after `LATENCY_MS` (default 100 ms, GitHub's
//! GraphQL answers take about that or more):
//!
//! 1. `gh`-like polling: `TOKENS` tokens (10) each poll `REPOS` repositories (5) with `gh pr
//!    list`'s `PullRequestList` query every `PERIOD_MS` (2000) for `SECONDS` (20), once
//!    straight to the fake (the baseline, in the same run) and once through ghgate with a
//!    `[[graphql.rules]]` rule of `TTL_MS` (10000). Reported: points spent, and the polls'
//!    median and p99 latency.
//! 2. Coalescing: `CONCURRENT` (50) identical queries at once, with no rule, straight and
//!    through ghgate: how many reach GitHub (ideally 1 through ghgate).
//!
//! 3. Hit cost: `HITS` (2000) sequential cached queries through ghgate, one client, beside as
//!    many sequential REST hits (`GET /repos/org/r0`) in the same run: what parsing and
//!    fingerprinting a GraphQL body adds to a hit.
//!
//! `cargo run --release --example bench_graphql` (env above; RUNS repeats all, default 3).

// The example uses part of the test harness.
#[allow(dead_code)]
#[path = "../tests/it/support/fake_github.rs"]
mod fake_github;

use std::time::{Duration, Instant};

use fake_github::FakeGitHub;
use ghgate::config::{GraphqlRule, Settings, StoreBackend};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `gh pr list`'s query, as `gh` 2.x sends it (shortened selection).
const PR_LIST: &str = "query PullRequestList($owner: String!, $repo: String!, $limit: Int!, $endCursor: String, $state: [PullRequestState!] = OPEN) {
  repository(owner: $owner, name: $repo) {
    pullRequests(states: $state, first: $limit, after: $endCursor, orderBy: {field: CREATED_AT, direction: DESC}) {
      totalCount
      nodes { number title state url author { login } headRefName isDraft createdAt }
      pageInfo { hasNextPage endCursor }
    }
  }
}";

fn settings(upstream: &str, dir: &std::path::Path, ttl: Option<Duration>) -> Settings {
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    s.server.secret = Some("bench-secret-0123456789".into());
    s.inbound.limit_enabled = false;
    s.store.data_dir = dir.to_path_buf();
    s.store.backend = StoreBackend::Memory;
    s.upstream.url = upstream.parse().unwrap();
    if let Some(ttl) = ttl {
        s.graphql.rules.push(GraphqlRule {
            operation: Some("PullRequestList".into()),
            fields: None,
            ttl,
            stale_if_error: None,
        });
    }
    s
}

fn body(repo: u64) -> String {
    serde_json::json!({
        "query": PR_LIST,
        "variables": {"owner": "org", "repo": format!("r{repo}"), "limit": 30},
    })
    .to_string()
}

/// Polls like `gh pr list` run in a loop: every token asks for every repository each period.
/// Returns the latencies of every poll.
async fn poll(base: &str, tokens: u64, repos: u64, period: Duration, seconds: u64) -> Vec<Duration> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for token in 0..tokens {
        for repo in 0..repos {
            let (client, url) = (client.clone(), format!("{base}/graphql"));
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut next = Instant::now();
                while next < end {
                    let started = Instant::now();
                    let r = client
                        .post(&url)
                        .header("authorization", format!("bearer ghp_token{token}"))
                        .body(body(repo))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    latencies.push(started.elapsed());
                    next += period;
                    tokio::time::sleep_until(next.into()).await;
                }
                latencies
            }));
        }
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    all
}

/// `n` identical queries at once; returns how many reached GitHub.
async fn burst(base: &str, fake: &FakeGitHub, n: u64) -> u64 {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let before = fake.graphql_requests();
    let sends = (0..n).map(|_| {
        client
            .post(format!("{base}/graphql"))
            .header("authorization", "bearer ghp_burst")
            .body(body(0))
            .send()
    });
    for r in futures::future::join_all(sends).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    fake.graphql_requests() - before
}

/// Median latency of `n` sequential hits: a cached GraphQL query, then a cached REST read.
async fn hits(base: &str, n: u64) -> (Duration, Duration) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut graphql = Vec::new();
    let mut rest = Vec::new();
    for i in 0..=n {
        let started = Instant::now();
        let r = client
            .post(format!("{base}/graphql"))
            .header("authorization", "bearer ghp_hits")
            .body(body(0))
            .send();
        let r = r.await.unwrap();
        r.bytes().await.unwrap();
        // The first of each is the miss that fills the entry.
        if i > 0 {
            graphql.push(started.elapsed());
        }
        let started = Instant::now();
        let r = client.get(format!("{base}/repos/org/r0")).header("authorization", "bearer ghp_hits").send();
        r.await.unwrap().bytes().await.unwrap();
        if i > 0 {
            rest.push(started.elapsed());
        }
    }
    graphql.sort();
    rest.sort();
    (at(&graphql, 0.5), at(&rest, 0.5))
}

fn at(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let (tokens, repos, seconds) = (env("TOKENS", 10), env("REPOS", 5), env("SECONDS", 20));
    let period = Duration::from_millis(env("PERIOD_MS", 2000));
    let ttl = Duration::from_millis(env("TTL_MS", 10_000));
    let concurrent = env("CONCURRENT", 50);
    let latency = Duration::from_millis(env("LATENCY_MS", 100));
    let runs = env("RUNS", 3);
    let hit_count = env("HITS", 2000);
    println!(
        "{tokens} tokens x {repos} repositories, a PullRequestList query every {period:?} for {seconds} s; rule ttl {ttl:?}; GitHub answers after {latency:?}"
    );
    for run in 1..=runs {
        // Alternate which goes first, so neither always runs on a warmer machine.
        let order: [bool; 2] = if run % 2 == 1 { [false, true] } else { [true, false] };
        for through_ghgate in order {
            let fake = FakeGitHub::start().await;
            fake.set_delay(latency);
            let dir = tempfile::tempdir().unwrap();
            let running = match through_ghgate {
                true => {
                    Some(ghgate::server::start(settings(&fake.url(), dir.path(), Some(ttl))).await.unwrap())
                }
                false => None,
            };
            let base = running.as_ref().map_or(fake.url(), |r| format!("http://{}", r.proxy_addr));
            let latencies = poll(&base, tokens, repos, period, seconds).await;
            println!(
                "run {run} polling {:<8} points {:>4}  polls {:>4}  p50 {:>9}  p99 {:>9}",
                if through_ghgate { "ghgate" } else { "direct" },
                fake.points(),
                latencies.len(),
                ms(at(&latencies, 0.5)),
                ms(at(&latencies, 0.99)),
            );
            if let Some(running) = running {
                running.shutdown().await;
            }
        }
        for through_ghgate in order {
            let fake = FakeGitHub::start().await;
            fake.set_delay(latency);
            let dir = tempfile::tempdir().unwrap();
            let running = match through_ghgate {
                true => Some(ghgate::server::start(settings(&fake.url(), dir.path(), None)).await.unwrap()),
                false => None,
            };
            let base = running.as_ref().map_or(fake.url(), |r| format!("http://{}", r.proxy_addr));
            let upstream = burst(&base, &fake, concurrent).await;
            println!(
                "run {run} burst   {:<8} {concurrent} identical queries at once -> {upstream} upstream requests, {} points",
                if through_ghgate { "ghgate" } else { "direct" },
                fake.points(),
            );
            if let Some(running) = running {
                running.shutdown().await;
            }
        }
        let fake = FakeGitHub::start().await;
        fake.put("/repos/org/r0", fake_github::Resource::json(r#"{"id":1,"name":"r0"}"#));
        let dir = tempfile::tempdir().unwrap();
        let running =
            ghgate::server::start(settings(&fake.url(), dir.path(), Some(Duration::from_secs(600))))
                .await
                .unwrap();
        let (graphql, rest) = hits(&format!("http://{}", running.proxy_addr), hit_count).await;
        println!(
            "run {run} hits    {hit_count} sequential: GraphQL hit p50 {:.0} us, REST hit p50 {:.0} us ({:.2}x)",
            graphql.as_secs_f64() * 1e6,
            rest.as_secs_f64() * 1e6,
            graphql.as_secs_f64() / rest.as_secs_f64(),
        );
        running.shutdown().await;
    }
}
