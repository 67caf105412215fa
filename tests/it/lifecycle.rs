//! The gateway's life as an operator runs it: stopped in a rolling restart, reloaded with new
//! secrets, recovering a store that failed. Every test drives the real binary.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use support::process::GatewayProcess;
use support::{FakeGitHub, Resource};

const REPO: &str = "/repos/octo/hello";

/// One answer read off a kept-alive HTTP/1.1 connection.
struct Answer {
    status: u16,
    /// The server said `Connection: close`: this connection is done.
    close: bool,
    /// `x-ghgate-cache`.
    outcome: String,
}

/// Sends one GET on `stream` and reads the whole answer: a client that never retries, so a
/// connection closed under it is a lost request.
async fn get_on(stream: &mut BufReader<TcpStream>, path: &str) -> std::io::Result<Answer> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: token t\r\n\r\n");
    stream.get_mut().write_all(request.as_bytes()).await?;
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut length, mut close, mut outcome) = (0usize, false, String::new());
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "connection" => close |= value.trim().eq_ignore_ascii_case("close"),
            "x-ghgate-cache" => outcome = value.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok(Answer { status, close, outcome })
}

/// What clients saw across a stop.
#[derive(Debug, Default)]
struct Tally {
    answered: AtomicU64,
    /// Requests sent that got no answer (a reset, a refused connection, a closed socket).
    lost: AtomicU64,
    /// Answers that told the client to close its connection.
    told_to_close: AtomicU64,
}

/// Clients behind a load balancer during a SIGTERM with `server.shutdown_delay = delay`: 24
/// clients keep connections alive and pause up to 300 ms between requests; the balancer polls
/// `/readyz` every 100 ms and, once it fails, sends no new connection to this replica
/// (connections already open stay in use, as with kube-proxy). Returns what the clients saw.
async fn stop_under_load(delay: &str) -> (Tally, std::process::ExitStatus) {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(r#"{"name":"hello"}"#.to_string()));
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProcess::start(
        &fake.url(),
        dir.path(),
        &[("GHGATE_SERVER__SHUTDOWN_DELAY", delay), ("GHGATE_SERVER__SHUTDOWN_GRACE", "5s")],
    )
    .await;
    let addr: std::net::SocketAddr = gw.url.trim_start_matches("http://").parse().unwrap();
    let out_of_rotation = Arc::new(AtomicBool::new(false));
    let balancer = {
        let (out, admin) = (Arc::clone(&out_of_rotation), gw.admin_url.clone());
        tokio::spawn(async move {
            let client = support::client();
            loop {
                let ready = client
                    .get(format!("{admin}/readyz"))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if !ready {
                    out.store(true, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(15);
    let clients: Vec<_> = (0..24u64)
        .map(|i| {
            let (tally, out) = (Arc::clone(&tally), Arc::clone(&out_of_rotation));
            tokio::spawn(async move {
                let mut connection: Option<BufReader<TcpStream>> = None;
                let mut n = i;
                while Instant::now() < deadline {
                    if connection.is_none() {
                        if out.load(Ordering::SeqCst) {
                            return; // the balancer sends this client elsewhere now
                        }
                        match TcpStream::connect(addr).await {
                            Ok(stream) => connection = Some(BufReader::new(stream)),
                            Err(_) => {
                                tally.lost.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                    }
                    let stream = connection.as_mut().expect("connected above");
                    match get_on(stream, REPO).await {
                        Ok(answer) if answer.status == 200 => {
                            tally.answered.fetch_add(1, Ordering::Relaxed);
                            if answer.close {
                                tally.told_to_close.fetch_add(1, Ordering::Relaxed);
                                connection = None;
                            }
                        }
                        Ok(_) | Err(_) => {
                            tally.lost.fetch_add(1, Ordering::Relaxed);
                            connection = None;
                        }
                    }
                    // Idle keep-alive gaps of 0–300 ms, different per client.
                    n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    tokio::time::sleep(Duration::from_millis((n >> 33) % 300)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_stop = tally.answered.load(Ordering::Relaxed);
    assert!(before_stop > 24, "load was running before the stop ({before_stop} answers)");
    gw.signal("TERM");
    for client in clients {
        client.await.unwrap();
    }
    balancer.abort();
    let exit = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(20))).await.unwrap();
    let tally = Arc::try_unwrap(tally).expect("every client is done");
    println!(
        "shutdown_delay={delay}: {} answered, {} lost, {} told to close",
        tally.answered.load(Ordering::Relaxed),
        tally.lost.load(Ordering::Relaxed),
        tally.told_to_close.load(Ordering::Relaxed)
    );
    (tally, exit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_loses_no_request_from_clients_that_do_not_retry() {
    let (tally, exit) = stop_under_load("3s").await;
    assert!(exit.success(), "a graceful stop exits 0: {exit}");
    assert_eq!(tally.lost.load(Ordering::Relaxed), 0, "requests lost across the stop");
    // Every client kept a connection open when the signal came; each was told to close it.
    assert!(
        tally.told_to_close.load(Ordering::Relaxed) >= 24,
        "only {} answers said Connection: close",
        tally.told_to_close.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn readyz_fails_at_once_on_sigterm_while_the_proxy_keeps_serving() {
    let fake = FakeGitHub::start().await;
    fake.put(REPO, Resource::json(r#"{"name":"hello"}"#.to_string()));
    let dir = tempfile::tempdir().unwrap();
    let mut gw =
        GatewayProcess::start(&fake.url(), dir.path(), &[("GHGATE_SERVER__SHUTDOWN_DELAY", "3s")]).await;
    let client = support::client();
    let ready = client.get(format!("{}/readyz", gw.admin_url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    gw.signal("TERM");
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = client.get(format!("{}/readyz", gw.admin_url)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readyz turns 503 at once");
    let body: serde_json::Value = serde_json::from_str(&ready.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], "stopping");
    // New connections are still accepted and served during the delay, told to close.
    let fresh = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = fresh.get(format!("{}{REPO}", gw.url)).header("authorization", "token t").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["connection"], "close");
    let exit = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert!(exit.success());
    assert!(signalled.elapsed() >= Duration::from_secs(3), "it served for the whole delay");
}

#[tokio::test]
async fn ctrl_c_or_a_second_sigterm_skips_the_delay() {
    let fake = FakeGitHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    for signals in [&["INT"][..], &["TERM", "TERM"][..]] {
        let mut gw =
            GatewayProcess::start(&fake.url(), dir.path(), &[("GHGATE_SERVER__SHUTDOWN_DELAY", "30s")]).await;
        let started = Instant::now();
        for signal in signals {
            gw.signal(signal);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let exit = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10))).await.unwrap();
        assert!(exit.success());
        assert!(started.elapsed() < Duration::from_secs(10), "{signals:?} stopped without the 30 s delay");
    }
}

/// A settings file for the reload tests: the admin token, a webhook secret, the app's key
/// file and one client key, with `extra` appended.
fn settings_file(
    admin_token: &str,
    webhook_secret: &str,
    app_key: &str,
    client_key: &str,
    extra: &str,
) -> String {
    use sha2::Digest;
    format!(
        r#"[server]
admin_token = "{admin_token}"
[webhooks]
secrets = ["{webhook_secret}"]
[[apps]]
name = "{app}"
app_id = "{app_id}"
private_key_path = "{key}"
[[clients]]
name = "runner"
key_sha256 = "{client}"
app = "{app}"
{extra}
"#,
        app = support::app::APP,
        app_id = support::app::APP_ID,
        key = support::app::data(app_key).display(),
        client = hex::encode(sha2::Sha256::digest(client_key.as_bytes())),
    )
}

fn webhook_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A signed `ping` delivery's status.
async fn ping(gw: &GatewayProcess, secret: &str) -> u16 {
    let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#.to_vec();
    support::client()
        .post(format!("{}/_ghgate/webhook", gw.url))
        .header("x-github-event", "ping")
        .header("content-type", "application/json")
        .header("x-hub-signature-256", webhook_signature(secret, &body))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn admin_status(gw: &GatewayProcess, token: &str) -> u16 {
    support::client()
        .get(format!("{}/stats", gw.admin_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn get_with(
    client: &reqwest::Client,
    gw: &GatewayProcess,
    path: &str,
    credential: &str,
) -> reqwest::Response {
    client.get(format!("{}{path}", gw.url)).header("authorization", credential).send().await.unwrap()
}

/// One metric, read with the admin token.
async fn metric(gw: &GatewayProcess, token: &str, series: &str) -> f64 {
    let r =
        support::client().get(format!("{}/metrics", gw.admin_url)).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200, "/metrics with the admin token");
    support::metric_value(&r.text().await.unwrap(), series)
}

/// Waits until `/metrics` shows `series` at `value`, failing after 5 s.
async fn wait_metric(gw: &GatewayProcess, token: &str, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(gw, token, series).await != value {
        assert!(Instant::now() < deadline, "{series} did not reach {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const OLD_CLIENT_KEY: &str = "ghgate_old_runner_key_0123456789";
const NEW_CLIENT_KEY: &str = "ghgate_new_runner_key_0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_every_secret_and_keeps_cached_answers_and_connections() {
    let fake = support::app::fake_with_app().await;
    fake.install("octo", 7);
    fake.install("acme", 8);
    fake.put(REPO, Resource::json(r#"{"name":"hello"}"#.to_string()));
    fake.put("/repos/acme/tools", Resource::json(r#"{"name":"tools"}"#.to_string()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ghgate.toml");
    std::fs::write(
        &file,
        settings_file(
            "admin-token-one-0123",
            "webhook-secret-one-0123",
            "app-key-pkcs1.pem",
            OLD_CLIENT_KEY,
            "",
        ),
    )
    .unwrap();
    let file_env = file.display().to_string();
    let gw =
        GatewayProcess::start(&fake.url(), dir.path(), &[("GHGATE_CONFIG", &file_env), ("RUST_LOG", "")])
            .await;

    // One kept-alive connection, used before and after the reload.
    let addr: std::net::SocketAddr = gw.url.trim_start_matches("http://").parse().unwrap();
    let mut kept = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let first = get_on(&mut kept, REPO).await.unwrap();
    assert_eq!((first.status, first.outcome.as_str()), (200, "MISS"));
    let client = support::client();
    let with_old_key = get_with(&client, &gw, "/repos/octo/hello", &format!("Bearer {OLD_CLIENT_KEY}")).await;
    assert_eq!(with_old_key.status(), 200, "the client key works before the rotation");
    assert_eq!(admin_status(&gw, "admin-token-one-0123").await, 200);
    assert_eq!(ping(&gw, "webhook-secret-one-0123").await, 202);

    // GitHub now knows only the app's new key; the file names it, and every other secret rotates.
    fake.enable_app(
        support::app::APP_ID,
        &std::fs::read(support::app::data("other-app-key-public.pem")).unwrap(),
    );
    fake.install("octo", 7);
    fake.install("acme", 8);
    std::fs::write(
        &file,
        settings_file(
            "admin-token-two-0123",
            "webhook-secret-two-0123",
            "other-app-key.pem",
            NEW_CLIENT_KEY,
            "[log]\nlevel = \"debug\"",
        ),
    )
    .unwrap();
    gw.signal("HUP");
    wait_metric(&gw, "admin-token-two-0123", "ghgate_reloads_total{result=\"applied\"}", 1.0).await;

    assert_eq!(admin_status(&gw, "admin-token-one-0123").await, 401, "the old admin token is refused");
    assert_eq!(admin_status(&gw, "admin-token-two-0123").await, 200);
    assert_eq!(ping(&gw, "webhook-secret-one-0123").await, 401, "the old webhook secret is refused");
    assert_eq!(ping(&gw, "webhook-secret-two-0123").await, 202);
    let old_key = get_with(&client, &gw, REPO, &format!("Bearer {OLD_CLIENT_KEY}")).await;
    assert_ne!(old_key.status(), 200, "the removed client key no longer works");
    // The new client key mints with the new app key (a new owner: a look-up and a mint).
    let refusals_before = fake.jwt_refusals();
    let r = get_with(&client, &gw, "/repos/acme/tools", &format!("Bearer {NEW_CLIENT_KEY}")).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(fake.jwt_refusals(), refusals_before, "JWTs are signed with the new key");
    // Cached answers survive, and so does the connection opened before the reload.
    let again = get_on(&mut kept, REPO).await.expect("the kept-alive connection still serves");
    assert_eq!((again.status, again.outcome.as_str()), (200, "HIT"));
    let logs = support::process::logs(dir.path());
    assert!(logs.contains("settings reloaded"), "{logs}");
    assert!(!logs.contains("admin-token-two") && !logs.contains("webhook-secret-two"), "no secret logged");
    let after_reload = &logs[logs.find("settings reloaded").unwrap()..];
    assert!(after_reload.contains("DEBUG"), "log.level = debug took effect");
    assert_eq!(metric(&gw, "admin-token-two-0123", "ghgate_config_last_reload_successful").await, 1.0);
}

#[tokio::test]
async fn a_bad_reload_is_refused_naming_the_keys_and_the_old_settings_stay() {
    let fake = support::app::fake_with_app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ghgate.toml");
    let good = settings_file(
        "admin-token-one-0123",
        "webhook-secret-one-0123",
        "app-key-pkcs1.pem",
        OLD_CLIENT_KEY,
        "",
    );
    std::fs::write(&file, &good).unwrap();
    let file_env = file.display().to_string();
    let gw = GatewayProcess::start(&fake.url(), dir.path(), &[("GHGATE_CONFIG", &file_env)]).await;
    let reload = |token: &'static str| {
        let url = format!("{}/reload", gw.admin_url);
        async move { support::client().post(url).bearer_auth(token).send().await.unwrap() }
    };

    let cases: [(String, &[&str]); 4] = [
        // Not TOML at all.
        ("[server\nadmin_token = ".to_string(), &[""]),
        // A value that fails its check, beside a rotated secret.
        (
            good.replace("admin-token-one-0123", "admin-token-two-0123") + "[cache]\nmax_bytes = \"lots\"\n",
            &["cache.max_bytes"],
        ),
        // An app key that is not a key.
        (good.replace("app-key-pkcs1.pem", "webhooks/push.json"), &["apps[0].private_key_path"]),
        // Keys that cannot change while running, beside a rotated secret.
        (
            good.replace("admin-token-one-0123", "admin-token-two-0123")
                + "[store]\nbackend = \"memory\"\n[inbound]\nrequests_per_second = 5\n",
            &["store.backend", "inbound.requests_per_second"],
        ),
    ];
    for (i, (text, keys)) in cases.iter().enumerate() {
        std::fs::write(&file, text).unwrap();
        let r = reload("admin-token-one-0123").await;
        assert_eq!(r.status(), 422, "case {i}");
        let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert!(body["documentation_url"].is_string(), "GitHub's error shape: {body}");
        let errors = body["errors"].to_string();
        for key in *keys {
            assert!(errors.contains(key), "case {i}: {key} not named in {errors}");
        }
        // The settings in force are the old ones: the old admin token still works.
        assert_eq!(admin_status(&gw, "admin-token-one-0123").await, 200, "case {i}");
        assert_eq!(metric(&gw, "admin-token-one-0123", "ghgate_config_last_reload_successful").await, 0.0);
    }
    assert_eq!(metric(&gw, "admin-token-one-0123", "ghgate_reloads_total{result=\"refused\"}").await, 4.0);
    assert!(support::process::logs(dir.path()).contains("reload refused"));

    // Back to a good file with a rotated token: applied.
    std::fs::write(&file, good.replace("admin-token-one-0123", "admin-token-two-0123")).unwrap();
    let r = reload("admin-token-one-0123").await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["changed"], serde_json::json!(["server.admin_token"]));
    assert_eq!(admin_status(&gw, "admin-token-two-0123").await, 200);
    assert_eq!(metric(&gw, "admin-token-two-0123", "ghgate_config_last_reload_successful").await, 1.0);
}

/// A 20 MiB tmpfs mounted for one test and unmounted after it: a data volume that fills.
struct SmallDisk {
    path: std::path::PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts it, or says why not. Mounting needs root; under CI (which runs as root) a
    /// failure to mount fails the test rather than skipping it.
    fn mount() -> Option<SmallDisk> {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("data");
        std::fs::create_dir_all(&path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=20m", "tmpfs"])
            .arg(&path)
            .output()
            .map_or_else(
                |e| Err(e.to_string()),
                |o| {
                    if o.status.success() {
                        Ok(())
                    } else {
                        Err(String::from_utf8_lossy(&o.stderr).into_owned())
                    }
                },
            );
        match mounted {
            Ok(()) => Some(SmallDisk { path, _parent: parent }),
            Err(why) if std::env::var_os("CI").is_some() => {
                panic!("CI must be able to mount a tmpfs (run as root): {why}")
            }
            Err(why) => {
                eprintln!(
                    "SKIPPED: a full-disk test needs a tmpfs, and mounting one failed (not root?): {why}"
                );
                None
            }
        }
    }

    /// Writes a file until the volume is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        for size in [64 * 1024, 4096, 1] {
            let chunk = vec![0u8; size];
            while file.write_all(&chunk).is_ok() {}
        }
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// `/readyz`'s status field.
async fn readiness(gw: &GatewayProcess) -> String {
    let r = support::client().get(format!("{}/readyz", gw.admin_url)).send().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    body["status"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_filled_and_was_freed_is_used_again_without_a_restart() {
    let Some(disk) = SmallDisk::mount() else { return };
    let fake = FakeGitHub::start().await;
    let body = |i: usize| format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(128 * 1024));
    for i in 0..200 {
        fake.put(&format!("/repos/octo/f{i}"), Resource::json(body(i)));
    }
    // The log and the secret stay off the small volume; only the store is on it.
    let logs_dir = tempfile::tempdir().unwrap();
    let store_dir = disk.path.display().to_string();
    let env = [
        ("GHGATE_STORE__DATA_DIR", store_dir.as_str()),
        ("GHGATE_STORE__HOT_MAX_BYTES", "1MiB"),
        ("GHGATE_CACHE__MAX_BYTES", "64MiB"),
        ("GHGATE_SERVER__SHUTDOWN_DELAY", "0s"),
        ("RUST_LOG", "info"),
    ];
    let mut gw = GatewayProcess::start(&fake.url(), logs_dir.path(), &env).await;
    let client = support::client();
    let get = |i: usize| {
        let (client, url) = (client.clone(), format!("{}/repos/octo/f{i}", gw.url));
        async move {
            let r = client.get(url).header("authorization", "token t").send().await.unwrap();
            assert_eq!(r.status(), 200);
            support::outcome(&r)
        }
    };
    assert_eq!(get(0).await, "MISS");

    // Fill the volume, then keep reading new paths until the store fails (`/readyz` runs no
    // upkeep, so it shows the failure before any recovery attempt).
    let filler = disk.fill();
    let mut next = 1;
    while readiness(&gw).await != "degraded" {
        assert!(next < 100, "writes to a full disk never failed");
        assert_eq!(get(next).await, "MISS");
        next += 1;
    }
    for _ in 0..5 {
        assert_eq!(get(next).await, "MISS", "answered from GitHub while the disk is full");
        next += 1;
    }
    assert!(gw.metric("ghgate_store_errors_total").await > 0.0);
    let logs = support::process::logs(logs_dir.path());
    println!("fjall said: {}", logs.lines().find(|l| l.contains("FjallError")).unwrap_or("(nothing)"));

    // Space comes back: within the backoff the store reopens and stores again.
    std::fs::remove_file(filler).unwrap();
    let freed = Instant::now();
    while readiness(&gw).await != "ready" {
        assert!(freed.elapsed() < Duration::from_secs(30), "still degraded 30 s after space was freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("the store worked again {:?} after space was freed", freed.elapsed());
    assert!(gw.metric("ghgate_store_recoveries_total").await >= 1.0);
    assert!(support::process::logs(logs_dir.path()).contains("the disk store works again"));
    let errors = gw.metric("ghgate_store_errors_total").await;
    let stored_after = next;
    for i in stored_after..stored_after + 5 {
        assert_eq!(get(i).await, "MISS");
    }
    assert_eq!(gw.metric("ghgate_store_errors_total").await, errors, "no more store errors");

    // What was stored after recovery is on disk: a restart serves it from the store.
    gw.signal("TERM");
    let exit = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(20))).await.unwrap();
    assert!(exit.success());
    let gw = GatewayProcess::start(&fake.url(), logs_dir.path(), &env).await;
    for i in stored_after..stored_after + 5 {
        let r = client
            .get(format!("{}/repos/octo/f{i}", gw.url))
            .header("authorization", "token t")
            .send()
            .await
            .unwrap();
        assert_eq!(support::outcome(&r), "HIT", "f{i} was stored on disk after the recovery");
    }
}
