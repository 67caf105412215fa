//! Fleet workload for computed validators (`cache.computed_validators`), run with the switch
//! off (the baseline: today's per-credential ideal) and on, alternating, in one command:
//!
//! 1. **Fleet polling.** F tokens poll R public resources (repositories, READMEs, issue lists)
//!    and P private repositories (visible to V of the tokens) once a second for D seconds,
//!    max-age 1 s, while C public resources change every few seconds. Every answer is checked
//!    against what the fake would give that token directly (a private body to a token that
//!    cannot read it, or a body the resource never had, is a wrong answer). Reported: units
//!    against the per-credential ideal F × (R + C) + V × P + (F − V) × P (first 404s, then
//!    remembered) and the fleet ideal R + C + P + (F − V) × P; upstream requests; 304s; the
//!    memory tier's weighted bytes against one copy of the distinct bodies.
//! 2. **Token rotation.** An app installation reads N resources without `Last-Modified`; its
//!    token is rotated; the stale entries are read again: units paid for the second round.
//!
//! `cargo run --release --example bench_fleet` (env: TOKENS, RESOURCES, PRIVATE, VISIBLE,
//! SECONDS, RUNS).

// The examples use part of the fake.
#[allow(dead_code)]
#[path = "../tests/it/support/fake_github.rs"]
mod fake_github;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fake_github::{FakeGitHub, Resource};
use ghgate::config::{AppSettings, ClientSettings, Settings};
use sha2::{Digest, Sha256};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn settings(upstream: &str, dir: &std::path::Path, computed: bool) -> Settings {
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    s.server.secret = Some("bench-secret-0123456789".into());
    s.store.data_dir = dir.to_path_buf();
    s.upstream.url = upstream.parse().unwrap();
    s.cache.computed_validators = computed;
    s
}

/// A body of about GitHub's size for each kind of resource.
fn body(kind: &str, n: u64, version: u64) -> String {
    let filler = "x".repeat(match kind {
        "repo" => 5000,
        "readme" => 1200,
        _ => 3000,
    });
    format!(
        r#"{{"kind":"{kind}","n":{n},"version":{version},"url":"https://api.github.com/repos/org/r{n}","filler":"{filler}"}}"#
    )
}

fn public_paths(resources: u64) -> Vec<(String, &'static str, u64)> {
    (0..resources)
        .map(|i| match i % 3 {
            0 => (format!("/repos/org/r{i}"), "repo", i),
            1 => (format!("/repos/org/r{i}/readme"), "readme", i),
            _ => (format!("/repos/org/r{i}/pulls"), "pulls", i),
        })
        .collect()
}

struct FleetResult {
    charged: u64,
    requests: u64,
    not_modified: u64,
    answers: u64,
    wrong: u64,
    changes: u64,
    hot_bytes: f64,
    hot_body_bytes: f64,
    disk_bytes: f64,
    distinct_body_bytes: u64,
}

async fn metric(client: &reqwest::Client, admin: &str, name: &str) -> f64 {
    let text = client.get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn fleet(computed: bool) -> FleetResult {
    let tokens = env("TOKENS", 20);
    let resources = env("RESOURCES", 30);
    let private = env("PRIVATE", 3);
    let visible = env("VISIBLE", 5).min(tokens);
    let seconds = env("SECONDS", 20);
    let fake = FakeGitHub::start().await;
    fake.set_limit(u64::MAX / 2);
    fake.set_max_age(1);
    let public = public_paths(resources);
    // Every body each path ever had (a read may see the one before a change, within max-age).
    let mut bodies: HashMap<String, HashSet<String>> = HashMap::new();
    for (path, kind, n) in &public {
        let json = body(kind, *n, 1);
        fake.put(path, Resource::json(json.clone()));
        bodies.entry(path.clone()).or_default().insert(json);
    }
    let names: Vec<String> = (0..tokens).map(|t| format!("tok-{t}")).collect();
    let allowed: Vec<&str> = names.iter().take(visible as usize).map(String::as_str).collect();
    let mut private_paths = Vec::new();
    for p in 0..private {
        let path = format!("/repos/org/private{p}");
        let json = format!(r#"{{"private":true,"n":{p}}}"#);
        fake.put(&path, Resource::json(json.clone()).private_to(&allowed));
        bodies.entry(path.clone()).or_default().insert(json);
        private_paths.push(path);
    }
    let dir = tempfile::tempdir().unwrap();
    let running = ghgate::server::start(settings(&fake.url(), dir.path(), computed)).await.unwrap();
    let base = format!("http://{}", running.proxy_addr);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    // Changes: three rounds, evenly spaced, each changing a few public resources.
    let rounds = 3u64;
    let per_round = 3u64;
    let mut planned = Vec::new();
    for round in 1..=rounds {
        for k in 0..per_round {
            let i = ((round - 1) * per_round + k) * 3 % resources.max(1);
            let (path, kind, n) = &public[i as usize];
            let json = body(kind, *n, round + 1);
            bodies.entry(path.clone()).or_default().insert(json.clone());
            planned.push((Duration::from_secs(seconds * round / (rounds + 1)), path.clone(), json));
        }
    }
    let bodies = Arc::new(bodies);
    let answers = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for token in names.clone() {
        let (client, base, bodies) = (client.clone(), base.clone(), Arc::clone(&bodies));
        let (answers, wrong) = (Arc::clone(&answers), Arc::clone(&wrong));
        let paths: Vec<String> =
            public.iter().map(|(p, _, _)| p.clone()).chain(private_paths.iter().cloned()).collect();
        let may_read_private = allowed.contains(&token.as_str());
        tasks.push(tokio::spawn(async move {
            for second in 0..seconds {
                for path in &paths {
                    let r = client
                        .get(format!("{base}{path}"))
                        .header("authorization", format!("token {token}"))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap();
                    answers.fetch_add(1, Ordering::Relaxed);
                    let private = path.contains("private");
                    let right = if private && !may_read_private {
                        status == 404 && !text.contains("\"private\"")
                    } else {
                        status == 200 && bodies[path].contains(&text)
                    };
                    if !right {
                        wrong.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "wrong answer for {token} {path}: {status} {}",
                            &text[..text.len().min(80)]
                        );
                    }
                }
                let next = started + Duration::from_secs(second + 1);
                tokio::time::sleep_until(next.into()).await;
            }
        }));
    }
    for (at, path, json) in &planned {
        tokio::time::sleep_until((started + *at).into()).await;
        fake.change(path, json);
    }
    for t in tasks {
        t.await.unwrap();
    }
    let admin = running.admin_addr.to_string();
    let hot_bytes = metric(&client, &admin, "ghgate_store_hot_bytes").await;
    let hot_body_bytes = metric(&client, &admin, "ghgate_store_hot_body_bytes").await;
    let disk_bytes = metric(&client, &admin, "ghgate_store_bytes").await;
    // One copy of the bodies the resources have at the end.
    let mut latest: HashMap<&str, usize> = HashMap::new();
    for (path, kind, n) in &public {
        latest.insert(path, body(kind, *n, 1).len());
    }
    for (_, path, json) in &planned {
        latest.insert(path, json.len());
    }
    let private_bytes: usize = (0..private).map(|p| format!(r#"{{"private":true,"n":{p}}}"#).len()).sum();
    let distinct_body_bytes = (latest.values().sum::<usize>() + private_bytes) as u64;
    running.shutdown().await;
    FleetResult {
        charged: fake.charged(),
        requests: fake.requests(),
        not_modified: fake.not_modified(),
        answers: answers.load(Ordering::Relaxed),
        wrong: wrong.load(Ordering::Relaxed),
        changes: planned.len() as u64,
        hot_bytes,
        hot_body_bytes,
        disk_bytes,
        distinct_body_bytes,
    }
}

const KEY: &str = "ghgate_bench_key_0123456789abcdef";

/// Units paid to re-read `n` entries without `Last-Modified` after the token rotated.
async fn rotation(computed: bool) -> (u64, u64) {
    let n = env("ROTATION_RESOURCES", 10);
    let fake = FakeGitHub::start().await;
    fake.enable_app("4242", &std::fs::read(data("app-key-public.pem")).unwrap());
    fake.install("octo", 7);
    fake.set_max_age(1);
    for i in 0..n {
        let mut resource = Resource::json(body("repo", i, 1));
        resource.send_last_modified = false;
        fake.put(&format!("/repos/octo/r{i}"), resource);
    }
    // Tokens live 5 min + 1.2 s: the broker refreshes them 5 min before expiry.
    fake.set_token_lifetime(Duration::from_millis(300_000 + 1_200));
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&fake.url(), dir.path(), computed);
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
    let running = ghgate::server::start(s).await.unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let read_all = || async {
        for i in 0..n {
            let r = client
                .get(format!("http://{}/repos/octo/r{i}", running.proxy_addr))
                .header("authorization", format!("Bearer {KEY}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    read_all().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = fake.charged();
    read_all().await;
    let mints = fake.mints();
    running.shutdown().await;
    (fake.charged() - before, mints)
}

fn median(mut v: Vec<u64>) -> (u64, u64, u64) {
    v.sort_unstable();
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main]
async fn main() {
    let runs = env("RUNS", 2);
    let (tokens, resources, private, visible) =
        (env("TOKENS", 20), env("RESOURCES", 30), env("PRIVATE", 3), env("VISIBLE", 5));
    let mut results: HashMap<bool, Vec<FleetResult>> = HashMap::new();
    for run in 0..runs {
        for computed in [false, true] {
            let r = fleet(computed).await;
            eprintln!(
                "run {run} computed={computed}: units {} requests {} 304s {} answers {} wrong {}",
                r.charged, r.requests, r.not_modified, r.answers, r.wrong
            );
            results.entry(computed).or_default().push(r);
        }
    }
    let changes = results[&true][0].changes;
    let not_visible = tokens - visible.min(tokens);
    let per_credential = tokens * (resources + changes) + visible * private + not_visible * private;
    let fleet_ideal = resources + changes + private + not_visible * private;
    println!(
        "## Fleet polling ({tokens} tokens × {resources} public + {private} private resources (visible to {visible}), 1 read/s each for {}s, max-age 1s, {changes} changes; {runs} runs each, alternating)",
        env("SECONDS", 20)
    );
    println!();
    println!("Ideals: per credential {per_credential} units, per fleet {fleet_ideal} units.");
    println!();
    println!(
        "| computed_validators | units (median, min–max) | × fleet ideal | upstream requests | 304s | answers | wrong answers | memory-tier bodies / one copy | memory tier (entries + bodies) / one copy | disk store (records + bodies) / one copy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for computed in [false, true] {
        let rs = &results[&computed];
        let (units, lo, hi) = median(rs.iter().map(|r| r.charged).collect());
        let (requests, _, _) = median(rs.iter().map(|r| r.requests).collect());
        let (nm, _, _) = median(rs.iter().map(|r| r.not_modified).collect());
        let wrong: u64 = rs.iter().map(|r| r.wrong).sum();
        let answers = rs[0].answers;
        let ratio = |f: fn(&FleetResult) -> f64| {
            rs.iter().map(|r| f(r) / r.distinct_body_bytes as f64).sum::<f64>() / rs.len() as f64
        };
        let (bodies, mem, disk) =
            (ratio(|r| r.hot_body_bytes), ratio(|r| r.hot_bytes), ratio(|r| r.disk_bytes));
        println!(
            "| {computed} | {units} ({lo}–{hi}) | {:.2}× | {requests} | {nm} | {answers} | {wrong} | {bodies:.2}× | {mem:.1}× | {disk:.1}× |",
            units as f64 / fleet_ideal as f64
        );
    }
    println!();
    let mut rotation_rows = Vec::new();
    for computed in [false, true] {
        let (paid, mints) = rotation(computed).await;
        rotation_rows.push((computed, paid, mints));
    }
    let n = env("ROTATION_RESOURCES", 10);
    println!(
        "## Token rotation ({n} entries without Last-Modified, re-read after the installation token rotated)"
    );
    println!();
    println!("| computed_validators | units paid for the {n} re-reads | tokens minted |");
    println!("|---|---|---|");
    for (computed, paid, mints) in rotation_rows {
        println!("| {computed} | {paid} | {mints} |");
    }
}
