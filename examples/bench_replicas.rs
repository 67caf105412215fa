//! The CI-fleet workload through 1, 2 and 3 replicas sharing one `redis-server`, to show that
//! replicas cost what one node costs (issue 17):
//!
//! T tokens poll R resources once a second for D seconds (max-age 1 s), each token's requests
//! going round-robin over the replicas (as behind a load balancer); every resource changes at
//! three moments. Reported per replica count: rate-limit units, upstream requests, 304s, p50
//! and p99 of the answers, and the oldest version served after a change (how long after a
//! change some client still got the old body; the goal is within max-age + 1 s). The
//! per-credential ideal is T × R × 4 (every token pays once per version); computed
//! validators, on by default, take the fleet below it.
//!
//! Then read-your-writes: 50 `PATCH`es through one replica, each followed by reads through the
//! other every millisecond until it answers the new body: the delay from the write's answer
//! to the first read that shows it (max-age 60 s, so only the invalidation can show it).
//!
//! `cargo run --release --example bench_replicas` (env: TOKENS, RESOURCES, SECONDS, RUNS;
//! COMPUTED=0 turns computed validators off, for the per-credential ideal).

// The example uses part of the test harness.
#[allow(dead_code)]
#[path = "../tests/it/support/fake_github.rs"]
mod fake_github;
#[allow(dead_code)]
#[path = "../tests/it/support/redis_server.rs"]
mod redis_server;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_github::{FakeGitHub, Resource};
use ghgate::config::{Settings, StoreBackend};
use redis_server::RedisServer;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn settings(upstream: &str, dir: &std::path::Path, redis: &str) -> Settings {
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    s.server.secret = Some("bench-secret-0123456789".into());
    s.server.workers = 1;
    s.inbound.limit_enabled = false;
    s.store.data_dir = dir.to_path_buf();
    s.store.backend = StoreBackend::Redis;
    s.store.redis_url = Some(redis.to_string());
    s.upstream.url = upstream.parse().unwrap();
    s.cache.computed_validators = env("COMPUTED", 1) == 1;
    s
}

fn body(n: u64, version: u64) -> String {
    format!(r#"{{"n":{n},"version":{version},"filler":"{}"}}"#, "x".repeat(3000))
}

/// What one run measured.
struct Run {
    replicas: usize,
    units: u64,
    requests: u64,
    not_modified: u64,
    p50: Duration,
    p99: Duration,
    /// The longest time after a change that an old version was still served.
    oldest_after_change: Duration,
    answers: usize,
    /// Answers by `x-ghgate-cache`.
    outcomes: std::collections::BTreeMap<String, u64>,
}

async fn run(replicas: usize, tokens: u64, resources: u64, seconds: u64) -> Run {
    let redis = RedisServer::start();
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    for n in 0..resources {
        fake.put(&format!("/repos/org/r{n}"), Resource::json(body(n, 0)));
    }
    let mut gateways = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..replicas {
        let dir = tempfile::tempdir().unwrap();
        let running = ghgate::server::start(settings(&fake.url(), dir.path(), &redis.url())).await.unwrap();
        gateways.push(format!("http://{}", running.proxy_addr));
        dirs.push((dir, running));
    }
    // version → when it was published, per resource (index 0: the initial version).
    let published: Arc<Mutex<Vec<Vec<Instant>>>> =
        Arc::new(Mutex::new((0..resources).map(|_| vec![Instant::now()]).collect()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let changer = {
        let (fake, published) = (fake.clone(), Arc::clone(&published));
        tokio::spawn(async move {
            for round in 1..=3u64 {
                tokio::time::sleep_until((started + Duration::from_secs(seconds * round / 4)).into()).await;
                for n in 0..resources {
                    fake.change(&format!("/repos/org/r{n}"), &body(n, round));
                    published.lock().unwrap()[n as usize].push(Instant::now());
                }
            }
        })
    };
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(64).build().unwrap();
    let mut tasks = Vec::new();
    for t in 0..tokens {
        let (client, gateways, published) = (client.clone(), gateways.clone(), Arc::clone(&published));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut oldest = Duration::ZERO;
            let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
            let mut i = t as usize;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while Instant::now() < deadline {
                tick.tick().await;
                for n in 0..resources {
                    let gateway = &gateways[i % gateways.len()];
                    i += 1;
                    let asked = Instant::now();
                    let r = client
                        .get(format!("{gateway}/repos/org/r{n}"))
                        .header("authorization", format!("token fleet-{t}"))
                        .send()
                        .await
                        .unwrap();
                    let outcome =
                        r.headers().get("x-ghgate-cache").map_or("-", |v| v.to_str().unwrap_or("-"));
                    *outcomes.entry(outcome.to_string()).or_default() += 1;
                    if std::env::var_os("TRACE").is_some() {
                        eprintln!(
                            "{:>6} ms t{t} r{n} via {} {outcome}",
                            started.elapsed().as_millis(),
                            i % gateways.len()
                        );
                    }
                    let text = r.text().await.unwrap();
                    latencies.push(asked.elapsed());
                    let version: usize = serde_json::from_str::<serde_json::Value>(&text).unwrap()["version"]
                        .as_u64()
                        .unwrap() as usize;
                    // A newer version was published before this request was sent: how long ago.
                    let versions = published.lock().unwrap()[n as usize].clone();
                    if let Some(next) = versions.get(version + 1) {
                        if *next < asked {
                            oldest = oldest.max(asked - *next);
                        }
                    }
                }
            }
            (latencies, oldest, outcomes)
        }));
    }
    let mut latencies = Vec::new();
    let mut oldest_after_change = Duration::ZERO;
    let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
    for task in tasks {
        let (l, o, counts) = task.await.unwrap();
        latencies.extend(l);
        oldest_after_change = oldest_after_change.max(o);
        for (k, v) in counts {
            *outcomes.entry(k).or_default() += v;
        }
    }
    changer.await.unwrap();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let result = Run {
        replicas,
        units: fake.charged(),
        requests: fake.requests(),
        not_modified: fake.not_modified(),
        p50: at(0.5),
        p99: at(0.99),
        oldest_after_change,
        answers: latencies.len(),
        outcomes,
    };
    for (_dir, running) in dirs {
        running.shutdown().await;
    }
    result
}

#[tokio::main]
async fn main() {
    let tokens = env("TOKENS", 20);
    let resources = env("RESOURCES", 30);
    let seconds = env("SECONDS", 20);
    let runs = env("RUNS", 3);
    println!(
        "{tokens} tokens × {resources} resources, every second for {seconds} s, max-age 1 s, 3 rounds of changes; \
         per-credential ideal {} units",
        tokens * resources * 4
    );
    println!("replicas  run  units  requests  304s  answers    p50      p99    oldest after change");
    let mut by_count: Vec<Vec<Run>> = vec![Vec::new(), Vec::new(), Vec::new()];
    // Alternate the replica counts run by run, so drift in the machine hits them alike.
    for r in 0..runs {
        for replicas in 1..=3 {
            let result = run(replicas, tokens, resources, seconds).await;
            println!(
                "{:>8}  {:>3}  {:>5}  {:>8}  {:>4}  {:>7}  {:>6.2?}  {:>7.2?}  {:>6.2?}",
                result.replicas,
                r + 1,
                result.units,
                result.requests,
                result.not_modified,
                result.answers,
                result.p50,
                result.p99,
                result.oldest_after_change
            );
            println!("          outcomes: {:?}", result.outcomes);
            by_count[replicas - 1].push(result);
        }
    }
    println!("\nmedians (min–max):");
    let one = median(&by_count[0], |r| r.units as f64);
    let one_requests = median(&by_count[0], |r| r.requests as f64);
    for (i, results) in by_count.iter().enumerate() {
        let units = median(results, |r| r.units as f64);
        let requests = median(results, |r| r.requests as f64);
        let spread = |f: fn(&Run) -> f64| {
            let v: Vec<f64> = results.iter().map(f).collect();
            (v.iter().cloned().fold(f64::MAX, f64::min), v.iter().cloned().fold(f64::MIN, f64::max))
        };
        let (umin, umax) = spread(|r| r.units as f64);
        let (rmin, rmax) = spread(|r| r.requests as f64);
        println!(
            "{} replica(s): units {units:.0} ({umin:.0}–{umax:.0}, {:.3}× one node), requests {requests:.0} ({rmin:.0}–{rmax:.0}, {:.3}×), p99 {:.2} ms, oldest after change {:.2} s",
            i + 1,
            units / one,
            requests / one_requests,
            median(results, |r| r.p99.as_secs_f64() * 1000.0),
            median(results, |r| r.oldest_after_change.as_secs_f64()),
        );
    }
    let delays = write_visibility(50).await;
    println!(
        "\nread-your-writes across 2 replicas (50 writes): first read showing the write {:.2?} after its answer (median), p90 {:.2?}, max {:.2?}",
        delays[delays.len() / 2],
        delays[delays.len() * 9 / 10],
        delays[delays.len() - 1]
    );
}

/// Delays from a write's answer through one replica to the other replica's first read that
/// shows it, sorted.
async fn write_visibility(writes: u64) -> Vec<Duration> {
    let redis = RedisServer::start();
    let fake = FakeGitHub::start().await;
    fake.put("/repos/org/w", Resource::json(body(0, 0)));
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let running = ghgate::server::start(settings(&fake.url(), dir.path(), &redis.url())).await.unwrap();
        replicas.push((format!("http://{}/repos/org/w", running.proxy_addr), running, dir));
    }
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let read = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(url).header("authorization", "token writer").send().await.unwrap();
            serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap()["version"]
                .as_u64()
                .unwrap()
        }
    };
    read(replicas[1].0.clone()).await;
    let mut delays = Vec::new();
    for version in 1..=writes {
        let answer = client
            .patch(&replicas[0].0)
            .header("authorization", "token writer")
            .body(body(0, version))
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success());
        let answered = Instant::now();
        while read(replicas[1].0.clone()).await != version {
            assert!(answered.elapsed() < Duration::from_secs(5), "write {version} not visible within 5 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delays.push(answered.elapsed());
    }
    for (_, running, _) in replicas {
        running.shutdown().await;
    }
    delays.sort();
    delays
}

fn median(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
