//! A GitHub that stops answering, with every read's entry stale but servable
//! (`stale-if-error`): answers per second and their latency through ghgate, for RELIABILITY.md.
//!
//! 100 cached entries (max-age 1 s) are read by 20 clients in a loop for 10 s after the fake
//! stops answering (`upstream.timeout` 30 s, the default; `cache.stale_if_slow` 1 s, the
//! default). `cargo run --release --example bench_hanging`

// The examples use part of the fake.
#[allow(dead_code)]
#[path = "../tests/it/support/fake_github.rs"]
mod fake_github;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fake_github::{FakeGitHub, Resource};
use ghgate::config::Settings;

#[tokio::main]
async fn main() {
    let fake = FakeGitHub::start().await;
    fake.set_limit(u64::MAX / 2);
    fake.set_max_age(1);
    for i in 0..100 {
        fake.put(&format!("/repos/octo/r{i}"), Resource::json(format!(r#"{{"n":{i}}}"#)));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    s.server.secret = Some("bench-secret-0123456789".into());
    s.store.data_dir = dir.path().to_path_buf();
    s.upstream.url = fake.url().parse().unwrap();
    // One client address and credential for all the load: the inbound limiter would say no.
    s.inbound.limit_enabled = false;
    let running = ghgate::server::start(s).await.unwrap();
    let base = format!("http://{}", running.proxy_addr);
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(64).build().unwrap();
    for i in 0..100 {
        client
            .get(format!("{base}/repos/octo/r{i}"))
            .header("authorization", "token t")
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    fake.set_delay(Duration::from_secs(3600));
    let answers = Arc::new(AtomicU64::new(0));
    let stale = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let others = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let started = Instant::now();
    let run_for = Duration::from_secs(10);
    let mut tasks = Vec::new();
    for c in 0..20u64 {
        let (client, base) = (client.clone(), base.clone());
        let (answers, stale, latencies) = (answers.clone(), stale.clone(), latencies.clone());
        let others = others.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while started.elapsed() < run_for {
                let t = Instant::now();
                let r = client
                    .get(format!("{base}/repos/octo/r{}", i % 100))
                    .header("authorization", "token t")
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 && r.headers().get("x-ghgate-cache").is_some_and(|v| v == "STALE") {
                    stale.fetch_add(1, Ordering::Relaxed);
                } else {
                    let seen = format!("{} {:?}", r.status(), r.headers().get("x-ghgate-cache"));
                    *others.lock().unwrap().entry(seen).or_insert(0u64) += 1;
                }
                r.bytes().await.unwrap();
                latencies.lock().unwrap().push(t.elapsed());
                answers.fetch_add(1, Ordering::Relaxed);
                i += 20;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let pct = |p: f64| l[((l.len() as f64 - 1.0) * p) as usize];
    println!(
        "upstream hanging, 20 clients over 100 stale entries for {elapsed:.1} s: {} answers ({:.0}/s), {} STALE; p50 {:?}, p99 {:?}, max {:?}",
        answers.load(Ordering::Relaxed),
        answers.load(Ordering::Relaxed) as f64 / elapsed,
        stale.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.99),
        l[l.len() - 1]
    );
    println!("other answers: {:?}", others.lock().unwrap());
    std::process::exit(0);
}
