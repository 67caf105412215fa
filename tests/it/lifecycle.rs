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
    let (mut length, mut close) = (0usize, false);
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
            _ => {}
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok(Answer { status, close })
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
    let (tally, exit) = stop_under_load("2s").await;
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
