//! A real `redis-server` for one test: started on a free loopback port, stopped (and its
//! files removed) when dropped. Never the machine's own Redis on 6379.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn binary() -> String {
    for candidate in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.to_string();
        }
    }
    "redis-server".to_string()
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer { port, child: None, dir: tempfile::tempdir().unwrap() };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Kills the server (its data is gone: it keeps nothing on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real three-master Redis Cluster on loopback (`redis-server --cluster-enabled yes` × 3,
/// joined by `redis-cli --cluster create`), stopped when dropped.
pub struct RedisCluster {
    /// The masters' ports on 127.0.0.1 (each also uses port + 10000 for the cluster bus).
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: tempfile::TempDir,
}

/// A port free now whose cluster-bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    /// Starts three masters, joins them (16384 slots split three ways) and waits until the
    /// cluster says `cluster_state:ok` on every node.
    pub fn start() -> RedisCluster {
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = free_cluster_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let mut cluster = RedisCluster { ports, children: Vec::new(), dir: tempfile::tempdir().unwrap() };
        for i in 0..3 {
            let child = cluster.spawn(i);
            cluster.children.push(Some(child));
        }
        let addresses: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        cluster.wait_ok();
        cluster
    }

    fn spawn(&self, i: usize) -> Child {
        let port = self.ports[i];
        let dir = self.dir.path().join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(binary())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "2000"])
            .args(["--dir", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(i, &["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Waits until every running node says `cluster_state:ok`.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..3 {
            if self.children[i].is_none() {
                continue;
            }
            while !self.cli(i, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The seed list for `store.redis_url` (with `store.redis_cluster = true`).
    pub fn url(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// Runs `redis-cli` against master `i`.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.ports[i].to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Every key of every master (`KEYS *`, for tests only).
    pub fn keys(&self) -> Vec<String> {
        (0..3)
            .flat_map(|i| self.cli(i, &["KEYS", "*"]).lines().map(str::to_string).collect::<Vec<_>>())
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// Kills master `i` (its slots' keys are gone with it: nothing is kept on disk).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts master `i` again on its port with its cluster configuration (it rejoins with
    /// its slots, empty).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let child = self.spawn(i);
        self.children[i] = Some(child);
        self.wait_ok();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// The Redis replicas share in a test: one server, or a three-master cluster. Replica tests
/// run against both (`on_both!`).
pub enum Shared {
    /// One `redis-server`.
    Single(RedisServer),
    /// A three-master Redis Cluster.
    Cluster(RedisCluster),
}

impl Shared {
    /// One server.
    pub fn single() -> Shared {
        Shared::Single(RedisServer::start())
    }

    /// A cluster.
    pub fn cluster() -> Shared {
        Shared::Cluster(RedisCluster::start())
    }

    /// Settings that put a gateway on it.
    pub fn apply(&self, s: &mut ghgate::config::Settings) {
        s.store.backend = ghgate::config::StoreBackend::Redis;
        s.store.redis_timeout = Duration::from_millis(500);
        match self {
            Shared::Single(redis) => s.store.redis_url = Some(redis.url()),
            Shared::Cluster(cluster) => {
                s.store.redis_url = Some(cluster.url());
                s.store.redis_cluster = true;
            }
        }
    }

    /// `redis-cli` with `args` on the node holding `key` (`-c` follows a cluster's redirects).
    pub fn cli_for_key(&self, _key: &str, args: &[&str]) -> String {
        match self {
            Shared::Single(redis) => redis.cli(args),
            Shared::Cluster(cluster) => {
                let out = Command::new("redis-cli")
                    .args(["-c", "-h", "127.0.0.1", "-p", &cluster.ports[0].to_string(), "--raw"])
                    .args(args)
                    .output()
                    .expect("redis-cli is installed");
                String::from_utf8_lossy(&out.stdout).to_string()
            }
        }
    }

    /// Every key, on every node.
    pub fn keys(&self) -> Vec<String> {
        match self {
            Shared::Single(redis) => {
                redis.cli(&["KEYS", "*"]).lines().filter(|k| !k.is_empty()).map(str::to_string).collect()
            }
            Shared::Cluster(cluster) => cluster.keys(),
        }
    }
}

/// Runs an `async fn(&Shared)` test against one Redis and against a Redis Cluster, as two
/// tests named after it (`<name>::single_redis`, `<name>::redis_cluster`).
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single_redis() {
                super::$name(&$crate::support::redis_server::Shared::single()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster() {
                super::$name(&$crate::support::redis_server::Shared::cluster()).await
            }
        }
    };
}
