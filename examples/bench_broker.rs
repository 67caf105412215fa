//! Broker latencies, measured in one run against baselines (numbers for the README and the
//! issue notes, not assertions):
//!
//! 1. What a token-cache hit adds to a request: the same uncached request sent with the
//!    client's own token (baseline) and with a broker client key (installation look-up and
//!    token both cached), sequentially, over loopback through the gateway.
//! 2. What a client sees on the first request after a mint, for each settle strategy, with and
//!    without GitHub's replication lag.
//!
//! `cargo run --release --example bench_broker`

// The examples use part of the fake.
#[allow(dead_code)]
#[path = "../tests/it/support/fake_github.rs"]
mod fake_github;

use std::time::{Duration, Instant};

use fake_github::{FakeGitHub, Resource};
use ghgate::config::{AppSettings, ClientSettings, FreshTokenStrategy, Settings};
use sha2::{Digest, Sha256};

const KEY: &str = "ghgate_bench_key_0123456789abcdef";

fn data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn settings(upstream: &str, dir: &std::path::Path, strategy: FreshTokenStrategy) -> Settings {
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    s.server.secret = Some("bench-secret-0123456789".into());
    s.store.data_dir = dir.to_path_buf();
    s.upstream.url = upstream.parse().unwrap();
    s.broker.fresh_token_strategy = strategy;
    s.apps.push(AppSettings {
        name: "bench".into(),
        app_id: Some("4242".into()),
        client_id: None,
        private_key_path: Some(data("app-key-pkcs1.pem")),
        private_key_env: None,
    });
    s.clients.push(ClientSettings {
        name: "bench".into(),
        key_sha256: hex::encode(Sha256::digest(KEY.as_bytes())),
        app: "bench".into(),
        owners: vec![],
        permissions: Default::default(),
    });
    s
}

async fn fake() -> FakeGitHub {
    let fake = FakeGitHub::start().await;
    fake.enable_app("4242", &std::fs::read(data("app-key-public.pem")).unwrap());
    fake.install("octo", 7);
    fake.put("/rate_limit", Resource::json(r#"{"resources":{}}"#));
    fake.put("/repos/octo/hello", Resource::json("{}"));
    fake
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn timed(client: &reqwest::Client, url: &str, auth: &str) -> Duration {
    let started = Instant::now();
    let r = client
        .get(url)
        .header("authorization", auth)
        .header("x-ghgate-installation", "octo")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.bytes().await.unwrap();
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // 1. Token-cache hit overhead, interleaved so both see the same machine state.
    let up = fake().await;
    let gw = ghgate::server::start(settings(&up.url(), dir.path(), FreshTokenStrategy::Retry)).await.unwrap();
    let url = format!("http://{}/rate_limit", gw.proxy_addr);
    timed(&client, &url, &format!("Bearer {KEY}")).await; // look-up and mint happen here
    timed(&client, &url, "token ghp_plain").await;
    let (mut plain, mut brokered) = (Vec::new(), Vec::new());
    for _ in 0..3000 {
        plain.push(timed(&client, &url, "token ghp_plain").await);
        brokered.push(timed(&client, &url, &format!("Bearer {KEY}")).await);
    }
    plain.sort();
    brokered.sort();
    println!("## token-cache hit: uncached GET /rate_limit through ghgate, 3000 sequential requests each\n");
    println!("| credential | p50 | p99 |");
    println!("|---|---:|---:|");
    println!(
        "| client's own token (baseline) | {:?} | {:?} |",
        percentile(&plain, 0.5),
        percentile(&plain, 0.99)
    );
    println!(
        "| broker client key (cached token) | {:?} | {:?} |",
        percentile(&brokered, 0.5),
        percentile(&brokered, 0.99)
    );
    let added = percentile(&brokered, 0.5).as_secs_f64() - percentile(&plain, 0.5).as_secs_f64();
    println!(
        "| added by the broker at p50 | {:.1} µs ({:.3}×) | |\n",
        added * 1e6,
        percentile(&brokered, 0.5).as_secs_f64() / percentile(&plain, 0.5).as_secs_f64()
    );
    gw.shutdown().await;

    // 2. First request after a mint.
    println!("## first request after a mint (look-up + mint + request), median of 5 fresh gateways\n");
    println!("| strategy | replication lag | first request | a later request |");
    println!("|---|---:|---:|---:|");
    for strategy in [FreshTokenStrategy::Retry, FreshTokenStrategy::Wait] {
        for lag in [Duration::ZERO, Duration::from_millis(300), Duration::from_millis(1000)] {
            let (mut first, mut later) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                let up = fake().await;
                up.set_replication_lag(lag);
                let gw = ghgate::server::start(settings(&up.url(), dir.path(), strategy)).await.unwrap();
                let url = format!("http://{}/rate_limit", gw.proxy_addr);
                first.push(timed(&client, &url, &format!("Bearer {KEY}")).await);
                later.push(timed(&client, &url, &format!("Bearer {KEY}")).await);
                gw.shutdown().await;
                up.stop();
            }
            first.sort();
            later.sort();
            println!("| {strategy:?} | {lag:?} | {:?} | {:?} |", first[2], later[2]);
        }
    }
}
