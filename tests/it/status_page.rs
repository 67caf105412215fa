//! The status page, checked in a real headless browser (Debian's `chromium`, driven by
//! tests/browser/check-page.sh): it loads without console errors and shows the hit ratio, the
//! spent-versus-saved chart, the budgets and recent events. The screenshot is kept in
//! `target/test-artifacts/status-page.png`.
//!
//! Without Chromium these tests fail (CI installs it); set `GHGATE_SKIP_BROWSER_TESTS=1` to
//! skip them on a machine without it.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{FakeGitHub, Resource, start_gateway};

/// What the browser left behind.
struct Rendered {
    dom: String,
    console: String,
    screenshot: PathBuf,
}

fn browser_tests_skipped() -> bool {
    if std::env::var("GHGATE_SKIP_BROWSER_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("GHGATE_SKIP_BROWSER_TESTS=1: browser test skipped");
        return true;
    }
    false
}

/// Renders `url` off the runtime's thread (the gateway under test must keep answering).
async fn render_async(url: String, out: PathBuf) -> Rendered {
    tokio::task::spawn_blocking(move || render(&url, &out)).await.unwrap()
}

/// Renders `url` with tests/browser/check-page.sh into `out`.
fn render(url: &str, out: &Path) -> Rendered {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/check-page.sh");
    let status = Command::new("bash").arg(&script).arg(url).arg(out).status().expect("run check-page.sh");
    assert!(
        status.success(),
        "check-page.sh failed ({status}); is Chromium installed (apt-get install -y chromium)? \
         Set GHGATE_SKIP_BROWSER_TESTS=1 to skip browser tests"
    );
    Rendered {
        dom: std::fs::read_to_string(out.join("dom.html")).unwrap(),
        console: std::fs::read_to_string(out.join("console.txt")).unwrap(),
        screenshot: out.join("screenshot.png"),
    }
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_status_page_shows_ratio_chart_budgets_and_events_without_console_errors() {
    if browser_tests_skipped() {
        return;
    }
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json(r#"{"name":"hello"}"#));
    fake.put("/repos/octo/hello/pulls", Resource::json("[]"));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    // Traffic: misses and hits for two identities, a remembered 404, a purge.
    for token in ["alice-token", "bob-token"] {
        for _ in 0..3 {
            gw.get("/repos/octo/hello", Some(token)).await;
            gw.get("/repos/octo/hello/pulls", Some(token)).await;
        }
    }
    for _ in 0..3 {
        assert_eq!(gw.get("/repos/octo/missing", Some("alice-token")).await.status(), 404);
    }
    let purge = gw.client.post(format!("{}/purge?owner=octo&repo=hello", gw.admin_url)).send().await;
    assert_eq!(purge.unwrap().status(), 200);

    // The data behind the page.
    let data = gw.admin_json("/status.json").await;
    assert_eq!(data["minutes"].as_array().unwrap().len(), 60, "{data}");
    let now = &data["minutes"][59];
    // Alice's two misses and her 404 were paid; Bob's first reads were GitHub's free 304s for
    // the bodies Alice fetched (computed validators).
    assert_eq!(now["spent"], 3, "2 misses and one 404 were paid: {data}");
    assert_eq!(now["saved"], 12, "2 revalidations, 8 hits and 2 negative answers were free: {data}");
    assert_eq!(data["totals"]["answers"], 15);
    assert_eq!(data["budgets"].as_array().unwrap().len(), 2, "one line per identity: {data}");
    // Identities carry what an operator knows them by: a fingerprint, never the token.
    let fingerprint = |token: &str| {
        use sha2::Digest;
        format!("token sha256:{}", &hex::encode(sha2::Sha256::digest(token.as_bytes()))[..8])
    };
    let labels: Vec<&str> =
        data["budgets"].as_array().unwrap().iter().filter_map(|b| b["label"].as_str()).collect();
    for token in ["alice-token", "bob-token"] {
        assert!(labels.contains(&fingerprint(token).as_str()), "{token}: {labels:?}");
    }
    let events = data["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "invalidation" && e["what"] == "purge repo octo/hello"),
        "{data}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "negative" && e["what"] == "not_found octo/missing" && e["count"] == 2),
        "{data}"
    );
    assert!(!data.to_string().contains("alice-token"), "no credential in the status data");

    let out = tempfile::tempdir().unwrap();
    let page = render_async(format!("{}/", gw.admin_url), out.path().to_path_buf()).await;
    let artifact = artifacts_dir().join("status-page.png");
    std::fs::copy(&page.screenshot, &artifact).unwrap();
    eprintln!("status page screenshot: {}", artifact.display());

    assert_eq!(page.console, "", "the page logged to the console");
    assert!(page.dom.contains("data-rendered="), "the page rendered its data: {}", page.dom);
    assert_eq!(page.dom.matches("class=\"bar-saved\"").count(), 60, "one bar per minute in the chart");
    assert!(page.dom.contains("<svg id=\"chart\""));
    assert_eq!(page.dom.matches("<tr class=\"budget\"").count(), 2, "a budget bar per identity");
    assert!(page.dom.contains("5,000 / 5,000") || page.dom.contains("/ 5,000"), "remaining of the limit");
    assert!(page.dom.contains("purge repo octo/hello") && page.dom.contains("not_found octo/missing"));
    assert!(page.dom.contains(&fingerprint("alice-token")), "identities are labelled on the page");
    assert!(page.dom.contains("id=\"hit-ratio-hour\" class=\"value\">80.0%"), "12 of 15 local: {}", page.dom);
    assert!(std::fs::metadata(&artifact).unwrap().len() > 10_000, "a real screenshot");
    gw.stop().await;
}

#[tokio::test]
async fn with_an_admin_token_the_page_asks_for_it_and_shows_no_data() {
    if browser_tests_skipped() {
        return;
    }
    let fake = FakeGitHub::start().await;
    let gw =
        start_gateway(&fake.url(), |s| s.server.admin_token = Some("admin-token-0123456789".into())).await;
    let out = tempfile::tempdir().unwrap();
    let page = render_async(format!("{}/", gw.admin_url), out.path().to_path_buf()).await;
    // The 401 from status.json is expected and handled: Chromium reports failed fetches as
    // network errors, not console messages.
    assert_eq!(page.console, "", "the page logged to the console");
    assert!(page.dom.contains("<form id=\"login\" class=\"login\">"), "the token form shows: {}", page.dom);
    assert!(page.dom.contains("<main id=\"main\" hidden=\"\">"), "no data shown");
    gw.stop().await;
}

/// The check can fail: a page with an uncaught error is reported.
#[test]
fn the_browser_check_catches_a_console_error() {
    if browser_tests_skipped() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("broken.html");
    std::fs::write(&page, "<html><body><script>notDefinedAnywhere();</script></body></html>").unwrap();
    let rendered = render(&format!("file://{}", page.display()), &dir.path().join("out"));
    assert!(rendered.console.contains("notDefinedAnywhere is not defined"), "{}", rendered.console);
}

#[tokio::test]
async fn with_replicas_the_page_shows_the_fleet_and_each_replica() {
    if browser_tests_skipped() {
        return;
    }
    let redis = support::RedisServer::start();
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json(r#"{"name":"hello"}"#));
    let url = redis.url();
    let on_redis = move |s: &mut ghgate::config::Settings| {
        s.store.backend = ghgate::config::StoreBackend::Redis;
        s.store.redis_url = Some(url.clone());
    };
    let a = start_gateway(&fake.url(), on_redis.clone()).await;
    let b = start_gateway(&fake.url(), on_redis).await;
    for _ in 0..4 {
        a.get("/repos/octo/hello", Some("alice-token")).await;
    }
    for _ in 0..6 {
        b.get("/repos/octo/hello", Some("alice-token")).await;
    }
    b.admin_json("/stats").await; // B reports now rather than within 5 s

    let out = tempfile::tempdir().unwrap();
    let page = render_async(format!("{}/", a.admin_url), out.path().to_path_buf()).await;
    std::fs::copy(&page.screenshot, artifacts_dir().join("status-page-fleet.png")).unwrap();
    assert_eq!(page.console, "", "the page logged to the console");
    assert!(page.dom.contains("<section id=\"fleet\">"), "the fleet section is shown: {}", page.dom);
    assert_eq!(page.dom.matches("<tr class=\"replica\"").count(), 2, "a row per replica");
    assert!(page.dom.contains("(this one)") && page.dom.contains("all replicas"));
    assert!(page.dom.contains("· all 2 replicas"), "the chart is the fleet's");
    // The tiles count the fleet's 10 requests (one paid miss), not this replica's 4.
    assert!(page.dom.contains("90.0% since start · 10 requests"), "{}", page.dom);
    a.stop().await;
    b.stop().await;
}
