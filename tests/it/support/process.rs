//! The gateway as operators run it: the `ghgate` binary in a child process, so tests can
//! send it signals, kill it, restart it on the same data directory, and read its memory and
//! file descriptors from /proc.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `ghgate serve`.
pub struct GatewayProcess {
    child: Child,
    /// `http://127.0.0.1:PORT` of the proxy listener.
    pub url: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin_url: String,
}

/// The gateway's log, appended to `<data_dir>/ghgate.log` across restarts (read it when a
/// test fails).
fn log_file(data_dir: &Path) -> Stdio {
    std::fs::create_dir_all(data_dir).unwrap();
    let file =
        std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("ghgate.log")).unwrap();
    Stdio::from(file)
}

/// What the gateway logged so far in `data_dir`.
pub fn logs(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("ghgate.log")).unwrap_or_default()
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `admin_url/healthz` answers 200, failing the test after 20 s.
pub async fn wait_healthy(admin_url: &str) {
    let client = super::client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{admin_url}/healthz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "ghgate did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `child` to exit, failing the test after `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "ghgate did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl GatewayProcess {
    /// Starts the binary in front of `upstream` with its store in `data_dir`, settings from
    /// `env` (`GHGATE_*`), and waits until it is healthy.
    pub async fn start(upstream: &str, data_dir: &Path, env: &[(&str, &str)]) -> GatewayProcess {
        let (port, admin_port) = (free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_ghgate"));
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}"), "--upstream", upstream])
            .env_remove("GHGATE_CONFIG")
            .env("GHGATE_STORE__DATA_DIR", data_dir)
            .env("GHGATE_SERVER__SECRET", "test-secret-0123456789")
            .env("GHGATE_INBOUND__LIMIT_ENABLED", "false")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log_file(data_dir));
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start ghgate");
        let process = GatewayProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            admin_url: format!("http://127.0.0.1:{admin_port}"),
        };
        wait_healthy(&process.admin_url).await;
        process
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `KILL`, ...).
    pub fn signal(&self, signal: &str) {
        let ok =
            Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status().unwrap();
        assert!(ok.success(), "kill -{signal}");
    }

    /// Waits for the process to exit, failing the test after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        wait_exit(&mut self.child, within)
    }

    /// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} not in /proc status"))
    }

    /// Open file descriptors: (sockets, everything else).
    pub fn open_fds(&self) -> (usize, usize) {
        let mut sockets = 0;
        let mut others = 0;
        for fd in std::fs::read_dir(format!("/proc/{}/fd", self.pid())).unwrap().flatten() {
            match std::fs::read_link(fd.path()) {
                Ok(target) if target.to_string_lossy().starts_with("socket:") => sockets += 1,
                _ => others += 1,
            }
        }
        (sockets, others)
    }

    /// One metric from `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = super::client()
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        super::metric_value(&text, series)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
