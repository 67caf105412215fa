//! Test harness: starts the real gateway on loopback ports in front of the fake GitHub.

pub mod app;
pub mod fake_github;
pub mod process;
pub mod redis_server;

use std::time::Duration;

use ghgate::config::Settings;
use ghgate::server::Running;

pub use fake_github::{FakeGitHub, Resource};
pub use redis_server::{RedisCluster, RedisServer};

/// A gateway started for one test, with a client pointed at it.
pub struct TestGateway {
    /// The running gateway.
    pub running: Running,
    /// `http://127.0.0.1:PORT` of the proxy listener.
    pub url: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin_url: String,
    /// An HTTP client that follows no redirects and uses no proxy.
    pub client: reqwest::Client,
    _data_dir: tempfile::TempDir,
}

/// Settings for tests: loopback listeners on free ports, a fixed secret, a temporary data dir.
pub fn test_settings(upstream: &str, data_dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    s.server.secret = Some("test-secret-0123456789".into());
    s.upstream.url = upstream.parse().unwrap();
    s.upstream.timeout = Duration::from_secs(5);
    s.store.data_dir = data_dir.to_path_buf();
    s
}

/// Starts a gateway in front of `upstream`, after `tweak` adjusts the settings.
pub async fn start_gateway(upstream: &str, tweak: impl FnOnce(&mut Settings)) -> TestGateway {
    start_gateway_in(tempfile::tempdir().unwrap(), upstream, tweak).await
}

/// Like [`start_gateway`], with a data directory the caller chose (to restart on it).
pub async fn start_gateway_in(
    dir: tempfile::TempDir,
    upstream: &str,
    tweak: impl FnOnce(&mut Settings),
) -> TestGateway {
    let mut settings = test_settings(upstream, dir.path());
    tweak(&mut settings);
    settings.validate().expect("test settings are valid");
    let running = ghgate::server::start(settings).await.expect("gateway starts");
    TestGateway {
        url: format!("http://{}", running.proxy_addr),
        admin_url: format!("http://{}", running.admin_addr),
        running,
        client: client(),
        _data_dir: dir,
    }
}

/// A plain test client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap()
}

impl TestGateway {
    /// Stops the gateway and hands back its data directory.
    pub async fn stop(self) -> tempfile::TempDir {
        self.running.shutdown().await;
        self._data_dir
    }

    /// GET `path` with an optional token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut r = self.client.get(format!("{}{path}", self.url));
        if let Some(t) = token {
            r = r.header("authorization", format!("token {t}"));
        }
        r.send().await.unwrap()
    }

    /// A JSON answer of the admin listener (`/stats`, `/readyz`, `/status.json`, ...).
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let text =
            self.client.get(format!("{}{path}", self.admin_url)).send().await.unwrap().text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {text}"))
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client.get(format!("{}/metrics", self.admin_url)).send().await.unwrap().text().await.unwrap()
    }

    /// The value of one metric line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }
}

/// The value of one series in a Prometheus text exposition, 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The `x-ghgate-cache` value of an answer.
pub fn outcome(r: &reqwest::Response) -> String {
    r.headers().get("x-ghgate-cache").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// Sends `request` to `addr` exactly as written and reads the whole answer (up to 3 s): for
/// requests no HTTP client would send.
pub async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}
