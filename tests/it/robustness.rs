//! Malformed requests get a clear error and the gateway keeps serving; the admin listener
//! reports what happened.

use crate::support;

use std::time::Duration;

use support::{FakeGitHub, Resource, outcome, start_gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::raw;

#[tokio::test]
async fn malformed_requests_get_an_error_and_the_gateway_keeps_serving() {
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    let addr = gw.running.proxy_addr;

    let cases = [
        "GET http://evil.example/repos/octo/hello HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        "GET /repos/octo/../../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /repos/%2e%2e/admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\nConnection: close\r\n\r\n",
    ];
    for case in cases {
        let answer = raw(addr, case).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{case:?} → {answer}");
        assert!(answer.contains("\"documentation_url\""), "GitHub-shaped error for {case:?}: {answer}");
    }
    // Garbage never reaches the pipeline; hyper refuses it.
    let answer = raw(addr, "NOT HTTP AT ALL\r\n\r\n").await;
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");
    let huge_header = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let answer = raw(addr, &huge_header).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431") || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    assert_eq!(fake.requests(), 0, "nothing malformed went upstream");
    let r = gw.get("/repos/octo/hello", Some("t")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(outcome(&r), "MISS");
    assert!(gw.metric("ghgate_bad_requests_total").await >= 4.0);
}

#[tokio::test]
async fn the_admin_listener_serves_metrics_health_and_status_apart_from_the_proxy() {
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), |_| {}).await;
    gw.get("/repos/octo/hello", Some("t")).await;
    gw.get("/repos/octo/hello", Some("t")).await;
    gw.get("/repos/octo/missing", Some("t")).await;

    let m = gw.metrics().await;
    assert_eq!(support::metric_value(&m, "ghgate_requests_total{outcome=\"hit\"}"), 1.0, "{m}");
    assert_eq!(support::metric_value(&m, "ghgate_requests_total{outcome=\"miss\"}"), 2.0);
    assert_eq!(support::metric_value(&m, "ghgate_upstream_requests_total{status=\"2xx\"}"), 1.0);
    assert_eq!(support::metric_value(&m, "ghgate_upstream_requests_total{status=\"4xx\"}"), 1.0);
    assert_eq!(support::metric_value(&m, "ghgate_ratelimit_units_spent_total"), 2.0);
    assert_eq!(support::metric_value(&m, "ghgate_cache_stores_total"), 1.0);
    assert!(support::metric_value(&m, "ghgate_store_bytes") > 0.0);
    // The store holds the answer and the remembered 404 (the negative cache lives there too).
    assert_eq!(support::metric_value(&m, "ghgate_store_entries"), 2.0);
    assert!(
        m.contains("ghgate_request_duration_seconds_bucket{outcome=\"hit\",le=\"0.001\"}"),
        "histograms have buckets: {m}"
    );

    for path in ["/healthz", "/readyz", "/"] {
        let r = gw.client.get(format!("{}{path}", gw.admin_url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // The proxy listener does not serve admin paths: they go upstream like any other path.
    let r = gw.client.get(format!("{}/metrics", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("Not Found"));
}

#[tokio::test]
async fn slow_headers_oversized_heads_bad_methods_and_header_injection_are_refused_cleanly() {
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), |s| {
        s.server.header_read_timeout = Duration::from_millis(500);
        s.server.max_header_bytes = 16 * 1024;
    })
    .await;
    let addr = gw.running.proxy_addr;

    // Slowloris: a request head that never ends is dropped after the header-read timeout.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /repos/octo/hello HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "the server closed the slow connection");
    assert!(started.elapsed() < Duration::from_secs(2), "closed after {:?}", started.elapsed());

    // A head over server.max_header_bytes: 431.
    let big = format!(
        "GET /repos/octo/hello HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    let answer = raw(addr, &big).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Methods that are not tokens are refused by the HTTP parser.
    let answer =
        raw(addr, "G\u{1}T /repos/octo/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");

    // Encoded CR/LF in a path stays encoded: no header reaches upstream from it.
    let answer = raw(
        addr,
        "GET /repos/octo/hello%0d%0aX-Injected:%20yes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "passed upstream as one (unknown) path: {answer}");
    // A raw CR/LF in the request line never parses.
    let answer = raw(addr, "GET /repos/octo/hello\rX-Injected: yes HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        fake.log().iter().all(|(_, _, headers)| !headers.contains_key("x-injected")),
        "no injected header reached upstream"
    );

    // And the gateway still serves.
    assert_eq!(gw.get("/repos/octo/hello", Some("t")).await.status(), 200);
}

#[tokio::test]
async fn request_bodies_over_server_max_body_bytes_are_refused_with_413() {
    let fake = FakeGitHub::start().await;
    let gw = start_gateway(&fake.url(), |s| s.server.max_body_bytes = 1024).await;
    let url = format!("{}/repos/octo/hello/issues", gw.url);
    let post =
        |body: reqwest::Body| gw.client.post(&url).header("authorization", "token t").body(body).send();
    let posts_upstream = || fake.log().iter().filter(|(m, _, _)| m == http::Method::POST).count();

    // A declared length over the limit: refused before anything goes upstream.
    let answer = post(vec![b'a'; 2048].into()).await.unwrap();
    assert_eq!(answer.status(), 413);
    let error: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert!(error["message"].as_str().unwrap().contains("server.max_body_bytes"), "{error}");
    assert!(error["documentation_url"].is_string(), "GitHub's error shape: {error}");
    assert_eq!(posts_upstream(), 0);

    // A chunked body (no declared length) that crosses the limit: cut off, and the client is
    // told why rather than handed a 502.
    let chunks = (0..3).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'b'; 512])));
    let answer = post(reqwest::Body::wrap_stream(futures::stream::iter(chunks))).await.unwrap();
    assert_eq!(answer.status(), 413);

    // Within the limit, declared or chunked: forwarded whole.
    let answer = post(vec![b'c'; 1024].into()).await.unwrap();
    assert_eq!(answer.status(), 201);
    assert_eq!(answer.text().await.unwrap().len(), 1024);
    let chunks = (0..2).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'd'; 512])));
    let answer = post(reqwest::Body::wrap_stream(futures::stream::iter(chunks))).await.unwrap();
    assert_eq!(answer.status(), 201);
    assert_eq!(answer.text().await.unwrap(), "d".repeat(1024));

    let metrics = gw.metrics().await;
    assert!(metrics.contains("ghgate_bad_requests_total 2"), "both refusals counted");
}

#[tokio::test]
async fn connections_are_spread_over_the_workers_which_share_one_cache() {
    let fake = FakeGitHub::start().await;
    fake.put("/repos/octo/hello", Resource::json("{}"));
    let gw = start_gateway(&fake.url(), |s| s.server.workers = 3).await;
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        // A client of its own each time: a new connection, handed to the next worker.
        let client = support::client();
        let r = client
            .get(format!("{}/repos/octo/hello", gw.url))
            .header("authorization", "token t")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        outcomes.push(outcome(&r));
    }
    assert_eq!(outcomes, ["MISS", "HIT", "HIT", "HIT", "HIT", "HIT"], "one cache across workers");
    assert_eq!(fake.requests(), 1);
    assert_eq!(gw.metric("ghgate_proxy_workers").await, 3.0);
    for worker in 0..3 {
        let series = format!("ghgate_proxy_connections_total{{worker=\"{worker}\"}}");
        assert_eq!(gw.metric(&series).await, 2.0, "{series}");
    }
}
