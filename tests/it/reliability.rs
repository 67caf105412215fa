//! The reliability suite: ghgate under upstream faults, store outages, kills and sustained
//! load. Each test is bounded in time and uses loopback only. RELIABILITY.md records what
//! these tests establish and how to re-run them.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ghgate::config::StoreBackend;
use support::fake_github::BodyFault;
use support::process::GatewayProcess;
use support::{FakeGitHub, RedisServer, Resource, outcome, start_gateway};

const REPO: &str = "/repos/octo/hello";

fn is_github_error(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .is_ok_and(|v| v["message"].is_string() && v["documentation_url"].is_string())
}

/// A body of `len` bytes that names its path, so a mixed-up or truncated answer shows.
fn body_for(path: &str, len: usize) -> String {
    let head = format!(r#"{{"path":"{path}","pad":""#);
    format!("{head}{}\"}}", "x".repeat(len.saturating_sub(head.len() + 2)))
}

#[tokio::test]
async fn an_upstream_refusing_connections_gets_stale_data_or_a_clear_error() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(r#"{"v":1}"#));
    fake.set_max_age(0); // every read revalidates, so every read needs upstream
    let gw = start_gateway(&fake.url(), |_| {}).await;
    assert_eq!(outcome(&gw.get(REPO, Some("t")).await), "MISS");
    fake.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let r = gw.get(REPO, Some("t")).await;
    assert_eq!((r.status().as_u16(), outcome(&r)), (200, "STALE".to_string()));
    assert_eq!(r.text().await.unwrap(), r#"{"v":1}"#);
    let r = gw.get("/repos/octo/never-fetched", Some("t")).await;
    assert_eq!(r.status(), 502);
    assert!(is_github_error(&r.text().await.unwrap()));
    assert!(started.elapsed() < Duration::from_secs(2), "refusals answer at once: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_body_reset_midway_reaches_no_client_as_complete_and_is_never_cached() {
    let fake = FakeGitHub::start().await;
    let full = body_for(REPO, 64 * 1024);
    fake.put(REPO, Resource::json(full.clone()));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    fake.body_fault_next(BodyFault::Reset);
    let r = gw.get(REPO, Some("t")).await;
    let status = r.status();
    // Either the client saw the answer break off, as it did upstream, or a clear error.
    if let Ok(body) = r.text().await {
        assert!(
            status != 200 && is_github_error(&body),
            "a reset body must not arrive as a complete 200: status {status}, {} bytes",
            body.len()
        );
    }
    let r = gw.get(REPO, Some("t")).await;
    assert_eq!(outcome(&r), "MISS", "the truncated body was not cached");
    assert_eq!(r.text().await.unwrap(), full);
    let r = gw.get(REPO, Some("t")).await;
    assert_eq!(outcome(&r), "HIT");
    assert_eq!(r.text().await.unwrap(), full);
}

#[tokio::test]
async fn a_slow_upstream_is_cut_off_at_the_configured_timeout() {
    let fake = FakeGitHub::start().await;
    let full = body_for(REPO, 16 * 1024);
    fake.put(REPO, Resource::json(full.clone()));
    fake.put("/repos/octo/cached", Resource::json(r#"{"cached":true}"#));
    fake.set_max_age(0);
    let gw = start_gateway(&fake.url(), |s| s.upstream.timeout = Duration::from_millis(500)).await;
    assert_eq!(outcome(&gw.get("/repos/octo/cached", Some("t")).await), "MISS");

    // Headers late: 504 for what is not cached, stale for what is.
    fake.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let r = gw.get(REPO, Some("t")).await;
    assert_eq!(r.status(), 504);
    assert!(is_github_error(&r.text().await.unwrap()));
    let r = gw.get("/repos/octo/cached", Some("t")).await;
    assert_eq!(outcome(&r), "STALE");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "two timeouts of 0.5 s took {:?}",
        started.elapsed()
    );

    // Body stalls mid-way: the answer breaks off near the timeout and is not cached.
    fake.set_delay(Duration::ZERO);
    fake.body_fault_next(BodyFault::Stall(Duration::from_secs(3)));
    let started = Instant::now();
    let r = gw.get(REPO, Some("t")).await;
    let status = r.status();
    if let Ok(body) = r.text().await {
        assert!(status != 200 || body != full, "a stalled body was answered whole");
        assert!(status != 200, "a stalled body must not arrive as a complete 200");
    }
    assert!(started.elapsed() < Duration::from_millis(2000), "stall cut off after {:?}", started.elapsed());
    let r = gw.get(REPO, Some("t")).await;
    assert_eq!(outcome(&r), "MISS", "the stalled answer was not cached");
    assert_eq!(r.text().await.unwrap(), full);
}

#[tokio::test]
async fn a_hanging_upstream_gets_stale_answers_past_stale_if_slow_and_then_at_once() {
    let fake = FakeGitHub::start().await;
    fake.set_max_age(1);
    let paths = ["/repos/octo/a", "/repos/octo/b", "/repos/octo/c"];
    for path in paths {
        fake.put(path, Resource::json(format!(r#"{{"path":"{path}"}}"#)));
    }
    let gw = start_gateway(&fake.url(), |s| {
        s.upstream.timeout = Duration::from_secs(2);
        s.cache.stale_if_slow = Duration::from_millis(200);
        s.cache.stale_if_error = Duration::from_secs(600);
    })
    .await;
    for path in paths {
        assert_eq!(outcome(&gw.get(path, Some("t")).await), "MISS");
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    // GitHub stops answering: each stale read is answered past stale_if_slow, not after the
    // whole upstream timeout; the revalidations go on in the background and time out.
    fake.set_delay(Duration::from_secs(30));
    for path in paths {
        let started = Instant::now();
        let r = gw.get(path, Some("t")).await;
        assert_eq!(outcome(&r), "STALE");
        assert_eq!(r.text().await.unwrap(), format!(r#"{{"path":"{path}"}}"#));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited {:?}, the upstream timeout",
            started.elapsed()
        );
    }
    // Three timeouts: GitHub is failing, and stale entries are served without asking it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(gw.metric("ghgate_upstream_breaker_open").await, 1.0);
    let asked = fake.requests();
    for _ in 0..20 {
        assert_eq!(outcome(&gw.get("/repos/octo/a", Some("t")).await), "STALE");
    }
    assert_eq!(fake.requests(), asked, "no read waited for GitHub while it was failing");
    assert!(gw.metric("ghgate_stale_if_slow_total").await >= 23.0);

    // GitHub is back: after the open period one read probes, its answer closes the breaker.
    fake.set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(outcome(&gw.get("/repos/octo/b", Some("t")).await));
    }
    assert!(outcomes.contains(&"REVALIDATED".to_string()), "{outcomes:?}");
    assert_eq!(gw.metric("ghgate_upstream_breaker_open").await, 0.0);
}

#[tokio::test]
async fn a_flapping_upstream_never_turns_cached_data_into_errors() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(r#"{"v":1}"#));
    fake.set_max_age(0);
    let gw = start_gateway(&fake.url(), |_| {}).await;
    assert_eq!(gw.get(REPO, Some("t")).await.status(), 200);
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..40 {
        if i % 2 == 0 {
            fake.fail_next(1, 502);
        }
        let r = gw.get(REPO, Some("t")).await;
        assert_eq!(r.status(), 200, "request {i}");
        *outcomes.entry(outcome(&r)).or_default() += 1;
        assert_eq!(r.text().await.unwrap(), r#"{"v":1}"#);
    }
    assert_eq!(outcomes.get("STALE"), Some(&20), "{outcomes:?}");
    assert_eq!(outcomes.get("REVALIDATED"), Some(&20), "{outcomes:?}");
}

/// Puts `count` resources of `len` bytes (`/repos/octo/r<i>`) and returns them with their
/// bodies, for the load loops.
fn put_paths(fake: &FakeGitHub, count: usize, len: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let path = format!("/repos/octo/r{i}");
            let body = body_for(&path, len);
            fake.put(&path, Resource::json(body.clone()));
            (path, body)
        })
        .collect()
}

/// Runs `clients` loops of GETs over `paths` until `stop`, counting answers that were not 200
/// with the path's own body.
fn spawn_load(
    url: String,
    paths: Arc<Vec<(String, String)>>,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (url, paths, stop, ok, bad) =
                (url.clone(), paths.clone(), stop.clone(), ok.clone(), bad.clone());
            tokio::spawn(async move {
                let client = support::client();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let index = i % paths.len();
                    let (path, body) = &paths[index];
                    i += clients;
                    // Each path is read with one credential, its index modulo 3.
                    let token = format!("token load-{}", index % 3);
                    let answer =
                        client.get(format!("{url}{path}")).header("authorization", token).send().await;
                    let good = match answer {
                        Ok(r) if r.status() == 200 => r.text().await.is_ok_and(|t| t == *body),
                        _ => false,
                    };
                    if good {
                        ok.fetch_add(1, Ordering::Relaxed)
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed)
                    };
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_under_load_loses_no_request() {
    let mut redis = RedisServer::start();
    let fake = FakeGitHub::start().await;
    let paths = put_paths(&fake, 50, 512);
    let url = redis.url();
    let gw = start_gateway(&fake.url(), move |s| {
        s.store.backend = StoreBackend::Redis;
        s.store.redis_url = Some(url);
        s.store.redis_timeout = Duration::from_millis(200);
        s.store.hot_max_bytes = 1; // every read goes to Redis
        // The load runs faster than the inbound limiter's default per-client rate; a 429 from
        // it would be counted as a lost request and hide what this test is about.
        s.inbound.limit_enabled = false;
    })
    .await;
    let (stop, ok, bad) = (
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let load = spawn_load(gw.url.clone(), Arc::new(paths), 8, stop.clone(), ok.clone(), bad.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_kill = ok.load(Ordering::Relaxed);
    tokio::task::spawn_blocking(move || {
        redis.stop(); // SIGKILL-like: the server goes away mid-load
        std::thread::sleep(Duration::from_millis(1500));
        redis.restart();
        redis
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (ok, bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    eprintln!("redis kill under load: {ok} answers, {bad} failed ({before_kill} before the kill)");
    assert_eq!(bad, 0, "no request lost while Redis was down or coming back");
    assert!(ok > before_kill + 100, "load kept flowing during the outage: {ok} vs {before_kill}");
    assert!(gw.metric("ghgate_store_errors_total").await > 0.0, "the outage was seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_under_load_is_counted_and_logged_a_few_times_not_per_request() {
    let mut redis = RedisServer::start();
    let fake = FakeGitHub::start().await;
    let paths: Vec<(String, String)> = (0..20)
        .map(|i| {
            let path = format!("/repos/octo/l{i}");
            let body = body_for(&path, 256);
            fake.put(&path, Resource::json(body.clone()));
            (path, body)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let url = redis.url();
    let gw = GatewayProcess::start(
        &fake.url(),
        dir.path(),
        &[
            ("GHGATE_STORE__BACKEND", "redis"),
            ("GHGATE_STORE__REDIS_URL", &url),
            ("GHGATE_STORE__REDIS_TIMEOUT", "200ms"),
            ("GHGATE_STORE__HOT_MAX_BYTES", "1"), // every read goes to Redis
        ],
    )
    .await;
    let (stop, ok, bad) = (
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let load = spawn_load(gw.url.clone(), Arc::new(paths), 8, stop.clone(), ok.clone(), bad.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warnings_before = support::process::logs(dir.path()).matches("WARN").count();
    let answered_before = ok.load(Ordering::Relaxed);
    redis = tokio::task::spawn_blocking(move || {
        redis.stop();
        std::thread::sleep(Duration::from_secs(5));
        redis.restart();
        redis
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (answered, bad) = (ok.load(Ordering::Relaxed) - answered_before, bad.load(Ordering::Relaxed));
    let logs = support::process::logs(dir.path());
    let warnings = logs.matches("WARN").count() - warnings_before;
    let errors = gw.metric("ghgate_store_errors_total").await;
    eprintln!(
        "5 s Redis outage: {answered} answers, {bad} failed, {errors} store errors counted, {warnings} warnings logged"
    );
    assert_eq!(bad, 0, "no request lost");
    // Counted where a command failed (while Redis is failing, commands are skipped at once
    // for a moment between probes rather than each waiting out the timeout).
    assert!(errors >= 1.0, "the outage is counted: {errors}");
    assert!(warnings <= 3, "{warnings} warnings for one outage:\n{logs}");
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_disk_writes_then_restart_serves_no_corrupt_entry() {
    let fake = FakeGitHub::start().await;
    // Small and large bodies (large ones go to fjall's blob files).
    let paths: Vec<(String, String)> = (0..400)
        .map(|i| {
            let path = format!("/repos/octo/k{i}");
            let body = body_for(&path, if i % 5 == 0 { 48 * 1024 } else { 700 });
            fake.put(&path, Resource::json(body.clone()));
            (path, body)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // Unlimited inbound: the load outruns the limiter's default per-client rate.
    let unlimited = [("GHGATE_INBOUND__LIMIT_ENABLED", "false")];
    let mut gw = GatewayProcess::start(&fake.url(), dir.path(), &unlimited).await;
    let paths = Arc::new(paths);
    let (stop, ok, bad) = (
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let load = spawn_load(gw.url.clone(), paths.clone(), 16, stop.clone(), ok.clone(), bad.clone());
    // Kill while the first pass is still filling the store.
    while ok.load(Ordering::Relaxed) < 150 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.signal("KILL");
    gw.wait_exit(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let before = fake.requests();
    let gw = GatewayProcess::start(&fake.url(), dir.path(), &[]).await;
    let client = support::client();
    let mut from_store = 0;
    for (i, (path, body)) in paths.iter().enumerate() {
        let r = client
            .get(format!("{}{path}", gw.url))
            .header("authorization", format!("token load-{}", i % 3))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let o = outcome(&r);
        if o == "HIT" || o == "REVALIDATED" {
            from_store += 1;
        }
        assert_eq!(r.text().await.unwrap(), *body, "{path} answered with a wrong or damaged body ({o})");
    }
    eprintln!(
        "sigkill during writes: {} answered before the kill, {from_store} of {} entries served from the store after restart, {} refetched",
        ok.load(Ordering::Relaxed),
        paths.len(),
        fake.requests() - before
    );
    // Everything answered before the kill was stored before it was answered; at most one
    // request per client (16) was in flight.
    let answered = ok.load(Ordering::Relaxed);
    assert!(
        from_store + 16 >= answered,
        "{from_store} entries survived of {answered} answered before the kill; logs:\n{}",
        support::process::logs(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_in_flight_requests_finish_and_flushes_the_store() {
    let fake = FakeGitHub::start().await;
    let full = body_for(REPO, 4096);
    fake.put(REPO, Resource::json(full.clone()));
    for i in 0..5 {
        fake.put(
            &format!("/repos/octo/slow{i}"),
            Resource::json(body_for(&format!("/repos/octo/slow{i}"), 100)),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // No delay: this is about the listener closing and in-flight requests finishing (the
    // delay before it is tested in `lifecycle`).
    let mut gw =
        GatewayProcess::start(&fake.url(), dir.path(), &[("GHGATE_SERVER__SHUTDOWN_DELAY", "0s")]).await;
    let client = support::client();
    assert_eq!(
        client
            .get(format!("{}{REPO}", gw.url))
            .header("authorization", "token t")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    fake.set_delay(Duration::from_millis(1500));
    let in_flight: Vec<_> = (0..5)
        .map(|i| {
            let (client, url) = (client.clone(), gw.url.clone());
            tokio::spawn(async move {
                let path = format!("/repos/octo/slow{i}");
                let r = client.get(format!("{url}{path}")).header("authorization", "token t").send().await?;
                Ok::<_, reqwest::Error>((r.status().as_u16(), r.text().await?, path))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        support::client().get(format!("{}{REPO}", gw.url)).send().await.is_err(),
        "no new connections once stopping"
    );
    for task in in_flight {
        let (status, body, path) = task.await.unwrap().expect("in-flight request finished");
        assert_eq!(status, 200);
        assert_eq!(body, body_for(&path, 100));
    }
    let exit = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert!(exit.success(), "a graceful stop exits 0: {exit}");

    fake.set_delay(Duration::ZERO);
    let gw = GatewayProcess::start(&fake.url(), dir.path(), &[]).await;
    for path in [REPO.to_string(), "/repos/octo/slow0".to_string()] {
        let r =
            client.get(format!("{}{path}", gw.url)).header("authorization", "token t").send().await.unwrap();
        assert_ne!(outcome(&r), "MISS", "{path} was flushed to disk before exit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sustained_mixed_load_keeps_memory_bounded_and_leaks_no_descriptors_or_tasks() {
    let fake = FakeGitHub::start().await;
    // 3,000 paths × 8 KiB × 3 credentials ≈ 72 MiB of answers against a 16 MiB store.
    let paths: Vec<(String, String)> = (0..3000)
        .map(|i| {
            let path = format!("/repos/octo/m{i}");
            let body = body_for(&path, 8 * 1024);
            fake.put(&path, Resource::json(body.clone()));
            (path, body)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let max_bytes = 16u64 << 20;
    let hot_bytes = 4u64 << 20;
    let gw = GatewayProcess::start(
        &fake.url(),
        dir.path(),
        &[
            ("GHGATE_CACHE__MAX_BYTES", &max_bytes.to_string()),
            ("GHGATE_STORE__HOT_MAX_BYTES", &hot_bytes.to_string()),
            // The load outruns the inbound limiter's default per-client rate.
            ("GHGATE_INBOUND__LIMIT_ENABLED", "false"),
        ],
    )
    .await;
    let paths = Arc::new(paths);
    // Warm up with the same concurrency, so the runtime's workers and the upstream connection
    // pool are at their working size before the baseline is taken.
    let (stop, ok, bad) = (
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let warm_up = spawn_load(gw.url.clone(), paths.clone(), 32, stop.clone(), ok.clone(), bad.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in warm_up {
        task.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(6)).await; // idle; the upkeep task refreshes the gauges
    let (rss_before, fds_before, tasks_before) =
        (gw.memory_kib("VmRSS"), gw.open_fds(), gw.metric("ghgate_runtime_alive_tasks").await);

    let (stop, ok, bad) = (
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let load = spawn_load(gw.url.clone(), paths, 32, stop.clone(), ok.clone(), bad.clone());
    // Writes and 404s alongside the reads.
    let side = {
        let (url, stop) = (gw.url.clone(), stop.clone());
        tokio::spawn(async move {
            let client = support::client();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = client
                    .get(format!("{url}/repos/octo/missing{}", n % 100))
                    .header("authorization", "token w")
                    .send()
                    .await;
                let _ = client
                    .post(format!("{url}/repos/octo/m{}/issues", n % 3000))
                    .header("authorization", "token w")
                    .body(r#"{"title":"t"}"#)
                    .send()
                    .await;
                n += 1;
            }
        })
    };
    let mut peak_rss = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        peak_rss = peak_rss.max(gw.memory_kib("VmRSS"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    side.await.unwrap();
    // Idle connections close; the upkeep task refreshes the gauges.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (fds_after, tasks_after) = (gw.open_fds(), gw.metric("ghgate_runtime_alive_tasks").await);
    let (ok, bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    let bound_kib = rss_before + (max_bytes + hot_bytes) / 1024 + 64 * 1024;
    eprintln!(
        "sustained load: {ok} reads ({bad} failed) in 8 s; RSS {rss_before} KiB before, peak {peak_rss} KiB (bound {bound_kib} KiB); \
         fds (sockets, files) {fds_before:?} → {fds_after:?}; tasks {tasks_before} → {tasks_after}"
    );
    assert_eq!(bad, 0, "every read answered with its own body");
    assert!(ok > 1000, "the load ran: {ok}");
    // The bound: the baseline, plus the configured store and memory tier, plus 64 MiB for
    // fjall's block cache and journals, in-flight bodies and allocator slack.
    assert!(peak_rss < bound_kib, "RSS peaked at {peak_rss} KiB, over {bound_kib} KiB");
    // Connections (sockets) return to their idle number; files are the disk store's segments,
    // which fjall keeps open up to its descriptor cache (400 on Linux) as the store grows.
    assert!(fds_after.0 <= fds_before.0 + 4, "sockets leaked: {fds_before:?} → {fds_after:?}");
    assert!(fds_after.1 < 400 + 16, "store files beyond fjall's descriptor cache: {fds_after:?}");
    assert!(tasks_after <= tasks_before + 4.0, "tasks leaked: {tasks_before} → {tasks_after}");
}

/// Two replicas on a three-master cluster under load from 8 clients (memory tier shrunk to
/// nothing, so every read goes to the cluster); `fault` runs off the runtime meanwhile.
/// Returns (answers, failed, answered before the fault, store errors seen).
async fn cluster_under_load(
    cluster: &mut support::RedisCluster,
    fault: impl FnOnce(&mut support::RedisCluster) + Send,
) -> (u64, u64, u64, f64) {
    let fake = FakeGitHub::start().await;
    let paths = put_paths(&fake, 50, 512);
    let url = cluster.url();
    let tweak = move |s: &mut ghgate::config::Settings| {
        s.store.backend = StoreBackend::Redis;
        s.store.redis_url = Some(url.clone());
        s.store.redis_cluster = true;
        s.store.redis_timeout = Duration::from_millis(200);
        s.store.hot_max_bytes = 1;
        s.inbound.limit_enabled = false;
    };
    let a = start_gateway(&fake.url(), tweak.clone()).await;
    let b = start_gateway(&fake.url(), tweak).await;
    let (stop, ok, bad) = (
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let paths = Arc::new(paths);
    let mut load = spawn_load(a.url.clone(), paths.clone(), 4, stop.clone(), ok.clone(), bad.clone());
    load.extend(spawn_load(b.url.clone(), paths, 4, stop.clone(), ok.clone(), bad.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = ok.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| fault(cluster));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let errors = a.metric("ghgate_store_errors_total").await + b.metric("ghgate_store_errors_total").await;
    // Both replicas use the cluster again: a fresh read is stored and found by the other.
    let probe = "/repos/octo/r0";
    let mut shared_again = false;
    for _ in 0..50 {
        fake.change(probe, &body_for(probe, 512));
        if support::outcome(&a.get(&format!("{probe}?fresh"), Some("probe")).await) == "MISS"
            && support::outcome(&b.get(&format!("{probe}?fresh"), Some("probe")).await) != "MISS"
        {
            shared_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shared_again, "the replicas share state through the cluster again");
    (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed), before, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_master_killed_and_restarted_under_load_loses_no_request() {
    let mut cluster = support::RedisCluster::start();
    let started = std::time::Instant::now();
    let (ok, bad, before, errors) = cluster_under_load(&mut cluster, |cluster| {
        cluster.kill(1);
        std::thread::sleep(Duration::from_millis(3000)); // past cluster-node-timeout: cluster down
        cluster.restart(1);
    })
    .await;
    eprintln!(
        "cluster master killed 3 s under load: {ok} answers, {bad} failed ({before} before the kill), \
         {errors} store errors, {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(bad, 0, "no request lost while a master was down or coming back");
    assert!(ok > before + 100, "load kept flowing: {ok} vs {before}");
    assert!(errors > 0.0, "the outage was seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_migration_under_load_loses_no_request() {
    let mut cluster = support::RedisCluster::start();
    let (ok, bad, before, errors) = cluster_under_load(&mut cluster, |cluster| {
        // Move 2,000 slots (and their keys) from the first master to the second.
        let ids: Vec<String> =
            (0..2).map(|i| cluster.cli(i, &["CLUSTER", "MYID"]).trim().to_string()).collect();
        let moved = std::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{}", cluster.ports[0])])
            .args([
                "--cluster-from",
                &ids[0],
                "--cluster-to",
                &ids[1],
                "--cluster-slots",
                "2000",
                "--cluster-yes",
            ])
            .output()
            .unwrap();
        assert!(moved.status.success(), "reshard: {}", String::from_utf8_lossy(&moved.stderr));
    })
    .await;
    eprintln!(
        "slot migration under load: {ok} answers, {bad} failed ({before} before), {errors} store errors"
    );
    assert_eq!(bad, 0, "no request lost during the migration");
    assert!(ok > before + 100, "load kept flowing: {ok} vs {before}");
}
